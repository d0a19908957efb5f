"""The models shipped in src/pneumo/zoo/: intact, described, and saying what they said when they were built."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

import pneumo
from pneumo.cli import app
from pneumo.inference import DISCLAIMER
from pneumo.zoo import list_models, shipped_model, verify_checksums
from serve.conftest import start_server

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
EXPECTED = json.loads((Path(__file__).parent / "expected_predictions.json").read_text())
IMAGES = sorted(p for p in EXAMPLES.iterdir() if p.suffix == ".jpeg")


def test_every_shipped_model_matches_its_checksum_list_and_has_a_full_card() -> None:
    models = {m.alias: m for m in list_models()}
    assert {"normal-pneumonia", "normal-bacteria-virus"} <= set(models)
    assert shipped_model("default").alias == "normal-pneumonia"
    for model in models.values():
        verify_checksums(model.path)
        assert not list(model.path.glob("last.*")), "resume state is not shipped"
        card = (model.path / "MODEL_CARD.md").read_text()
        for needed in ("Research use only", "CC BY 4.0", "doi:10.17632/rscbjbr9sj.2", "pneumo reproduce", "95 % CI"):
            assert needed in card, f"{model.name}: MODEL_CARD.md lacks {needed!r}"
        summary = model.summary()
        assert summary["test"]["roc_auc"]["low"] <= summary["test"]["roc_auc"]["point"] <= 1
        meta = model.checkpoint()
        assert meta["operating_point"]["split"] == "val" and meta["temperature"] > 0 and meta["ood"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_predictions_on_the_example_images_are_those_recorded(name: str) -> None:
    """A changed preprocessing path (decoding, resizing, normalisation) or checkpoint field changes these."""
    results = pneumo.load(name.rsplit("-v", 1)[0]).predict([str(p) for p in IMAGES])
    assert [Path(r.source).name for r in results] == sorted(EXPECTED[name])
    for r in results:
        want = EXPECTED[name][Path(r.source).name]
        assert r.label == want["label"] and r.in_distribution == want["in_distribution"], r.source
        assert r.probabilities == pytest.approx(want["probabilities"], abs=1e-5), r.source
        assert r.threshold == want["threshold"] and r.ood_score == pytest.approx(want["ood_score"], rel=1e-4, abs=1e-6)
    assert results[0].disclaimer == DISCLAIMER


def test_predict_with_an_image_first_uses_the_default_model_and_says_so() -> None:
    image = EXAMPLES / "person100_bacteria_475.jpeg"
    result = CliRunner().invoke(app, ["predict", str(image), "-f", "json"])
    assert result.exit_code == 0, result.stderr
    default = shipped_model("default")
    assert f"model: pneumo/{default.name} (the default shipped model). {DISCLAIMER}" in result.stderr
    (item,) = json.loads(result.stdout)
    assert item["label"] == EXPECTED[default.name][image.name]["label"]
    named = CliRunner().invoke(app, ["predict", "pneumo/normal-bacteria-virus", str(image), str(EXAMPLES), "-f", "csv"])
    assert named.exit_code == 0, named.stderr
    assert "model: pneumo/normal-bacteria-virus-v" in named.stderr and "default" not in named.stderr
    assert named.stdout.splitlines()[0].startswith("file,label,p_normal,p_bacteria,p_virus")
    assert len(named.stdout.splitlines()) == 1 + 1 + len(IMAGES)
    unknown = CliRunner().invoke(app, ["predict", "pneumo/no-such-model", str(image)])
    assert unknown.exit_code == 2 and "shipped: pneumo/normal-bacteria-virus-v" in unknown.stderr
    no_images = CliRunner().invoke(app, ["predict", "normal-pneumonia"])
    assert no_images.exit_code == 2 and "no images given" in no_images.stderr


def test_models_lists_the_shipped_models() -> None:
    listed = CliRunner().invoke(app, ["models", "--json"])
    assert listed.exit_code == 0
    rows = {row["alias"]: row for row in json.loads(listed.stdout)}
    assert rows["pneumo/normal-pneumonia"]["default"] and rows["pneumo/normal-bacteria-virus"]["task"] == (
        "normal-bacteria-virus"
    )
    for model in list_models():  # what the list says is what each shipped run was trained as
        row, meta = rows[f"pneumo/{model.alias}"], model.checkpoint()
        assert row["family"] == meta["model"]["name"], model.name
        assert row["image_size"] == meta["preprocess"]["image_size"], model.name
    assert rows["pneumo/normal-pneumonia"]["family"] == "efficientnet_lite0"
    table = CliRunner().invoke(app, ["models"])
    assert "(default)" in table.stdout and "test ROC AUC" in table.stdout and DISCLAIMER in table.stdout


def test_export_and_serve_take_a_shipped_name(tmp_path: Path) -> None:
    out = tmp_path / "model.onnx"
    exported = CliRunner().invoke(app, ["export", "pneumo/normal-pneumonia", "--onnx", str(out)])
    assert exported.exit_code == 0, exported.stderr
    image = EXAMPLES / "IM-0001-0001.jpeg"
    from_onnx = pneumo.load(out).predict(str(image))
    want = EXPECTED[shipped_model("normal-pneumonia").name][image.name]
    assert from_onnx.probabilities == pytest.approx(want["probabilities"], abs=1e-4)

    from pneumo.serve import create_app

    server = start_server(create_app("pneumo/normal-bacteria-virus"))
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            body = client.post("/v1/predict", files={"file": (image.name, image.read_bytes())}).json()
            card = client.get("/v1/model").json()
    finally:
        server.stop()
    want = EXPECTED[shipped_model("normal-bacteria-virus").name][image.name]
    assert body["label"] == want["label"] and body["disclaimer"] == DISCLAIMER
    assert np.allclose(list(body["probabilities"].values()), list(want["probabilities"].values()), atol=1e-5)
    assert card["model_id"].startswith(shipped_model("normal-bacteria-virus").name)
    assert card["metrics"]["eval-chest-xray-test"]["split"] == "test"


@pytest.mark.slow
@pytest.mark.shared_data
def test_evaluate_takes_a_shipped_name_and_writes_into_a_copy(
    kaggle_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    model = shipped_model("normal-pneumonia")
    args = ["evaluate", "pneumo/normal-pneumonia", "--data", str(kaggle_data), "--json", "--no-plots", "--n-boot", "20"]
    result = CliRunner().invoke(app, [*args, "--device", "cpu"])
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert Path(out["eval_dir"]).parent == tmp_path / "pneumo" / "models" / model.name
    assert not out["calibration_fitted"]  # the shipped operating point and temperature
    assert out["metrics"][out["primary"]]["ci"]["roc_auc"]["point"] == pytest.approx(
        model.test_metrics()["roc_auc"]["point"], abs=1e-9
    )
    verify_checksums(model.path)  # the package folder is as shipped


def test_compare_and_audit_model_take_a_shipped_name(monkeypatch, tmp_path: Path) -> None:
    compared = CliRunner().invoke(app, ["compare", "pneumo/normal-pneumonia", "normal-bacteria-virus", "--json"])
    assert compared.exit_code == 0, compared.output
    rows = json.loads(compared.stdout)
    assert {row["task"] for row in rows} == {"normal-pneumonia", "normal-bacteria-virus"}
    assert all(row["eval"] is not None for row in rows)  # the shipped test evaluations are read

    import pneumo.trust.model_audit as model_audit

    seen = {}

    def fake_audit(run_dir, **kwargs):
        seen["run_dir"] = Path(run_dir)
        raise ValueError("stop here")

    monkeypatch.setattr(model_audit, "audit_model", fake_audit)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    audited = CliRunner().invoke(app, ["audit", "model", "pneumo/normal-pneumonia"])
    assert audited.exit_code != 0 and "stop here" in audited.output
    copy = seen["run_dir"]
    assert (copy / "best.safetensors").is_file() and shipped_model("normal-pneumonia").path not in (copy, *copy.parents)
