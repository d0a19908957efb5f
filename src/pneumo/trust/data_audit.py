"""``pneumo audit data``: how well acquisition metadata alone predicts the label, per task and split.

For each cue (see :mod:`pneumo.trust.metadata`) a one-feature score: the ROC AUC of the raw value, its direction
chosen on the train split only (for three classes, per class one-vs-rest, macro mean), with a patient-level bootstrap
CI. Then small scikit-learn models on all cues together, fitted on train and scored on val/test (the train AUC is
out-of-fold, grouped by patient, so it is not an in-sample number). A cue that is constant over the dataset (the
shared 224 px copy: every stored file is 224 x 224, RGB, 8 bit) is reported as constant, not scored.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import os
from collections.abc import Container, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import pneumo
from pneumo.data.cache import CachedImages, ImageCache, default_cache_root
from pneumo.data.preprocess import DEFAULT_IMAGE_SIZE
from pneumo.data.records import Record, dataset_root, discover
from pneumo.data.tasks import TASKS, Task, get_task
from pneumo.evaluation.compare import compare_table
from pneumo.evaluation.source import dataset_slug
from pneumo.models.registry import preprocess_contract
from pneumo.models.spec import DEFAULT_MODEL
from pneumo.trust.metadata import (
    CUES,
    MANIFEST,
    CueTable,
    file_cues,
    manifest_of,
    originals_manifest_near,
    pixel_cues,
)
from pneumo.trust.scoring import auc_ci, ci_dict, orient, oriented_scores
from pneumo.utils.atomic import write_json

AUTO = "auto"
SPLIT_ORDER = ("train", "val", "test")
ORIGINAL_ONLY = ("orig_bytes", "orig_width", "orig_height", "orig_aspect", "orig_megapixels")


def collect_cues(
    records: Sequence[Record],
    *,
    manifest: Path | None,
    originals_manifest: Path | None,
    image_size: int = DEFAULT_IMAGE_SIZE,
    pixels: bool = True,
    cache_root: Path | None = None,
    workers: int = 0,
    progress: bool = True,
) -> CueTable:
    """File and manifest cues, plus pixel cues from the image cache at ``image_size`` (squash, the default contract)."""
    table = file_cues(records, manifest, originals_manifest)
    if not pixels:
        return table
    contract = preprocess_contract(DEFAULT_MODEL, image_size=image_size)  # pixels only: no model normalises them
    images = ImageCache(contract, cache_root).build([r.path for r in records], workers=workers, progress=progress)
    ok = images.ok
    values = pixel_cues(CachedImages(images.file, images.image_size, images.rows[ok]))
    for name, v in values.items():
        full = np.full(len(records), math.nan)
        full[ok] = v
        table.values[name] = full
        table.sources[name] = f"cached {image_size}x{image_size} model-size images (squash, bilinear)"
    return table


def constant_value(values: np.ndarray) -> float | None:
    """The single value of a cue known everywhere and equal everywhere, else None."""
    if values.size and np.isfinite(values).all() and np.all(values == values[0]):
        return float(values[0])
    return None


def _orientation_text(signs: np.ndarray, class_names: Sequence[str]) -> str:
    if len(class_names) == 2:
        return f"{'higher' if signs[0] > 0 else 'lower'} -> {class_names[1]}"
    return "; ".join(f"{'higher' if s > 0 else 'lower'} -> {c}" for s, c in zip(signs, class_names, strict=True))


def _splits(records: Sequence[Record]) -> list[str]:
    present = {r.split for r in records}
    return [s for s in SPLIT_ORDER if s in present]


def score_cue(
    values: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    split_of: np.ndarray,
    splits: Sequence[str],
    class_names: Sequence[str],
    *,
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """One cue: orientation chosen on train (its known values), then AUC with CI on each split's known values.

    Without a train split (a manifest of test images only) the orientation is chosen on a random half of the patients
    and the AUCs are of the other half: oriented and scored on the same images, a cue of pure noise scores above 0.5.
    """
    k = len(class_names)
    known = np.isfinite(values)
    scored = np.ones(len(values), dtype=bool)
    if "train" in splits:
        fit, oriented_on = known & (split_of == "train"), "train"
    else:
        patients = np.unique(groups)
        half = set(np.random.default_rng(seed).permutation(patients)[: len(patients) // 2].tolist())
        in_half = np.array([g in half for g in groups], dtype=bool)
        fit, scored, oriented_on = known & in_half, ~in_half, "half of the patients (no train split)"
    out: dict[str, Any] = {"orientation": None, "oriented_on": oriented_on, "splits": {}}
    if len(np.unique(y[fit])) < k:
        for s in splits:
            out["splits"][s] = {"n": int((known & scored & (split_of == s)).sum()), "auc": None}
        return out
    signs = orient(y[fit], values[fit], k)
    out["orientation"] = _orientation_text(signs, class_names)
    for s in splits:
        sel = known & scored & (split_of == s)
        ci = None
        if len(np.unique(y[sel])) == k:
            ci = auc_ci(y[sel], oriented_scores(values[sel], signs, k), groups[sel], k, n_boot=n_boot, seed=seed)
        out["splits"][s] = {"n": int(sel.sum()), "auc": ci_dict(ci)}
    return out


def _models(seed: int) -> dict[str, Any]:
    return {
        "logistic": make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
        "gradient boosting": HistGradientBoostingClassifier(
            max_iter=100, max_leaf_nodes=15, learning_rate=0.1, random_state=seed
        ),
    }


def score_models(
    table: CueTable,
    features: Sequence[str],
    y: np.ndarray,
    groups: np.ndarray,
    split_of: np.ndarray,
    splits: Sequence[str],
    class_names: Sequence[str],
    *,
    n_boot: int,
    seed: int,
) -> dict[str, dict[str, Any]]:
    """Logistic regression (standardised) and gradient boosting on ``features``, fitted on train; the train AUC is
    out-of-fold (5-fold, grouped by patient)."""
    k = len(class_names)
    x = table.matrix(features)
    train = split_of == "train"
    out: dict[str, dict[str, Any]] = {}
    if not train.any() or len(np.unique(y[train])) < k or not features:
        return out
    # GroupKFold, not StratifiedGroupKFold: with thousands of one-image patients the latter's search takes minutes,
    # and random patient folds are near-stratified at these sizes anyway. Folds are drawn once for both models.
    folds = list(GroupKFold(n_splits=5, shuffle=True, random_state=seed).split(x[train], y[train], groups[train]))
    for name, model in _models(seed).items():
        result: dict[str, Any] = {"features": list(features), "splits": {}}
        oof = cross_val_predict(
            clone(model), x[train], y[train], groups=groups[train], cv=folds, method="predict_proba"
        )
        fitted = clone(model).fit(x[train], y[train])
        for s in splits:
            sel = split_of == s
            if not sel.any():  # an empty matched subset (every matching cell of one class): nothing to score
                result["splits"][s] = {"n": 0, "auc": None, "out_of_fold": False}
                continue
            probs = oof if s == "train" else fitted.predict_proba(x[sel])
            ci = None
            if len(np.unique(y[sel])) == k:
                scores = probs[:, 1] if k == 2 else probs
                ci = auc_ci(y[sel], scores, groups[sel], k, n_boot=n_boot, seed=seed)
            result["splits"][s] = {"n": int(sel.sum()), "auc": ci_dict(ci), "out_of_fold": s == "train"}
        out[name] = result
    return out


def audit_task(
    table: CueTable, task: Task, *, constant: dict[str, float], n_boot: int, seed: int, models: bool = True
) -> dict[str, Any]:
    """Cue and model AUCs of one task over every split present."""
    index, targets = task.select(table.records)
    pos = {id(r): i for i, r in enumerate(table.records)}
    rows = np.array([pos[id(r)] for r in index], dtype=np.int64)
    sub = table.subset(rows)
    y = np.asarray(targets, dtype=np.int64)
    groups = np.array([r.patient_id for r in sub.records], dtype=object)
    split_of = np.array([r.split for r in sub.records])
    splits = _splits(sub.records)
    names = list(task.class_names)
    result: dict[str, Any] = {
        "class_names": names,
        "splits": {
            s: {
                "n": int((split_of == s).sum()),
                "n_patients": len(set(groups[split_of == s])),
                "class_counts": {c: int(((split_of == s) & (y == i)).sum()) for i, c in enumerate(names)},
            }
            for s in splits
        },
        "cues": {},
        "models": {},
    }
    result["cues"], result["models"] = score_cues(
        sub, y, groups, split_of, splits, names, skip=constant, n_boot=n_boot, seed=seed, models=models
    )
    return result


def score_cues(
    table: CueTable,
    y: np.ndarray,
    groups: np.ndarray,
    split_of: np.ndarray,
    splits: Sequence[str],
    class_names: Sequence[str],
    *,
    skip: Container[str],
    n_boot: int,
    seed: int,
    models: bool = True,
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """``(cues, models)``: each cue of ``table`` known somewhere and not in ``skip``, oriented on train and scored on
    every split; and, with ``models``, the models on all complete cues and on the image-only ones, fitted on train."""
    cues: dict[str, dict[str, Any]] = {}
    for cue, values in table.values.items():
        if cue in skip or not np.isfinite(values).any():
            continue
        entry = {"description": CUES[cue][0], "source": table.sources.get(cue, "")}
        entry.update(score_cue(values, y, groups, split_of, splits, class_names, n_boot=n_boot, seed=seed))
        cues[cue] = entry
    fitted: dict[str, dict[str, Any]] = {}
    complete = [c for c in cues if np.isfinite(table.values[c]).all()]
    feature_sets = {"all cues": complete, "image-only cues": [c for c in complete if c not in ORIGINAL_ONLY]}
    if models:
        for set_name, features in feature_sets.items():
            if set_name != "all cues" and features == feature_sets["all cues"]:
                continue
            for model_name, entry in score_models(
                table, features, y, groups, split_of, splits, class_names, n_boot=n_boot, seed=seed
            ).items():
                fitted[f"{model_name} on {set_name}"] = entry
    return cues, fitted


def table_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per task x (cue or model) with the AUC of each split (CI dicts) for printing."""
    rows = []
    for task_name, t in result["tasks"].items():
        entries = [(c, e, e.get("orientation") or "") for c, e in t["cues"].items()]
        entries += [(m, e, "out-of-fold on train") for m, e in t["models"].items()]
        for name, e, note in entries:
            row: dict[str, Any] = {"task": task_name, "cue": name}
            for s, v in e["splits"].items():
                row[f"{s} (n)"] = v["n"]
                row[f"AUC {s}"] = v["auc"]
            row["note"] = note
            rows.append(row)
    return rows


def print_columns(result: dict[str, Any]) -> list[str]:
    splits = [s for s in SPLIT_ORDER if any(s in t["splits"] for t in result["tasks"].values())]
    return ["task", "cue", *(c for s in splits for c in (f"{s} (n)", f"AUC {s}")), "note"]


def default_audit_dir(source: str | Path) -> Path:
    """Where ``pneumo audit data`` writes without ``--out``: beside the image cache (``$PNEUMO_CACHE_DIR``, else
    ``~/.cache/pneumo``), in ``audits/audit-data-<dataset>-<hash of its path>``, never the current folder."""
    env = os.environ.get("PNEUMO_CACHE_DIR")
    base = Path(env).expanduser() if env else default_cache_root().parent
    where = hashlib.sha1(str(Path(source).expanduser().resolve()).encode()).hexdigest()[:6]
    return base / "audits" / f"audit-data-{dataset_slug(source)}-{where}"


def audit_data(
    source: str | Path,
    *,
    tasks: Sequence[str] | None = None,
    originals: str | Path | None = AUTO,
    image_size: int = DEFAULT_IMAGE_SIZE,
    pixels: bool = True,
    models: bool = True,
    n_boot: int = 1000,
    seed: int = 0,
    out: str | Path | None = None,
    plots: bool = True,
    cache_root: Path | None = None,
    workers: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Audit a dataset folder or CSV manifest; writes ``audit-data.json`` and ``audit-data.html`` into ``out``
    when given, and returns the result (``table`` holds the printable text table).

    ``originals``: the originals-subset folder or manifest to join by file name (``"auto"``: the sibling
    ``chest_xray_originals_subset`` of the dataset, when present; ``None``: none). ``pixels=False`` skips the
    pixel cues (no image is decoded). ``models=False`` skips the all-cue models."""
    source = Path(source).expanduser()
    records = discover(source)
    root = dataset_root(source)
    manifest = source if source.is_file() else root / MANIFEST
    manifest = manifest if manifest.is_file() else None
    orig_manifest = originals_manifest_near(root) if originals == AUTO else manifest_of(originals)
    table = collect_cues(
        records,
        manifest=manifest,
        originals_manifest=orig_manifest,
        image_size=image_size,
        pixels=pixels,
        cache_root=cache_root,
        workers=workers,
        progress=progress,
    )
    constant = {c: v for c, values in table.values.items() if (v := constant_value(values)) is not None}
    unavailable = [c for c, values in table.values.items() if not np.isfinite(values).any()]
    result: dict[str, Any] = {
        "pneumo_version": pneumo.__version__,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "dataset": str(source),
        "manifest": str(manifest) if manifest else None,
        "originals_manifest": str(orig_manifest) if orig_manifest else None,
        "n_images": len(records),
        "pixel_cues": (
            f"from the cached {image_size}x{image_size} model-size images (squash, bilinear): fast, no JPEG decoding "
            "after the first run"
            if pixels
            else "not computed"
        ),
        "bootstrap": {"n_boot": n_boot, "seed": seed, "resampled": "patients", "confidence": 0.95},
        "constant_cues": constant,
        "unavailable_cues": unavailable,
        "sources": dict(table.sources),
        "tasks": {},
    }
    for name in tasks or list(TASKS):
        result["tasks"][name] = audit_task(
            table, get_task(name), constant=constant, n_boot=n_boot, seed=seed, models=models
        )
    result["table"] = compare_table(table_rows(result), print_columns(result), markdown=True)
    if out is not None:
        write_outputs(Path(out), result, table, plots=plots)
    return result


def write_outputs(out: Path, result: dict[str, Any], table: CueTable, *, plots: bool) -> None:
    from pneumo.evaluation.report import write_html_report

    out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Path] = {}
    if plots:
        from pneumo.trust.plots import cue_histograms

        pos = {id(r): i for i, r in enumerate(table.records)}
        for task_name, t in result["tasks"].items():
            task = get_task(task_name)
            for split in ("train", "test"):
                if split not in t["splits"]:
                    continue
                chosen = [
                    (r, target) for r in table.records if r.split == split and (target := task.target(r)) is not None
                ]
                rows = np.array([pos[id(r)] for r, _ in chosen], dtype=np.int64)
                y = np.array([target for _, target in chosen], dtype=np.int64)
                values = {c: table.values[c][rows] for c in t["cues"]}
                figures[f"Cues by class: {task_name}, {split}"] = cue_histograms(
                    values, y, t["class_names"], out / f"cues-{task_name}-{split}.png", f"{task_name} ({split})"
                )
    metrics_rows = [
        {"metric": name, "task": task_name, "split": s, "n": v["n"], **v["auc"]}
        for task_name, t in result["tasks"].items()
        for name, e in [*t["cues"].items(), *t["models"].items()]
        for s, v in e["splits"].items()
        if v["auc"] is not None
    ]
    constant = ", ".join(f"{c} = {v:g}" for c, v in result["constant_cues"].items()) or "none"
    sections = {
        "What this measures": (
            "ROC AUC of each acquisition cue on its own (direction chosen on train; without a train split, on half "
            "of the patients, and scored on the other half), and of small models on all cues together (fitted on "
            "train; train AUC out-of-fold by patient). An AUC far from 0.5 means the label can be "
            "guessed from how the image was acquired, so a classifier may learn that instead of the lungs. "
            "'image-only cues' are the ones a network could see in the stored file; orig_* cues come from manifests. "
            f"Pixel cues: {result['pixel_cues']}."
        ),
        "Constant cues": f"Constant over all {result['n_images']} images (not scored): {constant}.",
        "Table": result["table"],
    }
    limitations = [
        "Cue AUCs measure association, not what a trained model uses: run `pneumo audit model` for that.",
        "Original geometry is known only where a manifest gives it; the originals subset's train part is incomplete "
        "and biased, so its train AUCs describe that part only. Models use only cues known for every image.",
        "A one-feature AUC near 0.5 can hide a non-monotone relation; the gradient boosting rows capture those.",
    ]
    write_html_report(
        out / "audit-data.html",
        title=f"pneumo data audit: {result['dataset']}",
        config={k: result[k] for k in ("dataset", "manifest", "originals_manifest", "bootstrap")},
        data_summary={"images": result["n_images"], **{t: v["splits"] for t, v in result["tasks"].items()}},
        metrics_table=metrics_rows,
        plots=figures,
        limitations=limitations,
        extra_sections=sections,
    )
    write_json(out / "audit-data.json", result)
