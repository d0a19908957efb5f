import numpy as np
import pytest
from scipy.special import softmax

from pneumo.evaluation.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    nll,
    reliability_curve,
)


def calibrated_logits(n=4000, k=3, seed=0):
    """Logits whose softmax is the true label distribution (labels are drawn from it)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (n, k))
    probs = softmax(logits, axis=1)
    y = np.array([rng.choice(k, p=row) for row in probs])
    return logits, y


@pytest.mark.parametrize("k", [2, 3])
def test_temperature_recovers_overconfidence_and_lowers_nll(k):
    logits, y = calibrated_logits(k=k)
    overconfident = 5 * logits
    t = fit_temperature(overconfident, y)
    assert t == pytest.approx(5, rel=0.15)
    assert nll(overconfident, y, t) < nll(overconfident, y) - 0.1
    assert fit_temperature(logits, y) == pytest.approx(1, rel=0.15)  # calibrated logits need no scaling


def test_single_logit_binary_input_is_a_sigmoid_model():
    logits, y = calibrated_logits(k=2, seed=1)
    margin = logits[:, 1] - logits[:, 0]  # softmax([a, b])[1] == sigmoid(b - a)
    assert fit_temperature(5 * margin, y) == pytest.approx(fit_temperature(5 * logits, y), rel=1e-3)
    np.testing.assert_allclose(apply_temperature(margin, 2.0), apply_temperature(logits, 2.0), atol=1e-12)


def test_apply_temperature_is_softmax_of_scaled_logits():
    logits, _ = calibrated_logits(n=10)
    np.testing.assert_allclose(apply_temperature(logits, 1.0), softmax(logits, axis=1))
    softened = apply_temperature(logits, 3.0)
    np.testing.assert_allclose(softened.sum(axis=1), 1.0)
    assert (softened.max(axis=1) < softmax(logits, axis=1).max(axis=1)).all()
    with pytest.raises(ValueError):
        apply_temperature(logits, 0.0)


def test_ece_on_a_hand_computed_case():
    # Top-label confidences 0.85, 0.85, 0.75, 0.55; correct: yes, no, yes, yes.
    # ECE = 2/4 * |0.5 - 0.85| + 1/4 * |1 - 0.75| + 1/4 * |1 - 0.55| = 0.35
    p_pos = np.array([0.85, 0.85, 0.25, 0.55])
    y = np.array([1, 0, 0, 1])
    assert expected_calibration_error(y, p_pos, n_bins=10) == pytest.approx(0.35)
    assert expected_calibration_error(y, np.stack([1 - p_pos, p_pos], axis=1), n_bins=10) == pytest.approx(0.35)


def test_ece_small_for_calibrated_and_large_for_overconfident_probabilities():
    rng = np.random.default_rng(0)
    p = rng.random(20000)
    y = (rng.random(20000) < p).astype(int)  # labels drawn from p: calibrated by construction
    assert expected_calibration_error(y, p) < 0.02
    overconfident = 1 / (1 + np.exp(-5 * np.log(p / (1 - p))))
    assert expected_calibration_error(y, overconfident) > 0.1

    logits, y3 = calibrated_logits()
    assert expected_calibration_error(y3, softmax(logits, axis=1)) < 0.04
    assert expected_calibration_error(y3, softmax(5 * logits, axis=1)) > 0.15


def test_temperature_scaling_lowers_ece():
    logits, y = calibrated_logits(seed=2)
    t = fit_temperature(5 * logits, y)
    before = expected_calibration_error(y, softmax(5 * logits, axis=1))
    assert expected_calibration_error(y, apply_temperature(5 * logits, t)) < before / 3


def test_reliability_curve_bins():
    logits, y = calibrated_logits(n=500)
    curve = reliability_curve(y, softmax(logits, axis=1), n_bins=10)
    assert curve.count.sum() == 500
    assert len(curve.bin_edges) == 11
    assert ((curve.confidence >= 1 / 3) & (curve.confidence <= 1)).all()  # top-label confidence >= 1/K
    assert ((curve.accuracy >= 0) & (curve.accuracy <= 1)).all()
    assert set(curve.to_dict()) == {"bin_edges", "confidence", "accuracy", "count"}


def test_fit_temperature_rejects_bad_labels():
    logits, y = calibrated_logits(n=20)
    with pytest.raises(ValueError):
        fit_temperature(logits, y[:-1])
    with pytest.raises(ValueError):
        fit_temperature(logits, y + 3)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_fit_temperature_rejects_non_finite_logits(bad: float) -> None:
    z = np.random.default_rng(0).normal(size=(20, 3))
    z[4, 1] = bad
    with pytest.raises(ValueError, match="1 of 20 images have non-finite logits"):
        fit_temperature(z, np.arange(20) % 3)


def test_an_implausible_temperature_is_fitted_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    logits, y = calibrated_logits(n=200)
    fit_temperature(logits, y)
    assert "temperature" not in caplog.text  # a calibrated model: T near 1, no warning
    separable = np.where(np.eye(2, dtype=bool)[np.arange(20) % 2], 1.0, -1.0)  # every image right, margin 2
    t = fit_temperature(separable, np.arange(20) % 2)
    assert t < 0.1 and "fitted on 20 validation images lies outside (0.1, 10.0)" in caplog.text
