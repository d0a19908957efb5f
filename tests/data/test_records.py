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
        ("BACTERIA-1008087-0001.jpeg", "PNEUMONIA", ("bacteria", "1008087")),  # Mendeley v3 names
        ("VIRUS-1014468-0002.jpeg", "PNEUMONIA", ("virus", "1014468")),
        ("NORMAL-1003233-0001.jpeg", "NORMAL", ("normal", "1003233")),
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


def test_names_that_carry_no_patient_are_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Each such image is its own patient: a child's images could straddle train and validation unseen."""
    for name in ("scan_1.png", "scan_2.png"):
        _write(tmp_path / "train" / "NORMAL" / name)
    _write(tmp_path / "test" / "NORMAL" / "IM-0001-0001.jpeg")
    discover(tmp_path)
    assert "2 of 3 file names follow no known naming (e.g. scan_1.png)" in caplog.text
    caplog.clear()
    _make_tree(tmp_path / "kermany")
    discover(tmp_path / "kermany")
    assert "no known naming" not in caplog.text


def test_folders_differing_only_in_case_are_refused_and_skipped_folders_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _write(tmp_path / "a" / "train" / "NORMAL" / "IM-0001-0001.jpeg")
    _write(tmp_path / "a" / "test" / "NORMAL" / "IM-0002-0001.jpeg")
    _write(tmp_path / "a" / "test" / "Normal" / "IM-0003-0001.jpeg")  # one of the two was dropped silently
    with pytest.raises(DatasetError, match=r"folders 'NORMAL' and 'Normal' differ only in case"):
        discover(tmp_path / "a")
    _write(tmp_path / "b" / "train" / "NORMAL" / "IM-0001-0001.jpeg")
    _write(tmp_path / "b" / "validation" / "NORMAL" / "IM-0004-0001.jpeg")
    _write(tmp_path / "b" / "train" / "COVID" / "IM-0005-0001.jpeg")
    assert [r.name for r in discover(tmp_path / "b")] == ["IM-0001-0001.jpeg"]
    assert "validation: its images are skipped, not a split folder" in caplog.text
    assert "COVID: its images are skipped, not a class folder" in caplog.text


def test_a_manifest_cannot_list_an_image_twice_or_contradict_its_name(tmp_path: Path) -> None:
    """A path listed as test and again as train trained on a test image; a manifest subtype overrode the name's."""
    twice = [
        {"path": "person5_virus_9.jpeg", "label": "PNEUMONIA", "split": "test"},
        {"path": str(tmp_path / "person5_virus_9.jpeg"), "label": "PNEUMONIA", "split": "train"},
    ]
    with pytest.raises(DatasetError, match=r"m.csv:3: .*person5_virus_9.jpeg is listed again \(first on line 2\)"):
        discover(_manifest(tmp_path / "m.csv", twice))
    other = [{"path": "person5_virus_9.jpeg", "label": "PNEUMONIA", "subtype": "bacteria", "split": "train"}]
    with pytest.raises(DatasetError, match=r"subtype 'bacteria' contradicts the file name's 'virus'"):
        discover(_manifest(tmp_path / "n.csv", other))
    # the same patient spelled otherwise is the same patient (grouping and exclude_test_patients compare ids)
    spelled = [
        {"path": "person7_virus_1.jpeg", "label": "PNEUMONIA", "patient_id": "Person7", "split": "test"},
        {"path": "person7_virus_2.jpeg", "label": "PNEUMONIA", "split": "train"},
    ]
    assert {r.patient_id for r in discover(_manifest(tmp_path / "o.csv", spelled))} == {"person7"}
