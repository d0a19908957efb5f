"""Everything an evaluation writes or renders: the scored operating points (:class:`Scored`) and the metric
names and constants shared with the protocol, ``predictions.csv``, the PNG plots, the report sections and caveats,
``metrics.json`` reading and JSON-safe values, the run's ``MODEL_CARD.md`` and the CLI's text summary. It computes
no metric and chooses nothing: :mod:`pneumo.evaluation.run` decides, this module presents.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pneumo.data.cache import CachedImages
from pneumo.data.dataset import SplitData
from pneumo.data.records import Record, follows_kermany_naming, is_synthetic_dataset
from pneumo.data.tasks import Task
from pneumo.evaluation.bootstrap import CI
from pneumo.evaluation.compare import ci_rows, compare_table, format_ci
from pneumo.evaluation.model_card import DataKind, write_model_card
from pneumo.evaluation.ood import ood_text
from pneumo.evaluation.report import to_plain
from pneumo.evaluation.source import EVAL_PREFIX, eval_dir_name, run_records
from pneumo.runs.evals import evaluation_is_current
from pneumo.runs.format import CONFIG_FILE, read_run_meta
from pneumo.runs.runinfo import read_metrics
from pneumo.utils.atomic import atomic_open
from pneumo.utils.yamlfile import load_yaml

UNREADABLE_FILE = "unreadable.csv"
METRICS_FILE = "metrics.json"
ECE_BINS = 15
MAX_ERROR_IMAGES = 16
BINARY_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "sensitivity",
    "specificity",
    "ppv",
    "npv",
    "f1",
    "roc_auc",
    "pr_auc",
    "sensitivity_at_specificity_90",
    "specificity_at_sensitivity_90",
    "brier",
    "log_loss",
)
THRESHOLD_METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "ppv", "npv", "f1")
MULTICLASS_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "log_loss")

log = logging.getLogger(__name__)


# --- scored operating points (made by pneumo.evaluation.run.score) -------------------------------------------------


@dataclass(frozen=True)
class Scored:
    """One operating point's metrics: full point values (incl. confusion matrix) and bootstrap CIs."""

    key: str
    label: str
    threshold: float | None
    probabilities: str
    point: dict[str, Any]
    cis: dict[str, CI]

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "threshold": self.threshold,
            "probabilities": self.probabilities,
            "point": to_plain(self.point),
            "ci": {name: ci.to_dict() for name, ci in self.cis.items()},
        }


# --- outputs -------------------------------------------------------------------------------------------------------


def json_safe(value: Any) -> Any:
    """NaN/inf -> null so that metrics.json is standard JSON (readers turn null back into NaN)."""
    plain = to_plain(value)
    if isinstance(plain, dict):
        return {k: json_safe(v) for k, v in plain.items()}
    if isinstance(plain, list):
        return [json_safe(v) for v in plain]
    if isinstance(plain, float) and not math.isfinite(plain):
        return None
    return plain


def relative_path(path: Path, root: Path) -> str:
    """A file's path as ``predictions.csv`` names it: relative to the dataset root (absolute when outside it)."""
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def write_predictions(
    path: Path,
    split: SplitData,
    root: Path,
    class_names: Sequence[str],
    logits: np.ndarray,
    probs: np.ndarray,
    predicted: np.ndarray,
    image_sha256: Sequence[str],
) -> None:
    """One row per image: path, patient, true class, task logits, temperature-scaled probabilities, decision, and
    the SHA-256 of the image file (``pneumo compare --paired-with`` pairs two evaluations' images by it)."""
    names = list(class_names)
    with atomic_open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "path", "patient_id", "true", *(f"logit_{c}" for c in names), *(f"p_{c}" for c in names),
                "predicted", "sha256",
            ]
        )  # fmt: skip
        for i, record in enumerate(split.records):
            writer.writerow(
                [
                    relative_path(record.path, root),
                    record.patient_id,
                    names[int(split.targets[i])],
                    # repr: the shortest text that reads back as the same float; paired differences and
                    # re-analyses recompute metrics from this file and must find the reported values
                    *(repr(float(v)) for v in logits[i]),
                    *(repr(float(v)) for v in probs[i]),
                    names[int(predicted[i])],
                    image_sha256[i],
                ]
            )


def images_digest(image_sha256: Sequence[str]) -> str:
    """One SHA-256 for the evaluated images' contents, whatever their names and order: the dataset's identity."""
    return hashlib.sha256("\n".join(sorted(image_sha256)).encode()).hexdigest()


def write_unreadable(path: Path, failures: Sequence[tuple[Path, str]], root: Path) -> Path | None:
    """The images skipped as unreadable, one row each (path, reason); none: no file (a stale one is removed)."""
    if not failures:
        path.unlink(missing_ok=True)
        return None
    with atomic_open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "reason"])
        writer.writerows([relative_path(Path(p), root), reason] for p, reason in failures)
    return path


def write_plots(
    eval_dir: Path,
    *,
    run_dir: Path,
    split: SplitData,
    class_names: Sequence[str],
    probs_raw: np.ndarray,
    probs_cal: np.ndarray,
    predicted: np.ndarray,
    sections: Sequence[Scored],
    temperature: float,
) -> dict[str, Path]:
    """All figures of the report (caption -> PNG path); matplotlib is imported only here."""
    from pneumo.evaluation import plots  # matplotlib

    y, names = split.targets, list(class_names)
    ops = {s.label: s.threshold for s in sections if s.threshold is not None}
    out: dict[str, Path] = {
        "ROC curve": plots.plot_roc(y, probs_cal, names, eval_dir / "roc.png", operating_points=ops),
        "Precision-recall curve": plots.plot_pr(y, probs_cal, names, eval_dir / "pr.png", operating_points=ops),
    }
    for s in sections:
        out[f"Confusion matrix ({s.label})"] = plots.plot_confusion(
            s.point["confusion_matrix"], names, eval_dir / f"confusion_{s.key}.png", title=f"Confusion ({s.label})"
        )
    out["Reliability before/after temperature scaling"] = plots.plot_reliability(
        y, probs_raw, eval_dir / "reliability.png", probs_calibrated=probs_cal, temperature=temperature, n_bins=ECE_BINS
    )
    history = read_metrics(run_dir)
    if history:
        out["Training curves"] = plots.plot_training_curves(history, eval_dir / "training_curves.png")
    wrong = np.flatnonzero(predicted != y)
    # A lazy view of the misclassified rows of the cache: only the shown images are read.
    images = CachedImages(split.images.file, split.images.image_size, split.images.rows[wrong])
    out["Most confident errors"] = plots.plot_confident_errors(
        images,
        [names[int(y[i])] for i in wrong],
        [names[int(predicted[i])] for i in wrong],
        [float(probs_cal[i, predicted[i]]) for i in wrong],
        eval_dir / "confident_errors.png",
        max_n=MAX_ERROR_IMAGES,
    )
    return out


def run_limitations(result: Mapping[str, Any]) -> list[str]:
    """Caveats specific to this evaluation (the dataset-wide ones live in model_card.KNOWN_LIMITATIONS)."""
    items = []
    n, patients = result["n_images"], result["n_patients"]
    if n < 200:
        items.append(f"Small evaluation set ({n} images, {patients} patients): confidence intervals are wide.")
    if saturated := result.get("n_saturated"):
        items.append(
            f"{saturated} image(s) have a class probability that rounds to exactly 1.0 (a logit margin over about 37 "
            "times the temperature): they tie in the ROC curves and AUCs, which may understate the ranking a little."
        )
    if result["split"] == "val" and result["dataset"]["own"]:
        items.append(
            "Evaluated on the validation split, which chose the threshold, the temperature and the best epoch: "
            "these metrics are optimistic; report test metrics."
        )
    overlap = result["overlap_with_training"]
    own_val = result["split"] == "val" and result["dataset"]["own"]  # the validation split overlaps itself: said above
    if not own_val and (overlap["patients_seen_in_train_or_val"] or overlap["images_with_a_train_or_val_file_name"]):
        items.append(
            f"{overlap['images_of_those_patients']} of {n} evaluated images come from "
            f"{overlap['patients_seen_in_train_or_val']} patients seen in training/validation, and "
            f"{overlap['images_with_a_train_or_val_file_name']} share a file name with a training/validation image: "
            "the evaluated set is not independent of the model."
        )
    if not result["dataset"]["own"]:
        items.append(
            "Cross-dataset evaluation: the operating point and temperature come from the run's own validation split "
            "and were not adapted to this dataset."
        )
    return items


def report_rows(sections: Sequence[Scored], names: Sequence[str], n_boot: int) -> list[dict[str, Any]]:
    """The report's metric rows; with a ``resamples`` column when an interval rests on fewer than ``n_boot``
    resamples (the metric was undefined in the others, e.g. a class not drawn)."""
    rows = []
    for s in sections:
        rows += [
            {**row, "resamples": s.cis[row["metric"]].n_valid}
            for row in ci_rows(s.cis, names, operating_point=s.label, probabilities=s.probabilities)
        ]
    if all(row["resamples"] >= n_boot for row in rows):
        rows = [{k: v for k, v in row.items() if k != "resamples"} for row in rows]
    return rows


def metric_names(task: Task, class_names: Sequence[str]) -> list[str]:
    if task.is_binary:
        return list(BINARY_METRICS)
    per_class = [f"{kind}/{c}" for kind in ("recall", "roc_auc_per_class") for c in class_names]
    return [*MULTICLASS_METRICS, *per_class]


def calibration_text(result: Mapping[str, Any]) -> str:
    op, cal = result["operating_point"], result["calibration"]
    source = "fitted now" if result["calibration_fitted"] else "reused from checkpoint.json"
    lines = [
        f"Temperature T = {cal['temperature']:.3f}, fitted on the run's validation split ({source}).",
        f"ECE ({ECE_BINS} bins, top-label) on this split: {cal['ece_before']:.4f} before, "
        f"{cal['ece_after']:.4f} after temperature scaling.",
    ]
    if op.get("threshold") is not None:
        lines.append(
            f"Decision: {op['positive_class']} when its temperature-scaled probability >= {op['threshold']:.4f}, "
            f"chosen on {op.get('n_val_images', '?')} validation images by {op['method']}. "
            "The evaluated split's labels chose nothing."
        )
    else:
        lines.append("Decision: argmax over the classes (no threshold).")
    return "\n".join(lines)


def data_summary(result: Mapping[str, Any]) -> dict[str, Any]:
    ds = result["dataset"]
    return {
        "dataset": ds["source"],
        "own dataset of the run": ds["own"],
        "split": result["split"],
        "split file": ds["split_file"] or "the dataset's own split column (all images if it has none)",
        "images": result["n_images"],
        "patients": result["n_patients"],
        "images per class": result["class_counts"],
        "unreadable images skipped": result["n_unreadable"],
        "overlap with the run's train/val split": result["overlap_with_training"],
        "bootstrap": result["bootstrap"],
    }


# --- model card ----------------------------------------------------------------------------------------------------


def read_eval(eval_dir: Path) -> dict[str, Any] | None:
    path = eval_dir / METRICS_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def card_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Model-card metric rows ``{"metric": "sensitivity (t = 0.50)", "split", "point", "low", "high"}``: every metric
    of the primary operating point, plus the threshold-dependent ones of the others (AUCs do not change)."""
    binary = len(result["class_names"]) == 2
    split = f"{result['dataset']['name']} {result['split']}"
    n_boot = (result.get("bootstrap") or {}).get("n_boot", 0)
    rows = []
    primary_first = sorted(result["metrics"].items(), key=lambda item: item[0] != result["primary"])
    for key, section in primary_first:
        names = (BINARY_METRICS if binary else MULTICLASS_METRICS) if key == result["primary"] else THRESHOLD_METRICS
        for name in names:
            ci = section["ci"].get(name)
            if ci is not None:
                point, low, high = (math.nan if ci[k] is None else ci[k] for k in ("point", "low", "high"))
                # a threshold (or argmax) decides the first kind; rankings and probability scores need none
                decided = name in THRESHOLD_METRICS or name == "macro_f1"
                label = section["label"] if decided else f"{section.get('probabilities', 'model')} probabilities"
                if 0 < (n_valid := ci.get("n_valid", n_boot)) < n_boot:  # resamples where it was undefined: say so
                    label += f"; CI from {n_valid} of {n_boot} resamples"
                rows.append({"metric": f"{name} ({label})", "split": split, "point": point, "low": low,
                             "high": high})  # fmt: skip
    return rows


def write_run_model_card(run_dir: str | Path) -> Path | None:
    """(Re)write ``RUN_DIR/MODEL_CARD.md`` from the own-dataset test evaluation, else from the newest evaluation, of
    those that hold for the stored model (its operating point, temperature and weights); returns None when there is
    none. An own test evaluation that no longer holds is named in a warning, with the command that redoes it."""
    run_dir = Path(run_dir)
    meta = read_run_meta(run_dir)
    config = load_yaml(run_dir / CONFIG_FILE)
    own_test_dir = run_dir / eval_dir_name(config["data"], "test")
    result = read_eval(own_test_dir)
    if result is not None and not evaluation_is_current(result, meta):
        log.warning(
            "%s was scored at another operating point, temperature or weights than %s stores now; the model card "
            "leaves it out. Score the test split again: pneumo evaluate %s",
            own_test_dir / METRICS_FILE, run_dir / "checkpoint.json", run_dir,
        )  # fmt: skip
        result = None
    if result is None:
        found = sorted(run_dir.glob(f"{EVAL_PREFIX}*/{METRICS_FILE}"), key=lambda p: p.stat().st_mtime)
        current = [r for r in map(read_eval, (p.parent for p in found)) if r and evaluation_is_current(r, meta)]
        result = current[-1] if current else None
    if result is None:
        (run_dir / "MODEL_CARD.md").unlink(missing_ok=True)  # a card of another model's numbers is worse than none
        return None
    split_counts: dict[str, int] = {}
    records = run_records(run_dir, config)
    for record in records:
        split_counts[record.split] = split_counts.get(record.split, 0) + 1
    op = result["operating_point"]
    threshold = None if op.get("threshold") is None else {"value": op["threshold"], **op}
    cal = result["calibration"]
    split_name = f"{result['dataset']['name']} {result['split']}"
    return write_model_card(
        run_dir / "MODEL_CARD.md",
        run_name=run_dir.name,
        task=meta["task"],
        class_names=meta["class_names"],
        model={
            "architecture": meta["model"]["name"],
            "outputs": meta["model"]["num_outputs"],
            "dummy class": meta.get("dummy_class", False),
            "initial weights": config.get("weights", "none"),
            "freeze": config.get("freeze", "none"),
            "epochs (configured)": config.get("epochs"),
            "best epoch": (meta.get("best") or {}).get("epoch"),
            "best validation ROC AUC": (meta.get("best") or {}).get("val_auc"),
            "run id": result["run_id"],
            "pneumo version": meta.get("pneumo_version"),
        },
        data_summary={
            "dataset": config["data"],
            "split file": str(run_dir / "split.csv"),
            "records per split (before task selection)": split_counts,
            "metrics computed on": f"{result['dataset']['source']} ({result['split']}): {result['n_images']} images, "
            f"{result['n_patients']} patients",
            "images per class": result["class_counts"],
        },
        preprocess=meta["preprocess"],
        metrics_table=card_rows(result),
        threshold=threshold,
        temperature={
            "temperature": cal["temperature"],
            f"ECE on {split_name}, before scaling": cal["ece_before"],
            f"ECE on {split_name}, after scaling": cal["ece_after"],
        },
        limitations=result.get("limitations", []),
        metrics_split=result["split"],
        data_kind=data_kind(config["data"], records, evaluated_on=result["dataset"]["source"]),
        ood=ood_markdown(run_dir, meta, result),
    )


def ood_markdown(run_dir: Path, meta: Mapping[str, Any], primary: Mapping[str, Any]) -> str | None:
    """The model card's out-of-distribution section: the check, then one line per current evaluation (flag rate,
    metrics on the images that pass beside all), the card's own evaluation first."""
    params = meta.get("ood")
    if not params:
        return None
    lines = [
        f"Every prediction carries `in_distribution` (method {params.get('method')}, threshold "
        f"{float(params['threshold']):.4g}, set so that {100 * params.get('pass_rate_target', 0.95):.1f} % of the "
        "validation split passes). A flagged image gets no trustworthy label: the web page withholds it and "
        "`pneumo serve --refuse-ood` answers 422.\n"
    ]

    def key(r: Mapping[str, Any]) -> tuple[str, str]:
        return (r["dataset"]["name"], r["split"])

    others = map(read_eval, sorted(p.parent for p in run_dir.glob(f"{EVAL_PREFIX}*/{METRICS_FILE}")))
    results = [primary, *(r for r in others if r and evaluation_is_current(r, meta) and key(r) != key(primary))]
    for r in results:
        if text := ood_text(r):
            lines.append(f"- **{r['dataset']['name']} {r['split']}**: {text}")
    return "\n".join(lines) + "\n"


def data_kind(source: str | Path, records: Sequence[Record], *, evaluated_on: str | Path | None = None) -> DataKind:
    """What the model card may say about the data: synthetic (trained or evaluated on ``pneumo data synth`` output),
    the Kermany release (its file names), or another dataset."""
    if any(is_synthetic_dataset(s) for s in (source, evaluated_on) if s is not None):
        return "synthetic"
    named = [follows_kermany_naming(r.name) for r in records]
    return "kermany" if named and sum(named) >= 0.9 * len(named) else "other"


# --- a text summary for the CLI ------------------------------------------------------------------------------------


def summary_table(result: Mapping[str, Any], markdown: bool = False) -> str:
    """Metric | point [95 % CI] per operating point (t = 0.50 and validated threshold, or argmax)."""
    sections = list(result["metrics"].values())
    names = BINARY_METRICS if len(result["class_names"]) == 2 else MULTICLASS_METRICS
    rows = []
    for name in names:
        row: dict[str, Any] = {"metric": name}
        for s in sections:
            ci = s["ci"].get(name)
            row[s["label"]] = "n/a" if ci is None else format_ci({k: _nan(ci[k]) for k in ("point", "low", "high")})
        rows.append(row)
    return compare_table(rows, ["metric", *(s["label"] for s in sections)], markdown=markdown)


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)
