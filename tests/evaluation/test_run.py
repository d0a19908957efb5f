"""evaluate_run on tiny real training runs (cnn, 32 px, synthetic data): validation-only choices, outputs, reuse."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from pneumo.evaluation import run as run_eval
from pneumo.evaluation.calibration import apply_temperature
from pneumo.evaluation.run import evaluate_run, stored_calibration
from pneumo.evaluation.runs_table import compare_runs, runs_table
from pneumo.evaluation.source import dataset_slug
from pneumo.evaluation.writers import images_digest
from pneumo.training import build_config, read_run_meta, train
from pneumo.trust.ood import fit_ood
from pneumo.utils.digest import file_sha256

FAST = {"n_boot": 60, "plots": False, "progress": False}


def _train(data: Path, out: Path, task: str = "normal-pneumonia", epochs: int = 2) -> Path:
    flags = {"data": str(data), "task": task, "model": "cnn", "epochs": epochs, "image_size": 32, "batch_size": 16}
    quick = {"progress": False, "early_stopping_patience": None, "max_steps_per_epoch": 6}
    cfg = build_config(flags={**flags, **quick, "out": str(out)})
    return train(cfg)


@pytest.fixture(scope="module")
def trained_run(synthetic_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pristine binary run; tests evaluate copies of it (evaluation writes into the run folder)."""
    return _train(synthetic_data, tmp_path_factory.mktemp("runs") / "binary")


def _copy(run_dir: Path, dst: Path) -> Path:
    return Path(shutil.copytree(run_dir, dst, ignore=shutil.ignore_patterns("eval-*", "MODEL_CARD.md")))


@pytest.fixture
def run_copy(trained_run: Path, tmp_path: Path) -> Path:
    return _copy(trained_run, tmp_path / "run")


def _flip_labels(run_dir: Path, split: str) -> None:
    path = run_dir / "split.csv"
    rows = list(csv.DictReader(path.open(newline="")))
    for row in rows:
        if row["split"] == split:
            row["label"] = "NORMAL" if row["label"] == "PNEUMONIA" else "PNEUMONIA"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_threshold_and_temperature_do_not_depend_on_test_labels(run_copy: Path, tmp_path: Path) -> None:
    flipped_test = _copy(run_copy, tmp_path / "flipped-test")
    _flip_labels(flipped_test, "test")
    flipped_val = _copy(run_copy, tmp_path / "flipped-val")
    _flip_labels(flipped_val, "val")

    a = evaluate_run(run_copy, **FAST)
    b = evaluate_run(flipped_test, **FAST)
    assert a["calibration_fitted"] and b["calibration_fitted"]
    assert b["threshold"] == a["threshold"]
    assert b["temperature"] == a["temperature"]
    assert read_run_meta(flipped_test)["operating_point"] == read_run_meta(run_copy)["operating_point"]
    # The flip did reach the scoring: same decisions, opposite labels.
    assert b["class_counts"] == {"NORMAL": a["class_counts"]["PNEUMONIA"], "PNEUMONIA": a["class_counts"]["NORMAL"]}
    acc_a = a["metrics"]["at_0.5"]["point"]["accuracy"]
    acc_b = b["metrics"]["at_0.5"]["point"]["accuracy"]
    assert acc_a + acc_b == pytest.approx(1.0)

    # Validation labels, in contrast, do choose them.
    c = evaluate_run(flipped_val, **FAST)
    assert (c["threshold"], c["temperature"]) != (a["threshold"], a["temperature"])


def test_outputs_and_metrics_json(run_copy: Path) -> None:
    result = evaluate_run(run_copy, **FAST)
    eval_dir = run_copy / f"eval-{dataset_slug(result['dataset']['source'])}-test"
    assert Path(result["eval_dir"]) == eval_dir
    stored = json.loads((eval_dir / "metrics.json").read_text())
    expected = {
        "pneumo_version", "run", "run_id", "task", "class_names", "dataset", "split", "n_images", "n_patients",
        "class_counts", "operating_point", "threshold", "temperature", "calibration", "bootstrap", "primary",
        "metrics", "overlap_with_training", "limitations", "plots",
    }  # fmt: skip
    assert expected <= stored.keys()
    assert stored["dataset"]["own"] is True and stored["split"] == "test"
    assert stored["primary"] == "at_validated_threshold"
    assert set(stored["metrics"]) == {"at_0.5", "at_validated_threshold"}
    assert stored["metrics"]["at_0.5"]["threshold"] == 0.5
    assert stored["metrics"]["at_validated_threshold"]["threshold"] == stored["threshold"]
    assert {"ece_before", "ece_after", "temperature"} <= stored["calibration"].keys()
    assert sum(stored["class_counts"].values()) == stored["n_images"]
    for section in stored["metrics"].values():
        ci = section["ci"]["roc_auc"]
        assert ci["low"] <= ci["point"] <= ci["high"]
        assert ci["n_valid"] > 0
    assert stored["operating_point"]["split"] == "val"

    rows = list(csv.DictReader((eval_dir / "predictions.csv").open(newline="")))
    assert len(rows) == stored["n_images"]
    # each image's content digest, and one for the evaluated set: what pairs two evaluations, not the file names
    root = Path(stored["dataset"]["source"])
    assert all(r["sha256"] == file_sha256(root / r["path"]) for r in rows)
    assert stored["dataset"]["images_sha256"] == images_digest([r["sha256"] for r in rows])
    assert stored["dataset"]["synthetic"] is True and stored["n_unreadable"] == 0 and stored["unreadable_list"] is None
    assert {"path", "patient_id", "true", "p_NORMAL", "p_PNEUMONIA", "predicted"} <= rows[0].keys()
    p_pos = np.array([float(r["p_PNEUMONIA"]) for r in rows])
    predicted = np.array([r["predicted"] == "PNEUMONIA" for r in rows])
    np.testing.assert_array_equal(predicted, p_pos >= stored["threshold"])
    # full precision: paired differences recompute AUCs from this file, and must find the reported ones
    logits = np.array([[float(r["logit_NORMAL"]), float(r["logit_PNEUMONIA"])] for r in rows])
    np.testing.assert_allclose(apply_temperature(logits, stored["temperature"])[:, 1], p_pos, rtol=1e-12, atol=1e-15)
    auc = stored["metrics"]["at_validated_threshold"]["point"]["roc_auc"]
    assert roc_auc_score([r["true"] == "PNEUMONIA" for r in rows], p_pos) == auc
    true = np.array([r["true"] == "PNEUMONIA" for r in rows])
    confusion = stored["metrics"]["at_validated_threshold"]["point"]["confusion_matrix"]
    assert confusion[1][1] == int((predicted & true).sum())

    card = (run_copy / "MODEL_CARD.md").read_text()
    assert f"{stored['threshold']:.4f}" in card
    assert "NOT a medical device" in card
    # trained on `pneumo data synth` output: the card says so, and claims nothing about Guangzhou's X-rays
    assert "SYNTHETIC data: these numbers describe the pipeline, not X-rays" in card
    assert "Guangzhou" not in card and "Kermany et al." not in card


def test_stored_calibration_is_reused_and_refitted_for_another_method(
    run_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = evaluate_run(run_copy, **FAST)
    with monkeypatch.context() as patched:
        patched.setattr(run_eval, "fit_temperature", _must_not_be_called)
        again = evaluate_run(run_copy, **FAST)
    assert not again["calibration_fitted"]
    assert (again["threshold"], again["temperature"]) == (first["threshold"], first["temperature"])

    sensitive = evaluate_run(run_copy, split="val", target_sensitivity=0.9, **FAST)
    assert sensitive["calibration_fitted"]
    assert sensitive["operating_point"]["method"] == "target_sensitivity"
    assert sensitive["metrics"]["at_validated_threshold"]["point"]["sensitivity"] >= 0.9
    assert read_run_meta(run_copy)["operating_point"]["target_sensitivity"] == 0.9
    assert any("validation split" in item for item in sensitive["limitations"])
    assert not any("not independent" in item for item in sensitive["limitations"])  # val overlaps itself: no news
    # tables (compare, the results of reproduce) name how the threshold was chosen
    assert compare_runs([run_copy], split="val")[0]["threshold_method"] == "sensitivity >= 0.9"
    assert compare_runs([run_copy])[0]["threshold_method"] == "Youden's J"

    meta = read_run_meta(run_copy)
    wanted = {"method": "target_sensitivity", "target_sensitivity": 0.9}
    digest = meta["operating_point"]["weights_sha256"]
    assert stored_calibration(meta, wanted, digest) is not None
    assert stored_calibration(meta, wanted, "other-weights") is None
    assert stored_calibration(meta, {"method": "youden"}, digest) is None

    with monkeypatch.context() as patched:  # no option: the stored screening threshold stays, on any dataset
        patched.setattr(run_eval, "fit_temperature", _must_not_be_called)
        kept = evaluate_run(run_copy, **FAST)
    assert kept["operating_point"] == sensitive["operating_point"] and not kept["calibration_fitted"]
    assert read_run_meta(run_copy)["operating_point"]["method"] == "target_sensitivity"
    assert stored_calibration(meta, None, digest) is not None and stored_calibration(meta, None, "other") is None
    back = evaluate_run(run_copy, youden=True, **FAST)
    assert back["calibration_fitted"] and back["operating_point"]["method"] == "youden"
    assert back["threshold"] == first["threshold"]
    with pytest.raises(ValueError, match="choose one of"):
        evaluate_run(run_copy, youden=True, target_specificity=0.9, **FAST)

    specific = evaluate_run(run_copy, split="val", target_specificity=0.9, **FAST)
    assert specific["calibration_fitted"] and specific["operating_point"]["method"] == "target_specificity"
    assert specific["metrics"]["at_validated_threshold"]["point"]["specificity"] >= 0.9
    assert "specificity >= 0.9 on val" in specific["metrics"]["at_validated_threshold"]["label"]
    with pytest.raises(ValueError, match="choose one of"):
        evaluate_run(run_copy, target_sensitivity=0.9, target_specificity=0.9, **FAST)


def test_the_model_card_and_served_metrics_hold_for_the_stored_operating_point(run_copy: Path) -> None:
    """A refit on validation (another method) replaced the threshold the model predicts with, while the model card
    and the metrics a served model reports still showed the test evaluation scored at the old one."""
    from pneumo.inference.meta import read_eval_metrics

    first = evaluate_run(run_copy, **FAST)
    test_eval = Path(first["eval_dir"]).name
    assert f"**{first['threshold']:.4f}**" in (run_copy / "MODEL_CARD.md").read_text()
    screening = evaluate_run(run_copy, split="val", target_sensitivity=0.99, **FAST)
    assert screening["threshold"] != first["threshold"]
    val_eval = Path(screening["eval_dir"]).name
    card = (run_copy / "MODEL_CARD.md").read_text()
    assert f"**{screening['threshold']:.4f}**" in card and f"{first['threshold']:.4f}" not in card
    assert list(read_eval_metrics(run_copy, read_run_meta(run_copy))) == [val_eval]  # the test numbers are stale

    again = evaluate_run(run_copy, **FAST)  # the test split scored again, at the stored screening threshold
    assert again["threshold"] == screening["threshold"] and Path(again["eval_dir"]).name == test_eval
    assert sorted(read_eval_metrics(run_copy, read_run_meta(run_copy))) == sorted([test_eval, val_eval])
    card = (run_copy / "MODEL_CARD.md").read_text()  # from the own test evaluation again
    assert f"| {again['dataset']['name']} test |" in card and f"| {again['dataset']['name']} val |" not in card
    # a ranking metric depends on no threshold; the ECE is measured on the evaluated split, not where T was fitted
    assert "| roc_auc (temperature-scaled probabilities) |" in card and "roc_auc (validated" not in card
    assert f"ECE on {again['dataset']['name']} test, after scaling" in card


def _must_not_be_called(*args, **kwargs):
    raise AssertionError("calibration was refitted")


def test_cross_dataset_manifest(run_copy: Path, synthetic_data: Path, tmp_path: Path, monkeypatch) -> None:
    fit_ood(run_copy)  # as `pneumo train` does after training (the engine itself fits no detector)
    own = evaluate_run(run_copy, **FAST)
    test_images = sorted((synthetic_data / "test").rglob("*.jpeg"))
    train_images = sorted((synthetic_data / "train").rglob("*.jpeg"))[:4]
    manifest = tmp_path / "External Set.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])  # no split column: every image is evaluated
        for path in [*test_images, *train_images]:
            writer.writerow([str(path), path.parent.name])

    monkeypatch.setattr(run_eval, "fit_temperature", _must_not_be_called)
    cross = evaluate_run(run_copy, data=manifest, **FAST)
    assert Path(cross["eval_dir"]).name == "eval-external-set-test"
    assert (run_copy / "eval-external-set-test" / "metrics.json").is_file()
    assert cross["dataset"]["own"] is False
    assert cross["n_images"] == own["n_images"] + 4
    assert not cross["calibration_fitted"]
    assert cross["threshold"] == own["threshold"]
    overlap = cross["overlap_with_training"]
    assert overlap["images_with_a_train_or_val_file_name"] == 4
    assert overlap["images_of_those_patients"] >= 4
    assert any("not independent" in item for item in cross["limitations"])
    # The model card keeps describing the run's own test evaluation.
    card = (run_copy / "MODEL_CARD.md").read_text()
    described, ood_section = card.split("## Out-of-distribution check")
    assert "external" not in described.lower()
    assert f"{own['n_images']} images" in card
    # its out-of-distribution section lists every evaluation's flag rate, the external set's included
    o = cross["ood"]
    assert f"**external-set test**: {o['n_flagged']} of {o['n']} images" in ood_section


def test_another_dataset_with_the_same_folder_name_gets_its_own_eval_folder(
    run_copy: Path, synthetic_data: Path, tmp_path: Path
) -> None:
    own = evaluate_run(run_copy, **FAST)
    twin = tmp_path / "elsewhere" / synthetic_data.name
    shutil.copytree(synthetic_data, twin)
    other = evaluate_run(run_copy, data=twin, **FAST)
    assert Path(other["eval_dir"]).name.startswith(f"eval-{dataset_slug(synthetic_data)}-")
    assert other["eval_dir"] != own["eval_dir"] and other["dataset"]["own"] is False
    assert other["dataset"]["images_sha256"] == own["dataset"]["images_sha256"]  # the same images elsewhere
    kept = json.loads((Path(own["eval_dir"]) / "metrics.json").read_text())
    assert kept["dataset"]["own"] is True  # the run's own evaluation was not overwritten
    assert compare_runs([run_copy])[0]["eval"] == Path(own["eval_dir"]).name


def test_three_classes_argmax_macro_auc(synthetic_data: Path, tmp_path: Path) -> None:
    run_dir = _train(synthetic_data, tmp_path / "three", task="normal-bacteria-virus", epochs=1)
    with pytest.raises(ValueError, match="binary"):
        evaluate_run(run_dir, target_sensitivity=0.9, **FAST)
    result = evaluate_run(run_dir, **FAST)
    assert result["primary"] == "argmax" and list(result["metrics"]) == ["argmax"]
    assert result["threshold"] is None and result["operating_point"]["method"] == "argmax"
    ci = result["metrics"]["argmax"]["ci"]
    assert {"accuracy", "balanced_accuracy", "roc_auc", "recall/virus", "roc_auc_per_class/bacteria"} <= ci.keys()
    per_class = result["metrics"]["argmax"]["point"]["roc_auc_per_class"]
    assert result["metrics"]["argmax"]["point"]["roc_auc"] == pytest.approx(np.mean(list(per_class.values())))
    assert read_run_meta(run_dir)["temperature"] == result["temperature"]


def test_compare_runs_reads_the_primary_section(trained_run: Path, tmp_path: Path) -> None:
    alpha = _copy(trained_run, tmp_path / "alpha")
    result = evaluate_run(alpha, **FAST)
    beta = _copy(trained_run, tmp_path / "beta")  # never evaluated
    rows = compare_runs([alpha, beta])
    assert [r["run"] for r in rows] == ["alpha", "beta"]
    first, second = rows
    primary = result["metrics"]["at_validated_threshold"]["ci"]
    assert first["sensitivity"]["point"] == pytest.approx(primary["sensitivity"]["point"])
    assert first["threshold"] == pytest.approx(result["threshold"])
    assert first["model"] == "cnn" and first["image_size"] == 32 and first["epochs"] == 2
    assert first["weights"] == "scratch" and first["wall_time"] is not None
    assert second["eval"] is None and second["roc_auc"] is None
    lines = runs_table(rows, markdown=True).splitlines()
    assert lines[0].split("|")[1:-1] == [
        f" {c} " for c in ("run", "task", "model", "weights", "image_size", "epochs", "wall_time", "accuracy",
                           "sensitivity", "specificity", "roc_auc", "dataset", "eval")
    ]  # fmt: skip
    assert first["dataset"] == f"chest-xray SYNTHETIC {result['dataset']['images_sha256'][:8]}"
    roc = primary["roc_auc"]
    assert lines[2].startswith("| alpha |") and f"{roc['point']:.3f} [{roc['low']:.3f}, {roc['high']:.3f}]" in lines[2]
    assert lines[3].startswith("| beta |") and lines[3].count("n/a") == 6


def test_a_run_whose_dataset_moved_away_evaluates_elsewhere(run_copy: Path, tmp_path: Path) -> None:
    """Its split file still reads (overlap counts), its stored calibration applies; only a refit needs the images."""
    import yaml

    from pneumo.data.records import DatasetError

    config = yaml.safe_load((run_copy / "config.yaml").read_text())
    data = config["data"]
    evaluate_run(run_copy, **FAST)  # stores the calibration
    gone = tmp_path / "gone" / "chest_xray"
    (run_copy / "config.yaml").write_text(yaml.safe_dump({**config, "data": str(gone)}))
    result = evaluate_run(run_copy, data=data, **FAST)
    assert not result["calibration_fitted"] and result["n_images"] > 0
    with pytest.raises(DatasetError, match=f"the run was trained on {gone}"):
        evaluate_run(run_copy, data=data, target_sensitivity=0.9, **FAST)  # a refit needs the run's own val images


def test_a_split_the_run_does_not_have_is_named(run_copy: Path) -> None:
    from pneumo.data.records import DatasetError

    split = run_copy / "split.csv"
    split.write_text("".join(line for line in split.read_text().splitlines(True) if ",test," not in line))
    with pytest.raises(DatasetError, match="no test split to evaluate: the run's split file has no test images"):
        evaluate_run(run_copy, **FAST)


def test_probabilities_that_round_to_one_are_counted_and_named(run_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Logit margins over about 37 T make float64 probabilities exactly 1.0: those images tie in every ROC curve."""
    import pneumo.evaluation.run

    plain = evaluate_run(run_copy, **FAST)
    assert plain["n_saturated"] == 0 and not any("rounds to exactly 1.0" in item for item in plain["limitations"])
    real = pneumo.evaluation.run.predict_logits
    monkeypatch.setattr(pneumo.evaluation.run, "predict_logits", lambda *a, **k: real(*a, **k) * 1e4)
    loud = evaluate_run(run_copy, **FAST)
    rows = csv.DictReader((Path(loud["eval_dir"]) / "predictions.csv").open(newline=""))
    saturated = sum(1.0 in (float(row["p_NORMAL"]), float(row["p_PNEUMONIA"])) for row in rows)
    assert loud["n_saturated"] == saturated > 0
    assert any(f"{loud['n_saturated']} image(s) have a class probability" in item for item in loud["limitations"])


def test_binary_evaluation_lists_every_threshold_rule_and_a_declared_one_is_used(run_copy: Path) -> None:
    result = evaluate_run(run_copy, threshold_method="prior_balanced", **FAST)
    assert result["operating_point"]["method"] == "prior_balanced"
    n_val = result["operating_point"]["n_val_images"]
    rules = {r["method"] + str(r.get("target_sensitivity", "")): r for r in result["threshold_rules"]}
    assert set(rules) >= {"fixed_0.5", "youden", "gap_midpoint", "prior_balanced", "target_sensitivity0.95"}
    assert result["threshold"] == pytest.approx(rules["prior_balanced"]["threshold"])
    primary = result["metrics"]["at_validated_threshold"]["point"]
    assert primary["sensitivity"] == pytest.approx(rules["prior_balanced"]["evaluated"]["sensitivity"])
    assert 0 < rules["prior_balanced"]["threshold"] < 1 and n_val > 0
    with pytest.raises(ValueError, match="unknown threshold method"):
        evaluate_run(run_copy, threshold_method="best_on_test", **FAST)


def test_the_runs_declared_threshold_method_is_used_when_none_is_asked(run_copy: Path) -> None:
    import yaml

    config_path = run_copy / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["threshold_method"] = "gap_midpoint"
    config_path.write_text(yaml.safe_dump(config))
    result = evaluate_run(run_copy, **FAST)
    assert result["operating_point"]["method"] == "gap_midpoint"
    rules = {r["method"]: r for r in result["threshold_rules"]}
    assert result["threshold"] == pytest.approx(rules["gap_midpoint"]["threshold"])
