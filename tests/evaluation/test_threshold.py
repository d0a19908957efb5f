import inspect

import numpy as np
import pytest

from pneumo.evaluation.threshold import choose_threshold


def rates(y, p, t):
    pred = p >= t
    return pred[y == 1].mean(), 1 - pred[y == 0].mean()  # sensitivity, specificity


def validation_set(seed=0, n=400):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = 1 / (1 + np.exp(-(1.5 * (2 * y - 1) + rng.normal(0, 1.2, n))))
    return y, p


def test_youden_picks_the_known_optimum():
    # Thresholds and J = sens + spec - 1: 0.8 -> .25, 0.7 -> .50, 0.6 -> .25, 0.5 -> .50, 0.4 -> .75, 0.3 -> .50
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.5, 0.7, 0.8])
    assert choose_threshold(y, p, "youden") == pytest.approx(0.4)


def test_youden_maximises_j_over_every_candidate_threshold():
    y, p = validation_set()
    t = choose_threshold(y, p)

    def youden(threshold):
        sens, spec = rates(y, p, threshold)
        return sens + spec - 1

    best = max(youden(c) for c in np.unique(p))
    assert youden(t) == pytest.approx(best)


def test_separable_scores_get_a_perfect_threshold():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.3, 0.45, 0.55, 0.7, 0.9])
    t = choose_threshold(y, p)
    assert rates(y, p, t) == (1.0, 1.0)
    assert t == pytest.approx(0.55)  # ties in J go to the largest threshold


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95, 1.0])
def test_target_sensitivity_is_reached_with_the_largest_such_threshold(target):
    y, p = validation_set(seed=1)
    t = choose_threshold(y, p, "target_sensitivity", target_sensitivity=target)
    assert rates(y, p, t)[0] >= target
    higher = p[p > t]
    if higher.size:  # the next larger candidate misses the target
        assert rates(y, p, higher.min())[0] < target


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95, 1.0])
def test_target_specificity_is_reached_with_the_smallest_such_threshold(target):
    y, p = validation_set(seed=1)
    t = choose_threshold(y, p, "target_specificity", target_specificity=target)
    assert rates(y, p, t)[1] >= target
    lower = p[p < t]
    if lower.size:  # the next smaller candidate misses the target
        assert rates(y, p, lower.max())[1] < target


@pytest.mark.parametrize("top", [0.9, 1.0])
def test_a_target_specificity_only_never_positive_reaches_is_refused(top):
    """The threshold went just above the top score: a model that calls nothing positive (validation sensitivity 0),
    and above 1 where that score had saturated to 1.0, which no run could then load."""
    y = np.array([1, 0, 1, 0])
    p = np.array([0.6, top, 0.3, 0.2])  # the largest score is a negative
    with pytest.raises(ValueError, match=r"no threshold reaches validation specificity >= 1 while calling any image "
                       r"positive: .* one false positive among 2 negatives gives specificity 0.5000"):  # fmt: skip
        choose_threshold(y, p, "target_specificity", target_specificity=1.0)
    # Specificity 0.5 holds down to 0.3 (only 0.9 is a false positive there), which catches both positives.
    assert choose_threshold(y, p, "target_specificity", target_specificity=0.5) == pytest.approx(0.3)


def test_threshold_takes_validation_data_only_and_depends_on_it():
    # The signature admits validation labels and scores only; that evaluate_run feeds it validation (never test)
    # predictions is checked end to end in test_run.py (test_threshold_and_temperature_do_not_depend_on_test_labels).
    parameters = list(inspect.signature(choose_threshold).parameters)
    assert parameters == ["y_val", "p_val", "method", "target_sensitivity", "target_specificity"]
    y_val, p_val = validation_set(seed=2)
    y_other, p_other = validation_set(seed=3)
    assert choose_threshold(y_other, p_other) != choose_threshold(y_val, p_val)  # a function of what it is given


def test_rejects_single_class_and_unknown_method():
    with pytest.raises(ValueError):
        choose_threshold(np.ones(5, dtype=int), np.linspace(0, 1, 5))
    y, p = validation_set()
    with pytest.raises(ValueError):
        choose_threshold(y, p, method="f1")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        choose_threshold(y, p, "target_sensitivity", target_sensitivity=0.0)
    with pytest.raises(ValueError):
        choose_threshold(y, p, "target_specificity", target_specificity=1.5)


def test_exact_ties_and_exactly_reached_targets_follow_the_documented_rule():
    """Brute force in exact fractions: Youden ties go to the largest threshold, a target reached exactly counts as
    reached. Floating-point J (``tpr - fpr``) or specificity (``1 - fpr``) once broke both on small sets."""
    from fractions import Fraction

    rng = np.random.default_rng(7)
    checked = 0
    for _ in range(400):
        n = int(rng.integers(4, 30))
        y = rng.integers(0, 2, n)
        if len(set(y)) < 2:
            continue
        p = np.round(rng.uniform(size=n), 1)
        n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())

        def sens(t, y=y, p=p, n_pos=n_pos):
            return Fraction(int(((p >= t) & (y == 1)).sum()), n_pos)

        def spec(t, y=y, p=p, n_neg=n_neg):
            return Fraction(int(((p < t) & (y == 0)).sum()), n_neg)

        candidates = np.unique(p)
        best_j = max(sens(t) + spec(t) for t in candidates)
        assert choose_threshold(y, p) == max(t for t in candidates if sens(t) + spec(t) == best_j)
        target = float(rng.choice([0.2, 0.25, 0.45, 0.5, 0.68, 0.8, 0.9]))
        exact = Fraction(target).limit_denominator(100)
        reached = [t for t in candidates if spec(t) >= exact]
        if reached:
            assert choose_threshold(y, p, "target_specificity", target_specificity=target) == min(reached)
        assert choose_threshold(y, p, "target_sensitivity", target_sensitivity=target) == max(
            t for t in candidates if sens(t) >= exact
        )
        checked += 1
    assert checked > 300
    # The case found in review: J = 1/5 at t = 0.4 and at t = 0.2; the larger threshold wins.
    y = np.array([1, 1, 1, 0, 1, 0, 1, 0, 0, 0, 1, 1, 0, 0, 1, 0, 0, 1, 1, 0])
    p = np.array([0.2, 0.4, 0.6, 0.7, 0.2, 0.9, 0.8, 0.6, 0.1, 0.4, 0.1, 1.0, 0.2, 0.9, 0.5, 0.3, 0.1, 0.6, 0.4, 0.1])
    assert choose_threshold(y, p) == 0.4


def test_gap_midpoint_sits_in_the_middle_of_a_perfect_gap_in_logit_space():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.05, 0.1, 0.2, 0.8, 0.9, 0.95])
    assert choose_threshold(y, p, "youden") == pytest.approx(0.8)  # Youden takes the top edge of the gap
    t = choose_threshold(y, p, "gap_midpoint")
    logit = lambda v: np.log(v / (1 - v))  # noqa: E731
    assert logit(t) == pytest.approx((logit(0.2) + logit(0.8)) / 2)
    assert t == pytest.approx(0.5)
    assert rates(y, p, t) == (1.0, 1.0)


def test_gap_midpoint_makes_youdens_decisions_on_validation():
    for seed in range(5):
        y, p = validation_set(seed)
        tj, tm = choose_threshold(y, p, "youden"), choose_threshold(y, p, "gap_midpoint")
        assert tm < tj
        assert np.array_equal(p >= tj, p >= tm)


def test_prior_balanced_is_the_validation_share_of_positives_whatever_the_scores():
    y = np.array([0, 1, 1, 1])
    assert choose_threshold(y, np.array([0.1, 0.2, 0.3, 0.4]), "prior_balanced") == pytest.approx(0.75)
    assert choose_threshold(y, np.array([0.9, 0.01, 0.3, 0.4]), "prior_balanced") == pytest.approx(0.75)


def test_compare_rules_reports_every_rule_with_its_validation_threshold():
    from pneumo.evaluation.threshold import RULES, compare_rules

    y, p = validation_set(0)
    ye, pe = validation_set(1)
    rows = compare_rules(y, p, ye, pe)
    assert len(rows) == len(RULES) + 1
    by_rule = {r["rule"]: r for r in rows}
    youden = by_rule["Youden's J"]
    assert youden["threshold"] == choose_threshold(y, p, "youden")
    sens, spec = rates(ye, pe, youden["threshold"])
    assert youden["evaluated"]["sensitivity"] == pytest.approx(sens)
    assert youden["evaluated"]["specificity"] == pytest.approx(spec)
    assert by_rule["t = 0.5"]["threshold"] == 0.5
    assert by_rule["sensitivity >= 0.99"]["val"]["sensitivity"] >= 0.99
