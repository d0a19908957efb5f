"""Paired differences between two runs evaluated on the same images (ablations: dummy class, GAN balancing)."""

from __future__ import annotations

import csv
import json
import math
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
    """``{path: {patient, true, probs, predicted}}`` from a ``predictions.csv``, plus ``sha256`` (of the image file)
    where the evaluation recorded it."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    classes = [k.removeprefix("p_") for k in rows[0] if k.startswith("p_")] if rows else []
    return {
        r["path"]: {
            "patient": r["patient_id"],
            "true": classes.index(r["true"]),
            "probs": [float(r[f"p_{c}"]) for c in classes],
            "predicted": classes.index(r["predicted"]),
            **({"sha256": r["sha256"]} if r.get("sha256") else {}),
        }
        for r in rows
    }


def _by_content(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The rows keyed by their image's SHA-256 (``<sha256>#<k>`` for the k-th byte-identical copy, by path)."""
    keyed: dict[str, dict[str, Any]] = {}
    seen: dict[str, int] = {}
    for path in sorted(rows):
        digest = rows[path]["sha256"]
        k = seen[digest] = seen.get(digest, -1) + 1
        keyed[f"{digest}#{k}"] = {**rows[path], "path": path}
    return keyed


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

    Both runs' ``predictions.csv`` (from ``evaluate_run``) must cover the same task and, where they record each
    image's SHA-256, the same images: rows are paired by content, whatever the files are called, and evaluations of
    different images (another dataset) are refused. Files without digests (older evaluations) pair by path, images
    present in both only. With ``images`` (paths as in ``predictions.csv``), only those (the matched subset of
    ``pneumo audit model``, say).
    """
    classes, baseline_classes = prediction_classes(candidate), prediction_classes(baseline)
    if classes != baseline_classes:  # another task: its columns would be misread
        raise ValueError(
            f"{candidate} and {baseline} are of different classes ({', '.join(classes)} vs "
            f"{', '.join(baseline_classes)}): a paired difference needs runs of one task"
        )
    a, b = read_predictions(candidate), read_predictions(baseline)
    if images is not None:
        listed = set(images)
        a, b = ({p: r for p, r in rows.items() if p in listed} for rows in (a, b))
    by_content = bool(a and b) and all("sha256" in r for rows in (a, b) for r in rows.values())
    if by_content:
        a, b = _by_content(a), _by_content(b)
        if set(a) != set(b):
            raise ValueError(
                f"{candidate} and {baseline} were evaluated on different images ({len(a)} and {len(b)}, "
                f"{len(set(a) & set(b))} identical): a paired difference needs evaluations of the same dataset"
            )
    shared = sorted(set(a) & set(b))
    if not shared:
        raise ValueError(f"{candidate} and {baseline} share no image" + (" of the list" if images is not None else ""))
    if disagree := [a[p].get("path", p) for p in shared if a[p]["true"] != b[p]["true"]]:
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
    classes_present = len(np.unique(y))
    return {
        "n_images": len(shared),
        "n_classes": k,
        "n_classes_present": classes_present,
        "paired_by": "sha256" if by_content else "path",
        **{name: ci.to_dict() for name, ci in cis.items()},
    }


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
        _check_same_dataset(run_eval, base_eval)
        diff = paired_difference(
            run_eval / "predictions.csv", base_eval / "predictions.csv", n_boot=n_boot, images=images
        )
        out.append({"run": run.name, "baseline": baseline.name, **diff})
    return out


def _check_same_dataset(run_eval: Path, base_eval: Path) -> None:
    """Refuse two evaluations that do not say they are of the same images: different image digests, or (for
    evaluations that predate the digests) different dataset folders."""
    from pneumo.evaluation.runs_table import describe_dataset
    from pneumo.evaluation.writers import METRICS_FILE

    identity = []
    for eval_dir in (run_eval, base_eval):
        try:
            dataset = json.loads((eval_dir / METRICS_FILE).read_text()).get("dataset") or {}
        except (OSError, ValueError):
            dataset = {}
        identity.append(dataset)
    (a, b), where = identity, f"{run_eval} and {base_eval}"
    if a.get("images_sha256") and b.get("images_sha256"):
        if a["images_sha256"] != b["images_sha256"]:
            raise ValueError(
                f"{where} evaluated different datasets ({describe_dataset(a)} vs {describe_dataset(b)}): a paired "
                "difference needs evaluations of the same images"
            )
    elif a.get("source") != b.get("source"):
        raise ValueError(
            f"{where} evaluated {a.get('source', 'an unrecorded dataset')} and {b.get('source', 'an unrecorded one')},"
            " and one predates image digests: evaluate both again (`pneumo evaluate RUN`) to pair them by content"
        )


def paired_text(diff: dict[str, Any]) -> str:
    """One line: ``run - baseline (paired): ROC AUC +0.002 [-0.003, +0.008], accuracy ... (N images)``; a difference
    that is undefined (an AUC on images of one class) says why instead of printing NaN."""

    def ci(name: str) -> str:
        d = diff[name]
        if _undefined(d["point"]):
            if name == "delta_roc_auc" and diff.get("n_classes_present", 0) < diff.get("n_classes", 2):
                return f"undefined (the {diff['n_images']} images do not hold every class)"
            return "undefined"
        if _undefined(d["low"]) or _undefined(d["high"]):
            return f"{d['point']:+.3f} (no interval: undefined in the resamples)"
        return f"{d['point']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"

    return (
        f"{diff['run']} - {diff['baseline']} (paired): ROC AUC {ci('delta_roc_auc')}, accuracy "
        f"{ci('delta_accuracy')} ({diff['n_images']} images)"
    )


def _undefined(value: float | None) -> bool:
    return value is None or math.isnan(value)
