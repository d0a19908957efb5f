"""``pneumo audit model``: how much of a trained model's test score survives when acquisition cues are taken away.

1. **Metadata-matched test subset**: classes resampled so that their original file size (and original aspect, where
   known for every image) have the same binned distribution (:mod:`pneumo.trust.matching`); AUC beside the full test.
2. **Resolution-normalised twin**: the same test images from another copy (``chest_xray_originals_subset``: made
   from the originals by another path, aspect kept), through the run's own preprocessing contract; paired AUC
   difference (patient bootstrap).
3. **Perturbations** (:mod:`pneumo.trust.perturb`): change in AUC for each, paired.
4. **Grad-CAM energy**: share of the map inside the central box vs the border band and corners.

Without a manifest that knows original sizes, matching falls back to the stored files' byte size and aspect.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

import pneumo
from pneumo.data.preprocess import normalize
from pneumo.data.records import discover
from pneumo.evaluation import MetricSuite, bootstrap_ci
from pneumo.evaluation.writers import relative_path
from pneumo.runs.context import RunContext, load_model, open_run, split_images
from pneumo.runs.format import weights_digest
from pneumo.trust import perturb
from pneumo.trust.forward import forward_arrays, task_probabilities
from pneumo.trust.matching import balance_tests, matched_subset
from pneumo.trust.metadata import MANIFEST, file_cues, resolve_originals
from pneumo.trust.regions import regions
from pneumo.trust.scoring import ci_dict, paired_auc
from pneumo.utils.atomic import atomic_open, write_json
from pneumo.utils.device import resolve_device

AUTO = "auto"
# The matched subset is one random draw per cell; the AUC of this many draws shows how much that draw moves it
# (the bootstrap CI of the first draw resamples patients, not the matching).
MATCH_DRAWS = 20
# Below this many images of a class in the matched subset its AUC is too imprecise to read much into: said so.
SMALL_MATCHED_CLASS = 30
MATCHED_IMAGES = "matched-images.csv"


def _auc(
    y: np.ndarray, probs: np.ndarray, groups: Sequence[Any], names: Sequence[str], n_boot: int, seed: int
) -> dict[str, float] | None:
    if len(np.unique(y)) < len(names):
        return None
    return ci_dict(bootstrap_ci(y, probs, list(groups), MetricSuite(tuple(names)), n_boot=n_boot, seed=seed)["roc_auc"])


Decide = Callable[[np.ndarray], np.ndarray]


def _argmax(probs: np.ndarray) -> np.ndarray:
    return probs.argmax(1)


def deployed_decisions(meta: dict[str, Any], class_names: Sequence[str]) -> tuple[Decide, str]:
    """How the run labels an image when deployed, as a function of its (untempered) task probabilities, and its name.

    Binary runs that ``pneumo evaluate`` has fitted: the validated threshold on temperature-scaled probabilities (as
    ``Predictor`` decides); otherwise argmax.
    """
    op, temperature = meta.get("operating_point") or {}, meta.get("temperature")
    if len(class_names) != 2 or op.get("threshold") is None:
        return _argmax, "argmax"
    positive = class_names.index(op["positive_class"]) if op.get("positive_class") in class_names else 1
    threshold, t = float(op["threshold"]), float(temperature or 1.0)

    def decide(probs: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", over="ignore"):
            logit = np.log(probs[:, positive]) - np.log(probs[:, 1 - positive])  # the logit difference
            scaled = 1.0 / (1.0 + np.exp(-logit / t))
        return np.where(scaled >= threshold, positive, 1 - positive)

    return decide, f"{class_names[positive]} when p >= {threshold:.4g} (temperature {t:.3g})"


def _paired(
    y: np.ndarray,
    ref: np.ndarray,
    new: np.ndarray,
    groups: Sequence[Any],
    names: Sequence[str],
    n_boot: int,
    seed: int,
    decide: Decide = _argmax,
) -> dict[str, Any]:
    cis = paired_auc(y, ref, new, list(groups), names, n_boot=n_boot, seed=seed)
    return {
        "auc_reference": ci_dict(cis["roc_auc_reference"]),
        "auc": ci_dict(cis["roc_auc"]),
        "delta_auc": ci_dict(cis["delta_roc_auc"]),
        "prediction_changed": float(np.mean(ref.argmax(1) != new.argmax(1))),
        "decision_changed": float(np.mean(decide(ref) != decide(new))),
        "mean_abs_probability_change": float(np.mean(np.abs(ref - new).max(axis=1))),
    }


def matched_section(
    ctx: RunContext,
    test_records: Sequence[Any],
    y: np.ndarray,
    probs: np.ndarray,
    groups: np.ndarray,
    originals_manifest: Path | None,
    *,
    size_bins: int,
    aspect_bins: int,
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    manifest = ctx.dataset_root / MANIFEST
    cues = file_cues(test_records, manifest if manifest.is_file() else None, originals_manifest)
    size = "orig_bytes" if np.isfinite(cues.values["orig_bytes"]).any() else "stored_bytes"
    known = np.isfinite(cues.values[size])
    aspect = None
    if np.isfinite(cues.values["orig_aspect"])[known].all():
        aspect = "orig_aspect"
    elif len(np.unique(cues.values["stored_aspect"][known])) > 1:
        aspect = "stored_aspect"
    names = [size] + ([aspect] if aspect else [])
    bins = [size_bins] + ([aspect_bins] if aspect else [])
    values = cues.matrix(names)
    match = matched_subset(values, y, n_bins=bins, num_classes=len(ctx.class_names), seed=seed)
    idx = match.index
    class_counts = {c: int((y[idx] == i).sum()) for i, c in enumerate(ctx.class_names)}
    balance = {
        cue: {
            "full": balance_tests(values[match.usable, j], y[match.usable]),
            "matched": balance_tests(values[idx, j], y[idx]),
        }
        for j, cue in enumerate(names)
    }
    return {
        "cues": names,
        "seed": seed,
        "residual": residual_cues(ctx, test_records, y, groups, idx, originals_manifest, n_boot=n_boot, seed=seed),
        "sources": {c: cues.sources[c] for c in names},
        "n_bins": bins,
        "n_usable": len(match.usable),
        "n": len(idx),
        "cells_used": match.cells_used,
        "class_counts": class_counts,
        "small": min(class_counts.values()) < SMALL_MATCHED_CLASS,
        "auc": _auc(y[idx], probs[idx], groups[idx], ctx.class_names, n_boot, seed) if len(idx) else None,
        "draws": _matching_draws(values, y, probs, bins, ctx.class_names, seed),
        "balance": balance,
        "index": idx.tolist(),
        "values": {c: values[:, j].tolist() for j, c in enumerate(names)},
    }


def residual_cues(
    ctx: RunContext,
    test_records: Sequence[Any],
    y: np.ndarray,
    groups: np.ndarray,
    idx: np.ndarray,
    originals_manifest: Path | None,
    *,
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """What acquisition cues alone still do on the matched subset, beside the full test split: each cue (oriented on
    the run's training images) and the data audit's models on cues (fitted on them), as in ``pneumo audit data``.

    Matching balances the matched cues only; others (original resolution, file size per pixel, pixel statistics) can
    still separate the classes inside the subset. The model's matched AUC is read against these."""
    from pneumo.trust.data_audit import collect_cues, constant_value, score_cues

    train_records, train_y = ctx.task.select([r for r in ctx.records if r.split == "train"])
    records = [*train_records, *test_records, *(test_records[i] for i in idx)]
    targets = np.concatenate([np.asarray(train_y, dtype=np.int64), y, y[idx]])
    patients = np.concatenate([np.array([r.patient_id for r in train_records], dtype=object), groups, groups[idx]])
    split_of = np.array(["train"] * len(train_records) + ["test"] * len(y) + ["matched"] * len(idx))
    manifest = ctx.dataset_root / MANIFEST
    table = collect_cues(
        records,
        manifest=manifest if manifest.is_file() else None,
        originals_manifest=originals_manifest,
        cache_root=ctx.cache_root,
        progress=False,
    )
    constant = {cue for cue, values in table.values.items() if constant_value(values) is not None}
    cues, models = score_cues(
        table, targets, patients, split_of, ["train", "test", "matched"], ctx.class_names, skip=constant,
        n_boot=n_boot, seed=seed,
    )  # fmt: skip

    def aucs(entry: dict[str, Any]) -> dict[str, Any]:
        return {s: entry["splits"][s]["auc"] for s in ("test", "matched")}

    return {"cues": {c: aucs(e) for c, e in cues.items()}, "models": {m: aucs(e) for m, e in models.items()}}


def _matching_draws(
    values: np.ndarray, y: np.ndarray, probs: np.ndarray, bins: list[int], names: Sequence[str], seed: int
) -> dict[str, Any] | None:
    """Test AUC (point estimate) of :data:`MATCH_DRAWS` matched subsets drawn with seeds ``seed, seed + 1, ...``."""
    aucs = []
    for d in range(MATCH_DRAWS):
        idx = matched_subset(values, y, n_bins=bins, num_classes=len(names), seed=seed + d).index
        if len(np.unique(y[idx])) == len(names):
            aucs.append(float(MetricSuite(tuple(names))(y[idx], probs[idx])["roc_auc"]))
    if len(aucs) < 2:
        return None
    a = np.asarray(aucs)
    stats = {"mean": a.mean(), "sd": a.std(ddof=1), "min": a.min(), "max": a.max()}
    return {"n": len(a), **{k: float(v) for k, v in stats.items()}}


def twin_section(
    ctx: RunContext,
    model: torch.nn.Module,
    test_records: Sequence[Any],
    y: np.ndarray,
    probs: np.ndarray,
    groups: np.ndarray,
    twin_root: Path,
    *,
    device: torch.device,
    batch_size: int,
    n_boot: int,
    seed: int,
    decide: Decide = _argmax,
) -> dict[str, Any]:
    by_name = {r.name: r for r in discover(twin_root)}
    wanted = [replace(by_name[r.name], split="test") for r in test_records if r.name in by_name]
    if not wanted:
        return {"skipped": f"none of the {len(test_records)} test images is in {twin_root}"}
    twin = ctx.split("test", wanted)
    position = {r.name: i for i, r in enumerate(test_records)}
    pairs = np.array([position[r.name] for r in twin.records], dtype=np.int64)
    raw, _ = forward_arrays(model, split_images(twin), ctx.contract, batch_size=batch_size, device=device)
    twin_probs = task_probabilities(raw, len(ctx.class_names))
    out: dict[str, Any] = {"originals": str(twin_root), "n_pairs": len(pairs)}
    if len(np.unique(y[pairs])) < len(ctx.class_names):
        return {**out, "skipped": "the paired images do not contain every class"}
    out.update(_paired(y[pairs], probs[pairs], twin_probs, groups[pairs], ctx.class_names, n_boot, seed, decide))
    return out


def perturbation_section(
    ctx: RunContext,
    model: torch.nn.Module,
    images: np.ndarray,
    y: np.ndarray,
    probs: np.ndarray,
    groups: np.ndarray,
    names: Sequence[str] | None,
    *,
    device: torch.device,
    batch_size: int,
    n_boot: int,
    seed: int,
    decide: Decide = _argmax,
) -> dict[str, Any]:
    out = {}
    for p in perturb.select(names):
        changed = perturb.apply(images, p, seed=seed)
        raw, _ = forward_arrays(model, changed, ctx.contract, batch_size=batch_size, device=device)
        new = task_probabilities(raw, len(ctx.class_names))
        out[p.name] = {
            "description": p.description,
            **pixel_change(images, changed),
            **_paired(y, probs, new, groups, ctx.class_names, n_boot, seed, decide),
        }
    return out


def pixel_change(before: np.ndarray, after: np.ndarray) -> dict[str, float]:
    """How much a perturbation changed its input: the mean absolute change of a pixel (0-255 scale) and the share
    of images with at least one changed pixel. A probe can do nothing at a small model size (a blur of a fraction
    of a pixel rounds back to the same values); an unchanged AUC then says nothing about robustness."""
    diff = np.abs(after.astype(np.int16) - before.astype(np.int16)).reshape(len(before), -1)
    return {"mean_abs_pixel_change": float(diff.mean()), "images_changed": float((diff.max(axis=1) > 0).mean())}


def energy_shares(maps: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray, int]:
    """Per image, the share of a non-negative ``N x S x S`` map's total inside each region (maps summing to 0 are
    skipped); also the mean of the maps normalised to sum 1, and how many maps had energy."""
    heat = np.clip(np.nan_to_num(np.asarray(maps, dtype=np.float64)), 0, None)
    mass = heat.sum(axis=(1, 2))
    heat = heat[mass > 0] / mass[mass > 0, None, None]
    reg = regions(maps.shape[-1])
    shares = {k: heat[:, getattr(reg, k)].sum(axis=1) for k in ("centre", "border", "corners")}
    mean_map = heat.mean(axis=0) if len(heat) else np.zeros(maps.shape[-2:])
    return shares, mean_map, len(heat)


def _layer_name(model: torch.nn.Module, layer: torch.nn.Module) -> str:
    return next((name for name, module in model.named_modules() if module is layer), type(layer).__name__)


def gradcam_section(
    ctx: RunContext,
    model: torch.nn.Module,
    images: np.ndarray,
    decided: np.ndarray,
    *,
    max_images: int,
    device: torch.device,
    batch_size: int,
    seed: int,
) -> dict[str, Any]:
    """Mean share of Grad-CAM energy per region (pytorch-grad-cam, the model's ``cam_target_layer``, target: the
    class ``decided`` for each image, as deployed) over up to ``max_images`` test images drawn with the seed."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    n = min(max_images, len(images))
    chosen = np.sort(np.random.default_rng(seed).choice(len(images), size=n, replace=False))
    maps = []
    model.eval().to(device)
    with torch.enable_grad(), GradCAM(model=model, target_layers=[model.cam_target_layer]) as cam:
        for start in range(0, n, batch_size):
            rows = chosen[start : start + batch_size]
            x = normalize(torch.from_numpy(images[rows]).to(device), ctx.contract)
            if int(getattr(model, "in_chans", 1)) != 1:
                x = x.expand(-1, model.in_chans, -1, -1)
            maps.append(cam(input_tensor=x, targets=[ClassifierOutputTarget(int(decided[i])) for i in rows]))
    model.zero_grad(set_to_none=True)
    stack = np.concatenate(maps) if maps else np.zeros((0, *images.shape[-2:]))
    shares, mean_map, used = energy_shares(stack)
    reg = regions(images.shape[-1])
    area = {k: reg.area(k) for k in shares}
    mean_share = {k: float(v.mean()) if used else math.nan for k, v in shares.items()}
    return {
        "n_images": n,
        "n_with_energy": used,
        "target": "decided class",
        "layer": _layer_name(model, model.cam_target_layer),
        "share": mean_share,
        "area": area,
        "share_over_area": {k: mean_share[k] / area[k] for k in shares},
        "mean_map": mean_map,
        "masks": {k: getattr(reg, k) for k in shares},
    }


def audit_model(
    run_dir: str | Path,
    *,
    originals: str | Path | None = AUTO,
    out: str | Path | None = None,
    device: str = "cpu",
    batch_size: int = 64,
    n_boot: int = 1000,
    seed: int = 0,
    size_bins: int = 10,
    aspect_bins: int = 5,
    perturbations: Sequence[str] | None = None,
    cam_images: int = 64,
    plots: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Run the four checks on the run's test split; writes ``audit-model.json`` and ``audit-model.html`` to
    ``out`` (default ``RUN_DIR/audit``) and returns the result.

    ``originals``: the folder of the resolution-normalised twin (``"auto"``: the ``chest_xray_originals_subset``
    next to the run's dataset, when present; ``None``: skip the twin). ``perturbations``: names (default all, see
    :func:`pneumo.trust.perturb.default_perturbations`). ``cam_images``: how many test images get Grad-CAM (0: none).
    """
    ctx = open_run(run_dir)
    fitted_on = (ctx.meta.get("operating_point") or {}).get("weights_sha256")
    if fitted_on and fitted_on != weights_digest(ctx.run_dir):  # as predict and serve refuse it
        raise ValueError(
            f"{ctx.run_dir}: the threshold and temperature were fitted on other weights than best.safetensors; fit "
            f"them again with `pneumo evaluate {ctx.run_dir}`"
        )
    dev = resolve_device(device)
    model = load_model(ctx, dev)
    test = ctx.split("test", progress=progress)
    images = split_images(test)
    y, groups = test.targets, np.array(test.groups, dtype=object)
    raw, _ = forward_arrays(model, images, ctx.contract, batch_size=batch_size, device=dev)
    probs = task_probabilities(raw, len(ctx.class_names))
    twin_root, orig_manifest = resolve_originals(originals, ctx.dataset_root)
    decide, decision_rule = deployed_decisions(ctx.meta, ctx.class_names)

    result: dict[str, Any] = {
        "pneumo_version": pneumo.__version__,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "run": ctx.run_dir.name,
        "run_dir": str(ctx.run_dir),
        "task": ctx.task.name,
        "class_names": ctx.class_names,
        "preprocess": ctx.contract.to_dict(),
        "device": str(dev),
        "bootstrap": {"n_boot": n_boot, "seed": seed, "resampled": "patients", "confidence": 0.95},
        "decision_rule": decision_rule,
        "test": {
            "n": len(test),
            "n_patients": len(set(test.groups)),
            "class_counts": {c: int((y == i).sum()) for i, c in enumerate(ctx.class_names)},
            "auc": _auc(y, probs, groups, ctx.class_names, n_boot, seed),
        },
    }
    result["matched"] = matched_section(
        ctx,
        test.records,
        y,
        probs,
        groups,
        orig_manifest,
        size_bins=size_bins,
        aspect_bins=aspect_bins,
        n_boot=n_boot,
        seed=seed,
    )
    if twin_root is None:
        result["twin"] = {"skipped": "no originals folder (pass --originals PATH)"}
    else:
        result["twin"] = twin_section(
            ctx,
            model,
            test.records,
            y,
            probs,
            groups,
            twin_root,
            device=dev,
            batch_size=batch_size,
            n_boot=n_boot,
            seed=seed,
            decide=decide,
        )
    result["matched"]["images"] = [
        relative_path(test.records[i].path, ctx.dataset_root) for i in result["matched"]["index"]
    ]
    result["perturbations"] = perturbation_section(
        ctx, model, images, y, probs, groups, perturbations, device=dev, batch_size=batch_size, n_boot=n_boot,
        seed=seed, decide=decide,
    )  # fmt: skip
    from pneumo.inference.gradcam import cam_unavailable_reason  # pulls in pytorch-grad-cam and matplotlib

    cam = None
    if cam_images <= 0:
        result["gradcam"] = {"skipped": "cam_images = 0"}
    elif (reason := cam_unavailable_reason(model, ctx.contract.image_size)) is not None:
        result["gradcam"] = {"skipped": reason}
    else:
        cam = gradcam_section(
            ctx, model, images, decide(probs), max_images=cam_images, device=dev, batch_size=16, seed=seed
        )
        result["gradcam"] = {k: v for k, v in cam.items() if k not in ("mean_map", "masks")}
    out_dir = Path(out) if out is not None else ctx.run_dir / "audit"
    write_outputs(out_dir, result, ctx, y, cam, plots=plots)
    result["out"] = str(out_dir)
    return result


PIXEL_COLUMN = "mean pixel change (0-255)"
SUMMARY_COLUMNS = ["check", "n", "AUC", "change", PIXEL_COLUMN]


def summary_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows ``{check, n, AUC, change, pixel change}`` for printing and for the report; a perturbation that changed
    no pixel at this model size says so in its name."""
    rows = [{"check": "full test", "n": result["test"]["n"], "AUC": result["test"]["auc"], "change": None}]
    m = result["matched"]
    rows.append({"check": f"matched on {' + '.join(m['cues'])}", "n": m["n"], "AUC": m["auc"], "change": None})
    t = result["twin"]
    if "skipped" not in t:
        rows.append(
            {"check": "resolution-normalised twin", "n": t["n_pairs"], "AUC": t["auc"], "change": t["delta_auc"]}
        )
    for name, p in result["perturbations"].items():
        check = name if p["images_changed"] > 0 else f"{name} (changed no pixel at this size)"
        rows.append(
            {
                "check": check,
                "n": result["test"]["n"],
                "AUC": p["auc"],
                "change": p["delta_auc"],
                PIXEL_COLUMN: p["mean_abs_pixel_change"],
            }
        )
    return rows


def write_outputs(
    out: Path, result: dict[str, Any], ctx: RunContext, y: np.ndarray, cam: dict[str, Any] | None, *, plots: bool
) -> None:
    from pneumo.evaluation.compare import compare_table
    from pneumo.evaluation.report import write_html_report

    out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Path] = {}
    if plots:
        from pneumo.trust import plots as tplots

        bars = [{"name": r["check"], **r["change"]} for r in summary_rows(result) if r["change"] is not None]
        if bars:
            figures["Change in test AUC per check (paired patient-bootstrap 95 % CI)"] = tplots.delta_bars(
                bars, out / "auc-changes.png", "AUC(perturbed) - AUC(as stored)"
            )
        m = result["matched"]
        values = {c: np.asarray(v, dtype=np.float64) for c, v in m["values"].items()}
        figures["Matching cues on the full test split"] = tplots.cue_histograms(
            values, y, ctx.class_names, out / "matching-full.png", "full test"
        )
        idx = np.asarray(m["index"], dtype=np.int64)
        if idx.size:
            figures["Matching cues on the matched subset"] = tplots.cue_histograms(
                {c: v[idx] for c, v in values.items()}, y[idx], ctx.class_names, out / "matching-matched.png", "matched"
            )
        if cam is not None and cam["n_with_energy"]:
            figures["Mean Grad-CAM map (energy-normalised) with the regions"] = tplots.mean_heatmap(
                cam["mean_map"], cam["masks"], out / "gradcam-mean.png", f"mean Grad-CAM, {cam['n_with_energy']} images"
            )
    rows = [
        {"metric": "roc_auc", "check": r["check"], "n": r["n"], **r["AUC"]} for r in summary_rows(result) if r["AUC"]
    ]
    rows += [
        {"metric": "delta_roc_auc", "check": r["check"], "n": r["n"], **r["change"]}
        for r in summary_rows(result)
        if r["change"]
    ]
    table = compare_table(summary_rows(result), SUMMARY_COLUMNS, markdown=True)
    result["table"] = table
    sections = {"Summary": table, **explanations(result)}
    limitations = [
        "The matched subset is smaller than the test split, so its CI is wider; a drop within the CIs is no evidence "
        "either way.",
        "Perturbations are single fixed strengths; a model may fail at other strengths or combinations.",
        "Grad-CAM shows where gradients of the class score concentrate, not a proof of what the model relies on.",
    ]
    write_html_report(
        out / "audit-model.html",
        title=f"pneumo model audit: {result['run']}",
        config={k: result[k] for k in ("run_dir", "task", "preprocess", "bootstrap", "device")},
        data_summary={"test": result["test"]["class_counts"], "matched": result["matched"]["class_counts"]},
        metrics_table=rows,
        plots=figures,
        limitations=limitations,
        extra_sections=sections,
    )
    # The per-image cue values are for the plots; the matched rows (``index``) stay for reproducibility.
    saved = {**result, "matched": {k: v for k, v in result["matched"].items() if k != "values"}}
    write_json(out / "audit-model.json", saved)
    # the matched images, named as in predictions.csv: `pneumo compare A B --paired-with B --images` compares runs there
    with atomic_open(out / MATCHED_IMAGES, "w", newline="") as f:  # quoted as predictions.csv is (commas in names)
        csv.writer(f).writerows([["path"], *([path] for path in result["matched"]["images"])])


def _draws_text(m: dict[str, Any]) -> str:
    text = ""
    if d := m.get("draws"):
        text += (
            f" Which images a cell keeps is a random draw: over {d['n']} draws (seeds {m['seed']} to "
            f"{m['seed'] + MATCH_DRAWS - 1}) the AUC was {d['mean']:.3f} ± {d['sd']:.3f} (sd; range "
            f"{d['min']:.3f}-{d['max']:.3f}); the CI above resamples patients of the first draw only."
        )
    if m.get("small"):
        counts = ", ".join(f"{c} {n}" for c, n in m["class_counts"].items())
        text += (
            f" Warning: the matched subset is small ({counts}; fewer than {SMALL_MATCHED_CLASS} images of a class), "
            "so its AUC says little either way."
        )
    return text


def _point(ci: dict[str, float] | None) -> str:
    return "n/a" if not ci else f"{ci['point']:.3f}"


def residual_summary(residual: dict[str, Any] | None) -> tuple[str, str] | None:
    """``(model name, "full -> matched")`` of the strongest cue model on the matched subset, or None."""
    models = {k: v for k, v in (residual or {}).get("models", {}).items() if v.get("matched")}
    if not models:
        return None
    name = max(models, key=lambda k: models[k]["matched"]["point"])
    return name, f"{_point(models[name]['test'])} on the full test, {_point(models[name]['matched'])} matched"


def _residual_text(residual: dict[str, Any] | None) -> str:
    if not residual:
        return "other acquisition cues were not measured on the subset."
    strongest = sorted(
        ((cue, aucs) for cue, aucs in residual["cues"].items() if aucs.get("matched")),
        key=lambda item: -item[1]["matched"]["point"],
    )[:4]
    cues = "; ".join(f"{cue} {_point(a['test'])} -> {_point(a['matched'])}" for cue, a in strongest)
    best = residual_summary(residual)
    if not strongest and not best:
        return "no other acquisition cue could be scored on the subset (a class missing)."
    model = f" The best model on cues alone ({best[0]}, fitted on train) scores {best[1]}." if best else ""
    return (
        f"other cues still separate the classes inside the subset (AUC on the full test -> matched: {cues}).{model} "
        "The model's matched AUC is therefore not free of acquisition cues: read it beside that baseline, not as the "
        "score without the shortcut."
    )


def explanations(result: dict[str, Any]) -> dict[str, str]:
    m, t, g = result["matched"], result["twin"], result["gradcam"]
    balance = "; ".join(
        f"{cue}: KS p = {b['full']['ks_p']:.3g} on the full test, {b['matched']['ks_p']:.3g} matched"
        for cue, b in m["balance"].items()
    )
    texts = {
        "Metadata-matched subset": (
            f"Each class keeps min(count per class) images in every cell of {' x '.join(map(str, m['n_bins']))} "
            f"quantile bins of {', '.join(m['cues'])} ({m['n']} of {m['n_usable']} images kept, seed "
            f"{result['bootstrap']['seed']}). Class balance of the matched cues: {balance}. Only these are balanced: "
            f"{_residual_text(m.get('residual'))}" + _draws_text(m)
        ),
        "Resolution-normalised twin": t.get("skipped")
        or (
            f"{t['n_pairs']} test images taken from {t['originals']} (another copy made from the originals, aspect "
            f"kept) and put through this run's preprocessing contract. The argmax prediction changed for "
            f"{100 * t['prediction_changed']:.1f} % of them, the decision as deployed "
            f"({result.get('decision_rule', 'argmax')}) for "
            f"{100 * t.get('decision_changed', t['prediction_changed']):.1f} %."
        ),
    }
    if "skipped" not in g:
        texts["Grad-CAM energy"] = (
            f"Over {g['n_with_energy']} test images (target: the class decided as deployed, layer {g['layer']}): "
            f"centre box {100 * g['share']['centre']:.1f} % of the energy (area {100 * g['area']['centre']:.0f} %), "
            f"border band {100 * g['share']['border']:.1f} % (area {100 * g['area']['border']:.0f} %), corners "
            f"{100 * g['share']['corners']:.1f} % (area {100 * g['area']['corners']:.0f} %). A ratio share/area well "
            "above 1 for the border or corners points at markers or collimation edges."
        )
    return texts
