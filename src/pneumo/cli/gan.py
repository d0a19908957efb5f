"""``pneumo gan ...``: train an ACGAN, sample from it, write synthetic training images."""

from __future__ import annotations

from pathlib import Path

import typer

from pneumo.cli.output import DEVICE_HELP, check_device, fail, os_error

app = typer.Typer(help="ACGAN: train, sample, and write synthetic training images.", no_args_is_help=True)


@app.command()
def train(
    data: str | None = typer.Option(None, "--data", help="Dataset folder (Kaggle/pediatric layout) or CSV manifest."),
    image_size: int | None = typer.Option(None, "--image-size", help="Image size: power of two >= 16 (default 64)."),
    epochs: int | None = typer.Option(None, "--epochs", help="Total epochs (with --resume: the new total)."),
    out: Path | None = typer.Option(None, "--out", help="Run folder (default runs/acgan-<time>)."),
    seed: int | None = typer.Option(
        None, "--seed", help="Seed of initialisation, noise, data order and (unless split_seed is set) the split."
    ),
    config: Path | None = typer.Option(None, "--config", help="YAML config file (keys of pneumo.gan.GanConfig)."),
    overrides: list[str] = typer.Option([], "--set", help="Config override key=value (repeatable)."),
    resume: Path | None = typer.Option(
        None, "--resume", help="Continue this run folder from its last epoch (with --data: its dataset moved)."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Train the ACGAN on the train split; the discriminator's class head is exported to RUN/classifier."""
    from pydantic import ValidationError

    from pneumo.data.records import DatasetError
    from pneumo.gan.config import load_config
    from pneumo.gan.train import resume_gan, train_gan

    try:
        if resume is not None:
            if image_size or config or overrides or out or seed is not None:
                fail("with --resume only --epochs and --data (where the dataset moved) may be given: the run's "
                     "config.yaml is used")  # fmt: skip
            run = resume_gan(resume, epochs=epochs, data=data, progress=not quiet)
        else:
            cfg = load_config(config, overrides, data=data, image_size=image_size, epochs=epochs, seed=seed)
            run = train_gan(cfg, out, progress=not quiet)
    except (ValidationError, ValueError, DatasetError, FileNotFoundError, FileExistsError) as exc:
        fail(str(exc))
    except OSError as exc:
        fail(os_error(exc))
    typer.echo(f"GAN run: {run}")
    typer.echo(f"samples: {run / 'samples'}; classifier (discriminator class head): {run / 'classifier'}")


@app.command()
def sample(
    run_dir: Path = typer.Argument(..., help="GAN run folder."),
    class_name: str | None = typer.Option(None, "--class", help="normal | bacteria | virus (default: all, in rows)."),
    n: int = typer.Option(64, "--n", min=1, max=1024, help="Number of images (per class without --class)."),
    out: Path = typer.Option(Path("samples.png"), "--out", help="PNG file to write."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Write a labelled grid of generated images (EMA generator)."""
    from pneumo.gan.synth import sample_to_file

    try:
        path = sample_to_file(run_dir, out, class_name=class_name, n=n, seed=seed)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    typer.echo(f"wrote {path}")


@app.command()
def synth(
    run_dir: Path = typer.Argument(..., help="GAN run folder."),
    out: Path = typer.Option(..., "--out", help="Folder to write DIR/train/{NORMAL,PNEUMONIA}/ into."),
    per_class: int = typer.Option(..., "--per-class", min=0, help="Images per class."),
    seed: int = typer.Option(0, "--seed"),
    into_dataset: bool = typer.Option(
        False,
        "--into-dataset",
        help="Allow an --out folder that holds real images: every later run on that folder then trains on the "
        "generated images too, and refuses to start if its split validates or tests on a patient this GAN trained on "
        "(recorded in train/synthetic-<run>.provenance.json).",
    ),
) -> None:
    """Write SYNTHETIC training images (train/ only, never val or test) named synthetic-<run>-<class>-<i>.png."""
    from pneumo.gan.synth import write_synthetic_dataset

    try:
        paths = write_synthetic_dataset(run_dir, out, per_class, seed=seed, into_dataset=into_dataset)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    typer.echo(f"wrote {len(paths)} synthetic training images to {out / 'train'}")


@app.command()
def quality(
    run_dir: Path = typer.Argument(..., help="GAN run folder."),
    classifier: Path = typer.Option(..., "--classifier", help="A classifier run trained on real images."),
    split: str = typer.Option("val", "--split", help="Real images: train | val (never test)."),
    max_images: int | None = typer.Option(None, "--max-images", min=2, help="Use at most this many real images."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
    standing_batches: int = typer.Option(
        0, "--standing-batches", min=0, help="Recompute the EMA generator's BatchNorm statistics from N batches first."
    ),
) -> None:
    """Frechet distance / KID on the classifier's features (NOT Inception FID) and class agreement."""
    from pneumo.gan.quality import sample_quality

    check_device(device)
    try:
        result = sample_quality(
            run_dir, classifier, split=split, max_images=max_images, seed=seed, device=device,
            standing_batches=standing_batches,
        )  # fmt: skip
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    typer.echo(f"{result['n_images']} real ({split}) vs as many generated images, same classes")
    typer.echo(f"frechet distance: {result['frechet_distance']:.4f}")
    typer.echo(f"KID: {result['kid']['mean']:.5f} +- {result['kid']['std']:.5f}")
    if result["class_agreement"] is not None:
        agreement = result["class_agreement"]
        per_class = ", ".join(f"{k} {v:.3f}" for k, v in agreement["per_class"].items())
        typer.echo(f"class agreement: {agreement['overall']:.3f} ({per_class})")
        real = result["class_agreement_real"]
        typer.echo(f"class agreement of the real images at the GAN size: {real['overall']:.3f} (the reachable level)")
    typer.echo(result["note"])
