"""Run folders written before pneumo.runs existed still load: ``checkpoint.json`` kept its format (version 1).

``fixtures/checkpoint-format1.json`` was written by ``pneumo reproduce --suite cpu --only cnn-normal-pneumonia`` on
commit 19ae675 (the last one with the format inside ``pneumo.training``); the weights are made here (2.6 MB are not
worth checking in), from the model the file describes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import pneumo.api
from pneumo.data.preprocess import PreprocessContract
from pneumo.models import get_model
from pneumo.runs.checkpoint import load_run, save_weights
from pneumo.runs.format import FORMAT, META_FILE, read_run_meta, update_run_meta

FIXTURE = Path(__file__).parent / "fixtures" / "checkpoint-format1.json"


@pytest.fixture
def old_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(FIXTURE, run / META_FILE)
    spec = json.loads(FIXTURE.read_text())["model"]
    model = get_model(spec["name"], num_classes=spec["num_outputs"], in_chans=spec["in_chans"], **spec["kwargs"])
    save_weights(run / "best.safetensors", model, {"epoch": 9})
    return run


def test_the_format_is_still_the_one_old_runs_were_written_in(old_run: Path) -> None:
    assert FORMAT == json.loads(FIXTURE.read_text())["format"] == 1
    assert read_run_meta(old_run) == json.loads(FIXTURE.read_text())


def test_an_old_run_folder_loads_and_predicts(old_run: Path) -> None:
    model, meta = load_run(old_run)
    assert model.preprocess_contract == PreprocessContract(image_size=128, mean=0.449, std=0.226)
    assert model.num_task_classes == 2 and meta["best"]["epoch"] == 9
    predictor = pneumo.api.load(old_run)
    result = predictor.predict(np.full((150, 120), 90, np.uint8))
    assert result.label in ("NORMAL", "PNEUMONIA") and result.in_distribution is None  # no OOD fitted back then
    # later fields land beside the old ones, and the file stays readable by this version
    update_run_meta(old_run, temperature=1.5)
    assert read_run_meta(old_run)["temperature"] == 1.5 and pneumo.api.load(old_run).meta.temperature == 1.5


def test_another_format_is_refused_with_the_file_named(old_run: Path) -> None:
    meta = json.loads(FIXTURE.read_text())
    (old_run / META_FILE).write_text(json.dumps({**meta, "format": 2}))
    with pytest.raises(ValueError, match=rf"{old_run / META_FILE}: unsupported checkpoint format 2"):
        read_run_meta(old_run)
