"""Options outside what a command can do are refused with a message, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from pneumo.cli import app


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["data", "synth", "{tmp}/d", "--n", "2"], "--n"),
        (["gan", "sample", "{tmp}", "--n", "0"], "--n"),
        (["reproduce", "--suite", "quick", "--out", "{tmp}/r", "--n-boot", "0"], "--n-boot"),
        (["evaluate", "{tmp}", "--device", "cuda:x"], "device must be auto, cpu, cuda or cuda:N"),
        (["compare", "{tmp}", "--split", "train"], "--split must be one of test, val"),
    ],
)
def test_out_of_range_options_are_refused(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, [a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_synthetic_data_into_a_used_folder_is_a_message(tmp_path: Path) -> None:
    (tmp_path / "chest_xray").mkdir()
    (tmp_path / "chest_xray" / "notes.txt").write_text("mine")
    result = CliRunner().invoke(app, ["data", "synth", str(tmp_path), "--n", "40"])
    assert result.exit_code == 2 and "exists and is not empty" in result.output
    assert isinstance(result.exception, SystemExit)


def test_a_full_disk_while_caching_is_a_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # it was a traceback (or, on a real full disk, a SIGBUS with no message at all)
    import errno
    import os

    def no_space(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "cache" / "images.u8"))

    assert CliRunner().invoke(app, ["data", "synth", str(tmp_path), "--n", "40"]).exit_code == 0
    monkeypatch.setattr(os, "posix_fallocate", no_space, raising=False)
    args = ["data", "cache", str(tmp_path / "chest_xray"), "--size", "16", "--cache-dir", str(tmp_path / "cache")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "No space left on device" in result.output and "images.u8" in result.output
    assert isinstance(result.exception, SystemExit)
