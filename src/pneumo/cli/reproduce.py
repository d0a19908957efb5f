"""``pneumo reproduce`` and ``pneumo demo``."""

from __future__ import annotations

from pathlib import Path

import typer

from pneumo.cli.output import DEVICE_HELP, check_device, fail
from pneumo.demo import DEMO_EPOCHS


def reproduce(
    data: Path | None = typer.Option(None, "--data", help="Dataset folder (not needed for --suite quick)."),
    suite: str = typer.Option("quick", "--suite", help="quick | cpu | full"),
    out: Path = typer.Option(Path("results"), "--out", help="Folder for runs and results (resumable)."),
    experiments: Path | None = typer.Option(None, "--experiments", help="Folder of experiment YAML files."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    n_boot: int = typer.Option(1000, min=1, help="Bootstrap replicates for the 95 % CIs."),
    only: list[str] = typer.Option([], "--only", help="Run only these experiments (repeatable)."),
    report_only: bool = typer.Option(False, "--report-only", help="Train nothing: tabulate the finished experiments."),
    max_seeds: int | None = typer.Option(
        None, "--max-seeds", min=1, help="Train only the first N seeds of each experiment (finished ones still count)."
    ),
    seeds: list[int] = typer.Option(
        [], "--seed", help="Train only this declared seed (repeatable): a row's seeds on several machines or processes."
    ),
) -> None:
    """Run a suite of declared experiments (skipping finished ones) and write results.md / results.json."""
    from pneumo.reproduce.runner import reproduce as run_suite

    check_device(device)
    try:
        result = run_suite(
            data,
            suite,
            out,
            experiments_dir=experiments,
            device=device,
            n_boot=n_boot,
            only=only,
            report_only=report_only,
            max_seeds=max_seeds,
            only_seeds=seeds,
        )
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    typer.echo((out / "results.md").read_text())
    typer.echo(f"{len(result['rows'])} rows written to {out.resolve() / 'results.md'} and results.json")
    if result["failed"]:
        fail(f"{len(result['failed'])} experiment(s) failed: {', '.join(f['experiment'] for f in result['failed'])}")


def demo(
    out: Path | None = typer.Option(None, "--out", help="Run folder (default: under ~/.cache/pneumo/demo/runs)."),
    epochs: int = typer.Option(DEMO_EPOCHS, help="Training epochs."),
) -> None:
    """Synthetic data -> train a CNN -> evaluate: the whole walk (SYNTHETIC data, not X-rays). About 60 s of CPU
    time (measured with one thread): about a minute on an idle CPU, several minutes on a busy one."""
    from pneumo.demo import run_demo, trivial_baseline

    typer.echo("pneumo demo: synthesise data, train a CNN, evaluate it (about 60 s of CPU time; longer on a busy CPU)")
    result = run_demo(out, epochs=epochs)
    section = result["metrics"][result["primary"]]
    typer.echo("SYNTHETIC demo data (not X-rays; research tool, not a medical device)")
    typer.echo(f"data: {result['data']}")
    typer.echo(f"run: {result['run_dir']}")
    for name in ("accuracy", "sensitivity", "specificity", "roc_auc"):
        ci = section["ci"][name]
        at = section["label"] if name != "roc_auc" else "threshold-free"  # a ranking uses no threshold
        typer.echo(f"  {name:<12} {ci['point']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]  ({at})")
    majority, accuracy = trivial_baseline(result)
    typer.echo(f"  trivial baseline: always {majority}: accuracy {accuracy:.3f}, roc_auc 0.500")
    typer.echo(f"report: {result['eval_dir']}/report.html")
    typer.echo(f"model card: {result['run_dir']}/MODEL_CARD.md")
