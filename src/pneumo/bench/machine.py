"""The machine and its yardsticks: hardware and versions, a matmul peak, FLOP counts and peak memory.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on one small real batch on the CPU (the ``meta``
device would skip the arithmetic, but its per-operator overhead made DenseNet-121 several times slower to count).
It counts matrix products and convolutions (forward and backward) as ``2 x multiply-adds``; batch norm, activations
and the optimizer are not counted, so "achieved GFLOP/s" is a lower bound on the arithmetic actually done.
"""

from __future__ import annotations

import os
import platform
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pneumo.utils.provenance import git_commit

# resource.getrusage().ru_maxrss counts KiB on Linux and bytes on macOS.
RU_MAXRSS_PER_MIB = 2**20 if sys.platform == "darwin" else 1024


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _meminfo_gib(key: str = "MemTotal") -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return round(int(line.split()[1]) / 2**20, 2)
    except OSError:
        pass
    return None


def machine_info(device: torch.device) -> dict:
    """CPU, memory, threads, load and GPU of this machine."""
    info: dict = {
        "hostname": platform.node(),
        "os": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": _meminfo_gib(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "device": str(device),
        "gpu": None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = {
            "name": props.name,
            "memory_gib": round(props.total_memory / 2**30, 2),
            "multiprocessors": props.multi_processor_count,
            "capability": f"{props.major}.{props.minor}",
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
        }
    return info


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("pneumo", "torch", "torchvision", "numpy", "pillow", "onnx", "onnxruntime"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    out["torch"] = torch.__version__  # with its build tag (+cpu, +cu130)
    out["pneumo_commit"] = git_commit()  # the code measured (-dirty when it had uncommitted changes)
    return out


def peak_matmul_gflops(device: torch.device, *, n: int, dtype: torch.dtype, repeats: int = 5) -> dict:
    """Best-of-``repeats`` GFLOP/s of an ``n x n`` matmul: an empirical stand-in for the machine's peak.

    Vendor peak figures are unreachable in practice and unknown for a shared VM; a large matmul is what BLAS/cuBLAS
    does best, so training throughput is reported as a fraction of it.
    """
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up: BLAS/cuBLAS handles, clocks
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return {
        "gflops": 2 * n**3 / best / 1e9,
        "n": n,
        "dtype": str(dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "method": f"best of {repeats} {n}x{n} matmuls (empirical peak, not a vendor figure)",
    }


def count_train_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one forward + backward pass of ``model`` on an input of ``input_shape`` (matmuls and convolutions).

    Runs the pass on ``model`` itself, on its device, in train mode: its gradients and batch-norm statistics change,
    so pass a throwaway model.
    """
    device = next(model.parameters()).device
    x = torch.zeros(input_shape, device=device)
    model.train()
    with FlopCounterMode(display=False, depth=1) as counter:
        model(x).float().sum().backward()
    return int(counter.get_total_flops())


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


# --- peak memory ------------------------------------------------------------------------------------------------


def _status_kib(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's resident-set high-water mark (Linux >= 4.0: ``echo 5 > /proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@dataclass
class MemoryReading:
    rss_before_mb: float | None = None
    peak_rss_mb: float | None = None
    peak_scope: str = ""  # "phase" when the high-water mark could be reset, else "process"
    cuda_max_allocated_mb: float | None = None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@contextmanager
def memory_probe(device: torch.device) -> Iterator[MemoryReading]:
    """Peak resident memory of the enclosed phase (and peak CUDA allocation on a GPU).

    Where the RSS high-water mark cannot be reset, the process-lifetime peak of ``resource.getrusage`` is reported
    and marked ``peak_scope="process"``.
    """
    reading = MemoryReading()
    phase = _reset_peak_rss()
    rss = _status_kib("VmRSS")
    reading.rss_before_mb = None if rss is None else rss / 1024
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
    try:
        yield reading
    finally:
        hwm = _status_kib("VmHWM") if phase else None
        if hwm is not None:
            reading.peak_rss_mb, reading.peak_scope = hwm / 1024, "phase"
        else:  # ru_maxrss is in KiB on Linux, in bytes on macOS
            reading.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / RU_MAXRSS_PER_MIB
            reading.peak_scope = "process"
        if device.type == "cuda":
            sync(device)
            reading.cuda_max_allocated_mb = torch.cuda.max_memory_allocated(device) / 2**20
