"""``pneumo train``: parse, resolve the config, call :func:`pneumo.training.train` (or ``resume``), print the run.

Runs unchanged under ``torchrun --nproc_per_node N $(which pneumo) train ...`` (DistributedDataParallel).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from pneumo.cli.output import fail, os_error
from pneumo.data.tasks import TASKS


def train(
    data: Path | None = typer.Option(None, "--data", help="Dataset folder (Kaggle/pediatric layout) or CSV manifest."),
    task: str | None = typer.Option(None, "--task", help=f"{' | '.join(TASKS)} (default normal-pneumonia)."),
    model: str | None = typer.Option(
        None, "--model", help="A registered model: cnn, resnet18, resnet50, densenet121, ... (default cnn)."
    ),
    epochs: int | None = typer.Option(None, "--epochs", help="Number of epochs."),
    image_size: int | None = typer.Option(None, "--image-size", help="Square model input size S in pixels."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Images per step (per process under DDP)."),
    lr: float | None = typer.Option(None, "--lr", help="Peak learning rate of the head."),
    seed: int | None = typer.Option(
        None, "--seed", help="Seed of initialisation, data order, augmentation and (unless split_seed) the split."
    ),
    weights: str | None = typer.Option(
        None, "--weights", help="none | imagenet | PATH (state dict, .safetensors, or a pneumo run folder to transfer)."
    ),
    freeze: str | None = typer.Option(None, "--freeze", help="none | backbone | until:<stage> (e.g. until:layer3)."),
    dummy_class: bool | None = typer.Option(
        None, "--dummy-class/--no-dummy-class", help="Train with one extra out-of-task class (scored tasks only)."
    ),
    balance: str | None = typer.Option(None, "--balance", help="weights | sampler | none (class imbalance)."),
    config: Path | None = typer.Option(None, "--config", help="YAML config (e.g. a run's config.yaml)."),
    out: Path | None = typer.Option(None, "--out", help="Run folder (default runs/<task>-<model>-<timestamp>)."),
    overrides: list[str] | None = typer.Option(
        None, "--set", help="Override any setting: --set augment.rotation=10 (repeatable; YAML values)."
    ),
    synthetic_from: Path | None = typer.Option(
        None, "--synthetic-from", help="ACGAN run folder: add its generated images to the train split."
    ),
    synthetic_per_class: str | None = typer.Option(
        None, "--synthetic-per-class", help="Generated images per class (N) or 'balance' (top up to the largest)."
    ),
    resume: Path | None = typer.Option(
        None, "--resume", help="Continue the run in this folder from its last state (with --data: its dataset moved)."
    ),
) -> None:
    """Train a classifier; settings resolve as defaults < --config < flags < --set, saved to RUN_DIR/config.yaml."""
    from pneumo.runs.format import read_run_meta
    from pneumo.training import build_config
    from pneumo.training import resume as resume_run
    from pneumo.training import train as train_run
    from pneumo.trust.ood import fit_after_training

    flags = {
        "data": data,
        "task": task,
        "model": model,
        "epochs": epochs,
        "image_size": image_size,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "weights": weights,
        "freeze": freeze,
        "dummy_class": dummy_class,
        "balance": balance,
        "out": out,
    }
    if synthetic_from is not None or synthetic_per_class is not None:
        per_class = int(synthetic_per_class) if (synthetic_per_class or "").isdigit() else synthetic_per_class
        flags["synthetic"] = {"from_run": str(synthetic_from) if synthetic_from else None, "per_class": per_class}
    try:
        if resume is not None:
            given = [f"--{k.replace('_', '-')}" for k, v in flags.items() if v is not None and k != "data"]
            if given or config or overrides:
                fail(
                    f"--resume continues a run with its saved config (--data may say where its dataset moved); drop "
                    f"{', '.join(given) or '--config/--set'}"
                )
            run_dir = resume_run(resume, data=data, after=fit_after_training)
        else:
            as_text = {k: str(v) if isinstance(v, Path) else v for k, v in flags.items()}
            cfg = build_config(config_file=config, flags=as_text, overrides=overrides or ())
            run_dir = train_run(cfg, command=sys.argv, after=fit_after_training)
    except (FileExistsError, FileNotFoundError, ValueError) as exc:  # pneumo's own errors: pneumo.cli._Commands
        fail(str(exc))
    except OSError as exc:  # a full disk while caching or writing checkpoints: one line naming the file
        fail(os_error(exc))
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 speaks
        return
    try:
        best = read_run_meta(run_dir)["best"]
    except FileNotFoundError:
        best = {}
    typer.echo(f"run folder: {run_dir}")
    if best.get("epoch") is not None:
        typer.echo(f"best epoch {best['epoch']}: validation ROC AUC {best['val_auc']}")
