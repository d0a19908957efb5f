"""``pneumo evaluate`` and ``pneumo compare``: thin wrappers around :mod:`pneumo.evaluation.run` and
:mod:`pneumo.evaluation.runs_table`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from pneumo.cli.output import DEVICE_HELP, check_device, fail


def evaluate(
    run_dir: Path = typer.Argument(
        ...,
        help="Run folder written by `pneumo train`, or a shipped model's name (evaluated in a copy under the cache).",
    ),
    data: Path | None = typer.Option(
        None, "--data", help="Another dataset folder or CSV manifest (default: the run's own dataset and split.csv)."
    ),
    split: str = typer.Option("test", "--split", help="test | val"),
    target_sensitivity: float | None = typer.Option(
        None,
        "--target-sensitivity",
        help="Binary: the most specific threshold reaching this validation sensitivity.",
    ),
    target_specificity: float | None = typer.Option(
        None,
        "--target-specificity",
        help="Binary: the most sensitive threshold reaching this validation specificity.",
    ),
    youden: bool = typer.Option(
        False,
        "--youden",
        help="Binary: the threshold maximising Youden's J on validation. Without any of these options the "
        "stored threshold is kept (Youden's J when there is none).",
    ),
    threshold_method: str | None = typer.Option(
        None,
        "--threshold-method",
        help="Binary: youden | gap_midpoint (middle of the validation scores giving Youden's decisions) | "
        "prior_balanced (calibrated posterior odds above the validation prior odds).",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print metrics.json instead of the summary table."),
    n_boot: int = typer.Option(1000, "--n-boot", min=1, help="Bootstrap replicates (patients resampled)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Images per inference batch."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Draw the PNG plots embedded in report.html."),
) -> None:
    """Metrics with 95 % patient-bootstrap CIs at t = 0.5 and at the threshold validated on the run's validation
    split, calibration, plots, report.html and MODEL_CARD.md, written to RUN_DIR/eval-<dataset>-<split>/."""
    from pneumo.data.records import DatasetError
    from pneumo.evaluation.ood import ood_text
    from pneumo.evaluation.run import SPLITS, evaluate_run
    from pneumo.evaluation.writers import summary_table
    from pneumo.trust.ood import report_sections

    if split not in SPLITS:
        fail(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    check_device(device)
    try:
        result = evaluate_run(
            run_dir,
            data=data,
            split=split,
            target_sensitivity=target_sensitivity,
            target_specificity=target_specificity,
            youden=youden,
            threshold_method=threshold_method,
            n_boot=n_boot,
            seed=seed,
            device=device,
            batch_size=batch_size,
            plots=plots,
            progress=not json_out,
            report_hooks=(report_sections,),
        )
    except (DatasetError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    if json_out:
        typer.echo(json.dumps(result, indent=2))
        return
    cal = result["calibration"]
    n, skipped = result["n_images"], result["n_unreadable"]
    listed = Path(result["eval_dir"]) / str(result.get("unreadable_list"))
    images = f"{n} of {n + skipped} images ({skipped} unreadable: see {listed})" if skipped else f"{n} images"
    typer.echo(
        f"{result['run']} on {result['dataset']['name']} {result['split']}: {images}, "
        f"{result['n_patients']} patients ({', '.join(f'{k} {v}' for k, v in result['class_counts'].items())})"
    )
    typer.echo(summary_table(result), nl=False)
    typer.echo(
        f"temperature {cal['temperature']:.3f} (validation); ECE {cal['ece_before']:.4f} -> {cal['ece_after']:.4f}"
    )
    if ood := ood_text(result):
        typer.echo(f"out-of-distribution check: {ood}")
    for item in result["limitations"]:
        typer.echo(f"note: {item}")
    typer.echo(f"report: {Path(result['eval_dir']) / 'report.html'}")


def compare(
    run_dirs: list[Path] = typer.Argument(..., help="Run folders (or shipped model names) to put side by side."),
    markdown: bool = typer.Option(False, "--markdown", help="Print a Markdown table."),
    split: str = typer.Option("test", "--split", help="Which evaluation to read: eval-<dataset>-<split>."),
    metrics: list[str] | None = typer.Option(
        None, "--metrics", help="Metric columns, comma-separated or repeated (default depends on the task)."
    ),
    dataset: str | None = typer.Option(
        None, "--dataset", help="Evaluated dataset name (the slug in eval-<dataset>-<split>; default: the run's own)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the rows as JSON."),
    paired_with: Path | None = typer.Option(
        None,
        "--paired-with",
        help="A baseline run: also each other run's difference from it in ROC AUC and accuracy on the same images, "
        "with a 95 % CI over patients resampled once for both (paired).",
    ),
    images: Path | None = typer.Option(
        None,
        "--images",
        help="With --paired-with: only these images (a CSV with a path column, e.g. the matched-images.csv of "
        "pneumo audit model).",
    ),
    n_boot: int = typer.Option(1000, "--n-boot", min=100, help="Bootstrap replicates of the paired differences."),
) -> None:
    """One table of runs: task, model, weights, image size, epochs, wall time and test metrics with 95 % CIs."""
    from pneumo.evaluation.run import SPLITS
    from pneumo.evaluation.runs_table import comparable_runs, compare_runs, default_metrics, runs_table
    from pneumo.evaluation.writers import json_safe
    from pneumo.zoo import resolve_model

    if split not in SPLITS:  # an evaluation of another split cannot exist: pneumo evaluate refuses it
        fail(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    names = [m.strip() for item in metrics or [] for m in item.split(",") if m.strip()] or None
    try:  # a shipped model's name reads its folder in the package (compare writes nothing)
        run_dirs = [resolve_model(r) for r in run_dirs]
        paired_with = resolve_model(paired_with) if paired_with is not None else None
    except ValueError as exc:
        fail(str(exc))
    runs, skipped = comparable_runs(run_dirs)
    for reason in skipped:  # `pneumo compare runs/*` meets a failed run's empty folder or a GAN run
        typer.echo(f"skipped {reason}", err=True)
    if not runs:
        fail("no classifier run folder to compare")
    try:
        rows = compare_runs(runs, split=split, metrics=names, dataset=dataset)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    evaluated = [row for row in rows if row["eval"] is not None]
    if names and evaluated and (unknown := [n for n in names if all(row.get(n) is None for row in evaluated)]):
        examples = ", ".join(default_metrics([row["task"] for row in rows]))
        fail(f"no evaluated run has the metric(s) {', '.join(unknown)}; metric names are e.g. {examples}")
    if images is not None and paired_with is None:
        fail("--images applies to paired differences: give --paired-with BASELINE_RUN too")
    paired, paired_lines = [], []
    if paired_with is not None:
        from pneumo.reproduce.paired import paired_against, paired_text, read_image_list

        try:
            listed = read_image_list(images) if images is not None else None
            paired = paired_against(runs, paired_with, split=split, dataset=dataset, images=listed, n_boot=n_boot)
            paired_lines = [paired_text(diff) for diff in paired]
        except (OSError, ValueError) as exc:
            fail(str(exc))
    if json_out:
        typer.echo(json.dumps(json_safe({"runs": rows, "paired": paired} if paired_with else rows), indent=2))
        return
    typer.echo(runs_table(rows, metrics=names, markdown=markdown), nl=False)
    for line in paired_lines:
        typer.echo(line)
    missing = [row["run"] for row in rows if row["eval"] is None]
    if missing:
        how = f"--data DATASET --split {split}" if dataset else f"--split {split}"
        typer.echo(f"not evaluated on {split}: {', '.join(missing)} (run `pneumo evaluate RUN_DIR {how}`)")
