"""Inference figures: batch-1 latency (p50/p95), batch-32 throughput and peak memory for PyTorch eager and
ONNX Runtime, through pneumo's own backends and ONNX export, plus the largest output difference between the two.

The models have random weights with batch-norm statistics calibrated on the benchmark images (a few forward passes
in train mode), so activations and logits have realistic magnitudes for the difference check.
"""

from __future__ import annotations

import copy
import json
import logging
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import pneumo
from pneumo.bench.machine import memory_probe, percentile, sync
from pneumo.data.dataset import SplitData
from pneumo.data.preprocess import PreprocessContract, normalize
from pneumo.inference.backends import OnnxBackend, Outputs
from pneumo.inference.meta import ModelMeta
from pneumo.inference.predictor import Predictor
from pneumo.inference.torch_backend import TorchBackend
from pneumo.models import get_model
from pneumo.models.registry import preprocess_contract

CLASS_NAMES = ("NORMAL", "PNEUMONIA")


def bench_predictor(model_name: str, contract: PreprocessContract, calibration: torch.Tensor) -> Predictor:
    """A PyTorch :class:`Predictor` for a fresh model (no run folder needed), BN statistics calibrated."""
    torch.manual_seed(0)
    model = get_model(model_name, num_classes=len(CLASS_NAMES), in_chans=1, weights=None)
    model.train()
    with torch.no_grad():
        for chunk in calibration.split(16):
            model(chunk)
    model.eval()
    model.preprocess_contract = contract
    meta = ModelMeta(
        task="normal-pneumonia",
        class_names=CLASS_NAMES,
        contract=contract,
        model={"name": model_name, "num_outputs": len(CLASS_NAMES), "in_chans": 1, "kwargs": {}},
        pneumo_version=pneumo.__version__,
        model_id=f"bench-{model_name}-{contract.image_size}",
    )
    # Random weights and no validation split: the Predictor's "no validated threshold" warning is true but says
    # nothing about a benchmark, whose labels nobody reads.
    logger = logging.getLogger("pneumo.inference.predictor")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return Predictor(TorchBackend(model, meta.n_task, "cpu"), meta, Path(f"bench-{model_name}"))
    finally:
        logger.setLevel(level)


def batch_of(split: SplitData, n: int, contract: PreprocessContract) -> torch.Tensor:
    """``n`` normalised images of the split (repeated if it has fewer)."""
    images = split.as_tensor()
    idx = torch.arange(n) % images.shape[0]
    return normalize(images[idx], contract)


def time_calls(run: Callable[[torch.Tensor], Outputs], x: torch.Tensor, *, runs: int, warmup: int) -> list[float]:
    """Wall seconds of each of ``runs`` calls (outputs are numpy, so every call has finished when it returns)."""
    for _ in range(warmup):
        run(x)
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        run(x)
        out.append(time.perf_counter() - start)
    return out


def _measure_backend(
    name: str,
    device: torch.device,
    make: Callable[[], Callable[[torch.Tensor], Outputs]],
    x1: torch.Tensor,
    x32: torch.Tensor,
    *,
    latency_runs: int,
    throughput_runs: int,
) -> dict:
    with memory_probe(device) as mem:
        run = make()
        latency = time_calls(run, x1, runs=latency_runs, warmup=max(2, latency_runs // 10))
        batch = time_calls(run, x32, runs=throughput_runs, warmup=1)
        sync(device)
    return {
        "backend": name,
        "device": str(device),
        "latency_ms_p50": 1e3 * percentile(latency, 50),
        "latency_ms_p95": 1e3 * percentile(latency, 95),
        "latency_ms_mean": 1e3 * float(np.mean(latency)),
        "throughput_images_per_s": x32.shape[0] * len(batch) / sum(batch),
        "memory": mem.as_dict(),
    }


# A fresh interpreter imports pneumo, loads the ONNX file and predicts one image file, as `pneumo predict` does.
# "onnx-only" blocks torch, torchvision and scikit-learn (the ONNX path needs none of them); "onnx+torch" imports
# torch first: what every ONNX prediction cost while pneumo's loader still imported it.
_STARTUP_SCRIPT = """
import json, resource, sys, time
start = time.perf_counter()
if sys.argv[3] == "onnx-only":
    for name in ("torch", "torchvision", "sklearn"):
        sys.modules[name] = None
else:
    import torch
import pneumo
pneumo.load(sys.argv[1]).predict(sys.argv[2])
seconds = time.perf_counter() - start
try:  # VmHWM belongs to this program; ru_maxrss would keep the forking parent's peak across exec
    with open("/proc/self/status") as f:
        peak_kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
except (OSError, StopIteration):
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform == "darwin" else 1)
print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_kb / 1024}))
"""
STARTUP_VARIANTS = ("onnx-only", "onnx+torch")


def measure_startup(onnx_path: Path, image_path: Path, *, runs: int) -> list[dict]:
    """Seconds (median of ``runs`` fresh interpreters) and peak RSS from start to the first prediction, per variant;
    the variants alternate so that a change in the machine's load hits both alike."""
    samples: dict[str, list[dict]] = {v: [] for v in STARTUP_VARIANTS}
    for _ in range(runs):
        for variant in STARTUP_VARIANTS:
            args = [sys.executable, "-c", _STARTUP_SCRIPT, str(onnx_path), str(image_path), variant]
            proc = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"start-up run ({variant}) failed: {proc.stderr.strip()[-2000:]}")
            samples[variant].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return [
        {
            "variant": variant,
            "runs": runs,
            "seconds_median": statistics.median(s["seconds"] for s in got),
            "peak_rss_mb": max(s["peak_rss_mb"] for s in got),
        }
        for variant, got in samples.items()
    ]


def measure_inference(
    model_name: str,
    split: SplitData,
    *,
    workdir: Path,
    device: torch.device,
    latency_runs: int,
    throughput_runs: int,
    startup_runs: int = 3,
) -> dict:
    """PyTorch eager vs ONNX Runtime (both on CPU), and PyTorch on CUDA when ``device`` is a GPU; the start-up of
    an ONNX prediction with and without PyTorch loaded."""
    from pneumo.inference.onnx import export_onnx

    contract = preprocess_contract(model_name, image_size=split.images.image_size)
    x1, x32 = batch_of(split, 1, contract), batch_of(split, 32, contract)
    cpu = torch.device("cpu")
    holder: dict[str, Predictor] = {}

    def make_torch() -> Callable[[torch.Tensor], Outputs]:
        holder["torch"] = bench_predictor(model_name, contract, x32)
        return holder["torch"].run

    rows = [
        _measure_backend(
            "pytorch-eager", cpu, make_torch, x1, x32, latency_runs=latency_runs, throughput_runs=throughput_runs
        )
    ]
    predictor = holder["torch"]
    onnx_path = workdir / f"{model_name}-{contract.image_size}.onnx"
    start = time.perf_counter()
    export_onnx(predictor, onnx_path, verify=False)  # verified below, on real images and at full batch
    export_seconds = time.perf_counter() - start
    rows.append(
        _measure_backend(
            "onnxruntime",
            cpu,
            lambda: OnnxBackend(onnx_path, threads=torch.get_num_threads()),  # as many threads as PyTorch has
            x1,
            x32,
            latency_runs=latency_runs,
            throughput_runs=throughput_runs,
        )
    )

    image_path = workdir / f"startup-{contract.image_size}.png"
    Image.fromarray(split.as_tensor()[0, 0].numpy()).save(image_path)
    startup = measure_startup(onnx_path, image_path, runs=startup_runs)

    onnx = OnnxBackend(onnx_path, threads=torch.get_num_threads())  # configured as the timed session was
    noise = torch.from_numpy(np.random.default_rng(0).standard_normal(tuple(x32.shape), dtype=np.float32))
    diffs = {"logits": 0.0, "features": 0.0}
    for x in (x32, noise):
        ref, got = predictor.run(x), onnx(x)
        diffs["logits"] = max(diffs["logits"], float(np.abs(ref.raw_logits - got.raw_logits).max()))
        diffs["features"] = max(diffs["features"], float(np.abs(ref.features - got.features).max()))

    if device.type == "cuda":

        def make_cuda() -> Callable[[torch.Tensor], Outputs]:
            return TorchBackend(copy.deepcopy(predictor.backend.model), predictor.meta.n_task, str(device))

        rows.append(
            _measure_backend(
                "pytorch-eager", device, make_cuda, x1, x32, latency_runs=latency_runs, throughput_runs=throughput_runs
            )
        )

    eager, ort = rows[0], rows[1]
    return {
        "model": model_name,
        "size": contract.image_size,
        "export_seconds": export_seconds,
        "onnx_mb": onnx_path.stat().st_size / 2**20,
        "backends": rows,
        "max_abs_diff": diffs,
        "onnx_speedup_batch1": eager["latency_ms_p50"] / ort["latency_ms_p50"],
        "onnx_speedup_batch32": ort["throughput_images_per_s"] / eager["throughput_images_per_s"],
        "startup": startup,
    }


def run_inference_section(
    models: Sequence[str],
    split: SplitData,
    *,
    workdir: Path,
    device: torch.device,
    latency_runs: int,
    throughput_runs: int,
    startup_runs: int = 3,
    log: Callable[[str], None] = lambda _: None,
) -> dict:
    results = []
    for model_name in models:
        log(f"inference {model_name} {split.images.image_size}px")
        results.append(
            measure_inference(
                model_name,
                split,
                workdir=workdir,
                device=device,
                latency_runs=latency_runs,
                throughput_runs=throughput_runs,
                startup_runs=startup_runs,
            )
        )
    return {
        "results": results,
        "notes": [
            "both backends through pneumo.inference (TorchBackend, channels_last + inference_mode; OnnxBackend, "
            "onnxruntime CPUExecutionProvider, as many intra-op threads as PyTorch); latency per call includes the "
            "output copy",
            "peak RSS: high-water mark of the phase (model/session creation + all timed calls)",
        ],
    }
