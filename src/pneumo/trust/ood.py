"""Out-of-distribution check: how unlike the run's training images an input is, from the model's own features.

Two methods, told apart by ``params["method"]``: ``multidepth-oe`` (:mod:`pneumo.runs.ood_depth`, fitted by
:mod:`pneumo.trust.ood_depth`; what :func:`fit_ood` fits by default, chosen by measurement: docs/TRUST.md) and the
earlier ``mahalanobis-pca-tied`` below, which runs fitted with older versions keep using. Scoring
(:func:`pneumo.runs.ood.score` and ``check``, NumPy only) serves both.

Method ``mahalanobis-pca-tied``, chosen because it needs no extra training, no outlier examples and only a few
plain numbers that travel with the model (checkpoint JSON, ONNX metadata), and because class-conditional Gaussians
with a tied covariance on penultimate features are a strong, well-studied baseline (Lee et al., 2018):

1. features ``f = forward_head(forward_features(x), pre_logits=True)`` (the pooled penultimate vector that
   predict, serve and ONNX already return) of the **train** images;
2. PCA fitted on them keeps the top ``k = min(64, n_train / 10)`` components (at most 64 so the parameters stay
   small enough for JSON; about ten images per dimension so that the covariance is estimable), and the
   norm of the residual outside those components is added as one more coordinate: ``u = [z_1..z_k, |residual|]``.
   Foreign inputs often move *out of* the principal subspace, which a subspace-only distance cannot see (the same
   idea as ViM, Wang et al., 2022);
3. one mean per task class and one covariance shared by all classes (tied), estimated with Ledoit-Wolf shrinkage
   (scikit-learn), which keeps the precision matrix well conditioned with few images per class;
4. ``score = min over classes of the Mahalanobis distance`` of ``u`` to the class means (higher = more unusual);
5. the threshold is the 95th percentile of the **validation** scores (images the fit never saw), so by
   construction 95 % of in-distribution validation images pass; ``in_distribution = score <= threshold``.

Parameters are stored as nested lists of floats rounded to 7 significant digits (the threshold exactly), and every
scorer (fitted here or loaded from a checkpoint/ONNX file) is built from those same numbers, so a round trip changes
no score.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pneumo.data.augment import AcquisitionAugmentConfig, AugmentConfig, BatchAugmenter
from pneumo.data.decode import ImageDecodeError, decode_image
from pneumo.data.preprocess import resize_gray
from pneumo.data.records import DatasetError
from pneumo.evaluation.ood import ood_text
from pneumo.models.depth_features import depth_features, stage_outputs
from pneumo.runs import ood_depth
from pneumo.runs.context import load_model, open_run, score_images, split_images
from pneumo.runs.format import read_run_meta, update_run_meta, weights_digest
from pneumo.runs.ood import (
    ARRAY_KEYS,
    DERIVED_KEYS,
    FEATURES,
    METHOD,
    METHODS,
    VERSION,
    OODScorer,
    _round,
    check,
    needs_depth,
    score,
)
from pneumo.trust.ood_audit import image_files
from pneumo.trust.ood_depth import fit_depth_scorer
from pneumo.trust.ood_negatives import corruptions, synthetic_images
from pneumo.utils.device import resolve_device

log = logging.getLogger(__name__)

__all__ = [
    "ARRAY_KEYS",
    "DERIVED_KEYS",
    "FEATURES",
    "METHOD",
    "METHODS",
    "N_COMPONENTS",
    "PASS_RATE",
    "VERSION",
    "OODScorer",
    "augmented_copies",
    "check",
    "fit_after_training",
    "fit_ood",
    "fit_scorer",
    "needs_depth",
    "ood_rates",
    "outlier_exposure_images",
    "rates",
    "report_sections",
    "score",
    "score_images",
]

N_COMPONENTS = 64
PASS_RATE = 0.95


def fit_scorer(
    train_features: np.ndarray,
    train_targets: np.ndarray,
    val_features: np.ndarray,
    *,
    n_components: int = N_COMPONENTS,
    pass_rate: float = PASS_RATE,
    extra: Mapping[str, Any] | None = None,
) -> OODScorer:
    """Fit on train features/targets, set the threshold on validation features; see the module docstring."""
    # scikit-learn only for fitting: scoring (prediction, the service, ONNX-only deployments) needs NumPy alone.
    from sklearn.covariance import LedoitWolf
    from sklearn.decomposition import PCA

    x = np.asarray(train_features, dtype=np.float64)
    y = np.asarray(train_targets, dtype=np.int64)
    if not 0 < pass_rate < 1:
        raise ValueError(f"pass_rate must lie in (0, 1), got {pass_rate}")
    if len(x) < 3 or len(val_features) == 0:
        raise ValueError(f"need at least 3 train and 1 validation images, got {len(x)} and {len(val_features)}")
    k = max(1, min(n_components, x.shape[1], len(x) // 10))
    pca = PCA(n_components=k, svd_solver="full").fit(x)
    rounded = OODScorer(
        np.asarray(_round(pca.mean_)), np.asarray(_round(pca.components_)), np.zeros((1, k + 1)), np.eye(k + 1), 0.0, {}
    )
    u = rounded.coordinates(x)
    classes = np.unique(y)
    means = np.stack([u[y == c].mean(axis=0) for c in classes])
    within = u - means[np.searchsorted(classes, y)]
    precision = LedoitWolf(assume_centered=True).fit(within).precision_
    params = OODScorer(rounded.feature_mean, rounded.components, means, precision, 0.0, {}).to_params()
    params["threshold"] = 0.0
    scorer = OODScorer.from_params(params)  # the stored numbers, so that fitted and loaded scorers agree exactly
    val_scores = np.sort(scorer.score(val_features))
    threshold = float(val_scores[max(0, math.ceil(pass_rate * len(val_scores)) - 1)])
    # kept exact (JSON round-trips a float): rounding it could exclude the very score that defines the quantile
    passed = float(np.mean(val_scores <= threshold))
    info = {
        **(extra or {}),
        "pass_rate_target": pass_rate,
        "val_pass_rate": passed,
        "n_train": len(x),
        "n_val": len(val_scores),
        "n_classes": len(classes),
        "val_score_quantiles": {q: float(np.quantile(val_scores, float(q))) for q in ("0.5", "0.9", "0.95", "0.99")},
    }
    return OODScorer(scorer.feature_mean, scorer.components, scorer.class_means, scorer.precision, threshold, info)


# --- run folders -------------------------------------------------------------------------------------------------


def fit_ood(
    run_dir: str | Path,
    *,
    device: str = "cpu",
    batch_size: int = 64,
    method: str | None = None,
    n_components: int = N_COMPONENTS,
    pass_rate: float | None = None,
    negatives: str | Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Fit the detector on a run's train images (best weights), threshold it on its validation split and store it
    as ``checkpoint.json["ood"]`` (via ``update_run_meta``); returns the stored parameters.

    ``method``: ``multidepth-oe`` (default) or ``mahalanobis-pca-tied``; ``pass_rate``: the validation share that
    passes (default: the method's); ``negatives``: a folder or manifest of images that are not the training
    population (e.g. X-rays of adults), added to the generated outlier-exposure negatives (``multidepth-oe`` only)."""
    method = method or ood_depth.METHOD
    if method not in METHODS:
        raise ValueError(f"unknown OOD method {method!r}; choose one of {', '.join(METHODS)}")
    if negatives is not None and method != ood_depth.METHOD:
        raise ValueError(f"--negatives needs the {ood_depth.METHOD} method")
    ctx = open_run(run_dir)
    dev = resolve_device(device)
    model = load_model(ctx, dev)
    train, val = ctx.split("train", progress=progress), ctx.split("val", progress=progress)
    best = ctx.meta.get("best") or {}
    extra = {
        "weights": "best",
        "best_epoch": best.get("epoch"),
        "image_size": ctx.contract.image_size,
        # as the operating point's: a detector of other weights than best.safetensors is not used
        "weights_sha256": weights_digest(ctx.run_dir),
    }

    def feats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[int]]:
        _, pen, dep, dims = depth_features(model, images, ctx.contract, batch_size=batch_size, device=dev)
        return pen, dep, dims

    train_images = split_images(train)
    pen_train, dep_train, dims = feats(train_images)
    pen_val, dep_val, _ = feats(split_images(val))
    if method == METHOD:
        scorer = fit_scorer(
            pen_train, train.targets, pen_val, n_components=n_components, pass_rate=pass_rate or PASS_RATE, extra=extra
        )
        params = scorer.to_params()
    else:
        generated, real, described = outlier_exposure_images(train_images, ctx, negatives)
        _, dep_aug, _ = feats(augmented_copies(train_images, seed=0))
        params = fit_depth_scorer(
            np.concatenate([dep_train, dep_aug]),
            feats(generated)[1],
            dep_val,
            stages=[name for name, _ in stage_outputs(model)],
            depth_dims=dims,
            pass_rate=pass_rate or ood_depth.PASS_RATE,
            extra_negatives=None if real is None else feats(real)[1],
            extra={**extra, "negatives": described},
        ).to_params()
    update_run_meta(ctx.run_dir, ood=params)
    return params


def fit_after_training(run_dir: Path, cfg: Any, device: Any) -> None:
    """The post-training hook of ``pneumo.training.train``/``resume``: every finished run gets its detector, unless
    ``cfg.fit_ood`` is off or it is already fitted on these best weights (a resumed run that improved is refitted)."""
    fitted_on = (read_run_meta(run_dir).get("ood") or {}).get("weights_sha256")
    if not cfg.fit_ood or fitted_on == weights_digest(run_dir):
        return
    fit_ood(
        run_dir, device=str(device), batch_size=max(cfg.batch_size, 64), negatives=cfg.ood_negatives,
        progress=cfg.progress,
    )  # fmt: skip


N_CORRUPTED = 1500
N_AUGMENTED = 1000


def augmented_copies(images: np.ndarray, seed: int, n: int = N_AUGMENTED) -> np.ndarray:
    """Train images under the training and acquisition augmentations: still this population, so positives."""
    pick = np.random.default_rng(seed).permutation(len(images))[:n]
    augment = BatchAugmenter(AugmentConfig(), AcquisitionAugmentConfig(enabled=True))
    batch = torch.from_numpy(np.ascontiguousarray(images[pick])).unsqueeze(1)
    return augment(batch, torch.Generator().manual_seed(seed)).squeeze(1).numpy()


def outlier_exposure_images(
    train_images: np.ndarray, ctx: Any, negatives: str | Path | None
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """``(generated, real, description)``: generated negatives (corrupted train images, synthetic non-X-rays) and,
    with ``negatives``, every image of that folder or manifest (else None), all at the run's model size."""
    rng = np.random.default_rng(1)
    pick = rng.permutation(len(train_images))[:N_CORRUPTED]
    synthetic = [resize_gray(img, ctx.contract) for seed in (11, 12, 13) for img in synthetic_images(seed).values()]
    generated = np.concatenate([corruptions(train_images[pick], seed=1), np.stack(synthetic)])
    described: dict[str, Any] = {"generated": len(generated)}
    if negatives is None:
        return generated, None, described
    _, files = image_files(negatives)
    extra = []
    for path in files:
        try:
            extra.append(resize_gray(decode_image(path), ctx.contract))
        except ImageDecodeError as exc:
            log.warning("OOD negatives: skipping %s", exc)
    if not extra:
        raise DatasetError(f"{negatives}: no readable image to use as out-of-distribution negatives")
    described.update({"extra": str(negatives), "n_extra": len(extra)})
    return generated, np.stack(extra), described


def ood_rates(
    run_dir: str | Path,
    split: Any = "test",
    *,
    model: Any = None,
    device: Any = "cpu",
    batch_size: int = 64,
) -> dict[str, Any]:
    """How many images of ``split`` (a split name of the run's own data, or a ``SplitData``) the detector flags.

    Returns ``{"available": False, ...}`` when the run has no fitted detector."""
    params = read_run_meta(run_dir).get("ood")
    if not params:
        return {"available": False, "reason": f"no OOD detector fitted: run `pneumo audit ood-fit {run_dir}`"}
    threshold = float(params["threshold"])
    fitted_on = params.get("weights_sha256")
    if fitted_on and fitted_on != weights_digest(Path(run_dir)):  # predict and serve drop such a detector too
        return {
            "available": False,
            "reason": f"the OOD detector was fitted on other weights than best.safetensors: run "
            f"`pneumo audit ood-fit {run_dir}`",
        }
    ctx = open_run(run_dir)
    dev = resolve_device(device)
    data = ctx.split(split) if isinstance(split, str) else split
    model = model if model is not None else load_model(ctx, dev)
    scores, _ = score_images(params, model, split_images(data), ctx.contract, batch_size=batch_size, device=dev)
    return rates(scores, threshold, name=getattr(data, "name", str(split)))


def rates(scores: np.ndarray, threshold: float, name: str = "") -> dict[str, Any]:
    flagged = scores > threshold
    return {
        "available": True,
        "split": name,
        "n": len(scores),
        "n_flagged": int(flagged.sum()),
        "flagged_rate": float(flagged.mean()) if len(scores) else math.nan,
        "pass_rate": float(1 - flagged.mean()) if len(scores) else math.nan,
        "threshold": float(threshold),
        "median_score": float(np.median(scores)) if len(scores) else math.nan,
    }


def report_sections(*, run_dir: Path, model: Any, split: Any, result: Mapping[str, Any]) -> dict[str, str]:
    """The evaluation report's OOD section (called by ``pneumo.evaluation.writers.extra_sections``)."""
    title = "Out-of-distribution check"
    if (result.get("ood") or {}).get("available"):  # scored by the evaluation itself: flag rate and passing metrics
        return {title: f"{ood_text(result)} {EXPECTED_NOTE}"}

    params = read_run_meta(run_dir).get("ood")
    if not params:
        return {title: f"No OOD detector fitted for this run; `pneumo audit ood-fit {run_dir}` adds one."}
    r = ood_rates(run_dir, split, model=model, device=next(model.parameters()).device)
    if not r["available"]:
        return {title: r["reason"]}
    target = 100 * params.get("pass_rate_target", PASS_RATE)
    return {
        title: (
            f"{r['n_flagged']} of {r['n']} evaluated images ({100 * r['flagged_rate']:.1f} %) score above the "
            f"threshold {r['threshold']:.3g} and would be flagged as unlike the training images "
            f"({params.get('method')}; threshold set so that {target:.1f} % of the validation split passes; "
            f"{100 * params.get('val_pass_rate', math.nan):.1f} % did). On data like the training data about "
            f"{100 - target:.1f} % are expected to be flagged. {EXPECTED_NOTE}"
        )
    }


EXPECTED_NOTE = (
    "The threshold lets a set share of the validation split pass; on data like the training data about that many pass, "
    "and many more flagged means a shift in acquisition or population (an external set: most should be flagged)."
)
