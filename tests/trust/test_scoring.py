"""Scoring: AUCs of raw cues (binary and three-class one-vs-rest), train-only orientation, paired AUC differences;
every expected value below is counted by hand from the pairs (positive, negative), ties counting one half."""

from __future__ import annotations

import numpy as np
import pytest

from pneumo.trust.scoring import PairedAUC, ScoreAUC, auc_ci, ci_dict, orient, oriented_scores, paired_auc

Y2 = np.array([0, 0, 1, 1])
# Positives 0.35 and 0.8 against negatives 0.1 and 0.4: 3 of 4 pairs ordered.
REF2 = np.array([0.1, 0.4, 0.35, 0.8])
# Positives 0.6 and 0.7 above both negatives 0.2 and 0.1: 4 of 4.
NEW2 = np.array([0.2, 0.1, 0.6, 0.7])

Y3 = np.array([0, 0, 1, 1, 2, 2])
# Per class one-vs-rest columns. Class 0: 5 beats 4 negatives, 3 beats 3 -> 7/8. Class 1: 2 and 3 each beat
# 0 and 1 -> 4/8. Class 2: 4 and 5 beat all -> 8/8. Macro mean (7/8 + 1/2 + 1) / 3 = 19/24.
SCORES3 = np.array(
    [
        [5, 0, 0],
        [3, 1, 1],
        [4, 2, 2],
        [1, 3, 3],
        [2, 4, 4],
        [0, 5, 5],
    ],
    dtype=float,
)


def _two_columns(p1: np.ndarray) -> np.ndarray:
    return np.column_stack([1 - p1, p1])


def test_score_auc_binary_counts_ordered_pairs_and_half_ties() -> None:
    assert ScoreAUC(2)(Y2, REF2)["roc_auc"] == pytest.approx(0.75)
    assert ScoreAUC(2)(Y2, NEW2)["roc_auc"] == pytest.approx(1.0)
    # A raw cue on any scale: only the order matters (0.8 -> 8000 changes nothing).
    assert ScoreAUC(2)(Y2, np.array([-3.0, 40.0, 7.0, 8000.0]))["roc_auc"] == pytest.approx(0.75)
    # Ties: positive 2 ties negative 2 (one half), beats 1; positive 3 beats both -> 3.5/4.
    assert ScoreAUC(2)(Y2, np.array([1.0, 2.0, 2.0, 3.0]))["roc_auc"] == pytest.approx(0.875)
    assert ScoreAUC(2)(Y2, np.full(4, 7.0))["roc_auc"] == pytest.approx(0.5)
    # Reversed order: the complement.
    assert ScoreAUC(2)(Y2, -REF2)["roc_auc"] == pytest.approx(0.25)


def test_score_auc_three_classes_is_the_macro_one_vs_rest_mean() -> None:
    assert ScoreAUC(3)(Y3, SCORES3)["roc_auc"] == pytest.approx(19 / 24)
    # batch: each weight row is a resampled set; ones = the set itself, zeros drop images.
    weights = np.array([np.ones(6), [1, 0, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    # Row 2 drops the image scored 3 in column 0: class 0 is then 5 vs (4, 1, 2, 0) -> 4/4; class 1: 2 and 3 vs
    # (0, 4, 5) -> 2/6; class 2: 4 and 5 vs (0, 2, 3) -> 6/6. Row 3 has no class 2: undefined.
    got = ScoreAUC(3).batch(Y3, SCORES3, weights)["roc_auc"]
    np.testing.assert_allclose(got[:2], [19 / 24, (1 + 2 / 6 + 1) / 3])
    assert np.isnan(got[2])


def test_orientation_is_chosen_per_class_on_the_given_values() -> None:
    assert orient(Y2, -REF2, 2).tolist() == [-1.0]
    assert orient(Y2, REF2, 2).tolist() == [1.0]
    # One raw cue, three classes: class 0 highest (AUC 1), class 1 lowest (AUC 0), class 2 in between (AUC 1/2).
    v = np.array([5.0, 4.0, 0.0, 1.0, 2.0, 3.0])
    signs = orient(Y3, v, 3)
    assert signs.tolist() == [1.0, -1.0, 1.0]
    oriented = oriented_scores(v, signs, 3)
    np.testing.assert_array_equal(oriented, np.column_stack([v, -v, v]))
    assert ScoreAUC(3)(Y3, oriented)["roc_auc"] == pytest.approx((1 + 1 + 0.5) / 3)
    np.testing.assert_array_equal(oriented_scores(REF2, np.array([-1.0]), 2), -REF2)


def test_auc_ci_has_the_hand_counted_point_and_a_patient_bootstrap() -> None:
    binary = auc_ci(Y2, REF2, ["a", "b", "c", "d"], 2, n_boot=200, seed=0)
    assert binary.point == pytest.approx(0.75)
    assert binary.low <= 0.75 <= binary.high and 0 < binary.n_valid < 200  # some draws miss a class
    three = auc_ci(Y3, SCORES3, None, 3, n_boot=200, seed=0)
    assert three.point == pytest.approx(19 / 24)
    assert three.low <= 19 / 24 <= three.high
    # Perfect separation stays perfect in every replicate.
    perfect = auc_ci(Y2, NEW2, None, 2, n_boot=100, seed=0)
    assert (perfect.point, perfect.low, perfect.high) == pytest.approx((1.0, 1.0, 1.0))
    # A patient is drawn with all its images: with two patients, one per class, every defined replicate is the set.
    pairs = auc_ci(Y2, REF2, ["n", "n", "p", "p"], 2, n_boot=100, seed=0)
    assert (pairs.low, pairs.high) == pytest.approx((0.75, 0.75))
    assert ci_dict(pairs) == {"point": pairs.point, "low": pairs.low, "high": pairs.high}
    assert ci_dict(None) is None


def test_paired_auc_reference_new_and_difference() -> None:
    metric = PairedAUC(("NORMAL", "PNEUMONIA"))
    both = np.hstack([_two_columns(REF2), _two_columns(NEW2)])
    assert metric(Y2, both) == pytest.approx({"roc_auc_reference": 0.75, "roc_auc": 1.0, "delta_roc_auc": 0.25})
    # Weighted replicates: ones = the set; (2, 1, 0, 1): ref negatives 0.1 (twice), 0.4 below 0.8 -> 1, new 1 -> 0;
    # (0, 1, 1, 1): ref negative 0.4 vs 0.35 and 0.8 -> 1/2, new -> 1, difference 1/2.
    weights = np.array([[1, 1, 1, 1], [2, 1, 0, 1], [0, 1, 1, 1]], dtype=float)
    got = metric.batch(Y2, both, weights)
    np.testing.assert_allclose(got["roc_auc_reference"], [0.75, 1.0, 0.5])
    np.testing.assert_allclose(got["roc_auc"], [1.0, 1.0, 1.0])
    np.testing.assert_allclose(got["delta_roc_auc"], [0.25, 0.0, 0.5])

    # Three classes: uniform outputs (AUC 1/2 per class) against outputs that rank every class first (AUC 1).
    uniform = np.full((6, 3), 1 / 3)
    sure = np.full((6, 3), 0.1)
    sure[np.arange(6), Y3] = 0.8
    three = PairedAUC(("normal", "bacteria", "virus"))
    expected = {"roc_auc_reference": 0.5, "roc_auc": 1.0, "delta_roc_auc": 0.5}
    assert three(Y3, np.hstack([uniform, sure])) == pytest.approx(expected)
    got3 = three.batch(Y3, np.hstack([uniform, sure]), np.ones((2, 6)))
    np.testing.assert_allclose(got3["delta_roc_auc"], [0.5, 0.5])


def test_paired_auc_resamples_both_outputs_together() -> None:
    groups = ["a", "b", "c", "d"]
    ref, new = _two_columns(REF2), _two_columns(NEW2)
    same = paired_auc(Y2, ref, ref, groups, ("NORMAL", "PNEUMONIA"), n_boot=200, seed=0)
    d = same["delta_roc_auc"]
    assert (d.point, d.low, d.high) == (0.0, 0.0, 0.0)  # same images in both halves of every replicate
    forward = paired_auc(Y2, ref, new, groups, ("NORMAL", "PNEUMONIA"), n_boot=200, seed=0)
    backward = paired_auc(Y2, new, ref, groups, ("NORMAL", "PNEUMONIA"), n_boot=200, seed=0)
    f, b = forward["delta_roc_auc"], backward["delta_roc_auc"]
    assert f.point == pytest.approx(0.25) and f.low <= 0.25 <= f.high
    assert f.low >= 0  # NEW2 orders every pair REF2 orders, in every replicate
    assert (b.point, b.low, b.high) == pytest.approx((-f.point, -f.high, -f.low))
    assert forward["roc_auc_reference"].point == pytest.approx(0.75)
    assert forward["roc_auc"].point == pytest.approx(1.0)


def test_a_nan_score_is_refused_not_scored_as_chance() -> None:
    # rankdata spread one NaN to every rank: the AUC came out 0.5 [0.5, 0.5]
    y = np.tile([0, 1], 10)
    scores = y + np.linspace(0, 0.1, 20)
    scores[3] = np.nan
    with pytest.raises(ValueError, match="1 score"):
        auc_ci(y, scores, None, 2, n_boot=10, seed=0)
