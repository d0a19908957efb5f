from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumo.data.records import DatasetError, discover, parse_file_name
from pneumo.data.tasks import get_task


@pytest.mark.parametrize(
    ("name", "label", "expected"),
    [
        ("person1000_virus_1681.jpeg", "PNEUMONIA", ("virus", "person1000")),
        ("person123_bacteria_456.jpeg", "PNEUMONIA", ("bacteria", "person123")),
        ("person1372_bacteria_3501.jpeg", "PNEUMONIA", ("bacteria", "person1372")),
        ("IM-0115-0001.jpeg", "NORMAL", ("normal", "IM-0115")),
        ("NORMAL2-IM-1427-0001.jpeg", "NORMAL", ("normal", "NORMAL2-IM-1427")),
        ("NORMAL2-IM-0173-0001-0002.jpeg", "NORMAL", ("normal", "NORMAL2-IM-0173")),
        ("scan_42.png", "NORMAL", ("normal", "scan_42")),
        ("scan_42.png", "PNEUMONIA", (None, "scan_42")),
    ],
)
def test_parse_file_name(name: str, label: str, expected: tuple[str | None, str]) -> None:
    assert parse_file_name(name, label) == expected


def _write(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((20, 30), 128, np.uint8)).save(path)


FILES = {
    "train": {
        "NORMAL": ["IM-0001-0001.jpeg"],
        "PNEUMONIA": ["person1_bacteria_1.jpeg", "person2_virus_2.jpeg"],
    },
    "test": {"NORMAL": ["NORMAL2-IM-0002-0001.jpeg"], "PNEUMONIA": ["person3_virus_3.jpeg"]},
}


def _make_tree(root: Path, *, upper: bool = True, val: bool = True) -> None:
    for split, labels in FILES.items():
        for label, names in labels.items():
            folder = root / (split.upper() if not upper else split) / (label if upper else label.lower())
            for name in names:
                _write(folder / name)
    if val:
        _write(root / "val" / "NORMAL" / "IM-0009-0001.jpeg")


def _summary(records) -> set[tuple[str, str, str, str | None, str]]:
    return {(r.name, r.split, r.label, r.subtype, r.patient_id) for r in records}


EXPECTED = {
    ("IM-0001-0001.jpeg", "train", "NORMAL", "normal", "IM-0001"),
    ("person1_bacteria_1.jpeg", "train", "PNEUMONIA", "bacteria", "person1"),
    ("person2_virus_2.jpeg", "train", "PNEUMONIA", "virus", "person2"),
    ("NORMAL2-IM-0002-0001.jpeg", "test", "NORMAL", "normal", "NORMAL2-IM-0002"),
    ("person3_virus_3.jpeg", "test", "PNEUMONIA", "virus", "person3"),
}


def test_kaggle_layout_nested_with_junk(tmp_path: Path) -> None:
    root = tmp_path / "chest_xray" / "chest_xray"
    _make_tree(root)
    (root / "train" / "NORMAL" / ".DS_Store").write_text("junk")
    _write(tmp_path / "chest_xray" / "__MACOSX" / "train" / "NORMAL" / "._IM-0001-0001.jpeg")
    (root / "train" / "NORMAL" / "notes.txt").write_text("not an image")
    records = discover(tmp_path)
    assert _summary(records) == {*EXPECTED, ("IM-0009-0001.jpeg", "val", "NORMAL", "normal", "IM-0009")}


def test_pediatric_layout_case_insensitive(tmp_path: Path) -> None:
    _make_tree(tmp_path, upper=False, val=False)
    assert _summary(discover(tmp_path)) == EXPECTED


def test_manifest(tmp_path: Path) -> None:
    _make_tree(tmp_path / "imgs", val=False)
    rows = [
        {"path": "imgs/train/NORMAL/IM-0001-0001.jpeg", "label": "normal"},
        {
            "path": "imgs/test/PNEUMONIA/person3_virus_3.jpeg",
            "label": "PNEUMONIA",
            "split": "train",
            "patient_id": "p9",
        },
    ]
    csv_path = tmp_path / "list.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "subtype", "patient_id", "split"])
        w.writeheader()
        w.writerows(rows)
    got = _summary(discover(csv_path))
    assert got == {
        ("IM-0001-0001.jpeg", "test", "NORMAL", "normal", "IM-0001"),
        ("person3_virus_3.jpeg", "train", "PNEUMONIA", "virus", "p9"),
    }


def test_manifest_bad_label_names_line(tmp_path: Path) -> None:
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text("path,label\na.png,NORMAL\nb.png,COVID\n")
    with pytest.raises(DatasetError, match=r"bad.csv:3: label 'COVID'"):
        discover(csv_path)


def _manifest(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "subtype", "patient_id", "split"])
        w.writeheader()
        w.writerows(rows)
    return path


def test_manifest_numeric_patient_ids_are_kept_unless_a_kermany_name_carries_the_id(tmp_path: Path) -> None:
    # NIH-style names: the manifest's "7" is the patient of both images; the shared Kermany MANIFEST stores only
    # the N of personN, so there the name's "person3" wins.
    rows = [
        {"path": "00000007_000.png", "label": "NORMAL", "patient_id": "7", "split": "train"},
        {"path": "00000007_001.png", "label": "NORMAL", "patient_id": "7", "split": "train"},
        {"path": "person3_virus_3.jpeg", "label": "PNEUMONIA", "patient_id": "3", "split": "train"},
    ]
    records = discover(_manifest(tmp_path / "m.csv", rows))
    assert [r.patient_id for r in records] == ["7", "7", "person3"]


def test_contradicting_label_and_subtype(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = [{"path": "x.png", "label": "PNEUMONIA", "subtype": "normal", "split": "train"}]
    with pytest.raises(DatasetError, match=r"m.csv:2: label PNEUMONIA contradicts subtype normal"):
        discover(_manifest(tmp_path / "m.csv", rows))
    # In a folder layout the misfiled image is reported and skipped; the rest is read.
    _make_tree(tmp_path / "tree", val=False)
    _write(tmp_path / "tree" / "train" / "NORMAL" / "person8_virus_9.jpeg")
    with caplog.at_level("WARNING", logger="pneumo.data.records"):
        assert _summary(discover(tmp_path / "tree")) == EXPECTED
    assert "person8_virus_9.jpeg: skipped, its folder's label NORMAL contradicts subtype virus" in caplog.text


def test_missing_and_empty_sources(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such file"):
        discover(tmp_path / "nope")
    with pytest.raises(DatasetError, match="no train/ or test/"):
        discover(tmp_path)


def test_tasks_map_records(tmp_path: Path) -> None:
    _make_tree(tmp_path, val=False)
    records = [r for r in discover(tmp_path) if r.split == "train"]
    by_name = {r.name: r for r in records}
    np_task, bv_task, nbv = (get_task(t) for t in ("normal-pneumonia", "bacteria-virus", "normal-bacteria-virus"))
    assert [np_task.target(by_name[n]) for n in sorted(by_name)] == [0, 1, 1]
    assert [bv_task.target(by_name[n]) for n in sorted(by_name)] == [None, 0, 1]
    assert [nbv.target(by_name[n]) for n in sorted(by_name)] == [0, 1, 2]
    assert [r.name for r in bv_task.out_of_task(records)] == ["IM-0001-0001.jpeg"]
    # A pneumonia image of unknown subtype is unlabelled for bacteria-virus, not dummy-class material.
    unknown = replace(by_name["person1_bacteria_1.jpeg"], subtype=None)
    assert bv_task.target(unknown) is None and bv_task.out_of_task([unknown]) == []
    assert nbv.out_of_task([unknown]) == []
    with pytest.raises(ValueError, match="unknown task"):
        get_task("covid")
