"""Shipped-model names, versions and checksum checks on a throwaway zoo folder (no real model needed)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from inference.conftest import make_fake_run
from pneumo.reproduce.ship import copy_run, next_version
from pneumo.zoo import ZooError, names_a_model, resolve_model, shipped_model, verify_checksums, writable_copy
from pneumo.zoo.catalog import CHECKSUMS_FILE, INDEX_FILE, write_checksums


def make_zoo(tmp_path: Path, names: tuple[str, ...] = ("binary-v1", "binary-v2", "three-v1")) -> Path:
    zoo = tmp_path / "zoo"
    for name in names:
        run = make_fake_run(zoo, name=name, task=name.split("-")[0], seed=len(name))
        write_checksums(run)
    index = {"default": "binary", "models": {n: {"description": n} for n in names}}
    (zoo / INDEX_FILE).write_text(json.dumps(index))
    return zoo


def test_names_resolve_to_versioned_folders(tmp_path: Path) -> None:
    zoo = make_zoo(tmp_path)
    assert shipped_model("binary", zoo).name == "binary-v2"  # the latest version
    assert shipped_model("pneumo/binary", zoo).name == "binary-v2"
    assert shipped_model("pneumo/binary-v1", zoo).name == "binary-v1"
    assert shipped_model("default", zoo).name == "binary-v2" and shipped_model("default", zoo).default
    assert resolve_model("three", zoo) == zoo / "three-v1"
    with pytest.raises(ZooError, match=re.escape("shipped: pneumo/binary-v1, pneumo/binary-v2, pneumo/three-v1")):
        shipped_model("binary-v3", zoo)
    with pytest.raises(ZooError, match=re.escape("neither a run folder nor an .onnx file")):
        resolve_model(tmp_path / "nothing", zoo)


def test_a_changed_missing_or_extra_file_is_refused(tmp_path: Path) -> None:
    zoo = make_zoo(tmp_path, ("binary-v1",))
    model = zoo / "binary-v1"
    verify_checksums(model)
    meta = json.loads((model / "checkpoint.json").read_text())
    (model / "checkpoint.json").write_text(json.dumps({**meta, "temperature": 2.0}))
    with pytest.raises(ZooError, match=r"checkpoint\.json: SHA-256 does not match SHA256SUMS"):
        shipped_model("binary", zoo)
    write_checksums(model)
    (model / "notes.txt").write_text("added")
    with pytest.raises(ZooError, match=r"not in SHA256SUMS: notes\.txt"):
        resolve_model("binary", zoo)
    (model / "notes.txt").unlink()
    (model / "best.safetensors").unlink()
    with pytest.raises(ZooError, match=r"missing: best\.safetensors"):
        verify_checksums(model)
    (model / CHECKSUMS_FILE).write_text("not a checksum line\n")
    with pytest.raises(ZooError, match="line 1 is not"):
        verify_checksums(model)


def test_first_argument_of_predict_names_a_model_or_an_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = make_fake_run(tmp_path)
    image = tmp_path / "x.jpeg"
    image.write_bytes(b"")
    folder = tmp_path / "images"
    folder.mkdir()
    monkeypatch.chdir(tmp_path)
    assert names_a_model(run) and names_a_model(run / "checkpoint.json") and names_a_model("export.onnx")
    assert names_a_model("pneumo/normal-pneumonia") and names_a_model("runs/mistyped-run")
    assert not names_a_model(image) and not names_a_model(folder) and not names_a_model("missing.jpeg")
    assert not names_a_model("missing.png")


def test_writable_copy_leaves_the_shipped_folder_alone(tmp_path: Path) -> None:
    zoo = make_zoo(tmp_path, ("binary-v1",))
    copy = writable_copy("binary", zoo, dest=tmp_path / "cache")
    assert copy == tmp_path / "cache" / "binary-v1" and (copy / "best.safetensors").is_file()
    (copy / "eval-x").mkdir()  # an evaluation written into the copy stays there
    assert writable_copy("pneumo/binary", zoo, dest=tmp_path / "cache") == copy and (copy / "eval-x").is_dir()
    (copy / "best.safetensors").write_bytes(b"other weights")  # not the shipped model any more: copied again
    assert writable_copy("binary", zoo, dest=tmp_path / "cache") == copy and not (copy / "eval-x").exists()
    verify_checksums(zoo / "binary-v1")
    run = make_fake_run(tmp_path, name="own")
    assert writable_copy(run, zoo) == run


def test_copy_run_leaves_out_resume_state_and_versions_follow_weights(tmp_path: Path) -> None:
    run = make_fake_run(tmp_path)
    for name in ("last.safetensors", "last.state.safetensors", "last.state.json", ".checkpoint.lock", "MODEL_CARD.md"):
        (run / name).write_text("x")
    (run / "reproduce.json").write_text("{}")
    (run / "split.csv").write_text("path,split\n")
    (run / "eval-old-test").mkdir()
    copy_run(run, tmp_path / "copy")
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == ["best.safetensors", "checkpoint.json", "split.csv"]
    zoo = make_zoo(tmp_path, ("binary-v1",))
    from pneumo.utils.digest import file_sha256

    assert next_version(zoo, "binary", file_sha256(zoo / "binary-v1" / "best.safetensors")) == 1
    assert next_version(zoo, "binary", "0" * 64) == 2 and next_version(zoo, "other", "0" * 64) == 1
    shutil.rmtree(zoo)


def test_a_run_of_another_task_cannot_ship_under_a_task_name(tmp_path: Path) -> None:
    from pneumo.reproduce.ship import ship

    run = make_fake_run(tmp_path, task="three")
    meta = json.loads((run / "checkpoint.json").read_text())
    (run / "checkpoint.json").write_text(json.dumps({**meta, "task": "normal-bacteria-virus"}))
    with pytest.raises(ValueError, match="a normal-bacteria-virus model cannot ship as 'normal-pneumonia'"):
        ship(run, "normal-pneumonia", zoo_dir=tmp_path / "zoo")
    assert not any((tmp_path / "zoo").iterdir())  # nothing half-shipped
