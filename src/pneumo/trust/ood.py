"""Out-of-distribution check: how unlike the run's training images an input is, from the model's own features.

Method (``mahalanobis-pca-tied``), chosen because it needs no extra training, no outlier examples and only a few
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

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pneumo.runs.context import load_model, open_run, split_images
from pneumo.runs.format import read_run_meta, update_run_meta, weights_digest
from pneumo.runs.ood import ARRAY_KEYS, DERIVED_KEYS, FEATURES, METHOD, VERSION, OODScorer, _round, check, score
from pneumo.trust.forward import forward_arrays
from pneumo.utils.device import resolve_device

__all__ = [
    "ARRAY_KEYS",
    "DERIVED_KEYS",
    "FEATURES",
    "METHOD",
    "N_COMPONENTS",
    "PASS_RATE",
    "VERSION",
    "OODScorer",
    "check",
    "fit_after_training",
    "fit_ood",
    "fit_scorer",
    "ood_rates",
    "rates",
    "report_sections",
    "score",
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
    n_components: int = N_COMPONENTS,
    pass_rate: float = PASS_RATE,
    progress: bool = False,
) -> dict[str, Any]:
    """Fit the detector on a run's train images (best weights), threshold it on its validation split and store it
    as ``checkpoint.json["ood"]`` (via ``update_run_meta``); returns the stored parameters."""
    ctx = open_run(run_dir)
    dev = resolve_device(device)
    model = load_model(ctx, dev)
    train, val = ctx.split("train", progress=progress), ctx.split("val", progress=progress)
    _, f_train = forward_arrays(
        model, split_images(train), ctx.contract, batch_size=batch_size, device=dev, features=True
    )
    _, f_val = forward_arrays(model, split_images(val), ctx.contract, batch_size=batch_size, device=dev, features=True)
    best = ctx.meta.get("best") or {}
    scorer = fit_scorer(
        f_train,
        train.targets,
        f_val,
        n_components=n_components,
        pass_rate=pass_rate,
        extra={
            "weights": "best",
            "best_epoch": best.get("epoch"),
            "image_size": ctx.contract.image_size,
            # as the operating point's: a detector of other weights than best.safetensors is not used
            "weights_sha256": weights_digest(ctx.run_dir),
        },
    )
    params = scorer.to_params()
    update_run_meta(ctx.run_dir, ood=params)
    return params


def fit_after_training(run_dir: Path, cfg: Any, device: Any) -> None:
    """The post-training hook of ``pneumo.training.train``/``resume``: every finished run gets its detector, unless
    ``cfg.fit_ood`` is off or it is already fitted on these best weights (a resumed run that improved is refitted)."""
    fitted_on = (read_run_meta(run_dir).get("ood") or {}).get("weights_sha256")
    if not cfg.fit_ood or fitted_on == weights_digest(run_dir):
        return
    fit_ood(run_dir, device=str(device), batch_size=max(cfg.batch_size, 64), progress=cfg.progress)


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
    scorer = OODScorer.from_params(params)
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
    _, feats = forward_arrays(model, split_images(data), ctx.contract, batch_size=batch_size, device=dev, features=True)
    scores = scorer.score(feats)
    return rates(scores, scorer.threshold, name=getattr(data, "name", str(split)))


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
    params = read_run_meta(run_dir).get("ood")
    if not params:
        return {title: f"No OOD detector fitted for this run; `pneumo audit ood-fit {run_dir}` adds one."}
    r = ood_rates(run_dir, split, model=model, device=next(model.parameters()).device)
    if not r["available"]:
        return {title: r["reason"]}
    return {
        title: (
            f"{r['n_flagged']} of {r['n']} evaluated images ({100 * r['flagged_rate']:.1f} %) score above the "
            f"threshold {r['threshold']:.3g} and would be flagged as unlike the training images "
            f"({METHOD}; threshold set so that {100 * params.get('pass_rate_target', PASS_RATE):.0f} % of the "
            f"validation split passes; {100 * params.get('val_pass_rate', math.nan):.1f} % did). On data like the "
            "training data about 5 % are expected to be flagged; many more means a shift in acquisition or population."
        )
    }
