"""``compare_runs``: several run folders side by side (setup, wall time, evaluated metrics with 95 % CIs).

Metrics come from each run's ``eval-<dataset>-<split>/metrics.json`` as written by
:func:`pneumo.evaluation.run.evaluate_run` (its ``primary`` section: the validated threshold for binary tasks, argmax
for three classes); the run's own dataset is preferred when several datasets were evaluated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pneumo.data.records import is_synthetic_dataset
from pneumo.data.tasks import TASKS, get_task
from pneumo.evaluation.compare import compare_table
from pneumo.evaluation.source import EVAL_PREFIX, eval_dir_name
from pneumo.evaluation.threshold import method_label
from pneumo.evaluation.writers import METRICS_FILE
from pneumo.runs.evals import read_json_file, read_json_lines
from pneumo.utils.yamlfile import load_yaml

BINARY_COLUMNS = ("accuracy", "sensitivity", "specificity", "roc_auc")
MULTICLASS_COLUMNS = ("accuracy", "roc_auc", "balanced_accuracy")
GAN_CLASSIFIER = "acgan_discriminator"  # model name of pneumo.gan's exported discriminator
SETUP_COLUMNS = ("run", "task", "model", "weights", "image_size", "epochs", "wall_time")


def _read_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a pneumo run folder (no config.yaml)")
    return load_yaml(path)


def find_eval(run_dir: Path, split: str = "test", dataset: str | None = None) -> Path | None:
    """The run's ``eval-*-<split>`` folder: ``dataset`` (a slug) if given, else the run's own dataset, else the only
    one there is (None when absent or ambiguous)."""
    if dataset is not None:
        chosen = run_dir / f"{EVAL_PREFIX}{dataset}-{split}"
        return chosen if (chosen / METRICS_FILE).is_file() else None
    config = _read_config(run_dir)
    if config.get("data"):
        own = run_dir / eval_dir_name(config["data"], split)
        if (own / METRICS_FILE).is_file():
            return own
    found = sorted(p.parent for p in run_dir.glob(f"{EVAL_PREFIX}*-{split}/{METRICS_FILE}"))
    return found[0] if len(found) == 1 else None


def describe_weights(weights: str | None) -> str:
    """``none`` -> ``scratch``; ``imagenet``; a file or run folder -> ``transfer: <run>/<file>``."""
    if not weights or weights == "none":
        return "scratch"
    if weights == "imagenet":
        return "imagenet"
    path = Path(weights)
    return f"transfer: {path.parent.name}/{path.name}" if path.suffix else f"transfer: {path.name}"


def describe_dataset(dataset: Mapping[str, Any]) -> str:
    """``chest-xray 1a2b3c4d``: the evaluated dataset's name and the first digits of its images' digest, with
    ``SYNTHETIC`` for ``pneumo data synth`` output (read from its README for evaluations that predate the flag)."""
    synthetic = dataset.get("synthetic")
    if synthetic is None and dataset.get("source"):
        synthetic = is_synthetic_dataset(dataset["source"])
    parts = [str(dataset.get("name") or "?"), *(["SYNTHETIC"] if synthetic else [])]
    if dataset.get("images_sha256"):
        parts.append(str(dataset["images_sha256"])[:8])
    return " ".join(parts)


def format_seconds(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"


def _ci(value: Mapping[str, Any] | None) -> dict[str, float] | None:
    if value is None:
        return None
    return {k: math.nan if value.get(k) is None else float(value[k]) for k in ("point", "low", "high")}


def default_metrics(tasks: Sequence[str | None]) -> list[str]:
    """Binary: accuracy, sensitivity, specificity, ROC AUC; three classes: accuracy, macro AUC, balanced accuracy
    (both lists, merged, when binary and three-class runs are compared)."""
    kinds = {get_task(t).is_binary for t in tasks if t in TASKS}
    columns = list(BINARY_COLUMNS) if True in kinds or not kinds else []
    if False in kinds:
        columns += [m for m in MULTICLASS_COLUMNS if m not in columns]
    return columns


def comparable_runs(paths: Sequence[str | Path]) -> tuple[list[Path], list[str]]:
    """The classifier run folders among ``paths``, and why each other path was left out."""
    runs, skipped = [], []
    for path in map(Path, paths):
        if not (path / "config.yaml").is_file():
            skipped.append(f"{path}: not a pneumo run folder (no config.yaml)")
        elif "z_dim" in (_read_config(path)) and not (path / "checkpoint.json").is_file():
            skipped.append(f"{path}: a GAN run; its class head is the run {path / 'classifier'}")
        else:
            runs.append(path)
    return runs, skipped


def compare_runs(
    run_dirs: Sequence[str | Path],
    split: str = "test",
    metrics: Sequence[str] | None = None,
    dataset: str | None = None,
) -> list[dict[str, Any]]:
    """One row per run: setup columns, ``eval``, ``threshold`` and each metric as ``{"point", "low", "high"}``
    (None where the run has no such evaluation or metric). Wall time sums the ``seconds`` of metrics.jsonl."""
    rows = []
    for run in run_dirs:
        run_dir = Path(run)
        config = _read_config(run_dir)
        history = read_json_lines(run_dir / "metrics.jsonl")
        if not history and config.get("model") == GAN_CLASSIFIER:
            # An ACGAN's classifier export: its epochs and time are those of the GAN run, the parent folder.
            history = read_json_lines(run_dir.parent / "metrics.jsonl")
        seconds = [float(r["seconds"]) for r in history if isinstance(r.get("seconds"), (int, float))]
        eval_dir = find_eval(run_dir, split, dataset)
        result = read_json_file(eval_dir / METRICS_FILE) if eval_dir else None
        row: dict[str, Any] = {
            "run": run_dir.resolve().name,
            "task": config.get("task"),
            "model": config.get("model"),
            "weights": describe_weights(config.get("weights")),
            "image_size": config.get("image_size"),
            "epochs": max((int(r["epoch"]) for r in history if "epoch" in r), default=None),
            "wall_time": format_seconds(sum(seconds)) if seconds else None,
            "wall_time_s": sum(seconds) if seconds else None,
            "dataset": describe_dataset(result.get("dataset") or {}) if result else None,
            "eval": eval_dir.name if eval_dir else None,
            "threshold": None,
            "metrics": {},
        }
        if result is not None:
            section = result["metrics"][result["primary"]]
            row["threshold"] = section.get("threshold")
            row["operating_point"] = section.get("label")
            op = result.get("operating_point") or {}
            row["threshold_method"] = method_label(op) if op.get("threshold") is not None else None
            row["metrics"] = {name: _ci(ci) for name, ci in section["ci"].items()}
        rows.append(row)
    names = list(metrics) if metrics else default_metrics([r["task"] for r in rows])
    for row in rows:
        found = row.pop("metrics")
        row.update({name: found.get(name) for name in names})
    return rows


def runs_table(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str] | None = None, markdown: bool = True) -> str:
    """Format :func:`compare_runs` rows with :func:`~pneumo.evaluation.compare.compare_table`."""
    names = list(metrics) if metrics else default_metrics([r.get("task") for r in rows])
    return compare_table(rows, [*SETUP_COLUMNS, *names, "dataset", "eval"], markdown=markdown)
