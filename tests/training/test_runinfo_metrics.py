"""metrics.jsonl: one line per epoch; a line cut off mid-write must not stop the run from resuming."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from pneumo.runs.runinfo import append_metrics, read_metrics


def test_a_last_line_cut_off_mid_write_is_left_out(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # json.loads raised on it, and a GAN run could not resume until the file was fixed by hand
    path = tmp_path / "metrics.jsonl"
    append_metrics(path, {"epoch": 1, "loss": 0.5})
    append_metrics(path, {"epoch": 2, "loss": 0.4})
    with open(path, "a") as f:
        f.write(json.dumps({"epoch": 3, "loss": 0.3})[:9])  # the process died here
    with caplog.at_level(logging.WARNING):
        assert [r["epoch"] for r in read_metrics(path)] == [1, 2]
    assert "its last line is incomplete" in caplog.text
    path.write_text('{"epoch": 1}\n{"epo\n{"epoch": 3}\n')  # damage inside the file is not a cut-off write
    with pytest.raises(json.JSONDecodeError):
        read_metrics(path)
