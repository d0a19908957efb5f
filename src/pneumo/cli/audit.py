"""``pneumo audit ...``: shortcut audits of a dataset and of a trained run, and the out-of-distribution detector."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from pneumo.cli.output import DEVICE_HELP, check_device, fail
from pneumo.data.preprocess import DEFAULT_IMAGE_SIZE

app = typer.Typer(help="Shortcut audits (data, model) and the out-of-distribution check.", no_args_is_help=True)

_ORIGINALS_HELP = (
    "Originals-subset folder or MANIFEST.csv (default: ../chest_xray_originals_subset next to the dataset, if "
    "present); 'none' to skip."
)


def _originals(value: str | None) -> str | Path | None:
    if value is None:
        return "auto"
    return None if value.lower() == "none" else Path(value)


@app.command()
def data(
    path: Path = typer.Argument(..., help="Dataset folder or CSV manifest."),
    task: list[str] | None = typer.Option(None, "--task", help="Task(s) to audit (default: all three)."),
    out: Path | None = typer.Option(
        None, "--out", help="Output folder (default: audits/audit-data-<dataset>-<hash> beside the image cache)."
    ),
    originals: str | None = typer.Option(None, "--originals", help=_ORIGINALS_HELP),
    image_size: int = typer.Option(
        DEFAULT_IMAGE_SIZE, "--image-size", min=8, help="Model size of the cached images for pixel cues."
    ),
    pixels: bool = typer.Option(True, "--pixels/--no-pixels", help="Compute intensity/border cues (decodes once)."),
    n_boot: int = typer.Option(1000, "--n-boot", min=1, help="Bootstrap replicates (patients resampled)."),
    seed: int = typer.Option(0, "--seed"),
    workers: int = typer.Option(0, "--workers", min=0, help="Decoding processes for the cache (0: this process)."),
    as_json: bool = typer.Option(False, "--json", help="Print audit-data.json instead of the table."),
) -> None:
    """How well acquisition metadata alone (file size, original geometry, intensity, border) predicts the label:
    one-feature AUCs and small models per task and split, with patient-bootstrap CIs."""
    from pneumo.data.records import DatasetError
    from pneumo.trust.data_audit import audit_data, default_audit_dir

    out = out or default_audit_dir(path)
    typer.echo(f"writing the audit to {out}", err=True)
    try:
        result = audit_data(
            path,
            tasks=task or None,
            originals=_originals(originals),
            image_size=image_size,
            pixels=pixels,
            n_boot=n_boot,
            seed=seed,
            out=out,
            workers=workers,
            progress=not as_json,
        )
    except (DatasetError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps({k: v for k, v in result.items() if k != "table"}, indent=2))
        return
    typer.echo(result["table"], nl=False)
    constant = ", ".join(f"{c} = {v:g}" for c, v in result["constant_cues"].items())
    if constant:
        typer.echo(f"constant over all {result['n_images']} images (not scored): {constant}")
    typer.echo(f"pixel cues: {result['pixel_cues']}")
    typer.echo(f"report: {out / 'audit-data.html'}")


@app.command()
def model(
    run_dir: Path = typer.Argument(..., help="Run folder written by `pneumo train`, or a shipped model's name."),
    originals: str | None = typer.Option(None, "--originals", help=_ORIGINALS_HELP),
    out: Path | None = typer.Option(None, "--out", help="Output folder (default: RUN_DIR/audit)."),
    perturbation: list[str] | None = typer.Option(None, "--perturbation", help="Only these perturbations."),
    cam_images: int = typer.Option(64, "--cam-images", min=0, help="Test images for Grad-CAM (0: skip)."),
    size_bins: int = typer.Option(10, "--size-bins", min=1, help="Quantile bins of the file size for matching."),
    aspect_bins: int = typer.Option(5, "--aspect-bins", min=1, help="Quantile bins of the aspect for matching."),
    n_boot: int = typer.Option(1000, "--n-boot", min=1, help="Bootstrap replicates (patients resampled)."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    as_json: bool = typer.Option(False, "--json", help="Print audit-model.json instead of the table."),
) -> None:
    """How much of a run's test AUC survives a metadata-matched subset, the resolution-normalised twin and
    perturbations; Grad-CAM energy in the centre vs the border. Writes RUN_DIR/audit/audit-model.{json,html}."""
    from pneumo.data.records import DatasetError
    from pneumo.trust.model_audit import audit_model, residual_summary
    from pneumo.zoo import writable_copy

    check_device(device)
    try:
        result = audit_model(
            writable_copy(run_dir),  # a shipped model is audited in a copy under ~/.cache/pneumo/models
            originals=_originals(originals),
            out=out,
            device=device,
            batch_size=batch_size,
            n_boot=n_boot,
            seed=seed,
            size_bins=size_bins,
            aspect_bins=aspect_bins,
            perturbations=perturbation or None,
            cam_images=cam_images,
        )
    except (DatasetError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps({k: v for k, v in result.items() if k != "table"}, indent=2, default=str))
        return
    typer.echo(result["table"], nl=False)
    m = result["matched"]
    if d := m.get("draws"):
        typer.echo(
            f"matched subset over {d['n']} matching draws: AUC {d['mean']:.3f} ± {d['sd']:.3f} "
            f"(range {d['min']:.3f}-{d['max']:.3f})"
        )
    if m.get("small"):
        typer.echo("warning: the matched subset is small (fewer than 30 images of a class); its AUC says little")
    if best := residual_summary(m.get("residual")):
        typer.echo(
            f"acquisition cues alone ({best[0]}, fitted on train): AUC {best[1]}; matching balances the matched cues "
            "only, so read the matched AUC beside this"
        )
    g = result["gradcam"]
    if "skipped" not in g:
        typer.echo(
            "Grad-CAM energy share (share/area): "
            + ", ".join(f"{k} {100 * v:.1f} % ({g['share_over_area'][k]:.2f})" for k, v in g["share"].items())
        )
    typer.echo(f"report: {Path(result['out']) / 'audit-model.html'}")


@app.command("ood-fit")
def ood_fit(
    run_dir: Path = typer.Argument(..., help="Run folder written by `pneumo train`."),
    method: str = typer.Option("multidepth-oe", "--method", help="multidepth-oe | mahalanobis-pca-tied (older)."),
    n_components: int = typer.Option(64, "--components", min=1, help="mahalanobis-pca-tied: at most this many PCs."),
    pass_rate: float | None = typer.Option(
        None, "--pass-rate", min=0.5, max=0.999, help="Validation share that passes (default 0.99; older method: 0.95)."
    ),
    negatives: Path | None = typer.Option(
        None, "--negatives", help="multidepth-oe: a folder or manifest of images that are NOT the training population."
    ),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
) -> None:
    """Fit the out-of-distribution detector on the run's train images, threshold it on its validation split and
    store it in RUN_DIR/checkpoint.json (used by predict, serve, evaluate and ONNX export)."""
    from pneumo.data.records import DatasetError
    from pneumo.trust.ood import fit_ood

    check_device(device)
    try:
        params = fit_ood(
            run_dir, device=device, batch_size=batch_size, method=method, n_components=n_components,
            pass_rate=pass_rate, negatives=negatives,
        )  # fmt: skip
    except (DatasetError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    typer.echo(
        f"{params['method']}: {params['n_features']} features; threshold {params['threshold']:.4g} passes "
        f"{100 * params['val_pass_rate']:.1f} % of {params['n_val']} validation images"
    )
    typer.echo(f'stored in {run_dir / "checkpoint.json"} ("ood")')


@app.command("ood")
def ood_audit(
    model: Path = typer.Argument(..., help="Run folder or .onnx export with an out-of-distribution check."),
    data: Path = typer.Option(..., "--data", help="A folder of images (walked) or a CSV manifest."),
    device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Share of the images of any folder or manifest that the model's out-of-distribution check flags (as predict
    and serve would)."""
    from pneumo.data.records import DatasetError
    from pneumo.inference import ModelLoadError
    from pneumo.trust.ood_audit import audit_ood

    check_device(device)
    try:
        r = audit_ood(model, data, device=device, batch_size=batch_size)
    except (DatasetError, ModelLoadError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps(r, indent=2))
        return
    for group, g in r["groups"].items():
        if len(r["groups"]) > 1:
            typer.echo(f"  {group}: {g['n_flagged']} of {g['n']} flagged ({100 * g['flagged_rate']:.1f} %)")
    typer.echo(
        f"{data}: {r['n_flagged']} of {r['n']} images flagged as out of distribution ({100 * r['flagged_rate']:.1f} %; "
        f"{r['method']}, threshold {r['threshold']:.4g})"
    )
    if r["n_unreadable"]:
        typer.echo(f"{r['n_unreadable']} unreadable file(s), e.g. {r['unreadable'][0]}", err=True)


@app.command("ood-rates")
def ood_rates_cmd(
    run_dir: Path = typer.Argument(..., help="Run folder with a fitted detector."),
    split: str = typer.Option("test", "--split", help="train | val | test of the run's own split."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
) -> None:
    """Share of a split's images that the detector flags (about 5 % expected on in-distribution data)."""
    from pneumo.data.records import DatasetError
    from pneumo.trust.ood import ood_rates

    check_device(device)
    try:
        r = ood_rates(run_dir, split, device=device)
    except (DatasetError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    if not r["available"]:
        fail(r["reason"])
    rate = 100 * r["flagged_rate"]
    typer.echo(f"{split}: {r['n_flagged']} of {r['n']} flagged ({rate:.1f} %), threshold {r['threshold']:.4g}")
