import math

import numpy as np
import pytest

from pneumo.evaluation.bootstrap import group_indices, replicate_weights
from pneumo.evaluation.metrics import (
    MetricSuite,
    binary_metrics,
    compute_metrics,
    multiclass_metrics,
    scalar_metrics,
)

# Ten images: 4 positives, 6 negatives. At t = 0.5: TP = 3 (0.9, 0.8, 0.6), FN = 1 (0.4),
# FP = 2 (0.7, and 0.5 because p >= t is positive), TN = 4.
Y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
P = np.array([0.9, 0.8, 0.4, 0.6, 0.7, 0.2, 0.1, 0.3, 0.5, 0.05])


def mann_whitney_auc(y, score):
    """P(score of a random positive > score of a random negative), ties counting one half."""
    pos, neg = score[y == 1], score[y == 0]
    wins = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def test_binary_metrics_match_hand_computed_confusion_matrix():
    m = binary_metrics(Y, P, threshold=0.5)
    assert m["confusion_matrix"] == [[4, 2], [1, 3]]
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["sensitivity"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 4 / 6) / 2)
    assert m["ppv"] == pytest.approx(3 / 5)
    assert m["npv"] == pytest.approx(4 / 5)
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    assert m["brier"] == pytest.approx(np.mean((P - Y) ** 2))
    # Positives rank 1, 2, 4 and 6 by score: precision 1/1, 2/2, 3/4, 4/6 at each recall step.
    assert m["pr_auc"] == pytest.approx((1 + 1 + 3 / 4 + 4 / 6) / 4)
    assert m["threshold"] == 0.5


def test_roc_auc_equals_mann_whitney_count():
    assert binary_metrics(Y, P)["roc_auc"] == pytest.approx(21 / 24)  # 6 + 6 + 5 + 4 wins of 24 pairs
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 60)
    p = np.round(rng.random(60) * 0.6 + 0.3 * y, 1)  # coarse scores: many ties
    assert binary_metrics(y, p)["roc_auc"] == pytest.approx(mann_whitney_auc(y, p))


def test_threshold_moves_the_operating_point():
    strict = binary_metrics(Y, P, threshold=0.75)
    assert strict["confusion_matrix"] == [[6, 0], [2, 2]]
    assert strict["ppv"] == 1.0
    assert strict["roc_auc"] == binary_metrics(Y, P)["roc_auc"]  # threshold-free


def test_roc_points_read_the_curve_and_ignore_the_threshold():
    # Ten negatives, one of them (0.95) above every positive; ten positives, one of them (0.30) low.
    negatives = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.95]
    positives = [0.3, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9]
    y = np.array([0] * 10 + [1] * 10)
    p = np.array(negatives + positives)
    for t in (0.2, 0.5, 0.8):
        m = binary_metrics(y, p, threshold=t)
        # Specificity 9/10 (exactly the 0.90 level) allows the one FP at 0.95: nine positives lie above 0.45.
        assert m["sensitivity_at_specificity_90"] == pytest.approx(0.9)
        # Sensitivity 9/10 is first reached at t = 0.5, where only 0.95 is a FP; reaching 10/10 costs 5 FPs.
        assert m["specificity_at_sensitivity_90"] == pytest.approx(0.9)
    separated = binary_metrics(y, np.r_[np.full(10, 0.1), np.full(10, 0.9)])
    assert separated["sensitivity_at_specificity_90"] == separated["specificity_at_sensitivity_90"] == 1.0
    reversed_ = binary_metrics(y, np.r_[np.full(10, 0.9), np.full(10, 0.1)])
    assert reversed_["sensitivity_at_specificity_90"] == reversed_["specificity_at_sensitivity_90"] == 0.0
    single_class = binary_metrics([1, 1, 1], [0.2, 0.5, 0.9])
    assert math.isnan(single_class["sensitivity_at_specificity_90"])


def test_undefined_binary_metrics_are_nan_not_zero():
    no_positive_calls = binary_metrics([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.1])
    assert math.isnan(no_positive_calls["ppv"])
    assert no_positive_calls["npv"] == pytest.approx(0.5)
    assert no_positive_calls["sensitivity"] == 0.0

    negatives_only = binary_metrics([0, 0, 0], [0.1, 0.2, 0.9])
    for name in ("sensitivity", "roc_auc", "pr_auc", "balanced_accuracy"):
        assert math.isnan(negatives_only[name]), name
    assert negatives_only["specificity"] == pytest.approx(2 / 3)
    assert not math.isnan(negatives_only["brier"])


def test_binary_metrics_reject_bad_input():
    with pytest.raises(ValueError):
        binary_metrics([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError):
        binary_metrics([0, 1], [0.1])
    with pytest.raises(ValueError):
        binary_metrics([], [])


NAMES = ["NORMAL", "BACTERIA", "VIRUS"]
Y3 = np.array([0, 0, 1, 1, 2, 2])
# Predicted (argmax): 0, 1, 1, 1, 2, 0.
P3 = np.array(
    [
        [0.7, 0.2, 0.1],
        [0.3, 0.6, 0.1],
        [0.1, 0.8, 0.1],
        [0.2, 0.5, 0.3],
        [0.1, 0.2, 0.7],
        [0.5, 0.1, 0.4],
    ]
)


def test_multiclass_metrics_match_hand_computed_values():
    m = multiclass_metrics(Y3, P3, NAMES)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx({"NORMAL": 1 / 2, "BACTERIA": 2 / 3, "VIRUS": 1.0})
    assert m["recall"] == pytest.approx({"NORMAL": 1 / 2, "BACTERIA": 1.0, "VIRUS": 1 / 2})
    f1 = {"NORMAL": 2 / 4, "BACTERIA": 4 / 5, "VIRUS": 2 / 3}  # 2TP / (2TP + FP + FN)
    assert m["f1"] == pytest.approx(f1)
    assert m["macro_f1"] == pytest.approx(sum(f1.values()) / 3)
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert m["log_loss"] == pytest.approx(-np.mean(np.log(P3[np.arange(6), Y3])))
    per_class = {name: mann_whitney_auc(np.equal(Y3, c).astype(int), P3[:, c]) for c, name in enumerate(NAMES)}
    assert m["roc_auc_per_class"] == pytest.approx(per_class)
    assert m["roc_auc"] == pytest.approx(np.mean(list(per_class.values())))


def test_class_absent_from_y_true_gives_nan_auc_without_crashing():
    m = multiclass_metrics(Y3[:4], P3[:4], NAMES)  # no VIRUS image
    assert math.isnan(m["roc_auc_per_class"]["VIRUS"])
    assert math.isnan(m["recall"]["VIRUS"])
    assert math.isnan(m["roc_auc"])
    assert not math.isnan(m["roc_auc_per_class"]["NORMAL"])
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 1) / 2)  # mean over classes present


def test_compute_metrics_dispatches_on_number_of_columns():
    probs2 = np.stack([1 - P, P], axis=1)
    assert compute_metrics(Y, probs2, ["NORMAL", "PNEUMONIA"], threshold=0.3) == binary_metrics(Y, P, 0.3)
    assert compute_metrics(Y, probs2, ["NORMAL", "PNEUMONIA"])["threshold"] == 0.5
    assert compute_metrics(Y3, P3, NAMES) == multiclass_metrics(Y3, P3, NAMES)
    with pytest.raises(ValueError):
        compute_metrics(Y3, P3, NAMES, threshold=0.5)
    with pytest.raises(ValueError):
        compute_metrics(Y3, P3, NAMES[:2])


def test_scalar_metrics_flattens_nested_and_drops_lists():
    flat = scalar_metrics(multiclass_metrics(Y3, P3, NAMES))
    assert flat["recall/BACTERIA"] == 1.0
    assert "confusion_matrix" not in flat
    assert all(isinstance(v, float) for v in flat.values())


def _assert_batch_matches_per_replicate(y, probs, suite, groups):
    rng = np.random.default_rng(0)
    weights = next(replicate_weights(group_indices(groups, len(y)), 25, rng))
    batch = suite.batch(y, probs, weights)
    for b, w in enumerate(weights):
        idx = np.repeat(np.arange(len(y)), w)
        expected = scalar_metrics(suite(y[idx], probs[idx]))
        assert set(expected) <= set(batch)
        for name, value in expected.items():
            np.testing.assert_allclose(batch[name][b], value, rtol=0, atol=1e-10, err_msg=f"{name} replicate {b}")
    return batch


def test_vectorised_batch_equals_scikit_learn_on_every_replicate():
    rng = np.random.default_rng(1)
    n = 40
    groups = rng.integers(0, 12, n)  # few groups: some replicates miss a class entirely
    y = rng.integers(0, 2, n)
    p = np.round(np.clip(0.35 * y + rng.random(n) * 0.65, 0, 1), 1)  # ties; includes exact 0.0 and 1.0 cases
    p[:2] = [0.0, 1.0]
    _assert_batch_matches_per_replicate(y, np.stack([1 - p, p], axis=1), MetricSuite(("N", "P"), 0.4), groups)

    y3 = rng.integers(0, 3, n)
    palette = rng.dirichlet([1, 1, 1], 6)  # few distinct rows: many tied scores
    probs3 = palette[rng.integers(0, 6, n)]
    _assert_batch_matches_per_replicate(y3, probs3, MetricSuite(NAMES), groups)


def test_vectorised_batch_agrees_on_undefined_replicates():
    y = np.array([0, 0, 0, 0, 0, 1])  # most replicates of six images miss the positive
    p = np.array([0.1, 0.4, 0.2, 0.7, 0.3, 0.9])
    batch = _assert_batch_matches_per_replicate(y, np.stack([1 - p, p], axis=1), MetricSuite(("N", "P")), None)
    assert np.isnan(batch["roc_auc"]).any() and not np.isnan(batch["roc_auc"]).all()
    y3 = np.array([0, 0, 1, 1, 2, 0])
    probs3 = np.eye(3)[[0, 1, 1, 2, 2, 0]] * 0.7 + 0.1
    batch = _assert_batch_matches_per_replicate(y3, probs3, MetricSuite(NAMES), None)
    assert np.isnan(batch["roc_auc_per_class/VIRUS"]).any()


@pytest.mark.parametrize("seed", [20, 21, 38, 54, 86])  # cases where the renormalised row crossed the threshold
def test_the_threshold_decides_on_the_same_values_it_was_chosen_on(seed: int) -> None:
    """Reported metrics, predictions.csv and deployment apply ``p >= t`` to the same tempered softmax: renormalising
    a row that sums to 1 +- 1 ulp used to move the image that set the threshold to the other side of it."""
    from sklearn.metrics import confusion_matrix

    from pneumo.evaluation.calibration import apply_temperature
    from pneumo.evaluation.run import score_operating_points
    from pneumo.evaluation.threshold import choose_threshold

    rng = np.random.default_rng(seed)
    logits, y = rng.normal(size=(40, 2)) * 3, rng.integers(0, 2, 40)
    probs = apply_temperature(logits, 1.7)
    threshold = choose_threshold(y, probs[:, 1], "youden")
    decided = (probs[:, 1] >= threshold).astype(int)
    sections, predicted = score_operating_points(
        y, apply_temperature(logits, 1.0), probs, [str(i) for i in range(40)], ("NORMAL", "PNEUMONIA"),
        {"threshold": threshold, "method": "youden"}, n_boot=2, seed=0,
    )  # fmt: skip
    assert predicted.tolist() == decided.tolist()
    assert sections[-1].point["confusion_matrix"] == confusion_matrix(y, decided).tolist()
    batch = MetricSuite(("NORMAL", "PNEUMONIA"), threshold).batch(y, probs, np.ones((1, 40)))
    assert batch["sensitivity"][0] == pytest.approx(decided[y == 1].mean())
