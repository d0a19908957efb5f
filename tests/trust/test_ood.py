"""The out-of-distribution check: threshold by construction, foreign inputs flagged, exact checkpoint round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pneumo.data.preprocess import resize_gray
from pneumo.runs.context import load_model, open_run, split_images
from pneumo.training import read_run_meta
from pneumo.trust import ood
from pneumo.trust.forward import forward_arrays
from pneumo.trust.ood import OODScorer, fit_ood, fit_scorer, ood_rates


def _gaussian_features(rng: np.random.Generator, n: int, d: int = 40) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, 2, n)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    x = rng.normal(size=(n, d)) @ mix + 3.0 * y[:, None] * np.eye(d)[0]
    return x, y


def test_threshold_passes_95_percent_of_validation_by_construction() -> None:
    rng = np.random.default_rng(0)
    x_train, y_train = _gaussian_features(rng, 600)
    x_val, _ = _gaussian_features(rng, 1001)
    scorer = fit_scorer(x_train, y_train, x_val, n_components=8)
    passed = scorer.in_distribution(x_val).mean()
    assert passed >= 0.95 and passed < 0.95 + 2 / 1001
    assert scorer.extra["val_pass_rate"] == pytest.approx(passed)
    # Fresh in-distribution images pass at about the same rate (the threshold's coverage has SD ~0.007 here);
    # far-away ones are all flagged.
    x_new, _ = _gaussian_features(rng, 4000)
    assert 0.93 < scorer.in_distribution(x_new).mean() < 0.97
    assert not scorer.in_distribution(x_new[:50] * 4 + 10).any()


def test_small_validation_sets_reach_the_pass_rate_too() -> None:
    # With 20 validation images one image is 5 points: a threshold rounded below the quantile's score shows at once.
    for seed in range(30):
        rng = np.random.default_rng(seed)
        x_train, y_train = _gaussian_features(rng, 200)
        x_val, _ = _gaussian_features(rng, 20)
        scorer = fit_scorer(x_train, y_train, x_val, n_components=8)
        assert scorer.in_distribution(x_val).mean() >= 0.95, seed
        assert OODScorer.from_params(json.loads(json.dumps(scorer.to_params()))).threshold == scorer.threshold


def test_params_are_plain_json_and_survive_a_round_trip_exactly() -> None:
    rng = np.random.default_rng(1)
    x, y = _gaussian_features(rng, 300)
    scorer = fit_scorer(x, y, x[:40], n_components=64)
    params = scorer.to_params()
    assert params["n_components"] == 30  # min(64, 300 // 10): about ten images per dimension
    text = json.dumps(params, allow_nan=False)  # no numpy types, no NaN
    loaded = OODScorer.from_meta({"ood": json.loads(text)})
    probe = rng.normal(size=(25, x.shape[1])) * 2
    np.testing.assert_array_equal(loaded.score(probe), scorer.score(probe))
    assert loaded.threshold == scorer.threshold
    assert OODScorer.from_meta({"ood": None}) is None
    with pytest.raises(ValueError, match="unsupported OOD method"):
        OODScorer.from_params({**params, "method": "energy"})
    with pytest.raises(ValueError, match="shape"):
        scorer.score(probe[:, :5])


def test_inference_hook_returns_scores_and_verdicts() -> None:
    rng = np.random.default_rng(2)
    x, y = _gaussian_features(rng, 300)
    params = fit_scorer(x, y, x[:50]).to_params()
    probe = np.vstack([x[:5], x[:5] * 5 + 20])
    scores, inside = ood.score(params, logits=np.zeros((10, 2)), features=probe)
    assert scores.shape == (10,) and inside.dtype == bool
    assert inside[5:].sum() == 0 and inside[:5].sum() >= 3
    np.testing.assert_array_equal(scores, OODScorer.from_params(params).score(probe))


def test_fitted_run_passes_its_own_data_and_flags_foreign_inputs(
    run_copy: Path, foreign_images: dict[str, np.ndarray]
) -> None:
    params = fit_ood(run_copy, method="mahalanobis-pca-tied")  # the earlier method: older run folders carry it
    stored = read_run_meta(run_copy)["ood"]
    assert stored == json.loads(json.dumps(params))
    assert stored["val_pass_rate"] >= 0.95

    val, test = ood_rates(run_copy, "val"), ood_rates(run_copy, "test")
    assert val["pass_rate"] == pytest.approx(stored["val_pass_rate"])
    assert test["pass_rate"] >= 0.8, test  # the official-style test split mostly passes

    ctx = open_run(run_copy)
    model = load_model(ctx)
    scorer = OODScorer.from_meta(read_run_meta(run_copy))
    arrays = np.stack([resize_gray(img, ctx.contract) for img in foreign_images.values()])
    _, features = forward_arrays(model, arrays, ctx.contract, features=True)
    flagged = dict(zip(foreign_images, ~scorer.in_distribution(features), strict=True))
    assert all(flagged.values()), f"not flagged: {[k for k, v in flagged.items() if not v]}"

    # Checkpoint round trip: the scorer read back from checkpoint.json scores exactly as the fitted parameters do.
    _, test_features = forward_arrays(model, split_images(ctx.split("test")), ctx.contract, features=True)
    np.testing.assert_array_equal(scorer.score(test_features), OODScorer.from_params(params).score(test_features))


def test_rates_and_report_section_without_and_with_a_detector(run_copy: Path) -> None:
    from pneumo.training import read_run_meta, update_run_meta

    ctx = open_run(run_copy)
    model = load_model(ctx)
    test = ctx.split("test")
    assert ood_rates(run_copy, "test")["available"] is False
    text = ood.report_sections(run_dir=run_copy, model=model, split=test, result={})
    assert "ood-fit" in next(iter(text.values()))

    fit_ood(run_copy)
    rates = ood_rates(run_copy, test, model=model)
    section = next(iter(ood.report_sections(run_dir=run_copy, model=model, split=test, result={}).values()))
    assert f"{rates['n_flagged']} of {rates['n']} evaluated images" in section
    # a detector of other weights (the best epoch changed after it was fitted) is not used, as predict and serve do
    params = read_run_meta(run_copy)["ood"]
    update_run_meta(run_copy, ood={**params, "weights_sha256": "0" * 16})
    stale = ood_rates(run_copy, test, model=model)
    assert stale["available"] is False and "fitted on other weights" in stale["reason"]
    section = next(iter(ood.report_sections(run_dir=run_copy, model=model, split=test, result={}).values()))
    assert "fitted on other weights" in section and "evaluated images" not in section
    update_run_meta(run_copy, ood=None)
    assert ood_rates(run_copy, "test")["available"] is False


def test_evaluation_reports_flag_rate_and_metrics_on_passing_images(run_copy: Path) -> None:
    from pneumo.evaluation.run import evaluate_run

    result = evaluate_run(run_copy, n_boot=20, plots=False, progress=False, device="cpu")
    assert result["ood"]["available"] is False and "ood-fit" in result["ood"]["reason"]
    fit_ood(run_copy)
    result = evaluate_run(
        run_copy, n_boot=20, plots=False, progress=False, device="cpu", report_hooks=(ood.report_sections,)
    )
    rates = ood_rates(run_copy, "test")
    o = result["ood"]
    assert (o["n"], o["n_flagged"]) == (rates["n"], rates["n_flagged"]) and o["n_passing"] == o["n"] - o["n_flagged"]
    stored = json.loads((Path(result["eval_dir"]) / "metrics.json").read_text())["ood"]
    assert stored["n_flagged"] == o["n_flagged"]
    passing, every = o["metrics_passing"][result["primary"]], result["metrics"][result["primary"]]
    assert np.sum(passing["point"]["confusion_matrix"]) == o["n_passing"]
    assert np.sum(every["point"]["confusion_matrix"]) == o["n"]
    html = (Path(result["eval_dir"]) / "report.html").read_text()
    expected = f"{o['n_flagged']} of {o['n']} images ({100 * o['flagged_rate']:.1f} %) flagged"
    assert "Out-of-distribution check" in html and expected in html and "on the passing images vs" in html
    card = (run_copy / "MODEL_CARD.md").read_text()
    assert "## Out-of-distribution check" in card and expected in card
