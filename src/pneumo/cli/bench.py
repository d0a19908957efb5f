"""``pneumo bench``: run the benchmark suite, print a markdown report, optionally write every figure as JSON."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from pneumo.cli.output import fail


def _csv(value: str | None, cast=str) -> tuple | None:
    if value is None:
        return None
    items = tuple(dict.fromkeys(cast(v.strip()) for v in value.split(",") if v.strip()))  # once each: a second
    if not items:  # build at a size already built would time a cache hit
        raise ValueError(f"expected a comma-separated list, got {value!r}")
    return items


def bench(
    device: str = typer.Option("auto", "--device", help="cpu | cuda | auto (cuda when available)."),
    quick: bool = typer.Option(False, "--quick", help="Smoke test: every section at the smallest size (CI)."),
    out: Path | None = typer.Option(
        None, "--out", help="Write every figure, the machine and versions as JSON (OUT.partial.json while running)."
    ),
    data: Path | None = typer.Option(
        None, "--data", help="Kaggle-layout dataset folder (its train images are used); default: synthetic images."
    ),
    models: str | None = typer.Option(
        None, "--models", help="Comma list, e.g. resnet18,densenet121 (training and inference)."
    ),
    sizes: str | None = typer.Option(
        None, "--sizes", help="Training image sizes, e.g. 128,224 (inference: the largest)."
    ),
    sections: str | None = typer.Option(None, "--sections", help="Comma list of data,training,inference."),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Timed training steps per measurement."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=2, help="Training batch (default per model)."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="torch threads (default: torch's choice)."),
    max_images: int | None = typer.Option(
        None, "--max-images", min=1, help="Use at most this many of --data's train images (default: all)."
    ),
    compile: bool | None = typer.Option(
        None, "--compile/--no-compile", help="torch.compile variants (default: on for CUDA, off for CPU)."
    ),
    startup_runs: int | None = typer.Option(
        None, "--startup-runs", min=1, help="Fresh interpreters per ONNX start-up variant (default 3; --quick: 1)."
    ),
) -> None:
    """Benchmark data loading, training and inference; every speed-up against a naive baseline in the same run."""
    from pneumo.bench import BenchSettings, run_benchmarks, save

    if max_images is not None and data is None:
        fail("--max-images applies to --data's images; the synthetic set has its own size")
    if out is not None and (out.is_dir() or not out.parent.is_dir() or not os.access(out.parent, os.W_OK)):
        fail(f"--out {out}: not a writable file path (the folder must exist)")  # checked before the measurements
    try:
        overrides = {
            k: v
            for k, v in {
                "device": device,
                "data": data,
                "models": _csv(models),
                "sizes": _csv(sizes, int),
                "sections": _csv(sections),
                "steps": steps,
                "batch_size": batch_size,
                "threads": threads,
                "max_images": max_images,
                "compile": compile,
                "startup_runs": startup_runs,
            }.items()
            if v is not None
        }
        if "models" in overrides:  # the inference section measures the same models, at the largest size
            overrides["inference_models"] = overrides["models"]
        if "sizes" in overrides:
            overrides["inference_size"] = max(overrides["sizes"])
        settings = BenchSettings.quick_settings(**overrides) if quick else BenchSettings(**overrides)
        # What is measured so far goes to OUT.partial.json, so an interrupted or time-capped run keeps it.
        partial = out.with_name(f"{out.stem}.partial.json") if out is not None else None
        results = run_benchmarks(settings, partial=partial)
    except ValueError as exc:
        fail(str(exc))
    typer.echo(results["markdown"])
    if out is not None:
        save(results, out)
        partial.unlink(missing_ok=True)
        typer.echo(f"wrote {out}")
