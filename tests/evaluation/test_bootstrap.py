import math

import numpy as np
import pytest

from pneumo.evaluation.bootstrap import CI, bootstrap_ci, group_indices
from pneumo.evaluation.metrics import MetricSuite, compute_metrics

BINARY = MetricSuite(("NORMAL", "PNEUMONIA"), threshold=0.5)


def synthetic_patients(n_patients=150, images_per_patient=4, seed=0):
    """Patients whose images share a patient-level score offset, i.e. correlated predictions."""
    rng = np.random.default_rng(seed)
    patient_label = rng.integers(0, 2, n_patients)
    patient_offset = rng.normal(0, 1.2, n_patients)
    groups = np.repeat(np.arange(n_patients), images_per_patient)
    y = patient_label[groups]
    logit = 1.0 * (2 * y - 1) + patient_offset[groups] + rng.normal(0, 0.3, groups.size)
    p = 1 / (1 + np.exp(-logit))
    return y, np.stack([1 - p, p], axis=1), groups


def width(ci: CI) -> float:
    return ci.high - ci.low


def test_same_seed_reproduces_and_another_seed_differs():
    y, probs, groups = synthetic_patients()
    first = bootstrap_ci(y, probs, groups, BINARY, n_boot=300, seed=7)
    again = bootstrap_ci(y, probs, groups, BINARY, n_boot=300, seed=7)
    other = bootstrap_ci(y, probs, groups, BINARY, n_boot=300, seed=8)
    assert first == again
    assert first["roc_auc"] != other["roc_auc"]
    assert first["roc_auc"].point == other["roc_auc"].point  # only the interval depends on the seed


def test_interval_brackets_the_point_estimate():
    y, probs, groups = synthetic_patients()
    cis = bootstrap_ci(y, probs, groups, BINARY, n_boot=500)
    point = compute_metrics(y, probs, BINARY.class_names)
    for name in ("accuracy", "sensitivity", "specificity", "ppv", "npv", "f1", "roc_auc", "pr_auc", "brier"):
        ci = cis[name]
        assert ci.point == pytest.approx(point[name])
        assert ci.low < ci.point < ci.high, name
        assert ci.n_valid == 500


def test_duplicating_images_within_patients_changes_nothing_at_patient_level():
    y, probs, groups = synthetic_patients(images_per_patient=2)
    base = bootstrap_ci(y, probs, groups, BINARY, n_boot=300, seed=1)
    triple = np.tile(np.arange(y.size), 3)  # every image three times, same patient id
    tripled = bootstrap_ci(y[triple], probs[triple], groups[triple], BINARY, n_boot=300, seed=1)
    for name in ("accuracy", "roc_auc", "sensitivity"):
        assert tripled[name].low == pytest.approx(base[name].low, abs=1e-12)
        assert tripled[name].high == pytest.approx(base[name].high, abs=1e-12)
    # An image-level bootstrap takes the copies for independent evidence and shrinks the interval.
    image_level = bootstrap_ci(y[triple], probs[triple], None, BINARY, n_boot=300, seed=1)
    assert width(image_level["roc_auc"]) < 0.75 * width(tripled["roc_auc"])


def test_patient_level_interval_is_wider_than_image_level_for_correlated_images():
    y, probs, groups = synthetic_patients(images_per_patient=6)
    patient = bootstrap_ci(y, probs, groups, BINARY, n_boot=400)
    image = bootstrap_ci(y, probs, None, BINARY, n_boot=400)
    assert width(patient["accuracy"]) > 1.5 * width(image["accuracy"])


def test_undefined_replicates_are_skipped_per_metric():
    y = np.array([0, 0, 0, 0, 0, 1])
    p = np.array([0.1, 0.4, 0.2, 0.7, 0.3, 0.9])
    cis = bootstrap_ci(y, np.stack([1 - p, p], axis=1), None, BINARY, n_boot=200)
    # P(no positive drawn) = (5/6)^6, about a third of the replicates: AUC undefined there.
    assert 0 < cis["roc_auc"].n_valid < 200
    assert cis["accuracy"].n_valid == 200
    assert not math.isnan(cis["roc_auc"].low)


def test_generic_metric_function_gives_the_same_intervals_as_the_vectorised_path():
    y, probs, groups = synthetic_patients(n_patients=40)
    fast = bootstrap_ci(y, probs, groups, BINARY, n_boot=20, seed=3)
    slow = bootstrap_ci(y, probs, groups, lambda yy, pp: BINARY(yy, pp), n_boot=20, seed=3)
    assert fast.keys() == slow.keys()
    for name in fast:
        assert fast[name].low == pytest.approx(slow[name].low, abs=1e-10), name
        assert fast[name].high == pytest.approx(slow[name].high, abs=1e-10), name


def test_missing_patient_ids_are_their_own_groups():
    codes = group_indices(["a", None, "a", float("nan"), "", "b", None], 7)
    assert codes[0] == codes[2]
    singletons = codes[[1, 3, 4, 6]]
    assert len(set(singletons)) == 4
    assert not set(singletons) & {codes[0], codes[5]}
    assert list(group_indices(None, 3)) == [0, 1, 2]
    with pytest.raises(ValueError):
        group_indices(["a"], 2)


def test_multiclass_metrics_nested_names_are_bootstrapped():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 120)
    probs = rng.dirichlet([1, 1, 1], 120)
    probs[np.arange(120), y] += 1
    probs /= probs.sum(axis=1, keepdims=True)
    cis = bootstrap_ci(y, probs, None, MetricSuite(("NORMAL", "BACTERIA", "VIRUS")), n_boot=100)
    assert {"roc_auc", "macro_f1", "recall/VIRUS", "roc_auc_per_class/NORMAL"} <= cis.keys()
    assert cis["recall/VIRUS"].low <= cis["recall/VIRUS"].point <= cis["recall/VIRUS"].high


def test_a_metric_suite_computes_the_replicates_in_batches_not_one_by_one(monkeypatch):
    """What keeps 1,000 replicates fast, checked by structure instead of a clock: the suite is called once (the
    point estimate) and its vectorised ``batch`` takes the replicates 100 at a time."""
    y, probs, groups = synthetic_patients(n_patients=208, images_per_patient=3)  # 624 images
    calls, batch_shapes = [], []
    real_call, real_batch = MetricSuite.__call__, MetricSuite.batch

    def counting_call(self, y_true, p):
        calls.append(len(y_true))
        return real_call(self, y_true, p)

    def counting_batch(self, y_true, p, weights):
        batch_shapes.append(weights.shape)
        return real_batch(self, y_true, p, weights)

    monkeypatch.setattr(MetricSuite, "__call__", counting_call)
    monkeypatch.setattr(MetricSuite, "batch", counting_batch)
    cis = bootstrap_ci(y, probs, groups, BINARY, n_boot=1000)
    assert calls == [624] and batch_shapes == [(100, 624)] * 10
    assert cis["roc_auc"].n_valid == 1000


def test_rejects_bad_arguments():
    y, probs, groups = synthetic_patients(n_patients=10)
    with pytest.raises(ValueError):
        bootstrap_ci(y, probs, groups, BINARY, alpha=1.5)
    with pytest.raises(ValueError):
        bootstrap_ci(y, probs[:-1], groups, BINARY)


def test_intervals_match_a_hand_written_patient_bootstrap():
    """Same RNG use as the module: per chunk of replicates, G patient draws (with replacement) from default_rng."""
    from pneumo.evaluation.bootstrap import _CHUNK

    rng = np.random.default_rng(5)
    sizes = rng.integers(1, 5, 30)  # 30 patients with 1 to 4 images each
    groups = np.repeat(np.arange(30), sizes)
    values = rng.normal(0, 1, groups.size) + 0.5 * groups  # patient-dependent, so the draws matter
    y = np.zeros(groups.size, dtype=int)
    probs = np.stack([values, values], axis=1)

    def mean_score(yy, pp):
        return {"mean": float(pp[:, 0].mean())}

    n_boot, seed, n_groups = 2 * _CHUNK + 37, 11, 30
    draw_rng = np.random.default_rng(seed)
    replicates = []
    for start in range(0, n_boot, _CHUNK):
        for row in draw_rng.integers(0, n_groups, size=(min(_CHUNK, n_boot - start), n_groups)):
            # the resampled set: every image of every drawn patient, a patient drawn twice twice
            replicates.append(np.concatenate([values[groups == g] for g in row]).mean())
    low, high = np.percentile(replicates, [2.5, 97.5])

    ci = bootstrap_ci(y, probs, groups, mean_score, n_boot=n_boot, seed=seed)["mean"]
    assert ci.point == pytest.approx(values.mean())
    assert ci.low == pytest.approx(low, abs=1e-12) and ci.high == pytest.approx(high, abs=1e-12)
    assert ci.n_valid == n_boot
    low90, high90 = np.percentile(replicates, [5, 95])
    ci90 = bootstrap_ci(y, probs, groups, mean_score, n_boot=n_boot, seed=seed, alpha=0.1)["mean"]
    assert ci90.low == pytest.approx(low90, abs=1e-12) and ci90.high == pytest.approx(high90, abs=1e-12)


def test_accuracy_interval_on_independent_images_has_the_binomial_width():
    """One image per patient: the 95 % interval of accuracy is about 2 * 1.96 * sqrt(p (1 - p) / n) wide."""
    rng = np.random.default_rng(0)
    n = 600
    y = rng.integers(0, 2, n)
    correct = rng.random(n) < 0.8
    p_pos = np.where(correct == (y == 1), 0.9, 0.1)
    probs = np.stack([1 - p_pos, p_pos], axis=1)
    ci = bootstrap_ci(y, probs, [f"patient{i}" for i in range(n)], BINARY, n_boot=2000, seed=0)["accuracy"]
    acc = correct.mean()
    assert ci.point == pytest.approx(acc)
    expected = 2 * 1.96 * math.sqrt(acc * (1 - acc) / n)
    assert width(ci) == pytest.approx(expected, rel=0.1)
    assert ci.low < acc < ci.high
