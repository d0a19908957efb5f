"""Atomic writes: whole files or none, with the permissions of an ordinary file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from pneumo.data.records import Record
from pneumo.data.splits import write_split_csv
from pneumo.utils.atomic import save_safetensors, write_json, write_text


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_every_writer_gives_the_usual_permissions(tmp_path: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    expected = 0o666 & ~umask
    save_safetensors(tmp_path / "w.safetensors", {"x": torch.zeros(2)})  # safetensors replaces the temp file
    write_json(tmp_path / "a.json", {"a": 1})
    write_text(tmp_path / "b.txt", "b")
    image = tmp_path / "train" / "NORMAL" / "IM-0001-0001.jpeg"
    write_split_csv([Record(image, "train", "NORMAL", None, "IM-0001")], tmp_path / "split.csv", tmp_path)
    assert {p.name: _mode(p) for p in tmp_path.iterdir() if p.is_file()} == dict.fromkeys(
        ["w.safetensors", "a.json", "b.txt", "split.csv"], expected
    )
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_failed_write_leaves_the_old_file(tmp_path: Path) -> None:
    write_text(tmp_path / "a.txt", "old")
    with pytest.raises(TypeError):
        write_text(tmp_path / "a.txt", None)  # type: ignore[arg-type]  # fails after the temp file exists
    assert (tmp_path / "a.txt").read_text() == "old" and not list(tmp_path.glob(".*.tmp"))


def test_a_replaced_file_keeps_its_permissions_and_new_files_follow_the_umask_of_now(tmp_path: Path) -> None:
    private = tmp_path / "private.json"
    write_json(private, {"a": 1})
    private.chmod(0o600)
    write_json(private, {"a": 2})
    assert _mode(private) == 0o600 and private.read_text().startswith("{")
    old = os.umask(0o077)
    try:
        write_text(tmp_path / "later.txt", "x")  # the umask set after pneumo was imported counts
    finally:
        os.umask(old)
    assert _mode(tmp_path / "later.txt") == 0o600


def test_the_rename_is_made_durable_by_syncing_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append("folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    write_text(tmp_path / "checkpoint.json", "{}")
    assert synced == ["file", "folder"]  # the data, then the rename


def test_the_same_tensors_and_metadata_always_give_the_same_bytes(tmp_path: Path) -> None:
    # safetensors writes its metadata in hash order; file digests name models and tie fitted thresholds to weights
    from safetensors import safe_open

    from pneumo.utils.digest import file_sha256

    tensors = {"b.weight": torch.arange(6.0).reshape(2, 3), "a.bias": torch.ones(3, dtype=torch.float16)}
    metadata = {"format": "pneumo", "meta": '{"x": 1}', "epoch": "3", "zeta": "z"}
    digests = set()
    for i in range(12):
        path = tmp_path / f"w{i}.safetensors"
        save_safetensors(path, tensors, metadata=dict(metadata))
        digests.add(file_sha256(path))
    assert len(digests) == 1
    with safe_open(str(tmp_path / "w0.safetensors"), framework="pt") as f:
        assert f.metadata() == metadata
        assert all(torch.equal(f.get_tensor(k), v) for k, v in tensors.items())
