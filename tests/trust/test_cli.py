"""``pneumo audit`` commands through typer's test runner."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from typer.testing import CliRunner

from pneumo.cli import audit as audit_cli


def _app() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(audit_cli.app, name="audit")  # as pneumo.cli registers it
    return app


def test_audit_data_command(marker_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["audit", "data", str(marker_data), "--task", "normal-pneumonia", "--no-pixels", "--n-boot", "20"]
    result = CliRunner().invoke(_app(), [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "stored_bytes" in result.output and "constant over all" in result.output
    assert json.loads((out / "audit-data.json").read_text())["tasks"]["normal-pneumonia"]


def test_ood_fit_and_rates_commands(run_copy: Path) -> None:
    runner = CliRunner()
    fit = runner.invoke(_app(), ["audit", "ood-fit", str(run_copy), "--device", "cpu"])
    assert fit.exit_code == 0, fit.output
    assert "multidepth-oe" in fit.output and "validation images" in fit.output
    rates = runner.invoke(_app(), ["audit", "ood-rates", str(run_copy), "--split", "val", "--device", "cpu"])
    assert rates.exit_code == 0 and "flagged" in rates.output
    older = ["audit", "ood-fit", str(run_copy), "--method", "mahalanobis-pca-tied", "--device", "cpu"]
    assert "mahalanobis-pca-tied" in runner.invoke(_app(), older).output


def test_audit_ood_prints_the_flag_rate_of_a_folder_and_predict_warns(
    run_copy: Path, synthetic_data: Path, tmp_path: Path
) -> None:
    import numpy as np
    from PIL import Image

    from pneumo.cli import app as pneumo_app
    from pneumo.trust.ood import fit_ood

    runner = CliRunner()
    missing = runner.invoke(_app(), ["audit", "ood", str(run_copy), "--data", str(synthetic_data)])
    assert missing.exit_code == 2 and "carries no usable out-of-distribution check" in missing.output
    fit_ood(run_copy)
    folder = tmp_path / "mixed"
    (folder / "noise").mkdir(parents=True)
    (folder / "xrays").mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(folder / "noise" / f"n{i}.png")
    for src in sorted((synthetic_data / "test" / "NORMAL").glob("*"))[:4]:
        (folder / "xrays" / src.name).write_bytes(src.read_bytes())
    result = runner.invoke(_app(), ["audit", "ood", str(run_copy), "--data", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    r = json.loads(result.output)
    assert r["n"] == 8 and r["groups"]["noise"] == {"n": 4, "n_flagged": 4, "flagged_rate": 1.0}
    assert r["groups"]["xrays"]["n_flagged"] <= 1 and r["method"] == "multidepth-oe"
    text = runner.invoke(_app(), ["audit", "ood", str(run_copy), "--data", str(folder)])
    assert f"{r['n_flagged']} of 8 images flagged as out of distribution" in text.output
    assert "noise: 4 of 4 flagged (100.0 %)" in text.output
    # pneumo predict: in_distribution and the reason in JSON, a warning under the table
    out = runner.invoke(pneumo_app, ["predict", str(run_copy), str(folder / "noise" / "n0.png"), "-f", "json"])
    (row,) = json.loads(out.stdout)
    assert row["in_distribution"] is False and "unlike the chest X-rays" in row["reason"]
    table = runner.invoke(pneumo_app, ["predict", str(run_copy), str(folder / "noise")])
    assert "warning: 4 of 4 image(s) are unlike the chest X-rays" in table.output


def test_errors_are_reported_not_raised(tmp_path: Path) -> None:
    result = CliRunner().invoke(_app(), ["audit", "data", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "error:" in result.output
    result = CliRunner().invoke(_app(), ["audit", "ood-fit", str(tmp_path), "--device", "cpu"])
    assert result.exit_code == 2 and "not a pneumo run folder" in result.output


def test_audit_model_command_prints_what_cues_alone_do_on_the_matched_subset(run_copy: Path, tmp_path: Path) -> None:
    args = ["audit", "model", str(run_copy), "--n-boot", "10", "--cam-images", "0", "--perturbation", "noise"]
    result = CliRunner().invoke(_app(), [*args, "--originals", "none", "--out", str(tmp_path), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "audit-model.json").read_text())
    models = saved["matched"]["residual"]["models"]
    best = max(models, key=lambda k: models[k]["matched"]["point"])
    assert f"acquisition cues alone ({best}, fitted on train): AUC " in result.output
