"""A damaged or missing file of a run folder gives one line naming the file and the way out, from every command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from inference.conftest import make_fake_run
from pneumo.cli import app
from pneumo.training.config import build_config


def _invoke(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def _one_line_naming(output: str, path: Path, *hints: str) -> None:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    assert str(path) in lines[0] and all(h in lines[0] for h in hints), output


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A run folder with the files every command reads: weights, checkpoint.json, config.yaml, an evaluation."""
    run = make_fake_run(tmp_path)
    meta = json.loads((run / "checkpoint.json").read_text())
    (run / "checkpoint.json").write_text(json.dumps({**meta, "task": "normal-pneumonia"}))
    build_config(flags={"data": str(tmp_path), "out": str(run)}).save(run / "config.yaml")
    (run / "eval-x-test").mkdir()
    (run / "eval-x-test" / "metrics.json").write_text(json.dumps({"metrics": {}}))
    Image.fromarray(np.full((40, 40), 120, np.uint8)).save(tmp_path / "x.png")
    return run


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


@pytest.mark.parametrize("command", ["evaluate", "predict", "export", "serve"])
def test_damaged_best_weights(run: Path, command: str) -> None:
    _truncate(run / "best.safetensors")
    args = {
        "evaluate": ["evaluate", run, "--device", "cpu"],
        "predict": ["predict", run, run.parent / "x.png"],
        "export": ["export", run, "--onnx", run.parent / "m.onnx"],
        "serve": ["serve", run, "--port", "1"],
    }[command]
    code, output = _invoke(*args)
    assert code == 2
    _one_line_naming(output, run / "best.safetensors", "is damaged", "last.safetensors")


@pytest.mark.parametrize("command", ["evaluate", "predict", "export", "serve"])
def test_damaged_checkpoint_json(run: Path, command: str) -> None:
    (run / "checkpoint.json").write_text('{"format": 1, "task": ')
    args = {
        "evaluate": ["evaluate", run, "--device", "cpu"],
        "predict": ["predict", run, run.parent / "x.png"],
        "export": ["export", run, "--onnx", run.parent / "m.onnx"],
        "serve": ["serve", run, "--port", "1"],
    }[command]
    code, output = _invoke(*args)
    assert code == 2
    _one_line_naming(output, run / "checkpoint.json", "is damaged")


def test_damaged_evaluation_and_config_in_compare(run: Path) -> None:
    (run / "eval-x-test" / "metrics.json").write_text("{")
    code, output = _invoke("compare", run)
    assert code == 2
    _one_line_naming(output, run / "eval-x-test" / "metrics.json", "is damaged", "run the command that wrote it")
    (run / "config.yaml").write_text("model: [cnn\n")
    code, output = _invoke("compare", run)
    assert code == 2
    _one_line_naming(output, run / "config.yaml", "is not valid YAML")


def test_resume_from_a_damaged_state(run: Path) -> None:
    (run / "last.state.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    code, output = _invoke("train", "--resume", run)
    assert code == 2
    _one_line_naming(output, run / "last.state.safetensors", "is damaged", "pneumo train --config", "last.safetensors")


def test_resume_with_a_damaged_config(run: Path) -> None:
    (run / "config.yaml").write_text("model: [cnn\n")
    code, output = _invoke("train", "--resume", run)
    assert code == 2
    _one_line_naming(output, run / "config.yaml", "is not valid YAML (line 2")


@pytest.mark.parametrize("command", ["predict", "serve"])
def test_a_damaged_onnx_file(run: Path, command: str) -> None:
    onnx = run.parent / "m.onnx"
    onnx.write_bytes(b"\x08\x07garbage")
    args = ["predict", onnx, run.parent / "x.png"] if command == "predict" else ["serve", onnx, "--port", "1"]
    code, output = _invoke(*args)
    assert code == 2
    _one_line_naming(output, onnx)


def test_evaluate_with_a_damaged_split_file(run: Path) -> None:
    (run / "split.csv").write_bytes(b"path,split\xff\xfe\x00garbage")
    code, output = _invoke("evaluate", run, "--device", "cpu")
    assert code == 2
    _one_line_naming(output, run / "split.csv", "is damaged")
