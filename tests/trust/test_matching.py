"""The metadata-matched subset really matches: equal per-bin counts, and two-sample tests no longer reject."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pneumo.data import discover, get_task
from pneumo.trust.matching import balance_tests, bin_codes, matched_subset
from pneumo.trust.metadata import file_cues


def _skewed(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Two classes whose 'file sizes' differ strongly (AUC about 0.9), as NORMAL and PNEUMONIA originals do."""
    y = rng.integers(0, 2, n)
    size = np.exp(rng.normal(13.0 - 1.2 * y, 0.5))
    aspect = rng.normal(1.25 + 0.2 * y, 0.15)
    return np.column_stack([size, aspect]), y


def test_matched_subset_has_equal_counts_per_cell_and_passes_two_sample_tests() -> None:
    x, y = _skewed(np.random.default_rng(0), 3000)
    match = matched_subset(x, y, n_bins=[10, 5], seed=0)
    idx = match.index
    codes = np.column_stack([bin_codes(x[idx, j], match.edges[j]) for j in range(2)])
    for cell in np.unique(codes, axis=0):
        members = (codes == cell).all(axis=1)
        assert (y[idx][members] == 0).sum() == (y[idx][members] == 1).sum()
    for j in range(2):
        before, after = balance_tests(x[:, j], y), balance_tests(x[idx, j], y[idx])
        assert before["ks_p"] < 1e-6  # the test can reject: it does on the full set
        assert after["ks_p"] > 0.05, after


def test_matching_is_deterministic_with_a_seed() -> None:
    x, y = _skewed(np.random.default_rng(1), 800)
    a, b = matched_subset(x, y, seed=3), matched_subset(x, y, seed=3)
    np.testing.assert_array_equal(a.index, b.index)
    c = matched_subset(x, y, seed=4)
    assert len(c.index) == len(a.index) and not np.array_equal(c.index, a.index)


def test_rows_with_unknown_cues_are_left_out() -> None:
    x, y = _skewed(np.random.default_rng(2), 400)
    x[:50, 1] = np.nan
    match = matched_subset(x, y, n_bins=[5, 3])
    assert len(match.usable) == 350 and not np.isin(np.arange(50), match.index).any()


def test_matched_test_split_of_the_shared_data(kaggle_data: Path, originals_data: Path) -> None:
    task = get_task("normal-pneumonia")
    records, targets = task.select([r for r in discover(kaggle_data) if r.split == "test"])
    cues = file_cues(records, kaggle_data / "MANIFEST.csv", originals_data / "MANIFEST.csv")
    x, y = cues.matrix(["orig_bytes", "orig_aspect"]), np.asarray(targets)
    assert np.isfinite(x).all()  # the originals subset covers the whole test split
    match = matched_subset(x, y, n_bins=[10, 5], seed=0)
    idx = match.index
    assert 100 <= len(idx) <= 400 and (y[idx] == 0).sum() == (y[idx] == 1).sum()
    for j in range(2):
        assert balance_tests(x[:, j], y)["ks_p"] < 1e-6
        after = balance_tests(x[idx, j], y[idx])
        assert after["ks_p"] > 0.05, after
