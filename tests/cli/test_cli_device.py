"""``--device`` means what ``pneumo.utils.device.resolve_device`` means, and a device the run cannot use is refused
before any work starts, naming the problem."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import pneumo.evaluation.run
from pneumo.cli import app


@pytest.fixture
def evaluate_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []

    def fake_evaluate_run(run_dir, *args, device="auto", **kwargs):
        calls.append(device)
        raise SystemExit(0)  # stop once the device got through; the evaluation itself is tested elsewhere

    monkeypatch.setattr(pneumo.evaluation.run, "evaluate_run", fake_evaluate_run)
    return calls


def test_unknown_device_is_refused_before_any_work(tmp_path: Path, evaluate_calls: list[str]) -> None:
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path), "--device", "gpu"])
    assert result.exit_code == 2
    assert "device must be auto, cpu, cuda or cuda:N, got 'gpu'" in result.output
    assert evaluate_calls == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_is_refused(tmp_path: Path, evaluate_calls: list[str], device: str) -> None:
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path), "--device", device])
    assert result.exit_code == 2
    assert "CUDA is not available" in result.output
    assert evaluate_calls == []


def test_an_indexed_gpu_or_cpu_gets_through(tmp_path: Path, evaluate_calls: list[str]) -> None:
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    CliRunner().invoke(app, ["evaluate", str(tmp_path), "--device", device])
    assert evaluate_calls == [device]
