"""``pneumo demo``: the whole walk on SYNTHETIC data in about 60 s of CPU time (measured with one thread).

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


DEMO_EPOCHS = 12
# The synthetic generator's version: data written by an earlier one (fainter findings) is not reused.
DEMO_DATA = "data-v2"


def run_demo(
    out: Path | None = None, *, n_images: int = 1200, epochs: int = DEMO_EPOCHS, seed: int = 0
) -> dict[str, Any]:
    """Synthesise data (once), train a CNN, evaluate it; returns the evaluation summary with ``run_dir``."""
    import datetime as dt

    from pneumo.data.synth import generate_dataset
    from pneumo.evaluation.run import evaluate_run
    from pneumo.training import build_config, train
    from pneumo.trust.ood import fit_after_training, report_sections

    home = demo_home()
    data = home / DEMO_DATA / "chest_xray"
    if not (data / "MANIFEST.csv").exists():
        data = generate_dataset(home / DEMO_DATA, n=n_images, seed=seed)
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


def trivial_baseline(result: dict[str, Any]) -> tuple[str, float]:
    """The class a model that always answers the majority class would give, and its accuracy on the evaluated split
    (its ROC AUC is 0.5): the bar a trained model's numbers must clear to mean anything."""
    counts: dict[str, int] = result["class_counts"]
    majority = max(counts, key=counts.__getitem__)
    return majority, counts[majority] / sum(counts.values())
