"""Out-of-distribution check: how unlike the run's training images an input is, from the model's own features.

Two methods, told apart by ``params["method"]``: ``multidepth-oe`` (:mod:`pneumo.trust.ood_depth`, what
:func:`fit_ood` fits by default, chosen by measurement: docs/TRUST.md) and the earlier ``mahalanobis-pca-tied``
below, which runs fitted with older versions keep using. Scoring, :func:`score` and :func:`check`, serves both.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

METHOD = "mahalanobis-pca-tied"
VERSION = 1
N_COMPONENTS = 64
PASS_RATE = 0.95
FEATURES = "forward_head(forward_features(x), pre_logits=True)"
_DIGITS = 7


def _round(a: np.ndarray) -> list:
    """Nested lists of Python floats with ``_DIGITS`` significant digits (short JSON, exact round trip)."""
    return np.vectorize(lambda v: float(f"{v:.{_DIGITS}g}"), otypes=[float])(np.asarray(a, np.float64)).tolist()


@dataclass(frozen=True)
class OODScorer:
    """Mahalanobis distance on ``[PCA coordinates, residual norm]`` of pooled features; see the module docstring."""

    feature_mean: np.ndarray  # (d,)
    components: np.ndarray  # (k, d), orthonormal rows
    class_means: np.ndarray  # (C, k + 1)
    precision: np.ndarray  # (k + 1, k + 1)
    threshold: float
    extra: Mapping[str, Any]  # provenance, copied into the parameters

    @property
    def n_features(self) -> int:
        return int(self.feature_mean.shape[0])

    def coordinates(self, features: np.ndarray) -> np.ndarray:
        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 2 or f.shape[1] != self.n_features:
            raise ValueError(f"expected features of shape (N, {self.n_features}), got {f.shape}")
        centred = f - self.feature_mean
        z = centred @ self.components.T
        residual = np.linalg.norm(centred - z @ self.components, axis=1)
        return np.column_stack([z, residual])

    def score(self, features: np.ndarray) -> np.ndarray:
        """Distance to the nearest class, ``(N,)``; higher = less like the training images."""
        u = self.coordinates(features)
        diff = u[:, None, :] - self.class_means[None, :, :]  # (N, C, k+1)
        squared = np.einsum("nci,ij,ncj->nc", diff, self.precision, diff)
        return np.sqrt(np.maximum(squared.min(axis=1), 0.0))

    def in_distribution(self, features: np.ndarray) -> np.ndarray:
        return self.score(features) <= self.threshold

    def to_params(self) -> dict[str, Any]:
        """Plain JSON numbers (and a few strings): what ``checkpoint.json["ood"]`` and ONNX metadata hold."""
        return {
            **self.extra,
            "method": METHOD,
            "version": VERSION,
            "features": FEATURES,
            "n_features": self.n_features,
            "n_components": int(self.components.shape[0]),
            "threshold": float(self.threshold),
            "feature_mean": _round(self.feature_mean),
            "components": _round(self.components),
            "class_means": _round(self.class_means),
            "precision": _round(self.precision),
        }

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> OODScorer:
        if params.get("method") != METHOD:
            raise ValueError(f"unsupported OOD method {params.get('method')!r} (expected {METHOD!r})")
        if int(params.get("version", 0)) != VERSION:
            raise ValueError(f"unsupported OOD parameter version {params.get('version')!r} (expected {VERSION})")
        arrays = {k: np.asarray(params[k], dtype=np.float64) for k in ARRAY_KEYS}
        k = arrays["components"].shape[0]
        if arrays["precision"].shape != (k + 1, k + 1) or arrays["class_means"].shape[1] != k + 1:
            raise ValueError("inconsistent OOD parameters (components, class means and precision disagree)")
        extra = {key: v for key, v in params.items() if key not in (*ARRAY_KEYS, *DERIVED_KEYS)}
        return cls(
            arrays["feature_mean"],
            arrays["components"],
            arrays["class_means"],
            arrays["precision"],
            float(params["threshold"]),
            extra,
        )

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> OODScorer | None:
        """The scorer of a run's ``checkpoint.json`` (or any dict with an ``"ood"`` entry); None when there is none."""
        params = meta.get("ood")
        return cls.from_params(params) if params else None


ARRAY_KEYS = ("feature_mean", "components", "class_means", "precision")
METHODS = ("multidepth-oe", METHOD)
DERIVED_KEYS = ("method", "version", "features", "n_features", "n_components", "threshold")


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
    from pneumo.training import update_run_meta
    from pneumo.training.checkpoint import weights_digest
    from pneumo.trust import ood_depth
    from pneumo.trust.ood_features import depth_features
    from pneumo.trust.runs import load_model, open_run, split_images
    from pneumo.utils.device import resolve_device

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
        from pneumo.trust.ood_features import stage_outputs

        generated, real, described = outlier_exposure_images(train_images, ctx, negatives)
        _, dep_aug, _ = feats(augmented_copies(train_images, seed=0))
        params = ood_depth.fit_depth_scorer(
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


N_CORRUPTED = 1500
N_AUGMENTED = 1000


def augmented_copies(images: np.ndarray, seed: int, n: int = N_AUGMENTED) -> np.ndarray:
    """Train images under the training and acquisition augmentations: still this population, so positives."""
    import torch

    from pneumo.training.augment import BatchAugmenter
    from pneumo.training.config import AcquisitionAugmentConfig, AugmentConfig

    pick = np.random.default_rng(seed).permutation(len(images))[:n]
    augment = BatchAugmenter(AugmentConfig(), AcquisitionAugmentConfig(enabled=True))
    batch = torch.from_numpy(np.ascontiguousarray(images[pick])).unsqueeze(1)
    return augment(batch, torch.Generator().manual_seed(seed)).squeeze(1).numpy()


def outlier_exposure_images(
    train_images: np.ndarray, ctx: Any, negatives: str | Path | None
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """``(generated, real, description)``: generated negatives (corrupted train images, synthetic non-X-rays) and,
    with ``negatives``, every image of that folder or manifest (else None), all at the run's model size."""
    from pneumo.data.decode import ImageDecodeError, decode_image
    from pneumo.data.preprocess import resize_gray
    from pneumo.data.records import DatasetError
    from pneumo.trust.ood_audit import image_files
    from pneumo.trust.ood_negatives import corruptions, synthetic_images

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
    from pneumo.training import read_run_meta
    from pneumo.training.checkpoint import weights_digest
    from pneumo.trust.runs import load_model, open_run, split_images
    from pneumo.utils.device import resolve_device

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


def score_images(
    params: Mapping[str, Any],
    model: Any,
    images: np.ndarray,
    contract: Any,
    *,
    batch_size: int = 64,
    device: Any = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, in_distribution)`` of uint8 model-size images, with either method's features."""
    from pneumo.trust.ood_features import depth_features

    raw, pen, dep, _ = depth_features(model, images, contract, batch_size=batch_size, device=device)
    return score(params, logits=raw, features=pen, depth_features=dep)


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


# --- hooks for other packages ------------------------------------------------------------------------------------

_CACHE: dict[int, tuple[Mapping[str, Any], Any]] = {}


def _cached_scorer(params: Mapping[str, Any]) -> Any:
    """Parsing 10^4-10^5 numbers per call would dominate small predictions; keep the scorer of a params object."""
    from pneumo.trust.ood_depth import DepthScorer

    hit = _CACHE.get(id(params))
    if hit is not None and hit[0] is params:
        return hit[1]
    scorer = DepthScorer.from_params(params) if needs_depth(params) else OODScorer.from_params(params)
    if len(_CACHE) > 8:
        _CACHE.clear()
    _CACHE[id(params)] = (params, scorer)
    return scorer


def check(params: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` (or ``KeyError``/``TypeError``) when this version cannot score with ``params``; called
    once when a model loads, so that a bad entry is found then and not at every prediction."""
    _cached_scorer(params)


def needs_depth(params: Mapping[str, Any]) -> bool:
    """Whether ``params`` score multi-depth features (``multidepth-oe``) rather than the penultimate ones."""
    from pneumo.trust.ood_depth import METHOD as DEPTH_METHOD

    return params.get("method") == DEPTH_METHOD


def score(
    params: Mapping[str, Any],
    *,
    logits: np.ndarray | None = None,
    features: np.ndarray,
    depth_features: np.ndarray | None = None,
) -> tuple:
    """``(scores, in_distribution)`` for ``pneumo.inference``: float ``(N,)`` and bool ``(N,)``; ``logits`` unused."""
    scorer = _cached_scorer(params)
    if needs_depth(params):
        if depth_features is None:
            raise ValueError(f"the {params['method']} check needs multi-depth features, which this model does not give")
        s = scorer.score(depth_features)
    else:
        s = scorer.score(features)
    return s, s <= scorer.threshold


def report_sections(*, run_dir: Path, model: Any, split: Any, result: Mapping[str, Any]) -> dict[str, str]:
    """The evaluation report's OOD section (called by ``pneumo.evaluation.writers.extra_sections``)."""
    title = "Out-of-distribution check"
    from pneumo.evaluation.ood import ood_text
    from pneumo.training import read_run_meta

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
