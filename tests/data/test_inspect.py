from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pneumo.cli import app
from pneumo.data.inspect import inspect_dataset


def test_inspect_reports_bad_files_duplicates_and_cross_split_patients(tmp_path: Path) -> None:
    img = np.random.default_rng(0).integers(0, 256, (60, 80), dtype=np.uint8)
    for rel in ("train/NORMAL/IM-0001-0001.jpeg", "test/NORMAL/IM-0002-0001.jpeg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(tmp_path / rel)
    (tmp_path / "train/PNEUMONIA").mkdir(parents=True)
    Image.fromarray(img[:, :40]).save(tmp_path / "train/PNEUMONIA/person7_virus_1.jpeg")
    (tmp_path / "test/PNEUMONIA").mkdir(parents=True)
    Image.fromarray(img[:40]).save(tmp_path / "test/PNEUMONIA/person7_virus_2.jpeg")
    (tmp_path / "test/PNEUMONIA/person8_bacteria_3.jpeg").write_bytes(b"")
    Image.new("L", (1, 1)).save(tmp_path / "test/PNEUMONIA/person9_bacteria_4.png")

    report = inspect_dataset(tmp_path, progress=False)
    assert report["n_images"] == 6
    assert report["unreadable"] == [
        {"path": str(tmp_path / "test/PNEUMONIA/person8_bacteria_3.jpeg"), "reason": "file is empty"},
        {
            "path": str(tmp_path / "test/PNEUMONIA/person9_bacteria_4.png"),
            "reason": "image of 1x1 pixels is too small for a radiograph (at least 32 px a side)",
        },
    ]
    assert report["duplicates"]["n_groups"] == 1 and report["duplicates"]["n_cross_split_groups"] == 1
    assert report["patients_in_several_splits"]["patients"] == {"person7": ["test", "train"]}
    assert report["image_size"]["width"]["max"] == 80
    # a pipeline can stop on unreadable files; without --strict the report is all
    assert CliRunner().invoke(app, ["data", "inspect", str(tmp_path)]).exit_code == 0
    strict = CliRunner().invoke(app, ["data", "inspect", str(tmp_path), "--strict"])
    assert strict.exit_code == 1 and "error: --strict: 2 unreadable file(s)" in strict.stderr
    assert "unreadable files: 2" in strict.stdout


@pytest.mark.shared_data
def test_inspect_equals_shared_manifest(kaggle_data: Path) -> None:
    result = CliRunner().invoke(app, ["data", "inspect", str(kaggle_data), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    with (kaggle_data / "MANIFEST.csv").open() as f:
        manifest = list(csv.DictReader(f))
    expected = Counter((r["split"], r["label"], r["subtype"]) for r in manifest)
    got = {(c["split"], c["label"], c["subtype"]): c["images"] for c in report["counts"]}
    assert got == dict(expected)
    assert report["unreadable"] == []
    # the shared README documents 30 byte-identical groups, none across splits, and 170 personN in train and test
    assert report["duplicates"]["n_groups"] == 30
    assert report["duplicates"]["n_cross_split_groups"] == 0
    several = [d for d in report["duplicates"]["groups"] if len(d["patients"]) > 1]
    assert [d["patients"] for d in several] == [["NORMAL2-IM-0095", "NORMAL2-IM-0096"]]
    assert report["duplicates"]["n_groups_several_patients"] == 1
    # measured once (docs/TRUST.md): no copy beyond the byte-identical ones; the closest pair across splits is two
    # different children at 0.977, below the threshold
    near = report["near_duplicates"]
    assert near["n_pairs"] == 0
    closest = near["closest_across_splits"]
    assert closest["splits"] == ["test", "train"] and closest["similarity"] < near["threshold"]
    cross = report["patients_in_several_splits"]["patients"]
    assert sum(1 for p, s in cross.items() if p.startswith("person") and s == ["test", "train"]) == 170


def _smooth_image(seed: int, size: tuple[int, int] = (96, 80)) -> Image.Image:
    """A low-frequency random picture: resizing it keeps its shape, as resizing a radiograph does."""
    coarse = np.random.default_rng(seed).integers(0, 256, (6, 5), dtype=np.uint8)
    return Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)


def test_inspect_finds_a_resized_reencoded_copy_across_splits(tmp_path: Path) -> None:
    paths = {
        "train/NORMAL/IM-0001-0001.jpeg": _smooth_image(1),
        "train/NORMAL/IM-0002-0001.jpeg": _smooth_image(2),
        "test/NORMAL/IM-0003-0001.png": _smooth_image(1).resize((61, 47)),  # the first one, resized, as PNG
        "test/NORMAL/IM-0004-0001.jpeg": _smooth_image(3),
    }
    for rel, img in paths.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        img.save(tmp_path / rel)
    # a byte-identical copy under another patient id
    original = tmp_path / "train/NORMAL/IM-0002-0001.jpeg"
    (tmp_path / "train/NORMAL/IM-0005-0001.jpeg").write_bytes(original.read_bytes())

    report = inspect_dataset(tmp_path, progress=False)
    near = report["near_duplicates"]
    assert near["n_pairs"] == 1 and near["n_cross_split_pairs"] == 1
    pair = near["pairs"][0]
    assert {Path(p).name for p in pair["paths"]} == {"IM-0001-0001.jpeg", "IM-0003-0001.png"}
    assert pair["splits"] == ["test", "train"] and pair["similarity"] >= near["threshold"]
    assert near["closest_across_splits"]["paths"] == pair["paths"]
    # the byte-identical pair is an exact duplicate, not also a near one
    assert report["duplicates"]["n_groups"] == 1 and report["duplicates"]["n_groups_several_patients"] == 1

    result = CliRunner().invoke(app, ["data", "inspect", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "1 pairs (1 across splits)" in result.output and "1 under several patient ids" in result.output
    assert "patients in several splits: 0" in result.output


def test_inspect_lists_cross_split_patients_in_text_mode(tmp_path: Path) -> None:
    for i in range(25):
        for split in ("train", "test"):
            path = tmp_path / split / "PNEUMONIA" / f"person{i}_virus_{i}{split[:2]}.jpeg"
            path.parent.mkdir(parents=True, exist_ok=True)
            _smooth_image(i).save(path)
    result = CliRunner().invoke(app, ["data", "inspect", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "patients in several splits: 25" in result.output and "  person0: test, train" in result.output
    assert "... and 5 more (--json lists every one)" in result.output


@pytest.mark.shared_data
def test_inspect_pairs_each_original_with_its_squashed_copy(
    kaggle_data: Path, originals_data: Path, tmp_path: Path
) -> None:
    """The aspect-preserved originals against the squashed 224 px copies: every pair found, no other."""
    names = sorted(p.relative_to(originals_data) for p in originals_data.glob("train/*/*.jpeg"))[::150][:12]
    for rel in names:
        for split, root in (("train", kaggle_data), ("test", originals_data)):
            link = tmp_path / split / rel.relative_to("train")
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(root / rel)

    near = inspect_dataset(tmp_path, progress=False)["near_duplicates"]
    assert near["n_cross_split_pairs"] == near["n_pairs"] == len(names) >= 10
    assert all(Path(a).name == Path(b).name for a, b in (pair["paths"] for pair in near["pairs"]))
