"""``audit_data``: the shared data's known shortcut AUCs, a planted marker found, constant cues reported."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pneumo.data import Record, discover, get_task
from pneumo.trust.data_audit import audit_data, audit_task, constant_value, score_cue, score_models
from pneumo.trust.metadata import CueTable, file_cues

# (task, cue, split) -> AUC stated in the shared data's README ("Acquisition differences between classes").
KNOWN = {
    ("normal-pneumonia", "orig_bytes", "train"): 0.998,
    ("normal-pneumonia", "orig_bytes", "test"): 0.927,
    ("normal-pneumonia", "orig_aspect", "train"): 0.87,
    ("normal-pneumonia", "orig_aspect", "test"): 0.70,
    ("bacteria-virus", "orig_bytes", "train"): 0.61,
    ("bacteria-virus", "orig_bytes", "test"): 0.73,
}


@pytest.fixture(scope="module")
def shared_cues(kaggle_data: Path, originals_data: Path):
    records = [r for r in discover(kaggle_data) if r.split in ("train", "test")]
    return file_cues(records, kaggle_data / "MANIFEST.csv", originals_data / "MANIFEST.csv")


@pytest.mark.shared_data
@pytest.mark.parametrize("task_name", ["normal-pneumonia", "bacteria-virus"])
def test_metadata_baselines_reproduce_the_known_aucs(shared_cues, task_name: str) -> None:
    task = get_task(task_name)
    records, targets = task.select(shared_cues.records)
    pos = {id(r): i for i, r in enumerate(shared_cues.records)}
    rows = np.array([pos[id(r)] for r in records])
    y = np.asarray(targets)
    groups = np.array([r.patient_id for r in records], dtype=object)
    split_of = np.array([r.split for r in records])
    for (t, cue, split), known in KNOWN.items():
        if t != task_name:
            continue
        result = score_cue(
            shared_cues.values[cue][rows], y, groups, split_of, ["train", "test"], task.class_names, n_boot=200, seed=0
        )
        auc = result["splits"][split]["auc"]
        assert auc["low"] <= known <= auc["high"], (cue, split, auc, known)


@pytest.mark.shared_data
def test_stored_geometry_of_the_shared_copy_is_constant(shared_cues) -> None:
    assert constant_value(shared_cues.values["stored_width"]) == 224
    assert constant_value(shared_cues.values["stored_bit_depth"]) == 8
    assert constant_value(shared_cues.values["orig_bytes"]) is None


def test_planted_corner_marker_is_found_and_written(marker_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "audit"
    result = audit_data(marker_data, tasks=["normal-pneumonia"], image_size=40, n_boot=50, out=out, progress=False)
    cues = result["tasks"]["normal-pneumonia"]["cues"]
    assert cues["corner_p99"]["splits"]["test"]["auc"]["point"] > 0.95
    assert cues["corner_p99"]["orientation"] == "higher -> PNEUMONIA"
    assert cues["centre_mean"]["splits"]["test"]["auc"]["low"] < 0.8  # the centre carries no signal
    models = result["tasks"]["normal-pneumonia"]["models"]
    assert models["logistic on all cues"]["splits"]["test"]["auc"]["point"] > 0.9
    assert models["logistic on all cues"]["splits"]["train"]["out_of_fold"] is True
    # Every file is a 40 x 40 8-bit greyscale PNG: constant, reported, not scored.
    assert result["constant_cues"]["stored_width"] == 40 and "stored_width" not in cues
    assert "orig_bytes" in result["unavailable_cues"]  # no manifest here
    saved = json.loads((out / "audit-data.json").read_text())
    assert saved["tasks"]["normal-pneumonia"]["cues"]["corner_p99"] == json.loads(json.dumps(cues["corner_p99"]))
    html = (out / "audit-data.html").read_text()
    assert "corner_p99" in html and "data:image/png;base64" in html
    assert "| normal-pneumonia | corner_p99 |" in result["table"]


def test_cue_orientation_is_chosen_on_train_only() -> None:
    # The cue predicts class 1 with high values on train, with low values on test: the test AUC must fall below 0.5.
    rng = np.random.default_rng(0)
    y = np.tile([0, 1], 100)
    split_of = np.array(["train"] * 100 + ["test"] * 100)
    values = np.where(split_of == "train", y, 1 - y) + rng.normal(0, 0.3, 200)
    groups = np.arange(200).astype(object)
    result = score_cue(values, y, groups, split_of, ["train", "test"], ("NORMAL", "PNEUMONIA"), n_boot=50, seed=0)
    assert result["splits"]["train"]["auc"]["point"] > 0.9
    assert result["splits"]["test"]["auc"]["point"] < 0.1


def test_without_a_train_split_a_cue_is_oriented_and_scored_on_different_patients() -> None:
    # a manifest of test images only: oriented on test and scored on test, pure noise never scored below 0.5
    y = np.tile([0, 1], 50)
    split_of = np.array(["test"] * 100)
    groups = np.arange(100).astype(object)
    aucs = []
    for seed in range(40):
        noise = np.random.default_rng(seed).normal(size=100)
        result = score_cue(noise, y, groups, split_of, ["test"], ("NORMAL", "PNEUMONIA"), n_boot=20, seed=seed)
        assert result["oriented_on"] == "half of the patients (no train split)" and result["splits"]["test"]["n"] == 50
        aucs.append(result["splits"]["test"]["auc"]["point"])
    assert min(aucs) < 0.5 < max(aucs)  # chance both ways
    planted = np.where(y == 1, 1.0, -1.0) + np.random.default_rng(0).normal(0, 0.3, 100)
    found = score_cue(planted, y, groups, split_of, ["test"], ("NORMAL", "PNEUMONIA"), n_boot=20, seed=0)
    assert found["splits"]["test"]["auc"]["point"] > 0.95


def test_an_empty_split_is_reported_not_scored() -> None:
    # a cue that separates the classes leaves no matched subset: scoring the empty "matched" split crashed the audit
    rng = np.random.default_rng(0)
    y = np.tile([0, 1], 60)
    split_of = np.array(["train"] * 80 + ["test"] * 40)
    groups = np.arange(120).astype(object)
    records = [_record(i, s, ("normal", "bacteria")[c]) for i, (s, c) in enumerate(zip(split_of, y, strict=True))]
    table = CueTable(
        records, {"stored_bytes": 1000 + 500 * y + rng.normal(0, 10, 120), "centre_mean": rng.normal(size=120)}
    )
    result = score_models(
        table, ["stored_bytes", "centre_mean"], y, groups, split_of, ["train", "test", "matched"],
        ("NORMAL", "PNEUMONIA"), n_boot=20, seed=0,
    )  # fmt: skip
    for model in result.values():
        assert model["splits"]["matched"] == {"n": 0, "auc": None, "out_of_fold": False}
        assert model["splits"]["test"]["auc"]["point"] > 0.95


def _record(i: int, split: str, subtype: str) -> Record:
    label = "NORMAL" if subtype == "normal" else "PNEUMONIA"
    return Record(Path(f"/nowhere/{split}/{label}/img{i}.png"), split, label, subtype, f"patient{i}")


def test_train_auc_of_models_is_out_of_fold() -> None:
    # Pure-noise cues: an in-sample gradient boosting fit would score its own train split near 1; out of fold the
    # train AUC, like the test AUC, is at chance.
    rng = np.random.default_rng(0)
    n_train, n_test = 300, 100
    split_of = np.array(["train"] * n_train + ["test"] * n_test)
    y = np.tile([0, 1], (n_train + n_test) // 2)
    groups = np.array([f"p{i // 2}" for i in range(len(y))], dtype=object)  # two images per patient
    records = [_record(i, s, ("normal", "bacteria")[c]) for i, (s, c) in enumerate(zip(split_of, y, strict=True))]
    table = CueTable(records, {"centre_mean": rng.normal(size=len(y)), "laplacian_std": rng.normal(size=len(y))})
    result = score_models(
        table,
        ["centre_mean", "laplacian_std"],
        y,
        groups,
        split_of,
        ["train", "test"],
        ("NORMAL", "PNEUMONIA"),
        n_boot=200,
        seed=0,
    )
    assert set(result) == {"logistic", "gradient boosting"}
    for name in ("gradient boosting", "logistic"):  # in-sample, gradient boosting would be near 1, logistic ~0.57
        model = result[name]
        assert model["features"] == ["centre_mean", "laplacian_std"]
        for split, n in (("train", n_train), ("test", n_test)):
            entry = model["splits"][split]
            assert entry["n"] == n and entry["out_of_fold"] is (split == "train")
            assert entry["auc"]["low"] < 0.5 < entry["auc"]["high"], (split, entry)
            assert abs(entry["auc"]["point"] - 0.5) < 0.1


# A planted three-class cue: bacteria lowest, normal in the middle, virus highest, overlapping only a little. Per
# class one-vs-rest over these 12 values (4 per class): normal 19/32 (higher), bacteria 32/32 (lower), virus 29/32
# (higher); macro mean (19 + 32 + 29) / 96 = 5/6.
THREE_CLASS_CUE = {"normal": [4, 5, 6, 13], "bacteria": [0, 1, 2, 3], "virus": [10, 11, 12, 14]}


def test_three_class_task_scores_each_class_against_the_rest() -> None:
    rng = np.random.default_rng(0)
    records, values = [], []
    for split in ("train", "test"):
        for repeat in range(10):  # shifted copies keep every pairwise order, so the AUCs stay the same
            for subtype, cue in THREE_CLASS_CUE.items():
                for v in cue:
                    records.append(_record(len(records), split, subtype))
                    values.append(v + 0.01 * repeat)
    table = CueTable(
        records, {"orig_bytes": np.array(values, dtype=float), "centre_mean": rng.normal(size=len(records))}
    )
    result = audit_task(table, get_task("normal-bacteria-virus"), constant={}, n_boot=100, seed=0)
    assert result["class_names"] == ["normal", "bacteria", "virus"]
    assert result["splits"]["test"]["class_counts"] == {"normal": 40, "bacteria": 40, "virus": 40}
    planted = result["cues"]["orig_bytes"]
    assert planted["orientation"] == "higher -> normal; lower -> bacteria; higher -> virus"
    assert planted["oriented_on"] == "train"
    for split in ("train", "test"):
        auc = planted["splits"][split]["auc"]
        assert auc["point"] == pytest.approx(5 / 6)
        assert auc["low"] <= 5 / 6 <= auc["high"]
    noise = result["cues"]["centre_mean"]["splits"]["test"]["auc"]
    assert noise["low"] < 0.5 < noise["high"]
    # Gradient boosting separates three bands of one cue; without it (image-only cues: noise) it is at chance.
    models = result["models"]
    assert models["gradient boosting on all cues"]["splits"]["test"]["auc"]["point"] > 0.95
    assert models["gradient boosting on all cues"]["features"] == ["orig_bytes", "centre_mean"]
    image_only = models["gradient boosting on image-only cues"]
    assert image_only["features"] == ["centre_mean"]
    assert image_only["splits"]["test"]["auc"]["low"] < 0.5 < image_only["splits"]["test"]["auc"]["high"]


def test_the_cli_writes_beside_the_cache_not_into_the_current_folder(
    marker_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from pneumo.cli import app

    work, cache = tmp_path / "work", tmp_path / "cache"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("PNEUMO_CACHE_DIR", str(cache))
    args = ["audit", "data", str(marker_data), "--task", "normal-pneumonia", "--no-pixels", "--n-boot", "20"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert list(work.iterdir()) == []  # ./audit-data-chest-xray/ was written here unasked
    (written,) = (cache / "audits").iterdir()
    assert written.name.startswith("audit-data-chest-xray-") and (written / "audit-data.html").is_file()
    assert f"writing the audit to {written}" in result.stderr
    assert f"report: {written / 'audit-data.html'}" in result.stdout
