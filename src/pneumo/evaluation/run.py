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

import datetime as dt
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import pneumo
from pneumo.data.dataset import SplitData, build_split
from pneumo.data.preprocess import PreprocessContract
from pneumo.data.records import DatasetError, Record, is_synthetic_dataset
from pneumo.data.tasks import Task, get_task
from pneumo.evaluation.bootstrap import bootstrap_ci
from pneumo.evaluation.calibration import apply_temperature, expected_calibration_error, fit_temperature, nll
from pneumo.evaluation.metrics import MetricSuite
from pneumo.evaluation.ood import ood_verdicts, passing_metrics
from pneumo.evaluation.report import write_html_report
from pneumo.evaluation.source import (
    EVAL_PREFIX,
    resolve_source,
    run_records,
    training_overlap,
)
from pneumo.evaluation.threshold import METHODS, TARGETS, choose_threshold, compare_rules
from pneumo.evaluation.writers import (
    ECE_BINS,
    METRICS_FILE,
    UNREADABLE_FILE,
    Scored,
    calibration_text,
    data_summary,
    images_digest,
    json_safe,
    metric_names,
    report_rows,
    run_limitations,
    write_plots,
    write_predictions,
    write_run_model_card,
    write_unreadable,
)
from pneumo.models.predict import predict_logits
from pneumo.runs.checkpoint import load_run
from pneumo.runs.format import CONFIG_FILE, read_run_meta, update_run_meta
from pneumo.utils.atomic import write_json
from pneumo.utils.device import pick_device
from pneumo.utils.digest import file_sha256
from pneumo.utils.yamlfile import load_yaml
from pneumo.zoo import writable_copy

SPLITS = ("test", "val")
# extra report sections (title -> text), given run_dir=, model=, split=, result= keywords
ReportHook = Callable[..., Mapping[str, str]]
ALPHA = 0.05
FREE_METHODS = tuple(m for m in METHODS if m not in TARGETS)  # threshold methods that take no target
log = logging.getLogger(__name__)


# --- operating point and temperature (validation only) -----------------------------------------------------------


def wanted_method(
    task: Task,
    target_sensitivity: float | None = None,
    target_specificity: float | None = None,
    youden: bool = False,
    method: str | None = None,
) -> dict[str, Any] | None:
    """The operating point asked for: ``argmax`` (three classes), a target-free method (``youden``,
    ``gap_midpoint``, ``prior_balanced``) or one validation target; ``None`` for a binary task when nothing was
    asked: the stored one (whatever its method), else Youden's J."""
    targets = {k: v for k, v in zip(TARGETS, (target_sensitivity, target_specificity), strict=True) if v is not None}
    if youden:
        method = method or "youden"
    if method is not None and method not in FREE_METHODS:
        raise ValueError(f"unknown threshold method {method!r}; use one of {', '.join(FREE_METHODS)} or a target")
    if not task.is_binary:
        if targets or method:
            raise ValueError("a threshold method applies to binary tasks only (3 classes: argmax)")
        return {"method": "argmax"}
    if len(targets) + (method is not None) + (youden and method != "youden") > 1:
        raise ValueError("choose one of Youden's J, its gap's middle, balanced priors or one validation target")
    if method is not None:
        return {"method": method}
    if not targets:
        return None
    ((method, target),) = targets.items()
    if not 0 < target <= 1:
        raise ValueError(f"{method.replace('_', ' ')} must lie in (0, 1], got {target}")
    return {"method": method, method: float(target)}


def stored_calibration(
    meta: Mapping[str, Any], wanted: Mapping[str, Any] | None, digest: str
) -> tuple[dict, float] | None:
    """``(operating_point, temperature)`` from checkpoint.json when they fit these weights and this method (any
    method when ``wanted`` is ``None``: a threshold chosen for screening stays until another is asked for)."""
    op, temperature = meta.get("operating_point"), meta.get("temperature")
    if not op or temperature is None:
        return None
    same_method = wanted is None or all(op.get(k) == wanted.get(k) for k in ("method", *TARGETS))
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
        targets = {k: wanted[k] for k in TARGETS if k in wanted}
        op["threshold"] = choose_threshold(val_targets, p_val, wanted["method"], **targets)
        op["positive_class"] = task.class_names[1]
    return op, temperature


# --- scoring -------------------------------------------------------------------------------------------------------


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


def _validation_if_readable(
    load_val: Callable[[], SplitData], logits_of: Callable[[SplitData], np.ndarray]
) -> tuple[np.ndarray, np.ndarray] | None:
    """Validation logits and targets for the side-by-side rules, or ``None`` where the run's own images are gone
    (a shipped or moved run evaluated on other data keeps its stored operating point and needs none)."""
    try:
        val = load_val()
    except (DatasetError, OSError) as exc:
        log.info("threshold rules not compared: validation images unreadable (%s)", exc)
        return None
    return logits_of(val), val.targets


def threshold_label(op: Mapping[str, Any]) -> str:
    extra = "".join(f", {k.removeprefix('target_')} >= {op[k]:g} on val" for k in TARGETS if op.get(k) is not None)
    return f"validated t = {op['threshold']:.3f} ({op['method']}{extra})"


# --- the evaluation ----------------------------------------------------------------------------------------------


def evaluate_run(
    run_dir: str | Path,
    *,
    data: str | Path | None = None,
    split: str = "test",
    target_sensitivity: float | None = None,
    target_specificity: float | None = None,
    youden: bool = False,
    threshold_method: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    device: str = "auto",
    batch_size: int = 64,
    plots: bool = True,
    progress: bool = True,
    report_hooks: Sequence[ReportHook] = (),
) -> dict[str, Any]:
    """Evaluate a run's best weights on ``split`` of its own dataset (default) or of ``data``; returns the contents
    of ``RUN_DIR/eval-<dataset>-<split>/metrics.json`` plus ``eval_dir``, after writing that folder (metrics.json,
    predictions.csv, PNG plots unless ``plots=False``, report.html) and refreshing ``RUN_DIR/MODEL_CARD.md``.

    The binary threshold and the temperature stored by an earlier evaluation of these weights are reused, whatever
    method chose the threshold; otherwise they are fitted on the validation split by the run's declared
    ``threshold_method`` (config.yaml; Youden's J by default). ``youden``,
    ``target_sensitivity`` (the most specific threshold reaching this validation sensitivity) or
    ``target_specificity`` (the most sensitive one reaching this validation specificity) asks for a method, and
    replaces a stored threshold of another; so does ``threshold_method`` (``youden``, ``gap_midpoint``,
    ``prior_balanced``). Binary tasks also get ``threshold_rules``: every rule's validation threshold and what it
    gives on the evaluated split, side by side (when the run's validation images can be read).
    ``device``: ``auto`` (CUDA when available), ``cpu`` or ``cuda``. A shipped model's name (:mod:`pneumo.zoo`)
    evaluates a copy of it under ``~/.cache/pneumo/models``. The run's stored out-of-distribution check scores the
    evaluated images (``ood``: flag rate, metrics on the passing images beside all). ``report_hooks`` add report
    sections (title -> text), called with ``run_dir, model, split, result`` keywords: the commands pass
    ``pneumo.trust.ood.report_sections``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    run_dir = writable_copy(run_dir).resolve()
    meta = read_run_meta(run_dir)
    config = load_yaml(run_dir / CONFIG_FILE)
    task = get_task(meta["task"])
    class_names = list(meta["class_names"])
    contract = PreprocessContract.from_dict(meta["preprocess"])
    cache_root = Path(config["cache_dir"]) if config.get("cache_dir") else None
    wanted = wanted_method(task, target_sensitivity, target_specificity, youden, threshold_method)
    dev = pick_device(device)
    model, _ = load_run(run_dir, "best", device=dev)
    digest = model.weights_sha256[:16]  # of the weights loaded (weights_digest's prefix), not a second read

    def load(name: str, records: Sequence[Record]) -> SplitData:
        if not any(r.split == name for r in records):
            raise DatasetError(f"no {name} split to evaluate: the run's split file has no {name} images")
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
    val_scored: tuple[np.ndarray, np.ndarray] | None = None
    if stored is None:
        val = load("val", own_split)
        val_scored = (logits_of(val), val.targets)
        declared = {"method": config.get("threshold_method") or "youden"}  # binary tasks; K > 2 asked for argmax
        op, temperature = fit_calibration(*val_scored, task, wanted or declared, digest)
        replaced = meta.get("operating_point") or {}
        if replaced.get("weights_sha256") == digest and replaced.get("method") != op["method"]:
            log.warning("the stored %s operating point is replaced by %s", replaced.get("method"), op["method"])
        update_run_meta(run_dir, operating_point=op, temperature=temperature)
    else:
        op, temperature = stored
        if task.is_binary:
            val_scored = _validation_if_readable(lambda: load("val", own_split), logits_of)

    evaluated = load(split, source.records)
    logits = logits_of(evaluated)
    y, groups = evaluated.targets, evaluated.groups
    probs_raw, probs_cal = apply_temperature(logits, 1.0), apply_temperature(logits, temperature)
    sections, predicted = score_operating_points(
        y, probs_raw, probs_cal, groups, class_names, op, n_boot=n_boot, seed=seed
    )
    ood_summary, inside = ood_verdicts(run_dir, model, evaluated, batch_size=batch_size)
    ood = passing_metrics(
        ood_summary, inside, y, probs_raw, probs_cal, groups, class_names, op, score_operating_points,
        n_boot=n_boot, seed=seed,
    )  # fmt: skip

    eval_dir = run_dir / f"{EVAL_PREFIX}{source.slug}-{split}"
    eval_dir.mkdir(parents=True, exist_ok=True)
    counts = np.bincount(y, minlength=task.num_classes)
    image_sha256 = [file_sha256(r.path) for r in evaluated.records]  # pairs evaluations by content, not by name
    unreadable = write_unreadable(eval_dir / UNREADABLE_FILE, evaluated.images.failures, source.root)
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
            "synthetic": is_synthetic_dataset(source.source),
            "images_sha256": images_digest(image_sha256),
        },
        "split": split,
        "n_images": len(evaluated),
        "n_patients": len(set(groups)),
        "class_counts": {name: int(c) for name, c in zip(class_names, counts, strict=True)},
        "n_unreadable": len(evaluated.images.failures),
        "unreadable_list": unreadable.name if unreadable else None,
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
        # a class probability within 2**-53 of 1 is stored as 1.0 (logit margin over about 37 T): such images tie
        # in the ROC curves and AUCs, whatever their margins
        "n_saturated": int(max((probs == 1.0).any(axis=1).sum() for probs in (probs_raw, probs_cal))),
        "primary": sections[-1].key,
        "metrics": {s.key: s.to_dict() for s in sections},
        "ood": ood,
    }
    if task.is_binary and val_scored is not None:
        p_val = apply_temperature(val_scored[0], temperature)[:, 1]
        result["threshold_rules"] = compare_rules(val_scored[1], p_val, y, probs_cal[:, 1])
    result["limitations"] = run_limitations(result)

    write_predictions(
        eval_dir / "predictions.csv", evaluated, source.root, class_names, logits, probs_cal, predicted, image_sha256
    )
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
    report_sections = {"Operating point and calibration": calibration_text(result)}
    for hook in report_hooks:
        report_sections.update(hook(run_dir=run_dir, model=model, split=evaluated, result=result))
    write_html_report(
        eval_dir / "report.html",
        title=f"pneumo evaluation: {run_dir.name} on {source.slug} ({split})",
        config=config,
        data_summary=data_summary(result),
        metrics_table=report_rows(sections, metric_names(task, class_names), n_boot),
        plots=plot_paths,
        limitations=result["limitations"],
        extra_sections=report_sections,
    )
    write_json(eval_dir / METRICS_FILE, json_safe(result))
    write_run_model_card(run_dir)
    return {**json_safe(result), "eval_dir": str(eval_dir)}
