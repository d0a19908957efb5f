"""``device=`` means the same in training, evaluation, the GAN, the audit, the bench and prediction."""

from __future__ import annotations

import pytest
import torch

from pneumo.utils.device import resolve_device


def test_auto_and_cpu() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("name", ["gpu", "cpu:0", "mps", "", "auto:1"])
def test_unknown_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="device must be auto, cpu, cuda or cuda:N"):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where there is no GPU")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_is_a_clear_error(name: str) -> None:
    with pytest.raises(ValueError, match=f"device '{name}' was asked for, but CUDA is not available"):
        resolve_device(name)


@pytest.mark.parametrize("name", ["cuda:x", "cuda:", "cuda:-1", "cuda:0:1", " cuda"])
def test_malformed_cuda_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="device must be auto, cpu, cuda or cuda:N"):
        resolve_device(name)


def test_a_gpu_index_the_machine_does_not_have_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0) and resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda", cuda_index=0) == torch.device("cuda", 0)
    with pytest.raises(ValueError, match=r"'cuda:1': there is no GPU 1 here \(1 visible\)"):
        resolve_device("cuda:1")
    with pytest.raises(ValueError, match="there is no GPU 1 here"):
        resolve_device("cuda", cuda_index=1)  # a launcher's local rank beyond the visible GPUs
