"""Evaluation figures as PNG files.

Figures are built with ``matplotlib.figure.Figure`` and rendered by the Agg backend on ``savefig``: no pyplot
global state, no display needed, safe in servers and threads. Every function returns the written path.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from pneumo.evaluation.calibration import expected_calibration_error, reliability_curve
from pneumo.utils.atomic import atomic_open

DPI = 110
PathLike = str | os.PathLike[str]
_OP_MARKERS = ("o", "s", "D", "^", "v", "P")
_X_KEYS = ("epoch", "step", "iteration")


def _save(fig: Figure, path: PathLike) -> Path:
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=DPI, bbox_inches="tight")
    return Path(path)


def _prob_matrix(probs: Any) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    return np.stack([1.0 - p, p], axis=1) if p.ndim == 1 else p


def _default_ops(operating_points: Mapping[str, float] | None) -> Mapping[str, float]:
    return {"t = 0.50": 0.5} if operating_points is None else operating_points


def _one_vs_rest(
    y: np.ndarray, p: np.ndarray, class_names: Sequence[str]
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Yield (name, binary labels, scores) per class present with both outcomes; binary: positive class only."""
    classes = [1] if p.shape[1] == 2 else range(p.shape[1])
    for c in classes:
        y_c = (y == c).astype(int)
        if 0 < y_c.sum() < y_c.size:
            yield str(class_names[c]), y_c, p[:, c]


def _operating_point(y: np.ndarray, score: np.ndarray, t: float) -> tuple[float, float, float]:
    """(sensitivity, 1 - specificity, precision) of ``score >= t``; precision NaN without positive calls."""
    pred = score >= t
    sens = pred[y == 1].mean()
    fpr = pred[y == 0].mean()
    precision = y[pred].mean() if pred.any() else math.nan
    return float(sens), float(fpr), float(precision)


def plot_roc(
    y_true: Any,
    probs: Any,
    class_names: Sequence[str],
    path: PathLike,
    *,
    operating_points: Mapping[str, float] | None = None,
    title: str = "ROC curve",
) -> Path:
    """ROC curve of the positive class (binary) or one-vs-rest curves (K > 2).

    For binary tasks each ``operating_points`` entry (label -> threshold; default ``{"t = 0.50": 0.5}``) is
    marked, e.g. ``{"t = 0.50": 0.5, "validated t = 0.37 (Youden)": 0.37}``. Ignored for K > 2 (argmax).
    """
    y, p = np.asarray(y_true), _prob_matrix(probs)
    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    for name, y_c, score in _one_vs_rest(y, p, class_names):
        fpr, tpr, _ = roc_curve(y_c, score)
        label = f"{name} vs rest" if p.shape[1] > 2 else name
        ax.plot(fpr, tpr, lw=2, label=f"{label} (AUC = {roc_auc_score(y_c, score):.3f})")
        if p.shape[1] == 2:
            for marker, (op_label, t) in zip(_OP_MARKERS, _default_ops(operating_points).items(), strict=False):
                sens, fp_rate, _ = _operating_point(y_c, score, t)
                ax.plot(
                    fp_rate,
                    sens,
                    marker,
                    ms=9,
                    mec="black",
                    label=f"{op_label}: sens {sens:.2f}, spec {1 - fp_rate:.2f}",
                )
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    ax.set(
        xlim=(-0.01, 1.01),
        ylim=(-0.01, 1.01),
        xlabel="False positive rate (1 - specificity)",
        ylabel="True positive rate (sensitivity)",
        title=title,
        aspect="equal",
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_pr(
    y_true: Any,
    probs: Any,
    class_names: Sequence[str],
    path: PathLike,
    *,
    operating_points: Mapping[str, float] | None = None,
    title: str = "Precision-recall curve",
) -> Path:
    """Precision-recall curve(s) with average precision and the prevalence baseline; operating points as in
    :func:`plot_roc` (binary only)."""
    y, p = np.asarray(y_true), _prob_matrix(probs)
    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    for name, y_c, score in _one_vs_rest(y, p, class_names):
        precision, recall, _ = precision_recall_curve(y_c, score)
        label = f"{name} vs rest" if p.shape[1] > 2 else name
        (line,) = ax.plot(recall, precision, lw=2, label=f"{label} (AP = {average_precision_score(y_c, score):.3f})")
        ax.axhline(y_c.mean(), ls=":", lw=1, color=line.get_color(), label=f"{label} prevalence {y_c.mean():.2f}")
        if p.shape[1] == 2:
            for marker, (op_label, t) in zip(_OP_MARKERS, _default_ops(operating_points).items(), strict=False):
                sens, _, ppv = _operating_point(y_c, score, t)
                if not math.isnan(ppv):
                    ax.plot(
                        sens,
                        ppv,
                        marker,
                        ms=9,
                        mec="black",
                        label=f"{op_label}: recall {sens:.2f}, precision {ppv:.2f}",
                    )
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="Recall (sensitivity)", ylabel="Precision (PPV)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    return _save(fig, path)


def _annotate_matrix(ax: Axes, values: np.ndarray, texts: list[list[str]], vmax: float) -> None:
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            dark = not math.isnan(values[i, j]) and values[i, j] > vmax / 2
            ax.text(j, i, texts[i][j], ha="center", va="center", fontsize=10, color="white" if dark else "black")


def plot_confusion(
    cm: Sequence[Sequence[int]] | np.ndarray,
    class_names: Sequence[str],
    path: PathLike,
    *,
    title: str = "Confusion matrix",
) -> Path:
    """Counts (left) and row-normalised rates (right; each row = one true class, empty rows left blank)."""
    counts = np.asarray(cm, dtype=np.float64)
    k = len(class_names)
    if counts.shape != (k, k):
        raise ValueError(f"confusion matrix shape {counts.shape} does not match {k} classes")
    row_sums = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = np.where(row_sums > 0, counts / row_sums, np.nan)
    fig = Figure(figsize=(4.6 * 2 + 1.2, 4.4), layout="constrained")
    panels = (
        (counts, "Counts", [[f"{int(v)}" for v in row] for row in counts], max(counts.max(), 1.0)),
        (
            rates,
            "Row-normalised (recall per true class)",
            [["–" if math.isnan(v) else f"{v:.2f}" for v in row] for row in rates],
            1.0,
        ),
    )
    for index, (values, subtitle, texts, vmax) in enumerate(panels, start=1):
        ax = fig.add_subplot(1, 2, index)
        image = ax.imshow(np.nan_to_num(values), cmap="Blues", vmin=0, vmax=vmax)
        _annotate_matrix(ax, values, texts, vmax)
        ax.set(
            xticks=range(k),
            yticks=range(k),
            xticklabels=class_names,
            yticklabels=class_names,
            xlabel="Predicted class",
            ylabel="True class",
            title=subtitle,
        )
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.suptitle(title)
    return _save(fig, path)


def plot_reliability(
    y_true: Any,
    probs: Any,
    path: PathLike,
    *,
    probs_calibrated: Any | None = None,
    temperature: float | None = None,
    n_bins: int = 15,
    title: str = "Reliability diagram (top-label)",
) -> Path:
    """Top-label reliability curve before (and, if given, after) temperature scaling, with ECE in the legend
    and a confidence histogram underneath."""
    y = np.asarray(y_true)
    series = [("before calibration", probs)]
    if probs_calibrated is not None:
        after = "after temperature scaling" + (f" (T = {temperature:.2f})" if temperature is not None else "")
        series.append((after, probs_calibrated))
    fig = Figure(figsize=(5.5, 6.5))
    ax, hist = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    for label, p in series:
        curve = reliability_curve(y, p, n_bins)
        ece = expected_calibration_error(y, p, n_bins)
        ax.plot(curve.confidence, curve.accuracy, marker="o", lw=2, label=f"{label}: ECE = {ece:.3f}")
        hist.hist(_prob_matrix(p).max(axis=1), bins=curve.bin_edges, alpha=0.5, label=label)
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="Accuracy in bin", title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    hist.set(xlabel="Confidence (max class probability)", ylabel="Images")
    hist.grid(alpha=0.3)
    return _save(fig, path)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _panel_of(key: str, values: list[float]) -> str:
    lowered = key.lower()
    if "loss" in lowered:
        return "Loss"
    if lowered == "lr" or "learning_rate" in lowered or lowered.startswith("lr"):
        return "Learning rate"
    finite = [v for v in values if math.isfinite(v)]
    return "Metrics" if finite and all(0.0 <= v <= 1.0 for v in finite) else "Other"


def plot_training_curves(
    records: Sequence[Mapping[str, Any]], path: PathLike, *, title: str = "Training curves"
) -> Path:
    """Plot every numeric key of metrics.jsonl-style records against ``epoch`` (or ``step``, or the record
    index), grouped into panels: losses, [0, 1]-valued metrics, learning rate (log scale), other."""
    x_key = next((k for k in _X_KEYS if records and all(_is_number(r.get(k)) for r in records)), None)
    series: dict[str, tuple[list[float], list[float]]] = {}
    for index, record in enumerate(records):
        x = float(record[x_key]) if x_key else float(index)
        for key, value in record.items():
            if key not in _X_KEYS and _is_number(value):
                xs, ys = series.setdefault(key, ([], []))
                xs.append(x)
                ys.append(float(value))
    panels: dict[str, list[str]] = {}
    for key, (_, ys) in series.items():
        panels.setdefault(_panel_of(key, ys), []).append(key)
    order = [name for name in ("Loss", "Metrics", "Learning rate", "Other") if name in panels]

    fig = Figure(figsize=(6, 2.8 * max(len(order), 1)))
    if not order:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "No numeric records", ha="center", va="center")
        ax.set_axis_off()
    for index, name in enumerate(order, start=1):
        ax = fig.add_subplot(len(order), 1, index)
        for key in panels[name]:
            xs, ys = series[key]
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, ms=3, label=key)
        if name == "Learning rate" and all(v > 0 for k in panels[name] for v in series[k][1]):
            ax.set_yscale("log")
        ax.set(ylabel=name, xlabel=x_key or "record")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_confident_errors(
    images: Sequence[np.ndarray],
    true_names: Sequence[str],
    pred_names: Sequence[str],
    confidences: Sequence[float],
    path: PathLike,
    max_n: int = 16,
    *,
    title: str = "Most confident errors",
) -> Path:
    """Grid of (at most ``max_n``) misclassified images, most confident first, each titled with the true and
    predicted class and the confidence. Images are uint8 ``H x W`` (grey) or ``H x W x 3``."""
    n_total = len(images)
    if not n_total == len(true_names) == len(pred_names) == len(confidences):
        raise ValueError("images, true_names, pred_names and confidences must have equal lengths")
    order = np.argsort(-np.asarray(confidences, dtype=np.float64), kind="stable")[:max_n]
    cols = min(4, max(len(order), 1))
    rows = max(math.ceil(len(order) / cols), 1)
    fig = Figure(figsize=(2.6 * cols, 2.9 * rows + 0.4))
    if not len(order):
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "No errors to show", ha="center", va="center")
        ax.set_axis_off()
    for cell, i in enumerate(order, start=1):
        ax = fig.add_subplot(rows, cols, cell)
        image = np.asarray(images[i])
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255)
        ax.set_title(f"true: {true_names[i]}\npred: {pred_names[i]} ({confidences[i]:.2f})", fontsize=8)
        ax.set_axis_off()
    fig.suptitle(f"{title} ({len(order)} of {n_total})")
    return _save(fig, path)
