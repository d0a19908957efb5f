from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import pytest

from pneumo.data.records import DatasetError, Record, discover
from pneumo.data.splits import (
    check_disjoint,
    make_split,
    patients_seen_but_held_out,
    read_split_csv,
    write_split_csv,
)


def _records() -> list[Record]:
    out = []
    for p in range(200):
        subtype = ("normal", "bacteria", "virus")[p % 3]
        label = "NORMAL" if subtype == "normal" else "PNEUMONIA"
        for k in range(1 + p % 3):
            out.append(Record(Path(f"/d/train/{label}/p{p}_{k}.jpeg"), "train", label, subtype, f"p{p}"))
    out += [Record(Path(f"/d/test/NORMAL/t{i}.jpeg"), "test", "NORMAL", "normal", f"t{i}") for i in range(10)]
    out += [Record(Path("/d/val/NORMAL/v.jpeg"), "val", "NORMAL", "normal", "v0")]
    return out


def test_val_is_patient_disjoint_stratified_and_seeded() -> None:
    records = _records()
    split = make_split(records, val_fraction=0.1, seed=3)
    assert check_disjoint(split) == {}
    counts = Counter(r.split for r in split)
    assert counts["test"] == 10
    assert 0.06 * len(records) < counts["val"] < 0.14 * len(records)
    val_subtypes = Counter(r.subtype for r in split if r.split == "val")
    assert set(val_subtypes) == {"normal", "bacteria", "virus"}
    # the official val joined the pool; the official test is untouched
    assert {r.path for r in split if r.split == "test"} == {r.path for r in records if r.split == "test"}
    assert make_split(records, seed=3) == split
    assert make_split(records, seed=4) != split


def test_keep_official_val() -> None:
    split = make_split(_records(), keep_official_val=True)
    assert [r.patient_id for r in split if r.split == "val"] == ["v0"]
    leaky = [*_records(), Record(Path("/d/val/NORMAL/p0_9.jpeg"), "val", "NORMAL", "normal", "p0")]
    with pytest.raises(DatasetError, match=r"val split shares 1 patient\(s\) with train \(p0\)"):
        make_split(leaky, keep_official_val=True)


def test_exclude_test_patients_drops_only_train_images_of_test_patients(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="pneumo.data.splits")
    records = _records()
    records += [Record(Path("/d/test/PNEUMONIA/p7_t.jpeg"), "test", "PNEUMONIA", "bacteria", "p7")]
    shared = [r for r in records if r.patient_id == "p7" and r.split != "test"]
    assert shared  # patient p7 has train images and now a test image
    kept = make_split(records, seed=0, exclude_test_patients=True)
    assert all(r.patient_id != "p7" for r in kept if r.split != "test")
    assert len(kept) == len(records) - len(shared)
    assert f"left out {len(shared)} train/val images of 1 patients that test also holds" in caplog.text
    assert [r for r in kept if r.split == "test"] == [r for r in records if r.split == "test"]
    assert len(make_split(records, seed=0)) == len(records)  # off by default


def test_split_csv_round_trip(tmp_path: Path) -> None:
    split = make_split(_records(), seed=0)
    write_split_csv(split, tmp_path / "split.csv", Path("/d"))
    text = (tmp_path / "split.csv").read_text()
    assert "train/NORMAL/p0_0.jpeg" in text and "/d/" not in text
    assert read_split_csv(tmp_path / "split.csv", Path("/d")) == split


def test_split_csv_keeps_symlinked_names_and_refuses_edited_rows(tmp_path: Path) -> None:
    """A symlinked image was written as its target (another name: the name carries patient and class); an edited
    split file with an unknown split or a path twice was read without a word."""
    root = tmp_path / "d"
    (root / "train" / "NORMAL").mkdir(parents=True)
    (tmp_path / "blob000").write_bytes(b"x")
    link = root / "train" / "NORMAL" / "IM-0200-0001.jpeg"
    link.symlink_to(tmp_path / "blob000")
    records = [Record(link, "train", "NORMAL", "normal", "IM-0200")]
    write_split_csv(records, tmp_path / "split.csv", root)
    assert read_split_csv(tmp_path / "split.csv", root) == records
    header = "path,split,label,subtype,patient_id\n"
    for rows, problem in (
        ("a.jpeg,Validation,NORMAL,normal,a\n", "split 'Validation' / label 'NORMAL' is not one of"),
        ("a.jpeg,train,NORMAL,normal,a\na.jpeg,test,NORMAL,normal,a\n", "a.jpeg is listed again"),
    ):
        (tmp_path / "edited.csv").write_text(header + rows)
        with pytest.raises(DatasetError, match=problem):
            read_split_csv(tmp_path / "edited.csv", root)


def test_synthetic_split_shares_no_patient(synthetic_data: Path) -> None:
    split = make_split(discover(synthetic_data), seed=0)
    assert check_disjoint(split) == {}
    assert {"train", "val", "test"} == {r.split for r in split}


def test_a_source_trained_on_other_validation_patients_is_caught() -> None:
    records = _records()
    ours, other = make_split(records, seed=0), make_split(records, seed=1)
    assert patients_seen_but_held_out(ours, ours) == set()  # the same split leaks nothing
    ours_val = {r.patient_id for r in ours if r.split == "val"}
    other_train = {r.patient_id for r in other if r.split == "train"}
    assert patients_seen_but_held_out(other, ours) == ours_val & other_train != set()

    # a patient in both train splits who also has a test image (the Kaggle overlap): this run trains on them itself,
    # so inheriting them adds no leak ...
    both = sorted(other_train & {r.patient_id for r in ours if r.split == "train"})[0]
    test_image = Record(Path(f"/d/test/PNEUMONIA/{both}_t.jpeg"), "test", "PNEUMONIA", "bacteria", both)
    ours, other = make_split([*records, test_image], seed=0), make_split([*records, test_image], seed=1)
    assert both not in patients_seen_but_held_out(other, ours)
    # ... but a run that excludes test patients must not inherit them from a source that kept them
    excluded = make_split([*records, test_image], seed=0, exclude_test_patients=True)
    assert both in patients_seen_but_held_out(ours, excluded)


def test_val_fraction_is_one_fold_and_too_few_patients_are_named() -> None:
    records = _records()
    for fraction, fold in ((0.1, 10), (0.3, 3)):
        val = {r.patient_id for r in make_split(records, val_fraction=fraction) if r.split == "val"}
        assert abs(len(val) - 201 / fold) <= 3  # 200 train patients + the official val's one, one fold of them
    few = [r for r in records if r.patient_id in {"p0", "p1", "p2", "p3", "t0"}]
    with pytest.raises(DatasetError, match=r"val_fraction 0\.1 needs at least 10 train patients.*has 4"):
        make_split(few, val_fraction=0.1)


def test_generated_images_in_a_dataset_folder_train_only(caplog: pytest.LogCaptureFixture) -> None:
    """`pneumo gan synth --out DATASET --into-dataset` writes the Kaggle layout into the dataset; its images must not
    be carved into validation (each would be a patient of its own) nor sit in test, and every run says they train."""
    generated = [
        Record(Path(f"train/NORMAL/synthetic-acgan-normal-{i}.png"), "train", "NORMAL", "normal", f"g{i}")
        for i in range(60)
    ]
    real = _records()
    with caplog.at_level(logging.WARNING, logger="pneumo.data.splits"):
        out = make_split([*real, *generated], val_fraction=0.2, seed=0)
    assert "60 generated image(s) (synthetic-*, e.g. train/NORMAL/synthetic-acgan-normal-0.png)" in caplog.text
    assert Counter(r.split for r in out if "synthetic" in r.name) == {"train": 60}
    without = make_split(real, val_fraction=0.2, seed=0)
    assert [r for r in out if "synthetic" not in r.name] == without  # the real images' carve is unchanged
    kept = make_split([*real, *generated], val_fraction=0.2, keep_official_val=True)  # the official val stays val
    assert Counter(r.split for r in kept if "synthetic" in r.name) == {"train": 60}
    in_test = Record(Path("test/NORMAL/synthetic-acgan-normal-0.png"), "test", "NORMAL", "normal", "t")
    with pytest.raises(DatasetError, match=r"1 generated image\(s\) in the test split"):
        make_split([*real, in_test], val_fraction=0.2)


def test_a_val_fraction_that_is_no_one_fold_of_k_says_what_it_carves(caplog: pytest.LogCaptureFixture) -> None:
    make_split(_records(), val_fraction=0.1, seed=0)
    assert "carves one fold" not in caplog.text
    make_split(_records(), val_fraction=0.45, seed=0)
    assert "val_fraction 0.45 carves one fold of 2, about 50.0 % of the patients" in caplog.text
