from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import pneumo.training
from pneumo.cli import app
from pneumo.trust.ood import fit_after_training


def test_transfer_flags_reach_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}

    def fake_train(cfg, command=None, after=None):
        seen.update(cfg=cfg, after=after)
        return tmp_path / "run"

    monkeypatch.setattr(pneumo.training, "train", fake_train)
    args = ["train", "--data", str(tmp_path), "--model", "resnet18", "--weights", "none", "--freeze", "until:layer3"]
    args += ["--dummy-class", "--balance", "sampler", "--task", "bacteria-virus", "--set", "augment.rotation=3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    cfg = seen["cfg"]
    assert (cfg.model, cfg.weights, cfg.freeze, cfg.dummy_class, cfg.balance) == (
        "resnet18", "none", "until:layer3", True, "sampler",
    )  # fmt: skip
    assert cfg.augment.rotation == 3
    assert seen["after"] is fit_after_training  # the command, not the engine, fits the OOD detector after training


def test_bad_setting_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train", "--data", str(tmp_path), "--set", "augment.rotaton=3"])
    assert result.exit_code == 2
    assert "did you mean 'rotation'" in result.output


def test_resume_takes_data_where_the_dataset_moved_and_refuses_other_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = {}

    def fake_resume(run_dir, data=None, after=None):
        seen.update(run_dir=run_dir, data=data, after=after)
        return tmp_path / "run"

    monkeypatch.setattr(pneumo.training, "resume", fake_resume)
    result = CliRunner().invoke(app, ["train", "--resume", str(tmp_path / "run"), "--data", str(tmp_path / "moved")])
    assert result.exit_code == 0, result.output
    assert seen == {"run_dir": tmp_path / "run", "data": tmp_path / "moved", "after": fit_after_training}
    refused = CliRunner().invoke(app, ["train", "--resume", str(tmp_path / "run"), "--epochs", "9"])
    assert refused.exit_code != 0 and "drop --epochs" in refused.output


def test_demo_output_labels_the_auc_threshold_free(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pneumo.demo

    ci = {"point": 0.8, "low": 0.7, "high": 0.9}
    names = ("accuracy", "sensitivity", "specificity", "roc_auc")
    section = {"label": "validated t = 0.706 (youden)", "ci": dict.fromkeys(names, ci)}
    fake = {"metrics": {"primary": section}, "primary": "primary", "data": tmp_path, "run_dir": tmp_path}
    fake.update(eval_dir=tmp_path, class_names=["NORMAL", "PNEUMONIA"], class_counts={"NORMAL": 43, "PNEUMONIA": 125})
    monkeypatch.setattr(pneumo.demo, "run_demo", lambda out=None, epochs=8: fake)
    result = CliRunner().invoke(app, ["demo"])
    assert result.exit_code == 0, result.output
    assert "sensitivity  0.800 [0.700, 0.900]  (validated t = 0.706 (youden))" in result.output
    assert "roc_auc      0.800 [0.700, 0.900]  (threshold-free)" in result.output
    assert "trivial baseline: always PNEUMONIA: accuracy 0.744, roc_auc 0.500" in result.output  # 125 / 168
