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
    assert "mahalanobis-pca-tied" in fit.output
    rates = runner.invoke(_app(), ["audit", "ood-rates", str(run_copy), "--split", "val", "--device", "cpu"])
    assert rates.exit_code == 0 and "flagged" in rates.output


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
