"""Synthetic training images: names, layout, records, and that they never reach validation or test."""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumo.data.provenance import check_generated_images, provenance_file
from pneumo.data.records import DatasetError, discover, parse_file_name
from pneumo.data.splits import make_split, read_split_csv
from pneumo.gan import sample_to_file, synthetic_records, write_synthetic_dataset
from pneumo.gan.synth import run_id

from .conftest import TOY_SIZE

NAME = re.compile(r"^synthetic-[a-z0-9]+-(normal|bacteria|virus)-\d+\.png$")


def test_synth_folder_is_train_only_and_parsed_correctly(gan_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "synth"
    paths = write_synthetic_dataset(gan_run, out, 4)
    assert [p.name for p in out.iterdir()] == ["train"]  # no val/, no test/
    assert len(paths) == 12 and all(NAME.match(p.name) for p in paths)
    records = discover(out)
    assert {r.split for r in records} == {"train"}
    assert Counter(r.subtype for r in records) == {"normal": 4, "bacteria": 4, "virus": 4}
    for r in records:
        assert r.label == ("NORMAL" if r.subtype == "normal" else "PNEUMONIA")
        assert r.patient_id == r.path.stem  # each image its own patient
        assert r.path.name.startswith(f"synthetic-{run_id(gan_run)}-{r.subtype}-")
    with Image.open(paths[0]) as img:
        assert img.mode == "L" and img.size == (TOY_SIZE, TOY_SIZE)


def test_synthetic_records_are_training_records(gan_run: Path, tmp_path: Path) -> None:
    records = synthetic_records(gan_run, {"virus": 3, "normal": 1}, tmp_path / "s")
    assert {r.split for r in records} == {"train"}
    assert Counter(r.subtype for r in records) == {"virus": 3, "normal": 1}
    assert all(parse_file_name(r.path.name) == (r.subtype, r.patient_id) for r in records)
    # asking again with fewer images leaves exactly those (no stale files from the previous call)
    again = synthetic_records(gan_run, 1, tmp_path / "s")
    assert sorted(p.name for p in (tmp_path / "s" / "train").rglob("*.png")) == sorted(r.path.name for r in again)
    with pytest.raises(ValueError, match="unknown class"):
        synthetic_records(gan_run, {"covid": 2}, tmp_path / "s")


def test_same_seed_same_pixels(gan_run: Path, tmp_path: Path) -> None:
    a = write_synthetic_dataset(gan_run, tmp_path / "a", 2, seed=3)
    b = write_synthetic_dataset(gan_run, tmp_path / "b", 2, seed=3)
    c = write_synthetic_dataset(gan_run, tmp_path / "c", 2, seed=4)
    pixels = [[np.asarray(Image.open(p)) for p in paths] for paths in (a, b, c)]
    assert all(np.array_equal(x, y) for x, y in zip(pixels[0], pixels[1], strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(pixels[0], pixels[2], strict=True))


def test_sample_grids(gan_run: Path, tmp_path: Path) -> None:
    one = sample_to_file(gan_run, tmp_path / "virus.png", class_name="virus", n=9)
    with Image.open(one) as img:
        assert img.height == 3 * (TOY_SIZE + 2) + 2  # 3 x 3 grid
    every = sample_to_file(gan_run, tmp_path / "all.png", n=4)
    with Image.open(every) as img:
        assert img.height == 3 * (TOY_SIZE + 2) + 2  # one row per class
    with pytest.raises(ValueError, match="unknown class"):
        sample_to_file(gan_run, tmp_path / "x.png", class_name="covid")


def test_a_real_dataset_folder_is_refused_unless_asked_for(gan_run: Path, tmp_path: Path) -> None:
    dataset = tmp_path / "chest_xray"
    real = dataset / "test" / "NORMAL" / "IM-0001-0001.jpeg"
    real.parent.mkdir(parents=True)
    Image.new("L", (8, 8)).save(real, format="JPEG")
    with pytest.raises(ValueError, match=r"holds real images \(e.g. .*IM-0001-0001.jpeg\)"):
        write_synthetic_dataset(gan_run, dataset, 1)
    assert not (dataset / "train").exists()  # refused before anything was written
    paths = write_synthetic_dataset(gan_run, dataset, 1, into_dataset=True)
    assert len(paths) == 3 and all(p.parent.parent == dataset / "train" for p in paths)
    # the patients the GAN trained on go with its images (checked by every later split of this dataset)
    provenance = json.loads(provenance_file(paths[0]).read_text())
    gan_train = {r.patient_id for r in read_split_csv(gan_run / "split.csv", Path("/")) if r.split == "train"}
    assert set(provenance["patients_trained_on"]) == gan_train and len(gan_train) > 2
    assert provenance["gan_run"] == str(gan_run.resolve())
    # A folder of generated images only is not a dataset: writing there again needs no opt-in.
    write_synthetic_dataset(gan_run, tmp_path / "synth", 1)
    assert len(write_synthetic_dataset(gan_run, tmp_path / "synth", 2)) == 6


def test_images_written_into_a_dataset_are_refused_by_a_split_that_holds_out_their_gans_patients(
    gan_run: Path, toy_data: Path, tmp_path: Path
) -> None:
    """`--into-dataset` images join the training split of every later run on that folder, whatever its split: one
    that validates on patients the GAN trained on would be scored on images it has, in effect, trained on."""
    dataset = tmp_path / "toy"
    shutil.copytree(toy_data, dataset)
    write_synthetic_dataset(gan_run, dataset, 2, into_dataset=True)
    generated = [r for r in discover(dataset) if "synthetic" in r.name]
    assert len(generated) == 6
    # the GAN's own split: its training patients are this split's training patients
    same = read_split_csv(gan_run / "split.csv", dataset) + [replace(r, split="train") for r in generated]
    check_generated_images(same)
    other = next(  # a split carved with another seed validates on some of the GAN's training patients
        split for seed in range(1, 20) if (split := make_split(discover(dataset), seed=seed)) != same
    )
    with pytest.raises(DatasetError, match=r"6 generated images .* come from a GAN that trained on \d+ patients"):
        check_generated_images(other)


def test_another_gan_run_with_the_same_id_is_named_when_its_images_are_replaced(
    gan_run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    twin = tmp_path / "elsewhere" / gan_run.name  # same folder name: same id, same file names
    shutil.copytree(gan_run, twin)
    out = tmp_path / "synth"
    write_synthetic_dataset(gan_run, out, 1)
    with caplog.at_level(logging.WARNING, logger="pneumo.gan.synth"):
        write_synthetic_dataset(gan_run, out, 1)  # the same run again: nothing to say
        assert not caplog.records
        write_synthetic_dataset(twin, out, 1)
    assert f"replacing the images of {gan_run.resolve()}, another GAN run with the same id" in caplog.text


def test_into_dataset_writes_into_the_datasets_own_train_folder(gan_run: Path, toy_data: Path, tmp_path: Path) -> None:
    # DATA/chest_xray/{train,val,test} given as DATA: a DATA/train/ of generated images hid every real image
    from pneumo.data.records import dataset_root

    shutil.copytree(toy_data, tmp_path / "DATA" / "chest_xray")
    real = len(discover(tmp_path / "DATA"))
    paths = write_synthetic_dataset(gan_run, tmp_path / "DATA", 2, into_dataset=True)
    assert all(p.parent.parent == tmp_path / "DATA" / "chest_xray" / "train" for p in paths)
    assert dataset_root(tmp_path / "DATA") == (tmp_path / "DATA" / "chest_xray").resolve()
    assert len(discover(tmp_path / "DATA")) == real + 6


def test_samples_under_the_decoders_minimum_are_written_pixel_repeated_and_decode() -> None:
    """A 16 px GAN's images were written at 16 px, which decoding now refuses as no radiograph."""
    from pneumo.data.decode import MIN_SIDE, decode_image
    from pneumo.gan.synth import _at_least_min_side

    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    grown = _at_least_min_side(Image.fromarray(pixels, mode="L"))
    assert grown.size == (MIN_SIDE, MIN_SIDE)
    np.testing.assert_array_equal(decode_image(grown), np.repeat(np.repeat(pixels, 2, axis=0), 2, axis=1))
    same = Image.new("L", (MIN_SIDE, MIN_SIDE))
    assert _at_least_min_side(same) is same
