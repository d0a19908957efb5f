"""pneumo's own errors share one base, and the CLI turns any of them into one line and exit status 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from pneumo.cli import app
from pneumo.data.decode import ImageDecodeError
from pneumo.data.records import DatasetError
from pneumo.inference import ModelLoadError
from pneumo.inference.onnx import ExportError
from pneumo.inference.predictor import ExplainUnavailable
from pneumo.models.weights import WeightsUnavailableError
from pneumo.training.config import ConfigError
from pneumo.training.engine import TrainingDivergedError
from pneumo.utils.errors import PneumoError


def test_every_error_type_of_pneumo_is_a_pneumo_error() -> None:
    kinds = (ConfigError, DatasetError, ImageDecodeError, ModelLoadError, ExportError, ExplainUnavailable,
             WeightsUnavailableError, TrainingDivergedError)  # fmt: skip
    assert all(issubclass(kind, PneumoError) for kind in kinds)
    # and each keeps the built-in base callers caught it by
    assert issubclass(ConfigError, ValueError) and issubclass(WeightsUnavailableError, FileNotFoundError)


@pytest.mark.parametrize("error", [PneumoError, TrainingDivergedError])
def test_a_pneumo_error_from_any_command_is_one_line(
    error: type[PneumoError], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def broken(*args, **kwargs):
        raise error(f"{tmp_path / 'x.csv'}: broken; fix it")

    import pneumo.training

    monkeypatch.setattr("pneumo.data.inspect.inspect_dataset", broken)
    monkeypatch.setattr(pneumo.training, "build_config", broken)
    for args in (["data", "inspect", str(tmp_path)], ["train", "--data", str(tmp_path)]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, (args, result.output, result.exception)
        assert result.output.strip() == f"error: {tmp_path / 'x.csv'}: broken; fix it"
