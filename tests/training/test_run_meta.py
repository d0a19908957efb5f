"""checkpoint.json across resumes, the epoch stored with last.safetensors, and a diverging run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from pneumo.data.preprocess import PreprocessContract
from pneumo.data.records import Record
from pneumo.models.predict import val_metrics
from pneumo.runs.format import update_run_meta, write_run_meta
from pneumo.runs.state import capture_rng, restore_rng
from pneumo.training import read_run_meta, train
from pneumo.training.data import source_has_same_outputs, warn_if_geometry_is_moot
from pneumo.training.engine import TrainingDivergedError


def test_calibration_is_kept_while_the_best_weights_stay_and_dropped_when_they_change(tmp_path: Path) -> None:
    base = {"format": 1, "task": "normal-pneumonia", "best": {"epoch": 3, "val_auc": 0.9}, "last": {"epoch": 3}}
    write_run_meta(tmp_path, base)
    op = {"threshold": 0.42, "weights_sha256": "abc"}
    update_run_meta(tmp_path, operating_point=op, temperature=1.5, ood={"method": "mahalanobis"})

    write_run_meta(tmp_path, {**base, "last": {"epoch": 5}})  # resumed, no better epoch
    meta = read_run_meta(tmp_path)
    assert (meta["operating_point"], meta["temperature"], meta["last"]) == (op, 1.5, {"epoch": 5})

    write_run_meta(tmp_path, {**base, "best": {"epoch": 7, "val_auc": 0.95}, "last": {"epoch": 7}})
    meta = read_run_meta(tmp_path)
    assert "operating_point" not in meta and "temperature" not in meta  # fitted on epoch 3's weights
    assert meta["ood"] == {"method": "mahalanobis"}  # training refits OOD itself when the best epoch changes


def test_last_weights_record_the_epoch_they_come_from(make_cfg) -> None:
    run = train(make_cfg(epochs=2))
    with safe_open(run / "last.safetensors", "pt") as f:
        stored = json.loads(f.metadata()["meta"])
    assert stored["epoch"] == read_run_meta(run)["last"]["epoch"] == 2


def test_non_finite_validation_logits_give_undefined_metrics() -> None:
    logits = np.array([[0.0, 1.0], [np.nan, 0.0], [2.0, 0.0]])
    metrics = val_metrics(logits, np.array([1, 0, 0]))
    assert all(math.isnan(v) for v in metrics.values())


def test_a_diverging_run_stops_with_a_clear_message(make_cfg) -> None:
    with pytest.raises(TrainingDivergedError, match=r"training diverged in epoch 1.*learning rate"):
        train(make_cfg("lr=1e30", "grad_clip=null"))


def test_a_source_run_for_other_classes_gives_no_head(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = tmp_path / "normal-pneumonia-run"
    run.mkdir()
    (run / "best.safetensors").write_bytes(b"")
    (run / "checkpoint.json").write_text(json.dumps({"class_names": ["NORMAL", "PNEUMONIA"], "dummy_class": False}))
    for weights in (run, run / "best.safetensors"):
        assert source_has_same_outputs(weights, ("NORMAL", "PNEUMONIA"), False)
        assert not source_has_same_outputs(weights, ("bacteria", "virus"), False)
        assert not source_has_same_outputs(weights, ("NORMAL", "PNEUMONIA"), True)
    bare = tmp_path / "w.safetensors"
    bare.write_bytes(b"")
    assert "unknown" not in caplog.text
    assert source_has_same_outputs(bare, ("bacteria", "virus"), False)  # no metadata: the shapes decide
    assert f"{bare}: no checkpoint.json beside it, so its classes are unknown" in caplog.text  # and it says so
    caplog.clear()  # ImageNet weights: a 1000-class head, never a starting point, and nothing to warn about
    assert not source_has_same_outputs("imagenet", ("NORMAL", "PNEUMONIA"), False) and "unknown" not in caplog.text


def test_cuda_rng_state_is_saved_and_restored_for_the_device_this_rank_trains_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Two GPUs: rank 0 saves the state of device 0; rank 1, on device 1, must restore it onto device 1 (the states
    # of other devices in rank 0's process were never drawn from).
    states = {0: torch.tensor([7], dtype=torch.uint8), 1: torch.tensor([1], dtype=torch.uint8)}
    restored: dict[int, torch.Tensor] = {}
    device = {"current": 0}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: device["current"])
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda d: states[d])
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, d: restored.__setitem__(d, state))
    tensors, info = capture_rng()
    assert torch.equal(tensors["rng.cuda"], states[0]) and not any(k.startswith("rng.cuda.") for k in tensors)
    device["current"] = 1
    restore_rng(tensors, info)
    assert list(restored) == [1] and torch.equal(restored[1], states[0])


def test_letterbox_on_square_training_images_is_flagged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def records(size: tuple[int, int]) -> list[Record]:
        out = []
        for i in range(3):
            path = tmp_path / f"{size[0]}x{size[1]}-{i}.png"
            Image.new("L", size).save(path)
            out.append(Record(path, "train", "NORMAL", "normal", f"p{i}"))
        return out

    square, wide = records((32, 32)), records((48, 32))
    letterbox = PreprocessContract(image_size=32, geometry="letterbox")
    with caplog.at_level("WARNING", logger="pneumo.training.data"):
        assert warn_if_geometry_is_moot(square, letterbox)
    assert "square already" in caplog.text and "letterboxed" in caplog.text
    assert not warn_if_geometry_is_moot(wide, letterbox)
    assert not warn_if_geometry_is_moot(square, PreprocessContract(image_size=32))  # squash: nothing to say


def test_a_start_that_fails_before_training_leaves_no_empty_run(make_cfg, tmp_path: Path) -> None:
    """A folder the failed call created goes again; a folder the user had stays, with what was in it."""
    from pneumo.data.records import DatasetError

    empty_data = tmp_path / "empty-data"
    empty_data.mkdir()
    with pytest.raises(DatasetError):
        train(make_cfg(data=str(empty_data), out=str(tmp_path / "new-run")))
    assert not (tmp_path / "new-run").exists()

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(DatasetError):
        train(make_cfg(data=str(empty_data), out=str(mine)))
    assert (mine / "notes.txt").read_text() == "keep me"


def test_a_split_file_with_a_patient_in_train_and_val_is_refused(
    make_cfg, synthetic_data: Path, tmp_path: Path
) -> None:
    from dataclasses import replace

    from pneumo.data import dataset_root, discover
    from pneumo.data.records import DatasetError
    from pneumo.data.splits import make_split, write_split_csv
    from pneumo.training.data import resolve_split

    records = make_split(discover(synthetic_data), seed=0)
    trained = next(r.patient_id for r in records if r.split == "train")
    first_val = next(i for i, r in enumerate(records) if r.split == "val")
    records[first_val] = replace(records[first_val], patient_id=trained)  # an edited or hand-made split file
    write_split_csv(records, tmp_path / "split.csv", dataset_root(synthetic_data))
    with pytest.raises(DatasetError, match=rf"1 patient\(s\) in both train and val \(e.g. \['{trained}'\]\)"):
        resolve_split(make_cfg(split_file=str(tmp_path / "split.csv")))
