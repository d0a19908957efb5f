"""``evaluate_run``: a trained run folder -> metrics with patient-level CIs, plots, ``report.html``, ``MODEL_CARD.md``.

Protocol (the evaluated split never chooses anything):

1. The temperature T is fitted on the run's **validation** logits; the binary threshold is chosen on the validation
   probabilities *after* temperature scaling, because that is how the model is used (``Predictor``:
   ``softmax(logits / T)[positive] >= threshold``). Both go into ``checkpoint.json``; later evaluations of the same
   weights with the same method reuse them, so evaluating another dataset never refits them.
2. The evaluated split is scored twice for binary tasks: at t = 0.5 on the raw probabilities (the model as trained)
   and at the validated threshold on the temperature-scaled ones (the model as deployed; the ``primary`` section).
   T > 0 keeps the sign of the logit difference, so the decisions at 0.5 are the same either way; only Brier score and
   log loss see the temperature. Three classes: argmax on temperature-scaled probabilities, macro one-vs-rest AUC.
3. 95 % percentile bootstrap CIs resample patients; the seed makes them reproducible.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import importlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import pneumo
from pneumo.data.cache import CachedImages
from pneumo.data.dataset import SplitData, build_split
from pneumo.data.preprocess import PreprocessContract
from pneumo.data.records import DatasetError, Record, dataset_root, discover
from pneumo.data.splits import read_split_csv
from pneumo.data.tasks import Task, get_task
from pneumo.evaluation.bootstrap import CI, bootstrap_ci
from pneumo.evaluation.calibration import apply_temperature, expected_calibration_error, fit_temperature, nll
from pneumo.evaluation.compare import ci_rows, compare_table, format_ci
from pneumo.evaluation.metrics import MetricSuite
from pneumo.evaluation.model_card import write_model_card
from pneumo.evaluation.report import to_plain, write_html_report
from pneumo.evaluation.threshold import choose_threshold
from pneumo.utils.atomic import atomic_open, write_json

SPLITS = ("test", "val")
EVAL_PREFIX = "eval-"
METRICS_FILE = "metrics.json"
ECE_BINS = 15
ALPHA = 0.05
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
    "brier",
    "log_loss",
)
THRESHOLD_METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "ppv", "npv", "f1")
MULTICLASS_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "log_loss")


# --- datasets ------------------------------------------------------------------------------------------------------


def dataset_slug(source: str | Path) -> str:
    """``/data/chest_xray`` -> ``chest-xray``; ``external.csv`` -> ``external`` (names the eval folder)."""
    path = Path(source)
    stem = path.stem if path.suffix.lower() == ".csv" else path.name
    return re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-") or "dataset"


def eval_dir_name(source: str | Path, split: str) -> str:
    return f"{EVAL_PREFIX}{dataset_slug(source)}-{split}"


@dataclass(frozen=True)
class EvalSource:
    """The records to evaluate and where they come from."""

    source: Path  # dataset folder or CSV manifest
    root: Path  # paths of predictions.csv are written relative to it
    own: bool  # the run's own dataset and split file
    records: list[Record]

    @property
    def slug(self) -> str:
        return dataset_slug(self.source)


def run_records(run_dir: Path, config: Mapping[str, Any]) -> list[Record]:
    """The run's split (``split.csv``), paths resolved against its dataset root."""
    return read_split_csv(run_dir / "split.csv", dataset_root(config["data"]))


def resolve_source(run_dir: Path, config: Mapping[str, Any], data: str | Path | None, split: str) -> EvalSource:
    """The run's own dataset and split file, or another dataset folder / CSV (its own split column; a manifest
    without one counts as all test)."""
    own = Path(config["data"]).expanduser().resolve()
    source = own if data is None else Path(data).expanduser().resolve()
    if source == own:
        return EvalSource(own, dataset_root(own), True, run_records(run_dir, config))
    records = discover(source)
    if not any(r.split == split for r in records):
        found = sorted({r.split for r in records})
        raise DatasetError(f"{source} has no {split} split (it has: {', '.join(found)})")
    return EvalSource(source, dataset_root(source), False, records)


def training_overlap(evaluated: Sequence[Record], run_split: Sequence[Record]) -> dict[str, int]:
    """How much of the evaluated set the run saw in training or validation, by patient id and by file name.

    Non-zero counts mean the evaluated images are not independent of the model (the same patients, or copies of
    the same files in another folder layout)."""
    seen = [r for r in run_split if r.split in ("train", "val")]
    patients = {r.patient_id for r in seen}
    names = {r.path.name.lower() for r in seen}
    eval_patients = {r.patient_id for r in evaluated}
    return {
        "patients_seen_in_train_or_val": len(eval_patients & patients),
        "images_of_those_patients": sum(r.patient_id in patients for r in evaluated),
        "images_with_a_train_or_val_file_name": sum(r.path.name.lower() in names for r in evaluated),
    }


# --- operating point and temperature (validation only) -----------------------------------------------------------


def weights_digest(run_dir: Path) -> str:
    """SHA-256 prefix of ``best.safetensors``: stored calibration is reused only for the weights it was fitted on."""
    digest = hashlib.sha256()
    with open(run_dir / "best.safetensors", "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()[:16]


def wanted_method(task: Task, target_sensitivity: float | None) -> dict[str, Any]:
    if not task.is_binary:
        if target_sensitivity is not None:
            raise ValueError("--target-sensitivity applies to binary tasks only (three classes use argmax)")
        return {"method": "argmax"}
    if target_sensitivity is None:
        return {"method": "youden"}
    if not 0 < target_sensitivity <= 1:
        raise ValueError(f"target sensitivity must lie in (0, 1], got {target_sensitivity}")
    return {"method": "target_sensitivity", "target_sensitivity": float(target_sensitivity)}


def stored_calibration(meta: Mapping[str, Any], wanted: Mapping[str, Any], digest: str) -> tuple[dict, float] | None:
    """``(operating_point, temperature)`` from checkpoint.json when they fit these weights and this method."""
    op, temperature = meta.get("operating_point"), meta.get("temperature")
    if not op or temperature is None:
        return None
    same_method = all(op.get(k) == wanted.get(k) for k in ("method", "target_sensitivity"))
    if same_method and op.get("split") == "val" and op.get("weights_sha256") == digest:
        return dict(op), float(temperature)
    return None


def fit_calibration(
    val_logits: np.ndarray, val_targets: np.ndarray, task: Task, wanted: Mapping[str, Any], digest: str
) -> tuple[dict[str, Any], float]:
    """Temperature on validation logits, then (binary) the threshold on temperature-scaled validation probabilities."""
    if len(np.unique(val_targets)) < task.num_classes:
        raise ValueError(f"the validation split lacks a class of {task.class_names}; cannot calibrate on it")
    temperature = fit_temperature(val_logits, val_targets)
    op: dict[str, Any] = {
        "threshold": None,
        "positive_class": None,
        "split": "val",
        "probabilities": "temperature-scaled",
        "n_val_images": len(val_targets),
        "weights_sha256": digest,
        **wanted,
    }
    if task.is_binary:
        p_val = apply_temperature(val_logits, temperature)[:, 1]
        target = wanted.get("target_sensitivity", 0.95)
        op["threshold"] = choose_threshold(val_targets, p_val, wanted["method"], target)
        op["positive_class"] = task.class_names[1]
    return op, temperature


# --- scoring -------------------------------------------------------------------------------------------------------


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


def score(
    key: str,
    label: str,
    y: np.ndarray,
    probs: np.ndarray,
    groups: Sequence[str],
    class_names: Sequence[str],
    threshold: float | None,
    probabilities: str,
    *,
    n_boot: int,
    seed: int,
) -> Scored:
    suite = MetricSuite(tuple(class_names), threshold)
    cis = bootstrap_ci(y, probs, groups, suite, n_boot=n_boot, seed=seed, alpha=ALPHA)
    return Scored(key, label, threshold, probabilities, suite(y, probs), cis)


def score_operating_points(
    y: np.ndarray,
    probs_raw: np.ndarray,
    probs_cal: np.ndarray,
    groups: Sequence[str],
    class_names: Sequence[str],
    op: Mapping[str, Any],
    *,
    n_boot: int,
    seed: int,
) -> tuple[list[Scored], np.ndarray]:
    """Binary: t = 0.5 on raw probabilities, then the validated threshold on temperature-scaled ones (primary,
    last); K > 2: argmax on temperature-scaled probabilities. Also returns the primary decisions."""
    boot = {"n_boot": n_boot, "seed": seed}
    if op.get("threshold") is None:
        argmax = score("argmax", "argmax", y, probs_cal, groups, class_names, None, "temperature-scaled", **boot)
        return [argmax], probs_cal.argmax(axis=1)
    threshold = float(op["threshold"])
    sections = [
        score("at_0.5", "t = 0.50", y, probs_raw, groups, class_names, 0.5, "raw", **boot),
        score(
            "at_validated_threshold", threshold_label(op), y, probs_cal, groups, class_names, threshold,
            "temperature-scaled", **boot,
        ),
    ]  # fmt: skip
    return sections, (probs_cal[:, 1] >= threshold).astype(np.int64)


def threshold_label(op: Mapping[str, Any]) -> str:
    extra = f", sensitivity >= {op['target_sensitivity']:g} on val" if op.get("target_sensitivity") else ""
    return f"validated t = {op['threshold']:.3f} ({op['method']}{extra})"


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


def _relative(path: Path, root: Path) -> str:
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
) -> None:
    """One row per image: path, patient, true class, task logits, temperature-scaled probabilities, decision."""
    names = list(class_names)
    with atomic_open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["path", "patient_id", "true", *(f"logit_{c}" for c in names), *(f"p_{c}" for c in names), "predicted"]
        )
        for i, record in enumerate(split.records):
            writer.writerow(
                [
                    _relative(record.path, root),
                    record.patient_id,
                    names[int(split.targets[i])],
                    *(f"{v:.6g}" for v in logits[i]),
                    *(f"{v:.6g}" for v in probs[i]),
                    names[int(predicted[i])],
                ]
            )


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
    from pneumo.evaluation import plots
    from pneumo.training.runinfo import read_metrics

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


def extra_sections(run_dir: Path, model: Any, split: SplitData, result: Mapping[str, Any]) -> dict[str, str]:
    """Hook for the trust package: extra report sections (title -> text), e.g. out-of-distribution rates.

    Empty until ``pneumo.trust.ood`` exists and provides ``report_sections(run_dir=, model=, split=, result=)``;
    OOD is deliberately not implemented here.
    """
    try:
        module = importlib.import_module("pneumo.trust.ood")
    except ModuleNotFoundError as exc:
        if exc.name in ("pneumo.trust", "pneumo.trust.ood"):
            return {}
        raise
    provider = getattr(module, "report_sections", None)
    return dict(provider(run_dir=run_dir, model=model, split=split, result=result)) if provider else {}


def run_limitations(result: Mapping[str, Any]) -> list[str]:
    """Caveats specific to this evaluation (the dataset-wide ones live in model_card.KNOWN_LIMITATIONS)."""
    items = []
    n, patients = result["n_images"], result["n_patients"]
    if n < 200:
        items.append(f"Small evaluation set ({n} images, {patients} patients): confidence intervals are wide.")
    if result["split"] == "val":
        items.append(
            "Evaluated on the validation split, which chose the threshold, the temperature and the best epoch: "
            "these metrics are optimistic; report test metrics."
        )
    overlap = result["overlap_with_training"]
    if overlap["patients_seen_in_train_or_val"] or overlap["images_with_a_train_or_val_file_name"]:
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


def _report_rows(sections: Sequence[Scored], metric_names: Sequence[str]) -> list[dict[str, Any]]:
    rows = []
    for s in sections:
        rows += ci_rows(s.cis, metric_names, operating_point=s.label, probabilities=s.probabilities)
    return rows


def _metric_names(task: Task, class_names: Sequence[str]) -> list[str]:
    if task.is_binary:
        return list(BINARY_METRICS)
    per_class = [f"{kind}/{c}" for kind in ("recall", "roc_auc_per_class") for c in class_names]
    return [*MULTICLASS_METRICS, *per_class]


def _calibration_text(result: Mapping[str, Any]) -> str:
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


# --- the evaluation ----------------------------------------------------------------------------------------------


def evaluate_run(
    run_dir: str | Path,
    *,
    data: str | Path | None = None,
    split: str = "test",
    target_sensitivity: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    device: str = "auto",
    batch_size: int = 64,
    plots: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a run's best weights on ``split`` of its own dataset (default) or of ``data``; returns the contents
    of ``RUN_DIR/eval-<dataset>-<split>/metrics.json`` plus ``eval_dir``, after writing that folder (metrics.json,
    predictions.csv, PNG plots unless ``plots=False``, report.html) and refreshing ``RUN_DIR/MODEL_CARD.md``.

    ``target_sensitivity``: choose the binary threshold as the most specific one reaching this validation
    sensitivity instead of by Youden's J. ``device``: ``auto`` (CUDA when available), ``cpu`` or ``cuda``."""
    from pneumo.training import load_run, load_yaml, predict_logits, read_run_meta, update_run_meta
    from pneumo.training.engine import pick_device

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    run_dir = Path(run_dir).expanduser().resolve()
    meta = read_run_meta(run_dir)
    config = load_yaml(run_dir / "config.yaml")
    task = get_task(meta["task"])
    class_names = list(meta["class_names"])
    contract = PreprocessContract.from_dict(meta["preprocess"])
    cache_root = Path(config["cache_dir"]) if config.get("cache_dir") else None
    wanted = wanted_method(task, target_sensitivity)
    digest = weights_digest(run_dir)
    dev = pick_device(device)
    model, _ = load_run(run_dir, "best", device=dev)

    def load(name: str, records: Sequence[Record]) -> SplitData:
        data_split = build_split(name, records, task, contract, cache_root=cache_root, progress=progress)
        if len(data_split) == 0:
            raise DatasetError(
                f"no readable {task.name} image in the {name} split of {len(records)} records "
                f"(are the images there? the run was trained on {config['data']})"
            )
        return data_split

    def logits_of(data_split: SplitData) -> np.ndarray:
        out = predict_logits(model, data_split, batch_size=batch_size, device=dev, amp=False)
        return out.astype(np.float64)

    own_split = run_records(run_dir, config)
    source = resolve_source(run_dir, config, data, split)
    stored = stored_calibration(meta, wanted, digest)
    if stored is None:
        val = load("val", own_split)
        op, temperature = fit_calibration(logits_of(val), val.targets, task, wanted, digest)
        update_run_meta(run_dir, operating_point=op, temperature=temperature)
    else:
        op, temperature = stored

    evaluated = load(split, source.records)
    logits = logits_of(evaluated)
    y, groups = evaluated.targets, evaluated.groups
    probs_raw, probs_cal = apply_temperature(logits, 1.0), apply_temperature(logits, temperature)
    sections, predicted = score_operating_points(
        y, probs_raw, probs_cal, groups, class_names, op, n_boot=n_boot, seed=seed
    )

    eval_dir = run_dir / f"{EVAL_PREFIX}{source.slug}-{split}"
    eval_dir.mkdir(parents=True, exist_ok=True)
    counts = np.bincount(y, minlength=task.num_classes)
    result: dict[str, Any] = {
        "pneumo_version": pneumo.__version__,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "run": run_dir.name,
        "run_id": f"{run_dir.name}-{digest[:12]}",
        "run_dir": str(run_dir),
        "task": task.name,
        "class_names": class_names,
        "dataset": {
            "source": str(source.source),
            "name": source.slug,
            "own": source.own,
            "split_file": str(run_dir / "split.csv") if source.own else None,
        },
        "split": split,
        "n_images": len(evaluated),
        "n_patients": len(set(groups)),
        "class_counts": {name: int(c) for name, c in zip(class_names, counts, strict=True)},
        "n_unreadable": len(evaluated.images.failures),
        "overlap_with_training": training_overlap(evaluated.records, own_split),
        "operating_point": op,
        "threshold": op.get("threshold"),
        "temperature": temperature,
        "calibration_fitted": stored is None,
        "calibration": {
            "temperature": temperature,
            "n_bins": ECE_BINS,
            "ece_before": expected_calibration_error(y, probs_raw, ECE_BINS),
            "ece_after": expected_calibration_error(y, probs_cal, ECE_BINS),
            "nll_before": nll(logits, y, 1.0),
            "nll_after": nll(logits, y, temperature),
        },
        "bootstrap": {"n_boot": n_boot, "seed": seed, "confidence": 1 - ALPHA, "resampled": "patients"},
        "primary": sections[-1].key,
        "metrics": {s.key: s.to_dict() for s in sections},
    }
    result["limitations"] = run_limitations(result)

    write_predictions(eval_dir / "predictions.csv", evaluated, source.root, class_names, logits, probs_cal, predicted)
    for stale in eval_dir.glob("*.png"):  # the folder holds this evaluation's plots only
        stale.unlink()
    plot_paths: dict[str, Path] = {}
    if plots:
        plot_paths = write_plots(
            eval_dir,
            run_dir=run_dir,
            split=evaluated,
            class_names=class_names,
            probs_raw=probs_raw,
            probs_cal=probs_cal,
            predicted=predicted,
            sections=sections,
            temperature=temperature,
        )
    result["plots"] = {caption: path.name for caption, path in plot_paths.items()}
    report_sections = {"Operating point and calibration": _calibration_text(result)}
    report_sections.update(extra_sections(run_dir, model, evaluated, result))
    write_html_report(
        eval_dir / "report.html",
        title=f"pneumo evaluation: {run_dir.name} on {source.slug} ({split})",
        config=config,
        data_summary=_data_summary(result),
        metrics_table=_report_rows(sections, _metric_names(task, class_names)),
        plots=plot_paths,
        limitations=result["limitations"],
        extra_sections=report_sections,
    )
    write_json(eval_dir / METRICS_FILE, json_safe(result))
    write_run_model_card(run_dir)
    return {**json_safe(result), "eval_dir": str(eval_dir)}


def _data_summary(result: Mapping[str, Any]) -> dict[str, Any]:
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
    rows = []
    primary_first = sorted(result["metrics"].items(), key=lambda item: item[0] != result["primary"])
    for key, section in primary_first:
        names = (BINARY_METRICS if binary else MULTICLASS_METRICS) if key == result["primary"] else THRESHOLD_METRICS
        for name in names:
            ci = section["ci"].get(name)
            if ci is not None:
                point, low, high = (math.nan if ci[k] is None else ci[k] for k in ("point", "low", "high"))
                rows.append({"metric": f"{name} ({section['label']})", "split": split, "point": point, "low": low,
                             "high": high})  # fmt: skip
    return rows


def write_run_model_card(run_dir: str | Path) -> Path | None:
    """(Re)write ``RUN_DIR/MODEL_CARD.md`` from the own-dataset test evaluation, else from the newest evaluation;
    returns None when the run has no evaluation yet."""
    from pneumo.training import load_yaml, read_run_meta

    run_dir = Path(run_dir)
    meta = read_run_meta(run_dir)
    config = load_yaml(run_dir / "config.yaml")
    own_test = read_eval(run_dir / eval_dir_name(config["data"], "test"))
    result = own_test
    if result is None:
        found = sorted(run_dir.glob(f"{EVAL_PREFIX}*/{METRICS_FILE}"), key=lambda p: p.stat().st_mtime)
        result = read_eval(found[-1].parent) if found else None
    if result is None:
        return None
    split_counts: dict[str, int] = {}
    for record in run_records(run_dir, config):
        split_counts[record.split] = split_counts.get(record.split, 0) + 1
    op = result["operating_point"]
    threshold = None if op.get("threshold") is None else {"value": op["threshold"], **op}
    cal = result["calibration"]
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
        temperature={"temperature": cal["temperature"], "ece_before": cal["ece_before"], "ece_after": cal["ece_after"]},
        limitations=result.get("limitations", []),
        metrics_split=result["split"],
    )


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
