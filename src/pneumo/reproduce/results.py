"""``results.md`` / ``results.json``: one row per experiment beside the published anchors."""

from __future__ import annotations

import datetime as dt
import json
import math
import statistics
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pneumo.data.records import is_synthetic_dataset
from pneumo.data.tasks import TASKS
from pneumo.evaluation import format_ci
from pneumo.evaluation.runs_table import compare_runs
from pneumo.reproduce.anchors import ANCHORS
from pneumo.reproduce.paired import paired_difference
from pneumo.reproduce.status import evaluated_run, read_status
from pneumo.reproduce.suite import Experiment
from pneumo.utils.atomic import write_json, write_text
from pneumo.utils.provenance import git_commit, short_commit

BINARY = ("accuracy", "sensitivity", "specificity", "roc_auc", "sensitivity_at_specificity_90")
MULTICLASS = ("accuracy", "balanced_accuracy", "roc_auc")


def write_results(
    out: Path,
    suite: str,
    data: Path,
    entries: Sequence[tuple[Experiment, int, Path]],
    *,
    n_boot: int,
    machine: dict[str, Any],
    failures: Sequence[dict[str, Any]] = (),
    command: str | None = None,
) -> dict[str, Any]:
    rows = []
    for exp, seed, run_dir in entries:
        status = read_status(run_dir)
        evaluated = evaluated_run(run_dir, status)
        trained_at = _run_commit(run_dir)
        row = compare_runs([evaluated], metrics=sorted(set(BINARY) | set(MULTICLASS)))[0]
        row.update(experiment=exp.name, seed=seed, seeds_declared=len(exp.seeds), kind=exp.kind,
                   description=exp.description, device=status.get("device"), baseline=exp.baseline,
                   commit=trained_at, n_boot=evaluated_n_boot(run_dir))  # fmt: skip
        if exp.baseline:
            found = _baseline_run(entries, exp.baseline, seed)
            if found is not None and row.get("eval"):
                base_seed, base = found
                paired = paired_difference(
                    evaluated / row["eval"] / "predictions.csv",
                    base / row["eval"] / "predictions.csv",
                    n_boot=row["n_boot"] or n_boot,  # as many as the row's own CIs
                )
                row["paired_vs_baseline"] = {**paired, "baseline_seed": base_seed}
        rows.append(row)
    replicates = sorted({r["n_boot"] for r in rows if r["n_boot"]})
    info = {
        "suite": suite,
        "data": str(data),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": git_commit(short=True),  # of this report; each row's own is in row["commit"]
        "run_commits": dict(Counter(r["commit"] or "unknown" for r in rows).most_common()),
        "machine": machine,
        "n_boot": replicates[0] if len(replicates) == 1 else n_boot,
        "n_boot_rows": replicates,  # the replicates the rows' CIs rest on (several values: rows of several calls)
        "command": command or f"pneumo reproduce --data {data} --suite {suite} --out {out}",
    }
    synthetic = is_synthetic_dataset(data)
    anchors = [] if synthetic else ANCHORS  # published numbers on X-rays do not compare with synthetic pictures
    info["synthetic_data"] = synthetic
    result = {**info, "rows": rows, "seed_summary": seed_summary(rows), "failed": list(failures), "anchors": anchors}
    write_json(out / "results.json", result)
    write_text(out / "results.md", render_markdown(result))
    return result


def evaluated_n_boot(run_dir: Path) -> int | None:
    """The bootstrap replicates of the test evaluation a finished row reports (its ``metrics.json``)."""
    eval_dir = read_status(run_dir).get("eval_dir")
    metrics = run_dir / eval_dir / "metrics.json" if eval_dir else None
    if metrics is None or not metrics.is_file():
        return None
    return (json.loads(metrics.read_text()).get("bootstrap") or {}).get("n_boot")


def _replicates(result: dict[str, Any]) -> str:
    rows = result.get("n_boot_rows") or []
    if len(rows) > 1:
        return f"replicates differ between rows: {', '.join(map(str, rows))}; each row's are in its metrics.json"
    return f"{rows[0] if rows else result['n_boot']} replicates"


def _run_commit(run_dir: Path) -> str | None:
    """The commit the run was trained at (its ``env.json``), not the one checked out now."""
    env = run_dir / "env.json"
    commit = (json.loads(env.read_text()).get("git_commit") if env.is_file() else None) or None
    return short_commit(commit) if commit else None


def _baseline_run(entries: Sequence[tuple[Experiment, int, Path]], name: str, seed: int) -> tuple[int, Path] | None:
    """``(seed, evaluated run)`` of the baseline: its run of the same seed (same split and initialisation seed),
    else its first seed (the row then says so, and the seed summary leaves that difference out)."""
    runs = {s: evaluated_run(d, read_status(d)) for e, s, d in entries if e.name == name}
    if seed in runs:
        return seed, runs[seed]
    return next(iter(runs.items()), None)


def _same_seed_pair(row: dict[str, Any]) -> bool:
    return row["paired_vs_baseline"].get("baseline_seed", row["seed"]) == row["seed"]


def seed_summary(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean, sample standard deviation, min and max of each metric's point estimate over an experiment's seeds.

    Only experiments with two or more finished seeds; the spread is between training runs (initialisation, data
    order, augmentation and, unless ``split_seed`` is fixed, the validation split), not a confidence interval.
    """
    by_experiment: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_experiment.setdefault(row["experiment"], []).append(row)
    summary = []
    for name, group in by_experiment.items():
        if len(group) < 2:
            continue
        metrics: dict[str, dict[str, float]] = {}
        for key in (*BINARY, *MULTICLASS):
            points = [r[key]["point"] for r in group if isinstance(r.get(key), dict)]
            points = [p for p in points if p is not None and not math.isnan(p)]
            if len(points) == len(group):
                metrics[key] = _stats(points)
        deltas = [
            r["paired_vs_baseline"]["delta_roc_auc"]["point"]
            for r in group
            if r.get("paired_vs_baseline") and _same_seed_pair(r)
        ]
        entry = {"experiment": name, "task": group[0]["task"], "seeds": [r["seed"] for r in group], "metrics": metrics}
        if len(deltas) == len(group):
            entry["delta_roc_auc_vs_baseline"] = _stats(deltas)
        summary.append(entry)
    return summary


def _stats(values: Sequence[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values), "min": min(values), "max": max(values)}


def _spread(stats: dict[str, float]) -> str:
    return f"{stats['mean']:.3f} ± {stats['sd']:.3f}"


def _cell(value: Any) -> str:
    if isinstance(value, dict) and "point" in value:
        return format_ci(value)
    return "" if value is None else str(value)


def _threshold_methods(rows: Sequence[dict[str, Any]]) -> str:
    """One method for every binary row (``Youden's J``), or each row's own where they differ."""
    methods = {r["experiment"] + _seed_note(r): r.get("threshold_method") for r in rows if r.get("threshold_method")}
    if len(set(methods.values())) <= 1:
        return next(iter(methods.values()), "Youden's J")
    return "; ".join(f"{name}: {method}" for name, method in methods.items())


SYNTHETIC_WARNING = [
    "> **SYNTHETIC data** (`pneumo data synth`): these rows test the pipeline and say nothing about chest X-rays; no "
    "published anchor applies.",
    "",
]


def render_markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"# pneumo results: suite `{result['suite']}`",
        "",
        *(SYNTHETIC_WARNING if result.get("synthetic_data") else []),
        f"- command: `{result['command']}`",
        f"- code: {_commits(result)}; report created {result['created']} at `{result['commit']}`",
        f"- machine: {m['platform']}, {m['cpu_count']} CPUs, GPU: {m['gpu'] or 'none'}; torch {m['torch']}",
        f"- every metric: the official test split of `{result['data']}`, 95 % CI from a patient-level bootstrap "
        f"({_replicates(result)}); thresholds, temperatures and epochs chosen on the patient-grouped "
        "validation split carved from train, never on test. The CIs resample test patients with the threshold and "
        "temperature held fixed: the uncertainty of those choices (and of training) is not in them; the spread "
        "across seeds shows the latter.",
        f"- binary tasks: metrics at the validated operating point ({_threshold_methods(result['rows'])} on "
        "validation); three classes: argmax, and `roc_auc` is the macro average of the one-vs-rest AUCs. "
        "`sensitivity_at_specificity_90` is read off the test ROC curve, like the AUC: threshold-free, it compares "
        "models at one point of the curve but is not an operating point anyone could have chosen before seeing test.",
        f"- one row again: `pneumo reproduce --data DATA --suite {result['suite']} --only EXPERIMENT --out DIR` "
        "(it trains what the row depends on too); each run's exact settings are in `runs/EXPERIMENT/config.yaml`.",
        "",
    ]
    for task in TASKS.values():
        rows = [r for r in result["rows"] if r["task"] == task.name]
        anchors = [a for a in result["anchors"] if a["task"] == task.name]
        if not rows:
            continue
        metrics = BINARY if task.is_binary else MULTICLASS
        lines += [f"## {task.name}", ""]
        header = ["experiment", "model", "weights", "size", "epochs", "wall time", "device", *metrics]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in rows:
            cells = [
                r["experiment"] + _seed_note(r),
                r["model"],
                r["weights"],
                r["image_size"],
                r["epochs"],
                r["wall_time"],
                r["device"],
            ]
            lines.append("| " + " | ".join(_cell(c) for c in [*cells, *(r.get(k) for k in metrics)]) + " |")
        for a in anchors:
            cells = [f"*{a['source']}*", "", "", "", "", "", ""]
            lines.append("| " + " | ".join([*cells, *(_anchor(a.get(k)) for k in metrics)]) + " |")
        lines.append("")
        spread = [e for e in result.get("seed_summary", []) if e["task"] == task.name]
        if spread:
            lines += ["Across seeds: mean ± sample standard deviation (n - 1) of the per-seed point estimates (the "
                      "spread between training runs, not a confidence interval):", ""]  # fmt: skip
            header = ["experiment", "seeds", *metrics, "ROC AUC - baseline"]
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            for e in spread:
                cells = [e["experiment"], ", ".join(map(str, e["seeds"]))]
                cells += [_spread(e["metrics"][k]) if k in e["metrics"] else "" for k in metrics]
                delta = e.get("delta_roc_auc_vs_baseline")
                cells.append(f"{delta['mean']:+.3f} ± {delta['sd']:.3f}" if delta else "")
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
        paired = [r for r in rows if r.get("paired_vs_baseline")]
        if paired:
            lines += ["Paired differences on the same test images (candidate - baseline, 95 % CI):", ""]
            for r in paired:
                d = r["paired_vs_baseline"]
                lines.append(
                    f"- `{r['experiment']}` - `{r['baseline']}`{_seed_note(r)}{_baseline_seed_note(r)}: "
                    f"ROC AUC {format_ci(d['delta_roc_auc'])}, "
                    f"accuracy {format_ci(d['delta_accuracy'])} ({d['n_images']} images)"
                )
            lines.append("")
    if result.get("failed"):
        lines += ["## Failed in this call", "", "Not in the tables above; fix the cause and run the command again:", ""]
        lines += [f"- `{f['experiment']}` (seed {f['seed']}): {f['error']}" for f in result["failed"]]
        lines.append("")
    return "\n".join(lines) + "\n"


def _commits(result: dict[str, Any]) -> str:
    runs = result.get("run_commits") or {}
    if not runs:
        return "no finished run"
    listed = ", ".join(f"`{c}` ({n} row{'s' if n > 1 else ''})" for c, n in runs.items())
    return f"runs trained at {listed}"


def _baseline_seed_note(row: dict[str, Any]) -> str:
    if _same_seed_pair(row):
        return ""
    return f" against the baseline's seed {row['paired_vs_baseline']['baseline_seed']} (its own seed is missing)"


def _seed_note(row: dict[str, Any]) -> str:
    return f" (seed {row['seed']})" if row.get("seeds_declared", 1) > 1 else ""


def _anchor(value: Any) -> str:
    return "" if value is None else f"{value:.3f}"
