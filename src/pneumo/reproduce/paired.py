"""Paired differences between two runs evaluated on the same images (ablations: dummy class, GAN balancing)."""

from __future__ import annotations

import csv
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from pneumo.evaluation import bootstrap_ci


def prediction_classes(path: Path) -> list[str]:
    """The class names of a ``predictions.csv`` (its ``p_<class>`` columns), in order."""
    with path.open(newline="") as f:
        header = next(csv.reader(f), [])
    return [k.removeprefix("p_") for k in header if k.startswith("p_")]


def read_predictions(path: Path) -> dict[str, dict[str, Any]]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    classes = [k.removeprefix("p_") for k in rows[0] if k.startswith("p_")] if rows else []
    return {
        r["path"]: {
            "patient": r["patient_id"],
            "true": classes.index(r["true"]),
            "probs": [float(r[f"p_{c}"]) for c in classes],
            "predicted": classes.index(r["predicted"]),
        }
        for r in rows
    }


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    if len(np.unique(y)) < p.shape[1]:
        return float("nan")
    if p.shape[1] == 2:
        return float(roc_auc_score(y, p[:, 1]))
    return float(roc_auc_score(y, p, multi_class="ovr", average="macro"))


def read_image_list(path: Path) -> set[str]:
    """The ``path`` column of a CSV (as ``predictions.csv`` and an audit's ``matched-images.csv`` write it)."""
    with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: a list saved by a spreadsheet starts with a BOM
        reader = csv.DictReader(f)
        if "path" not in (reader.fieldnames or []):
            raise ValueError(f"{path}: no 'path' column")
        try:
            return {row["path"] for row in reader}
        except csv.Error as exc:
            raise ValueError(f"{path}: not a readable CSV ({exc})") from exc


def paired_difference(
    candidate: Path, baseline: Path, *, n_boot: int = 1000, seed: int = 0, images: Collection[str] | None = None
) -> dict[str, Any]:
    """``candidate - baseline`` for ROC AUC and accuracy with 95 % CIs, resampling patients of the shared images.

    Both runs' ``predictions.csv`` (from ``evaluate_run``) must cover the same task; only images present in both
    are compared, so the difference is paired; with ``images`` (paths as in ``predictions.csv``), only those (the
    matched subset of ``pneumo audit model``, say).
    """
    classes, baseline_classes = prediction_classes(candidate), prediction_classes(baseline)
    if classes != baseline_classes:  # another task: its columns would be misread
        raise ValueError(
            f"{candidate} and {baseline} are of different classes ({', '.join(classes)} vs "
            f"{', '.join(baseline_classes)}): a paired difference needs runs of one task"
        )
    a, b = read_predictions(candidate), read_predictions(baseline)
    shared = sorted(set(a) & set(b) & (set(images) if images is not None else set(a)))
    if not shared:
        raise ValueError(f"{candidate} and {baseline} share no image" + (" of the list" if images is not None else ""))
    if disagree := [p for p in shared if a[p]["true"] != b[p]["true"]]:
        raise ValueError(
            f"{candidate} and {baseline} label {len(disagree)} shared image(s) differently, e.g. {disagree[0]}"
        )
    k = len(a[shared[0]]["probs"])
    y = np.array([a[p]["true"] for p in shared])
    # one array carries both runs: probabilities of A, of B, then the two decisions
    packed = np.array(
        [[*a[p]["probs"], *b[p]["probs"], a[p]["predicted"], b[p]["predicted"]] for p in shared], dtype=np.float64
    )

    def metrics(yy: np.ndarray, pp: np.ndarray) -> dict[str, float]:
        pa, pb = pp[:, :k], pp[:, k : 2 * k]
        acc_a, acc_b = float(np.mean(pp[:, 2 * k] == yy)), float(np.mean(pp[:, 2 * k + 1] == yy))
        return {"delta_roc_auc": _auc(yy, pa) - _auc(yy, pb), "delta_accuracy": acc_a - acc_b}

    groups = [a[p]["patient"] for p in shared]
    cis = bootstrap_ci(y, packed, groups, metrics, n_boot=n_boot, seed=seed)
    return {"n_images": len(shared), **{name: ci.to_dict() for name, ci in cis.items()}}


def paired_against(
    runs: Sequence[Path],
    baseline: Path,
    *,
    split: str = "test",
    dataset: str | None = None,
    images: Collection[str] | None = None,
    n_boot: int = 1000,
) -> list[dict[str, Any]]:
    """:func:`paired_difference` of each run (but ``baseline`` itself) from ``baseline``, on their evaluations of
    ``split`` (``pneumo compare --paired-with``); one dict per evaluated run, with ``run`` (a run not evaluated on
    ``split`` is left out: the table names it)."""
    from pneumo.evaluation.runs_table import find_eval

    base_eval = find_eval(baseline, split, dataset)
    if base_eval is None:
        raise FileNotFoundError(f"{baseline} has no evaluation of {split}: run `pneumo evaluate {baseline}` first")
    out = []
    for run in runs:
        if run.resolve() == baseline.resolve():
            continue
        run_eval = find_eval(run, split, dataset)
        if run_eval is None:
            continue
        diff = paired_difference(
            run_eval / "predictions.csv", base_eval / "predictions.csv", n_boot=n_boot, images=images
        )
        out.append({"run": run.name, "baseline": baseline.name, **diff})
    return out


def paired_text(diff: dict[str, Any]) -> str:
    """One line: ``run - baseline (paired): ROC AUC +0.002 [-0.003, +0.008], accuracy ... (N images)``."""

    def ci(name: str) -> str:
        d = diff[name]
        return f"{d['point']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"

    return (
        f"{diff['run']} - {diff['baseline']} (paired): ROC AUC {ci('delta_roc_auc')}, accuracy "
        f"{ci('delta_accuracy')} ({diff['n_images']} images)"
    )
