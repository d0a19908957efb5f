from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest

from pneumo.runs.ood_depth import DepthScorer
from pneumo.training import build_config, read_run_meta, resume, train, update_run_meta
from pneumo.trust.ood import fit_after_training
from pneumo.utils.digest import file_sha256


@pytest.mark.slow
def test_every_finished_run_gets_an_ood_detector(
    synthetic_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    flags = {"data": str(synthetic_data), "model": "cnn", "image_size": 32, "epochs": 1, "out": str(tmp_path / "r")}
    tiny = ["model_kwargs.widths=[4,8]", "model_kwargs.depths=[1,1]"]
    run = train(build_config(flags={**flags, "progress": False}, overrides=tiny), after=fit_after_training)
    meta = read_run_meta(run)
    scorer = DepthScorer.from_params(meta["ood"])  # the multi-depth check, fitted by default
    assert meta["ood"]["method"] == "multidepth-oe" and math.isfinite(scorer.threshold)
    assert meta["ood"]["best_epoch"] == meta["best"]["epoch"]
    assert meta["ood"]["weights_sha256"] == file_sha256(run / "best.safetensors")[:16]

    # interrupted while fitting the detector: the training is finished, and resuming fits the detector
    update_run_meta(run, ood=None)
    with caplog.at_level(logging.WARNING, logger="pneumo.training.run"):
        assert resume(run, after=fit_after_training) == run and read_run_meta(run)["ood"] == meta["ood"]
    # a finished run is not extended (its LR schedule spans its epochs): the message says how to train longer
    assert "already finished after 1 epoch(s); nothing to resume. To train longer" in caplog.text
    assert f"pneumo train --config {run / 'config.yaml'} --set epochs=N --out NEW_FOLDER" in caplog.text
    caplog.clear()  # pneumo reproduce, evaluating a row that finished training, asked for nothing longer
    with caplog.at_level(logging.INFO, logger="pneumo.training.run"):
        assert resume(run, finished_ok=True) == run
    assert "has finished training (1 epoch(s))" in caplog.text and "To train longer" not in caplog.text

    off_flags = {**flags, "out": str(tmp_path / "off"), "fit_ood": False, "progress": False}
    off = train(build_config(flags=off_flags, overrides=tiny), after=fit_after_training)
    assert read_run_meta(off)["ood"] is None
    # the engine itself fits nothing: the detector comes from the hook the commands pass
    bare_flags = {**flags, "out": str(tmp_path / "bare"), "progress": False}
    bare = train(build_config(flags=bare_flags, overrides=tiny))
    assert read_run_meta(bare)["ood"] is None


@pytest.mark.slow
def test_ood_negatives_of_the_config_enter_the_detector(synthetic_data: Path, tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    folder = tmp_path / "foreign" / "NORMAL"
    folder.mkdir(parents=True)
    for i in range(6):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 40), dtype=np.uint8)).save(folder / f"{i}.png")
    flags = {"data": str(synthetic_data), "model": "cnn", "image_size": 32, "epochs": 1, "out": str(tmp_path / "r"),
             "progress": False, "ood_negatives": str(folder.parent)}  # fmt: skip
    run = train(
        build_config(flags=flags, overrides=["model_kwargs.widths=[4,8]", "model_kwargs.depths=[1,1]"]),
        after=fit_after_training,
    )
    negatives = read_run_meta(run)["ood"]["negatives"]
    assert negatives["extra"] == str(folder.parent) and negatives["n_extra"] == 6
