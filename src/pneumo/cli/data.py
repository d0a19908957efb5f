"""``pneumo data ...``: inspect, cache and synthesise datasets."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from pneumo.cli.output import fail, os_error, print_table

app = typer.Typer(help="Inspect, cache and synthesise datasets.", no_args_is_help=True)


SHOWN = 20  # rows of a list printed in text mode; --json has them all


@app.command()
def inspect(
    path: Path = typer.Argument(..., help="Dataset folder (Kaggle or pediatric layout) or CSV manifest."),
    as_json: bool = typer.Option(False, "--json", help="Print the full report as JSON."),
    strict: bool = typer.Option(False, "--strict", help="Exit with status 1 when a file is unreadable (pipelines)."),
) -> None:
    """Counts per split/label/subtype, patients, sizes, unreadable files, exact and near duplicates, leaks."""
    from pneumo.data.inspect import inspect_dataset
    from pneumo.data.records import DatasetError

    try:
        report = inspect_dataset(path, progress=not as_json)
    except DatasetError as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        _print_inspection(report)
    if strict and report["unreadable"]:
        fail(f"--strict: {len(report['unreadable'])} unreadable file(s) in {report['source']}", code=1)


def _print_inspection(report: dict) -> None:
    print_table(report["counts"], title=f"{report['n_images']} images in {report['source']}")
    p = report["patients"]
    typer.echo(f"patients: {p['n_patients']}; images per patient: {p['images_per_patient']}")
    typer.echo(f"width: {report['image_size']['width']}; height: {report['image_size']['height']}")
    d = report["duplicates"]
    typer.echo(
        f"exact duplicate groups: {d['n_groups']} ({d['n_cross_split_groups']} across splits, "
        f"{d['n_groups_several_patients']} under several patient ids)"
    )
    near = report["near_duplicates"]
    typer.echo(
        f"near duplicates (correlation >= {near['threshold']} at {near['thumbnail']} px, not byte-identical): "
        f"{near['n_pairs']} pairs ({near['n_cross_split_pairs']} across splits)"
    )
    for pair in near["pairs"][:SHOWN]:
        typer.echo(f"  {pair['similarity']:.4f}  {'  '.join(pair['paths'])}")
    if near["n_pairs"] > SHOWN:
        typer.echo(f"  ... and {near['n_pairs'] - SHOWN} more (--json lists every one)")
    if closest := near["closest_across_splits"]:
        typer.echo(f"closest pair across splits: {closest['similarity']:.4f}  {'  '.join(closest['paths'])}")
    cross = report["patients_in_several_splits"]
    typer.echo(f"patients in several splits: {cross['n']}")
    shown = list(cross["patients"].items())[:SHOWN]
    for patient, splits in shown:
        typer.echo(f"  {patient}: {', '.join(splits)}")
    if cross["n"] > len(shown):
        typer.echo(f"  ... and {cross['n'] - len(shown)} more (--json lists every one)")
    typer.echo(f"unreadable files: {len(report['unreadable'])}")
    for bad in report["unreadable"]:
        typer.echo(f"  {bad['path']}: {bad['reason']}")


@app.command()
def cache(
    path: Path = typer.Argument(..., help="Dataset folder or CSV manifest."),
    size: int | None = typer.Option(
        None, "--size", help="Square model size S in pixels (default: the model's, as `pneumo train` uses)."
    ),
    model: str = typer.Option("cnn", "--model", help="The model the cache is for (its default size)."),
    geometry: str = typer.Option("squash", help="squash | center-crop | letterbox"),
    workers: int = typer.Option(0, help="Decoding processes (0: in this process)."),
    cache_dir: Path | None = typer.Option(None, help="Cache root (default: $PNEUMO_CACHE_DIR or ~/.cache/pneumo)."),
) -> None:
    """Decode and resize every image once into the memory-mapped cache."""
    from pneumo.data.cache import ImageCache
    from pneumo.data.records import DatasetError, discover
    from pneumo.models.registry import preprocess_contract

    try:
        records = discover(path)
        contract = preprocess_contract(model, image_size=size, geometry=geometry)
    except (DatasetError, ValueError) as exc:
        fail(str(exc))
    try:
        cached = ImageCache(contract, cache_dir).build([r.path for r in records], workers=workers)
    except OSError as exc:
        fail(os_error(exc))
    typer.echo(
        f"cached {int(cached.ok.sum())} of {len(records)} images at {contract.image_size}px in {cached.file.parent}"
    )
    for bad, reason in cached.failures:
        typer.echo(f"skipped {bad}: {reason}", err=True)


@app.command()
def synth(
    out: Path = typer.Argument(..., help="Folder to write the synthetic dataset into."),
    n: int = typer.Option(600, "--n", min=40, max=10_000, help="Number of images."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Write a small SYNTHETIC radiograph-like dataset in the Kaggle layout (demos and tests only)."""
    from pneumo.data.synth import generate_dataset

    try:
        root = generate_dataset(out, n=n, seed=seed)
    except (ValueError, FileExistsError) as exc:
        fail(str(exc))
    typer.echo(f"wrote {n} synthetic images to {root}")
