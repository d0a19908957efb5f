"""``pneumo demo``: the whole walk on SYNTHETIC data in about a minute on a laptop CPU.

Generates the synthetic radiograph-like dataset (not X-rays: for demos and tests only), trains the from-scratch CNN
on normal vs pneumonia, evaluates it on the synthetic test split and leaves a run folder with metrics, plots, an HTML
report and a model card.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def demo_home() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "pneumo" / "demo"


def run_demo(out: Path | None = None, *, n_images: int = 1200, epochs: int = 8, seed: int = 0) -> dict[str, Any]:
    """Synthesise data (once), train a CNN, evaluate it; returns the evaluation summary with ``run_dir``."""
    import datetime as dt

    from pneumo.data.synth import generate_dataset
    from pneumo.evaluation.run import evaluate_run
    from pneumo.training import build_config, train
    from pneumo.trust.ood import fit_after_training, report_sections

    home = demo_home()
    data = home / "data" / "chest_xray"
    if not (data / "MANIFEST.csv").exists():
        data = generate_dataset(home / "data", n=n_images, seed=seed)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_out = out or home / "runs" / f"demo-cnn-normal-pneumonia-{stamp}"
    cfg = build_config(
        flags={
            "data": str(data),
            "task": "normal-pneumonia",
            "model": "cnn",
            "image_size": 64,
            "epochs": epochs,
            "batch_size": 32,
            "seed": seed,
            "out": str(run_out),
        }
    )
    run_dir = train(cfg, command=["pneumo", "demo"], after=fit_after_training)
    result = evaluate_run(run_dir, split="test", n_boot=500, report_hooks=(report_sections,))
    return {**result, "run_dir": str(run_dir), "data": str(data)}
