"""``pneumo predict``, ``pneumo export`` and ``pneumo serve``: use a trained model."""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import typer

from pneumo.cli.output import DEVICE_HELP, fail, print_table
from pneumo.data.records import is_junk

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".dcm", ".dicom"})
FORMATS = ("table", "json", "csv")
WORKER_STARTUP_S = 180


def register(app: typer.Typer) -> None:
    """Add the commands of this module to the top-level ``pneumo`` app."""
    app.command()(models)
    app.command()(predict)
    app.command()(export)
    app.command()(serve)


def _is_image_file(path: Path) -> bool:
    """An image suffix, or no suffix and the DICOM magic (DICOMDIR exports name files ``IM000001``)."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    if path.suffix:
        return False
    try:
        with path.open("rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def iter_image_files(paths: Iterable[Path], skipped: list[Path] | None = None) -> Iterator[Path]:
    """Files named on the command line as given; folders walked (sorted) for image files, skipping hidden files and
    macOS archive leftovers (the Kaggle zip holds a ``__MACOSX`` copy of every image, none of them an image).
    Other files a walk passes over (not an image by name or content) are appended to ``skipped``."""
    for path in paths:
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and not is_junk(p.relative_to(path)))
            for p in files:
                if _is_image_file(p):
                    yield p
                elif skipped is not None:
                    skipped.append(p)
        else:
            yield path  # a missing or unreadable file is reported by the decoder, with its name


def _cam_path(out_dir: Path, source: Path, used: set[Path]) -> Path:
    candidate = out_dir / f"{source.stem}.cam.png"
    n = 1
    while candidate in used:
        candidate = out_dir / f"{source.stem}-{n}.cam.png"
        n += 1
    used.add(candidate)
    return candidate


def models(json_out: bool = typer.Option(False, "--json", help="Print the list as JSON.")) -> None:
    """The trained models shipped with pneumo: any command that takes a run folder takes one of these names."""
    from pneumo.inference import DISCLAIMER
    from pneumo.zoo import list_models, model_rows

    summaries = [m.summary() for m in list_models()]
    if json_out:
        typer.echo(json.dumps(summaries, indent=2))
        return
    print_table(model_rows(summaries))
    typer.echo(f"test: the official Kermany test split, 95 % CIs over patients. {DISCLAIMER}")


def predict(
    args: list[str] = typer.Argument(
        ...,
        metavar="[MODEL] IMAGE",
        help="A run folder, .onnx export or shipped model name (`pneumo models`; left out: the default shipped "
        "model), then image files (JPEG, PNG, DICOM, ...) or folders to walk.",
    ),
    fmt: str = typer.Option("table", "--format", "-f", help="table | json | csv"),
    cam: Path | None = typer.Option(None, "--cam", help="Write Grad-CAM overlays (<name>.cam.png) into this folder."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    device: str = typer.Option("cpu", "--device", help=f"{DEVICE_HELP}; ONNX models run on the CPU."),
) -> None:
    """Predict images; a bad file is reported on stderr and skipped (exit code 1 if any failed). The model used and
    the research-use-only notice go to stderr."""
    from pneumo.data.decode import ImageDecodeError
    from pneumo.inference import DISCLAIMER, ModelLoadError, Predictor
    from pneumo.utils.atomic import write_bytes
    from pneumo.utils.progress import progress_bar
    from pneumo.zoo import DEFAULT_ALIAS, describe, names_a_model

    if fmt not in FORMATS:
        fail(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    model = args[0] if names_a_model(args[0]) else DEFAULT_ALIAS
    images = [Path(a) for a in (args[1:] if model is args[0] else args)]
    try:
        predictor = Predictor.load(model, batch_size=batch_size, device=device)  # checks the device too
    except (ModelLoadError, OSError) as exc:
        fail(str(exc))
    if not images:
        fail(f"no images given after the model {model}: pneumo predict [MODEL] IMAGES...")
    typer.echo(f"model: {describe(model, predictor.model_id)}. {DISCLAIMER}", err=True)
    if cam is not None and predictor.explain_unavailable is not None:
        fail(f"--cam: {predictor.explain_unavailable}")
    if cam is not None:  # checked before any work: a file where the folder goes, or no parent folder
        try:
            cam.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            fail(f"--cam {cam}: cannot create this folder ({exc.strerror or exc})")
    results, n_failed, used_cam_paths = [], 0, set()
    cam_paths: list[Path | None] = []  # beside each result, with --cam (None: its overlay failed)
    skipped: list[Path] = []
    files = list(iter_image_files(images, skipped))
    if skipped:  # a .webp or .gif in a walked folder would otherwise vanish without a word
        typer.echo(f"skipped {len(skipped)} file(s) that are not images, e.g. {skipped[0]}", err=True)
    if not files:
        fail(f"no image files found in {', '.join(map(str, images))}", code=1)
    # A bar on stderr once there is more than one batch (stdout stays the table, JSON or CSV).
    bar = progress_bar(total=len(files), unit="img", desc="predict", disable=len(files) <= batch_size)
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        prepared = []
        for path in chunk:
            try:
                prepared.append(predictor.prepare(path, keep_original=cam is not None))
            except ImageDecodeError as exc:
                typer.echo(f"error: {exc}", err=True)
                n_failed += 1
            except Exception as exc:  # a decoder's unexpected error loses this file, not the whole batch
                typer.echo(f"error: {path}: {type(exc).__name__}: {exc}", err=True)
                n_failed += 1
        results.extend(predictor.predict_prepared(prepared))
        if cam is not None:
            for image in prepared:
                cam_paths.append(_cam_path(cam, Path(image.source), used_cam_paths))
                try:
                    write_bytes(cam_paths[-1], predictor.explain_prepared(image).overlay_png)
                except Exception as exc:  # this overlay is lost, not the results of every image
                    typer.echo(f"error: {image.source}: Grad-CAM overlay: {type(exc).__name__}: {exc}", err=True)
                    cam_paths[-1] = None
                    n_failed += 1
        bar.update(len(chunk))
    bar.close()
    _print_results(results, fmt, predictor.class_names, cam_paths)
    if unlike := [r.source for r in results if r.warning]:
        more = f" and {len(unlike) - 5} more" if len(unlike) > 5 else ""
        typer.echo(
            f"warning: {len(unlike)} of {len(results)} image(s) are unlike the chest X-rays the model was trained on "
            f"(in_distribution false), their labels are unreliable: {', '.join(unlike[:5])}{more}",
            err=True,
        )
    if n_failed:
        typer.echo(f"{n_failed} of {len(files)} files failed", err=True)
        raise typer.Exit(1)


def _print_results(results: list, fmt: str, class_names: tuple[str, ...], cam_paths: list[Path | None]) -> None:
    """One row per result; with ``cam_paths`` (one per result) a ``cam`` column names each overlay (empty: failed)."""
    cams = {"cam": [str(p) if p else "" for p in cam_paths]} if cam_paths else {}
    if fmt == "json":
        items = [r.to_dict() for r in results]
        for item, path in zip(items, cams.get("cam", [None] * len(items)), strict=True):
            if path is not None:
                item["cam"] = path
        typer.echo(json.dumps(items, indent=2))
        return
    rows = []
    for i, r in enumerate(results):
        row = {"file": r.source, "label": r.label}
        row.update({f"p_{c}": r.probabilities[c] for c in class_names})
        row.update({"threshold": r.threshold, "in_distribution": r.in_distribution, "ood_score": r.ood_score})
        row.update({k: v[i] for k, v in cams.items()})
        rows.append(row)
    if fmt == "csv":
        fields = ["file", "label", *(f"p_{c}" for c in class_names), "threshold", "in_distribution", "ood_score"]
        fields += [*cams, "reason"]
        for row, r in zip(rows, results, strict=True):
            row["reason"] = r.reason or ""
        writer = csv.DictWriter(sys.stdout, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return
    if rows and all(r["in_distribution"] is None for r in rows):
        for row in rows:
            del row["in_distribution"], row["ood_score"]
    print_table(rows)


def export(
    model: Path = typer.Argument(..., help="Run folder or shipped model name (`pneumo models`)."),
    onnx_path: Path = typer.Option(..., "--onnx", help="ONNX file to write."),
    opset: int = typer.Option(17, "--opset", min=17),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Check ONNX vs PyTorch within 1e-4."),
) -> None:
    """Export a run to ONNX (dynamic batch; preprocessing, classes, threshold and more in its metadata)."""
    from pneumo.inference import ModelLoadError
    from pneumo.inference.onnx import ExportError, export_onnx

    try:
        out = export_onnx(model, onnx_path, opset=opset, verify=verify)
    except (ModelLoadError, ExportError) as exc:
        fail(str(exc))
    except OSError as exc:  # its message alone names a path, not what was being done
        fail(f"--onnx {onnx_path}: cannot write the export ({exc.strerror or exc})")
    typer.echo(f"wrote {out}")


def service_problem(model: str, limits: dict) -> str | None:
    """Why the service could not start with this model and these settings (None: it can). Run in a child process."""
    from pneumo.inference import ModelLoadError
    from pneumo.serve.app import create_app

    try:
        create_app(Path(model), **limits)
    except (ModelLoadError, OSError, ValueError) as exc:
        return str(exc)
    return None


def serve(
    model: Path = typer.Argument(..., help="Run folder, .onnx export or shipped model name (`pneumo models`)."),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port"),
    workers: int = typer.Option(1, "--workers", min=1, help="Processes (each loads the model)."),
    max_upload_mb: float = typer.Option(20.0, "--max-upload-mb", min=0.001, help="Largest accepted upload (MB)."),
    max_pixels: int | None = typer.Option(
        None, "--max-pixels", min=1, help="Largest accepted image in pixels (default 25,000,000)."
    ),
    max_concurrency: int = typer.Option(2, "--max-concurrency", min=1, help="Inferences at once per process."),
    max_waiting: int = typer.Option(
        32, "--max-waiting", min=0, help="Uploads held waiting for the model per process; more get 503 at once."
    ),
    timeout_s: float = typer.Option(30.0, "--timeout", min=0.001, help="Seconds before a request gets 503."),
    upload_timeout_s: float = typer.Option(
        30.0, "--upload-timeout", min=0.001, help="Seconds for an upload's body to arrive; slower ones get 408."
    ),
    device: str = typer.Option("cpu", "--device", help=f"{DEVICE_HELP}; ONNX models run on the CPU."),
    refuse_ood: bool = typer.Option(
        False,
        "--refuse-ood",
        help="Answer 422 for an image the out-of-distribution check flags (default: 200 with "
        "in_distribution false and a reason).",
    ),
) -> None:
    """Serve the model over HTTP (web page at /, API docs at /docs). Research use only."""
    import uvicorn

    from pneumo.inference import ModelLoadError
    from pneumo.serve.app import ENV_PREFIX, create_app
    from pneumo.zoo import resolve_model

    try:
        model = resolve_model(model)  # a shipped name becomes its folder, which the workers find too
    except ModelLoadError as exc:
        fail(str(exc))
    limits = {
        "max_upload_mb": max_upload_mb,
        "max_pixels": max_pixels,
        "max_concurrency": max_concurrency,
        "max_waiting": max_waiting,
        "timeout_s": timeout_s,
        "upload_timeout_s": upload_timeout_s,
        "device": device,
        "refuse_ood": refuse_ood,
    }
    limits = {k: v for k, v in limits.items() if v is not None}  # unset: the service's own default
    if workers > 1:
        # The supervisor serves nothing: it checks model, device and settings in a short-lived child process, so
        # that it does not hold a model, PyTorch and perhaps a CUDA context for as long as the workers run.
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            problem = pool.apply(service_problem, (str(model), limits))
        if problem:
            fail(problem)
    else:
        try:
            app = create_app(model, **limits)
        except (ModelLoadError, OSError, ValueError) as exc:
            fail(str(exc))
        uvicorn.run(app, host=host, port=port)
        return
    # Several processes need an importable factory; the settings travel in the environment.
    settings = {"MODEL": model.resolve(), **{k.upper(): v for k, v in limits.items()}}
    for stale in [k for k in os.environ if k.startswith(ENV_PREFIX)]:  # a setting not given is the default in the
        del os.environ[stale]  # workers too, as in the supervisor's check, not a value left in the environment
    os.environ.update({f"{ENV_PREFIX}{k}": str(v) for k, v in settings.items()})
    # Each worker loads the model (and PyTorch, for a run folder) before answering uvicorn's health check: give it time.
    uvicorn.run(
        "pneumo.serve.app:create_app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        timeout_worker_healthcheck=WORKER_STARTUP_S,
    )
