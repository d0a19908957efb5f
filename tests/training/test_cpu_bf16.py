"""bf16 autocast on a CPU with native bfloat16: the default (``auto``, as ``true``); ``amp=false`` keeps float32."""

from __future__ import annotations

import logging

import pytest
import torch

import pneumo.training.engine as engine
from pneumo.models.predict import autocast_for
from pneumo.runs.state import read_state_info
from pneumo.training import train
from pneumo.training.engine import uses_amp


@pytest.mark.parametrize("native", [True, False])
def test_amp_resolves_per_device(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: native)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert uses_amp("auto", cuda) and uses_amp(True, cuda) and not uses_amp(False, cuda)
    assert not uses_amp(False, cpu)  # the bit-reproducible float32 path
    # auto or asked: only where bfloat16 is native (emulated, it is slower)
    assert uses_amp(True, cpu) is native and uses_amp("auto", cpu) is native


def test_autocast_runs_cpu_convolutions_in_bf16() -> None:
    conv, x = torch.nn.Conv2d(1, 4, 3), torch.randn(2, 1, 8, 8)
    with autocast_for(torch.device("cpu"), True):
        assert conv(x).dtype == torch.bfloat16
    with autocast_for(torch.device("cpu"), False):
        assert conv(x).dtype == torch.float32


@pytest.mark.parametrize("native", [True, False])
def test_a_cpu_run_records_the_precision_it_trained_in(
    make_cfg, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, native: bool
) -> None:
    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: native)
    with caplog.at_level(logging.WARNING, logger="pneumo.training.engine"):
        run = train(make_cfg("amp=true", fit_ood=False, device="cpu"))
    assert read_state_info(run)["precisions"] == ["bf16 autocast" if native else "float32"]
    assert ("no native bfloat16" in caplog.text) is not native
    assert read_state_info(run)["config"]["amp"] is True
    default = train(make_cfg("amp=auto", fit_ood=False, device="cpu", out=str(run.parent / "default")))
    assert read_state_info(default)["precisions"] == ["bf16 autocast" if native else "float32"]
    pinned = train(make_cfg("amp=false", fit_ood=False, device="cpu", out=str(run.parent / "pinned")))
    assert read_state_info(pinned)["precisions"] == ["float32"]


class _Interrupted(Exception):
    pass


@pytest.mark.parametrize("legacy", [False, True])
def test_a_run_resumed_in_another_precision_records_both(
    make_cfg, tmp_path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, legacy: bool
) -> None:
    # resumed on a CPU without native bf16, a run begun in bf16 was recorded as float32 alone
    from pneumo.training import resume

    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: True)
    real_validate = engine.Trainer.validate

    def stop_in_epoch_2(self):
        if self.progress.epoch == 2:
            raise _Interrupted
        return real_validate(self)

    monkeypatch.setattr(engine.Trainer, "validate", stop_in_epoch_2)
    with pytest.raises(_Interrupted):
        train(make_cfg("amp=true", epochs=2, fit_ood=False, device="cpu", out=str(tmp_path / "run")))
    assert read_state_info(tmp_path / "run")["precisions"] == ["bf16 autocast"]
    if legacy:  # a checkpoint of the version that saved one "precision" string
        from pneumo.runs import state as ckpt

        tensors, info = ckpt.load_state(tmp_path / "run")
        info["precision"] = info.pop("precisions")[0]
        ckpt.save_state(tmp_path / "run", tensors, info)
    monkeypatch.setattr(engine.Trainer, "validate", real_validate)
    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: False)  # the same run, on another CPU
    with caplog.at_level(logging.WARNING, logger="pneumo.training.engine"):
        resume(tmp_path / "run")
    assert read_state_info(tmp_path / "run")["precisions"] == ["bf16 autocast", "float32"]
    assert "trained in bf16 autocast before and goes on in float32" in caplog.text
