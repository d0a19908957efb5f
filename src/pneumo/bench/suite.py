"""``run_benchmarks(settings)``: the whole suite (data, training, inference, targets) in one process."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import torch

from pneumo.bench.data import (
    KAGGLE_TRAIN_IMAGES,
    BenchData,
    build_cached_split,
    image_folder_data,
    make_fullres_copies,
    run_data_section,
    synthetic_image_folder,
    train_folder,
)
from pneumo.bench.inference import run_inference_section
from pneumo.bench.machine import machine_info, peak_matmul_gflops, versions
from pneumo.bench.report import evaluate_targets, render_markdown, write_results
from pneumo.bench.train import run_training_section
from pneumo.data.dataset import SplitData
from pneumo.data.preprocess import PreprocessContract
from pneumo.models import check_input_size, get_model, list_models
from pneumo.models.registry import get_model_spec
from pneumo.utils.device import resolve_device

SECTIONS = ("data", "training", "inference")
SCHEMA = "pneumo-bench/1"
GPU_BATCH = {"cnn": 256, "resnet18": 256, "resnet50": 128, "densenet121": 128}


@dataclass
class BenchSettings:
    """What to measure and how much; :meth:`quick` gives the smoke-test sizes."""

    device: str = "auto"  # auto | cpu | cuda
    quick: bool = False
    data: Path | None = None  # Kaggle-layout folder; None: synthetic images
    sections: tuple[str, ...] = SECTIONS
    models: tuple[str, ...] = ("cnn", "resnet18", "densenet121")
    sizes: tuple[int, ...] = (128, 224)
    inference_models: tuple[str, ...] = ("cnn", "resnet18", "densenet121")
    inference_size: int = 224
    steps: int = 20
    warmup: int = 3
    batch_size: int | None = None  # None: family default on CPU, GPU_BATCH on CUDA
    threads: int | None = None  # None: torch's default
    compile: bool | None = None  # None: on for CUDA, off for CPU
    max_images: int | None = None  # of --data's train folder; None: all
    synthetic_images: int = 512
    synthetic_shape: tuple[int, int] = (256, 320)  # height, width (aspect of the Kaggle originals)
    fullres_images: int = 48
    fullres_size: tuple[int, int] = (2000, 1600)  # width, height
    loader_batches: int = 20
    loader_batch_size: int = 32
    cache_workers: int = 0
    latency_runs: int = 100
    throughput_runs: int = 10
    startup_runs: int = 3  # fresh interpreters per ONNX start-up variant
    peak_matmul_n: int | None = None  # None: 2048 on CPU, 8192 on CUDA
    epoch_images: int | None = None  # None: --data's train folder, else the Kaggle train split

    @classmethod
    def quick_settings(cls, **overrides) -> BenchSettings:
        """Every section at the smallest size: a smoke test (CI), not a measurement."""
        base = cls(
            quick=True,
            models=("cnn", "resnet18"),
            sizes=(32,),
            inference_models=("cnn",),
            inference_size=32,
            steps=2,
            warmup=1,
            batch_size=8,
            max_images=16,
            synthetic_images=16,
            synthetic_shape=(64, 80),
            fullres_images=4,
            fullres_size=(800, 640),
            loader_batches=3,
            loader_batch_size=8,
            latency_runs=10,
            throughput_runs=2,
            startup_runs=1,
            peak_matmul_n=256,
        )
        return replace(base, **overrides)

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


def configure_cuda() -> dict:
    """The GPU settings the device-resident path assumes: cuDNN autotuning and TF32 for float32 matmuls.

    Returns the previous values, for :func:`restore_cuda`.
    """
    before = {
        "cudnn.benchmark": torch.backends.cudnn.benchmark,
        "matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
    }
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return before


def restore_cuda(before: dict) -> None:
    torch.backends.cudnn.benchmark = before["cudnn.benchmark"]
    torch.backends.cuda.matmul.allow_tf32 = before["matmul.allow_tf32"]
    torch.backends.cudnn.allow_tf32 = before["cudnn.allow_tf32"]


def _reference(models: tuple[str, ...], sizes: tuple[int, ...]) -> tuple[str, int]:
    model = "resnet18" if "resnet18" in models else models[0]
    return model, 128 if 128 in sizes else sizes[0]


def _batch_sizes(settings: BenchSettings, models: tuple[str, ...], device: torch.device) -> dict[str, int]:
    if settings.batch_size:
        return {m: settings.batch_size for m in models}
    if device.type == "cuda":
        return {m: GPU_BATCH.get(m, 128) for m in models}
    return {m: get_model_spec(m).batch_size for m in models}


def _prepare_data(settings: BenchSettings, workdir: Path) -> BenchData:
    if settings.data is not None:
        root = train_folder(settings.data)
        return image_folder_data(root, max_images=settings.max_images, source=str(root))
    height, width = settings.synthetic_shape
    root = synthetic_image_folder(workdir / "synthetic", settings.synthetic_images, height=height, width=width)
    return image_folder_data(root, source=f"{settings.synthetic_images} SYNTHETIC {width}x{height} JPEGs")


def run_benchmarks(
    settings: BenchSettings, *, log: Callable[[str], None] | None = None, partial: Path | None = None
) -> dict:
    """Run the chosen sections and return every figure (also rendered as markdown under ``"markdown"``).

    ``partial``: a JSON file rewritten after every section and every training measurement (``"partial": true``), so
    a run that is interrupted or time-capped keeps what it measured."""
    clock = time.perf_counter()
    log = log or (lambda msg: print(f"[{time.perf_counter() - clock:6.1f} s] {msg}", file=sys.stderr, flush=True))
    unknown = set(settings.sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown section(s) {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    device = resolve_device(settings.device)
    unknown_models = set(settings.models) | set(settings.inference_models)
    unknown_models -= set(list_models())
    if unknown_models:
        raise ValueError(f"unknown model(s) {sorted(unknown_models)}; available: {', '.join(list_models())}")
    smallest: dict[str, int] = {}  # the smallest size each model is asked for: the one that can be too small
    if "training" in settings.sections:
        smallest |= dict.fromkeys(settings.models, min(settings.sizes))
    if "inference" in settings.sections:
        for name in settings.inference_models:
            smallest[name] = min(smallest.get(name, settings.inference_size), settings.inference_size)
    for name, size in smallest.items():  # refused before anything is measured
        with torch.device("meta"):
            model = get_model(name, num_classes=2)
        check_input_size(model, size)
    threads_before = torch.get_num_threads()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    compile = settings.compile if settings.compile is not None else device.type == "cuda"
    started = time.perf_counter()
    results: dict = {
        "schema": SCHEMA,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": str(device),
        "quick": settings.quick,
        "settings": settings.to_dict() | {"compile_resolved": compile},
        "machine": machine_info(device),
        "versions": versions(),
        "cuda_settings": None,
    }
    cuda_before = None
    if device.type == "cuda":
        cuda_before = configure_cuda()
        results["cuda_settings"] = {"cudnn.benchmark": True, "tf32": True}
    try:
        with tempfile.TemporaryDirectory(prefix="pneumo-bench-") as tmp:
            workdir = Path(tmp)
            results.update(_run_sections(settings, device, compile, workdir, log, _saver(partial, results)))
    finally:
        torch.set_num_threads(threads_before)
        if cuda_before is not None:
            restore_cuda(cuda_before)
    results["duration_seconds"] = time.perf_counter() - started
    results["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    results["targets"] = evaluate_targets(results)
    results["markdown"] = render_markdown(results)
    return results


def _saver(path: Path | None, header: dict) -> Callable[[dict], None]:
    """A function that writes ``header`` plus the sections measured so far to ``path`` (nothing without a path)."""

    def save_partial(sections: dict) -> None:
        if path is not None:
            write_results(path, {**header, **sections, "partial": True})

    return save_partial


def _run_sections(
    settings: BenchSettings,
    device: torch.device,
    compile: bool,
    workdir: Path,
    log: Callable[[str], None],
    save_partial: Callable[[dict], None],
) -> dict:
    out: dict = {name: {"skipped": True} for name in SECTIONS}
    rows_so_far: list[dict] = []

    def on_row(row: dict) -> None:
        rows_so_far.append(row)
        save_partial({**out, "training": {"results": rows_so_far}})

    log("preparing images")
    data = _prepare_data(settings, workdir)
    fullres = make_fullres_copies(data, workdir / "fullres", n=settings.fullres_images, size=settings.fullres_size)
    epoch_images = settings.epoch_images or (data.available if settings.data is not None else KAGGLE_TRAIN_IMAGES)
    n = settings.peak_matmul_n or (8192 if device.type == "cuda" else 2048)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    log(f"matmul peak ({n}x{n} {dtype})")
    out["peak"] = peak_matmul_gflops(device, n=n, dtype=dtype)

    splits: dict[int, SplitData] = {}

    def split_at(size: int) -> SplitData:
        if size not in splits:
            splits[size], _ = build_cached_split(data, PreprocessContract(image_size=size), workdir / "cache-extra")
        return splits[size]

    if "data" in settings.sections:
        log("data: cache build and loaders")
        out["data"] = run_data_section(
            data,
            fullres,
            sizes=settings.sizes,
            device=device,
            workdir=workdir,
            batch_size=settings.loader_batch_size,
            n_batches=settings.loader_batches,
            cache_workers=settings.cache_workers,
            splits=splits,
        )
        save_partial(out)
    if "training" in settings.sections:
        for size in settings.sizes:
            split_at(size)
        out["training"] = run_training_section(
            models=settings.models,
            sizes=settings.sizes,
            splits=splits,
            data=data,
            fullres=fullres,
            device=device,
            batch_sizes=_batch_sizes(settings, settings.models, device),
            warmup=settings.warmup,
            steps=settings.steps,
            compile=compile,
            epoch_images=epoch_images,
            peak_gflops=out["peak"]["gflops"],
            reference=_reference(settings.models, settings.sizes),
            log=log,
            on_row=on_row,
        )
        save_partial(out)
    if "inference" in settings.sections:
        out["inference"] = run_inference_section(
            settings.inference_models,
            split_at(settings.inference_size),
            workdir=workdir,
            device=device,
            latency_runs=settings.latency_runs,
            throughput_runs=settings.throughput_runs,
            startup_runs=settings.startup_runs,
            log=log,
        )
    return out


def save(results: dict, path: str | Path) -> None:
    write_results(path, results)


__all__ = ["SECTIONS", "BenchSettings", "configure_cuda", "resolve_device", "run_benchmarks", "save"]
