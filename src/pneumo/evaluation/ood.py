"""The out-of-distribution side of an evaluation: how many evaluated images the run's check flags, and the metrics
on the images that pass beside those on all (an external set: is what passes still classified well? the official
test split: does the check buy its flag rate by rejecting the hard cases?)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pneumo.data.dataset import SplitData
from pneumo.data.preprocess import PreprocessContract
from pneumo.runs.context import score_images, split_images
from pneumo.runs.format import read_run_meta, weights_digest

ScoreFn = Callable[..., tuple[list[Any], np.ndarray]]


def ood_verdicts(run_dir: Path, model: Any, split: SplitData, batch_size: int = 64) -> tuple[dict[str, Any], Any]:
    """``(summary, in_distribution mask or None)`` of the run's stored check on ``split``."""
    meta = read_run_meta(run_dir)
    params = meta.get("ood")
    if not params:
        return {"available": False, "reason": f"no OOD detector fitted: `pneumo audit ood-fit {run_dir}`"}, None
    fitted_on = params.get("weights_sha256")
    if fitted_on and fitted_on != weights_digest(run_dir):
        reason = f"the OOD detector was fitted on other weights: `pneumo audit ood-fit {run_dir}` refits it"
        return {"available": False, "reason": reason}, None
    device = next(model.parameters()).device
    contract = PreprocessContract.from_dict(meta["preprocess"])
    scores, inside = score_images(params, model, split_images(split), contract, batch_size=batch_size, device=device)
    n, n_flagged = len(inside), int((~inside).sum())
    return {
        "available": True,
        "method": params.get("method"),
        "threshold": float(params["threshold"]),
        "val_pass_rate": params.get("val_pass_rate"),
        "n": n,
        "n_flagged": n_flagged,
        "n_passing": n - n_flagged,
        "flagged_rate": n_flagged / n if n else float("nan"),
        "median_score": float(np.median(scores)) if n else float("nan"),
    }, inside


def passing_metrics(
    summary: dict[str, Any],
    inside: np.ndarray | None,
    y: np.ndarray,
    probs_raw: np.ndarray,
    probs_cal: np.ndarray,
    groups: Sequence[str],
    class_names: Sequence[str],
    op: Mapping[str, Any],
    score_fn: ScoreFn,
    *,
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """``summary`` plus ``metrics_passing`` (the operating points scored on the passing images only), or a
    ``passing_note`` saying why there are none (too few images, one class only)."""
    if inside is None:
        return summary
    keep = np.flatnonzero(inside)
    classes = np.unique(y[keep])
    if len(keep) < 2 or len(classes) < len(class_names):
        return {**summary, "metrics_passing": None, "passing_note": "the passing images do not hold every class"}
    sections, _ = score_fn(
        y[keep], probs_raw[keep], probs_cal[keep], [groups[i] for i in keep], class_names, op, n_boot=n_boot, seed=seed
    )
    return {**summary, "metrics_passing": {s.key: s.to_dict() for s in sections}}


def ood_text(result: Mapping[str, Any]) -> str | None:
    """One paragraph for the report, the CLI and the model card: flag rate, and AUC on all vs on the passing images."""
    ood = result.get("ood") or {}
    if not ood.get("available"):
        return ood.get("reason")
    text = (
        f"{ood['n_flagged']} of {ood['n']} images ({100 * ood['flagged_rate']:.1f} %) flagged as unlike the training "
        f"images ({ood['method']}, threshold {ood['threshold']:.4g}); {ood['n_passing']} pass."
    )
    primary = result.get("primary")
    passing = (ood.get("metrics_passing") or {}).get(primary)
    every = (result.get("metrics") or {}).get(primary)
    if passing is None or every is None:
        return text + (f" No metrics on the passing images: {ood['passing_note']}." if ood.get("passing_note") else "")
    parts = []
    for name in ("roc_auc", "macro_auc", "sensitivity", "specificity", "accuracy", "macro_f1"):
        a, p = every["ci"].get(name), passing["ci"].get(name)
        if a is None or p is None:
            continue
        parts.append(f"{name} {_ci(p)} on the passing images vs {_ci(a)} on all")
    return text + (" " + "; ".join(parts) + "." if parts else "")


def _ci(ci: Mapping[str, Any]) -> str:
    def f(v: Any) -> str:
        return "n/a" if v is None or v != v else f"{v:.3f}"

    return f"{f(ci.get('point'))} [{f(ci.get('low'))}, {f(ci.get('high'))}]"
