"""``results.md`` / ``results.json``: one row per experiment beside the published anchors."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pneumo.evaluation import format_ci
from pneumo.evaluation.runs_table import compare_runs
from pneumo.reproduce.anchors import ANCHORS
from pneumo.reproduce.paired import paired_difference
from pneumo.reproduce.suite import Experiment
from pneumo.utils.atomic import write_json, write_text
from pneumo.utils.provenance import git_commit

BINARY = ("accuracy", "sensitivity", "specificity", "roc_auc")
MULTICLASS = ("accuracy", "balanced_accuracy", "roc_auc")


def _status(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "reproduce.json"
    return json.loads(path.read_text()) if path.exists() else {}


def write_results(
    out: Path,
    suite: str,
    data: Path,
    entries: Sequence[tuple[Experiment, int, Path]],
    *,
    n_boot: int,
    machine: dict[str, Any],
    failures: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    rows = []
    for exp, seed, run_dir in entries:
        status = _status(run_dir)
        evaluated = Path(status.get("evaluated_run", run_dir))
        row = compare_runs([evaluated], metrics=sorted(set(BINARY) | set(MULTICLASS)))[0]
        row.update(experiment=exp.name, seed=seed, kind=exp.kind, description=exp.description,
                   device=status.get("device"), baseline=exp.baseline)  # fmt: skip
        if exp.baseline:
            base = next(
                (Path(_status(d).get("evaluated_run", d)) for e, _, d in entries if e.name == exp.baseline), None
            )
            if base is not None and row.get("eval"):
                row["paired_vs_baseline"] = paired_difference(
                    evaluated / row["eval"] / "predictions.csv", base / row["eval"] / "predictions.csv", n_boot=n_boot
                )
        rows.append(row)
    info = {
        "suite": suite,
        "data": str(data),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": git_commit(short=True),
        "machine": machine,
        "n_boot": n_boot,
        "command": f"pneumo reproduce --data {data} --suite {suite} --out {out}",
    }
    result = {**info, "rows": rows, "failed": list(failures), "anchors": ANCHORS}
    write_json(out / "results.json", result)
    write_text(out / "results.md", render_markdown(result))
    return result


def _cell(value: Any) -> str:
    if isinstance(value, dict) and "point" in value:
        return format_ci(value)
    return "" if value is None else str(value)


def render_markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"# pneumo results: suite `{result['suite']}`",
        "",
        f"- command: `{result['command']}`",
        f"- commit: `{result['commit']}`; created {result['created']}",
        f"- machine: {m['platform']}, {m['cpu_count']} CPUs, GPU: {m['gpu'] or 'none'}; torch {m['torch']}",
        f"- every metric: the official test split of `{result['data']}`, 95 % CI from a patient-level bootstrap "
        f"({result['n_boot']} replicates); thresholds, temperatures and epochs chosen on the patient-grouped "
        "validation split carved from train, never on test.",
        "- binary tasks: metrics at the validated operating point (Youden's J on validation); three classes: argmax.",
        f"- one row again: `pneumo reproduce --data DATA --suite {result['suite']} --only EXPERIMENT --out DIR` "
        "(it trains what the row depends on too); each run's exact settings are in `runs/EXPERIMENT/config.yaml`.",
        "",
    ]
    for task in ("normal-pneumonia", "bacteria-virus", "normal-bacteria-virus"):
        rows = [r for r in result["rows"] if r["task"] == task]
        anchors = [a for a in result["anchors"] if a["task"] == task]
        if not rows:
            continue
        metrics = BINARY if task != "normal-bacteria-virus" else MULTICLASS
        lines += [f"## {task}", ""]
        header = ["experiment", "model", "weights", "size", "epochs", "wall time", "device", *metrics]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in rows:
            cells = [
                r["experiment"],
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
        paired = [r for r in rows if r.get("paired_vs_baseline")]
        if paired:
            lines += ["Paired differences on the same test images (candidate - baseline, 95 % CI):", ""]
            for r in paired:
                d = r["paired_vs_baseline"]
                lines.append(
                    f"- `{r['experiment']}` - `{r['baseline']}`: ROC AUC {format_ci(d['delta_roc_auc'])}, "
                    f"accuracy {format_ci(d['delta_accuracy'])} ({d['n_images']} images)"
                )
            lines.append("")
    if result.get("failed"):
        lines += ["## Failed in this call", "", "Not in the tables above; fix the cause and run the command again:", ""]
        lines += [f"- `{f['experiment']}` (seed {f['seed']}): {f['error']}" for f in result["failed"]]
        lines.append("")
    return "\n".join(lines) + "\n"


def _anchor(value: Any) -> str:
    return "" if value is None else f"{value:.3f}"
