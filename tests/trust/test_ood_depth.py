"""The multi-depth outlier-exposure check: features of every stage, the fitted head, and the run-folder fit."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from pneumo.data.preprocess import resize_gray
from pneumo.models.depth_features import DepthFeatureHead, depth_features, pool_mean_std, split_depths
from pneumo.runs.context import load_model, open_run, split_images
from pneumo.training import read_run_meta
from pneumo.trust import ood
from pneumo.trust.ood import fit_ood, ood_rates, score_images
from pneumo.trust.ood_depth import DepthScorer, fit_depth_scorer
from pneumo.trust.ood_negatives import corruptions, synthetic_images


def test_pool_mean_std_is_each_channels_spatial_mean_and_sd() -> None:
    x = torch.randn(3, 5, 7, 6)
    got = pool_mean_std(x).numpy()
    flat = x.flatten(2).numpy()
    np.testing.assert_allclose(got[:, :5], flat.mean(2), atol=1e-5)
    np.testing.assert_allclose(got[:, 5:], flat.std(2), atol=1e-4)


def test_depth_features_cover_every_stage_and_stay_per_thread() -> None:
    from pneumo.models import get_model

    model = get_model("cnn", num_classes=2, in_chans=1, widths=(4, 8, 16), depths=(1, 1, 1)).eval()
    head = DepthFeatureHead(model, 2)
    x = torch.randn(2, 1, 32, 32)
    _, _, pooled, depth = head(x)
    assert head.stage_names == ["block1", "block2", "block3"]
    assert head.depth_dims == [8, 16, 32] and depth.shape == (2, 56)
    torch.testing.assert_close(depth[:, -32:-16], pooled)  # the last stage's means are the penultimate features
    # Two threads on one model (the service's pool): each gets the features of its own input.
    inputs = [torch.randn(1, 1, 32, 32) for _ in range(8)]
    expected = [head(t)[3] for t in inputs]
    got: dict[int, torch.Tensor] = {}

    def work(i: int) -> None:
        for _ in range(20):
            got[i] = head(inputs[i])[3]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(8):
        torch.testing.assert_close(got[i], expected[i])
    head.remove()
    model(x)  # no hook left behind


def _blobs(rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
    return rng.normal(size=(n, 12)) + shift


def test_head_threshold_round_trip_and_flags_the_negatives() -> None:
    rng = np.random.default_rng(0)
    pos, neg, val = _blobs(rng, 400), _blobs(rng, 300, 3.0), _blobs(rng, 201)
    scorer = fit_depth_scorer(pos, neg, val, stages=["a", "b"], depth_dims=[4, 8], pass_rate=0.975)
    assert 0.975 <= scorer.in_distribution(val).mean() < 0.975 + 2 / 201
    assert scorer.extra["negatives_flagged_rate"] > 0.9
    assert not scorer.in_distribution(_blobs(rng, 50, 6.0)).any()
    params = json.loads(json.dumps(scorer.to_params(), allow_nan=False))
    loaded = DepthScorer.from_params(params)
    probe = _blobs(rng, 30, 1.0)
    np.testing.assert_array_equal(loaded.score(probe), scorer.score(probe))
    assert loaded.threshold == scorer.threshold
    np.testing.assert_allclose(loaded.contributions(probe).sum(1) + loaded.intercept, loaded.score(probe))
    with pytest.raises(ValueError, match="disagree"):
        DepthScorer.from_params({**params, "depth_dims": [4, 9]})
    with pytest.raises(ValueError, match=r"shape \(N, 12\)"):
        scorer.score(probe[:, :5])
    # the inference hook: a multi-depth check refuses to score without multi-depth features
    scores, inside = ood.score(params, features=np.zeros((30, 3)), depth_features=probe)
    np.testing.assert_array_equal(scores, scorer.score(probe))
    np.testing.assert_array_equal(inside, scorer.in_distribution(probe))
    with pytest.raises(ValueError, match="multi-depth features"):
        ood.score(params, features=np.zeros((30, 3)))


def test_generated_negatives_are_not_xrays() -> None:
    images = np.random.default_rng(0).integers(0, 255, (30, 32, 32), dtype=np.uint8)
    bad = corruptions(images, seed=0)
    assert bad.shape == images.shape and bad.dtype == np.uint8
    assert (bad != images).any(axis=(1, 2)).mean() > 0.9
    synthetic = synthetic_images(3, size=64)
    assert len(synthetic) == 10 and all(v.shape == (64, 64) for v in synthetic.values())
    assert synthetic["blank:white-3"].std() == 0


def test_fitted_run_keeps_its_own_data_and_flags_foreign_inputs(
    run_copy: Path, foreign_images: dict[str, np.ndarray], tmp_path: Path
) -> None:
    params = fit_ood(run_copy, pass_rate=0.95)
    stored = read_run_meta(run_copy)["ood"]
    assert stored == json.loads(json.dumps(params)) and stored["method"] == "multidepth-oe"
    assert stored["stages"] == ["block1", "block2", "block3", "block4"] and stored["val_pass_rate"] >= 0.95
    assert stored["negatives"]["generated"] == stored["n_positives"] // 2 + 30  # each train image corrupted once
    assert ood_rates(run_copy, "val")["pass_rate"] == pytest.approx(stored["val_pass_rate"])
    assert ood_rates(run_copy, "test")["pass_rate"] >= 0.8

    ctx = open_run(run_copy)
    model = load_model(ctx)
    arrays = np.stack([resize_gray(img, ctx.contract) for img in foreign_images.values()])
    _, inside = score_images(stored, model, arrays, ctx.contract)
    flagged = dict(zip(foreign_images, ~inside, strict=True))
    assert all(flagged.values()), f"not flagged: {[k for k, v in flagged.items() if not v]}"
    # fitted and stored scorers agree exactly
    _, _, dep, _ = depth_features(model, split_images(ctx.split("test")), ctx.contract)
    fitted = DepthScorer.from_params(params).score(dep)
    np.testing.assert_array_equal(DepthScorer.from_params(stored).score(dep), fitted)
    assert [b.shape[1] for b in split_depths(dep, stored["depth_dims"])] == stored["depth_dims"]


def test_extra_negatives_enter_the_fit(run_copy: Path, synthetic_data: Path, tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "adults"
    (folder / "NORMAL").mkdir(parents=True)
    rng = np.random.default_rng(5)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(folder / "NORMAL" / f"x{i}.png")
    manifest = folder / "MANIFEST.csv"
    manifest.write_text("path,label\n" + "".join(f"NORMAL/x{i}.png,NORMAL\n" for i in range(12)))
    params = fit_ood(run_copy, negatives=manifest)
    assert params["negatives"]["n_extra"] == 12 and params["negatives"]["extra"] == str(manifest)
    with pytest.raises(ValueError, match="needs the multidepth-oe method"):
        fit_ood(run_copy, method="mahalanobis-pca-tied", negatives=manifest)
