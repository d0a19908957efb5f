"""Generated images in a dataset folder: the patients their GAN trained on must not be validated or tested on."""

from __future__ import annotations

from pathlib import Path

import pytest

from pneumo.data.provenance import check_generated_images, provenance_file, write_provenance
from pneumo.data.records import DatasetError, Record


def _split(root: Path, generated: int = 2) -> list[Record]:
    real = [
        Record(root / "train/PNEUMONIA/person1_virus_1.jpeg", "train", "PNEUMONIA", "virus", "person1"),
        Record(root / "train/PNEUMONIA/person2_virus_1.jpeg", "val", "PNEUMONIA", "virus", "person2"),
        Record(root / "test/PNEUMONIA/person3_virus_1.jpeg", "test", "PNEUMONIA", "virus", "person3"),
        # the Kaggle release has patient numbers in both train and test: training on one is no new leak
        Record(root / "train/PNEUMONIA/person4_virus_1.jpeg", "train", "PNEUMONIA", "virus", "person4"),
        Record(root / "test/PNEUMONIA/person4_virus_2.jpeg", "test", "PNEUMONIA", "virus", "person4"),
    ]
    fake = [
        Record(root / f"train/PNEUMONIA/synthetic-gan1-virus-{i:05d}.png", "train", "PNEUMONIA", "virus", f"s{i}")
        for i in range(generated)
    ]
    return real + fake


def test_a_gan_that_trained_on_held_out_patients_is_refused(tmp_path: Path) -> None:
    records = _split(tmp_path)
    write_provenance(tmp_path / "train", "synthetic-gan1", tmp_path / "gan1", ["person1", "person2"])
    with pytest.raises(DatasetError, match=r"2 generated images \(e.g. .*synthetic-gan1-virus-00000.png\).*1 patients.*"
                       r"person2"):  # fmt: skip
        check_generated_images(records)


def test_a_gan_that_trained_on_this_runs_train_patients_passes(tmp_path: Path) -> None:
    records = _split(tmp_path)
    write_provenance(tmp_path / "train", "synthetic-gan1", tmp_path / "gan1", ["person1", "person4"])
    check_generated_images(records)
    check_generated_images(_split(tmp_path, generated=0))  # no generated images: nothing to read


def test_generated_images_without_provenance_are_refused_by_name(tmp_path: Path) -> None:
    records = _split(tmp_path)
    expected = provenance_file(records[-1].path)
    assert expected == tmp_path / "train" / "synthetic-gan1.provenance.json"
    with pytest.raises(DatasetError, match=r"synthetic-gan1-virus-00000.png: generated image without "
                       r"synthetic-gan1.provenance.json"):  # fmt: skip
        check_generated_images(records)
    expected.parent.mkdir(parents=True)
    expected.write_text('{"patients_trained_on": "person1"}')
    with pytest.raises(DatasetError, match="must be a list of patient ids"):
        check_generated_images(records)
    expected.write_text("{not json")
    with pytest.raises(DatasetError, match="unreadable provenance"):
        check_generated_images(records)
