from __future__ import annotations

from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from pneumo.cli.train import train as train_command
from pneumo.training import ConfigError, TrainConfig, build_config, load_yaml, validate_config
from pneumo.training.config import family_defaults, parse_set


def test_precedence_defaults_family_yaml_flags_set(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump({"data": "d", "model": "resnet50", "lr": 0.1, "epochs": 3, "augment": {"rotation": 3}})
    )
    cfg = build_config(
        config_file=config, flags={"lr": 0.2, "seed": None}, overrides=["lr=0.3", "augment.scale=[0.8, 1.2]"]
    )
    assert cfg.lr == 0.3  # --set beats the flag, which beats the file
    assert cfg.epochs == 3  # the file beats the family default
    assert cfg.augment.rotation == 3 and cfg.augment.scale == (0.8, 1.2)
    assert cfg.augment.translate == TrainConfig.model_fields["augment"].default_factory().translate
    assert cfg.batch_size == family_defaults("resnet50")["batch_size"]  # nobody set it: the family default
    assert cfg.seed == TrainConfig.model_fields["seed"].default  # a None flag means "not given"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("augment.rotaton=3", "unknown setting 'augment.rotaton'; did you mean 'rotation'?"),
        ("epocs=3", "unknown setting 'epocs'; did you mean 'epochs'?"),
        ("optimizer=adam", "optimizer"),
        ("freeze=layer3", "until:<stage>"),
        ("synthetic.from_run=runs/gan", "given together"),
        ("seed=-1", "seed"),  # refused here, not after the run folder is written (numpy's carve needs >= 0)
        ("split_seed=-2", "split_seed"),
        ("threshold_method=best_on_test", "threshold_method"),
    ],
)
def test_invalid_settings_fail_with_a_clear_message(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(flags={"data": "d"}, overrides=[override])
    assert expected in str(info.value)


def test_set_parses_yaml_values_and_rejects_bad_syntax() -> None:
    assert parse_set(["a.b=1e-3", "c=[1, 2]", "d=null", "e=true"]) == {
        "a": {"b": 1e-3},
        "c": [1, 2],
        "d": None,
        "e": True,
    }
    with pytest.raises(ConfigError, match="key=value"):
        parse_set(["lr"])


def test_config_yaml_round_trips(tmp_path: Path) -> None:
    cfg = build_config(
        flags={"data": "d", "task": "bacteria-virus", "model": "resnet18"},
        overrides=["augment.scale=[0.8, 1.3]", "acquisition_augment.enabled=true", "unfreeze_epochs=[3, 2]",
                   "freeze=until:layer2", "synthetic.from_run=x", "synthetic.per_class=balance"],
    )  # fmt: skip
    cfg.save(tmp_path / "config.yaml")
    again = validate_config(load_yaml(tmp_path / "config.yaml"))
    assert again == cfg
    assert again.unfreeze_epochs == [2, 3]


def test_cli_reports_typos_and_missing_data(tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(train_command)
    result = CliRunner().invoke(app, ["--data", str(tmp_path), "--set", "augment.rotaton=3"])
    assert result.exit_code == 2
    assert "did you mean 'rotation'" in result.output
    result = CliRunner().invoke(app, ["--model", "cnn"])
    assert result.exit_code == 2 and "missing setting 'data'" in result.output
    result = CliRunner().invoke(app, ["--resume", str(tmp_path), "--epochs", "3"])
    assert result.exit_code == 2 and "--epochs" in result.output


@pytest.mark.parametrize(("momentum", "nesterov"), [(0.0, False), (0.9, True)])
def test_sgd_builds_with_any_allowed_momentum(momentum: float, nesterov: bool) -> None:
    """momentum=0 passes validation, so the optimiser must build with it (PyTorch refuses Nesterov without it)."""
    from pneumo.models import get_model
    from pneumo.training.optim import build_optimizer

    cfg = build_config(flags={"data": "d"}, overrides=["optimizer=sgd", f"momentum={momentum}"])
    model = get_model("cnn", num_classes=2, widths=[4, 8], depths=[1, 1])
    optimizer = build_optimizer(model, cfg)
    assert all(g["momentum"] == momentum and g["nesterov"] is nesterov for g in optimizer.param_groups)
