"""``pneumo bench``: measured data, training and inference figures, each speed-up side by side with its baseline.

Run ``pneumo bench`` (full), ``pneumo bench --quick`` (smoke test) or ``python benchmarks/run.py``; see
BENCHMARKS.md for what every figure means.
"""

from pneumo.bench.suite import SECTIONS, BenchSettings, configure_cuda, resolve_device, run_benchmarks, save
from pneumo.bench.train import EpochStats, device_resident_epoch, resident_tensors

__all__ = [
    "SECTIONS",
    "BenchSettings",
    "EpochStats",
    "configure_cuda",
    "device_resident_epoch",
    "resident_tensors",
    "resolve_device",
    "run_benchmarks",
    "save",
]
