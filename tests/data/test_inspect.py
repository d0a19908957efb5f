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
    img = np.random.default_rng(0).integers(0, 256, (30, 40), dtype=np.uint8)
    for rel in ("train/NORMAL/IM-0001-0001.jpeg", "test/NORMAL/IM-0002-0001.jpeg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(tmp_path / rel)
    (tmp_path / "train/PNEUMONIA").mkdir(parents=True)
    Image.fromarray(img[:, :20]).save(tmp_path / "train/PNEUMONIA/person7_virus_1.jpeg")
    (tmp_path / "test/PNEUMONIA").mkdir(parents=True)
    Image.fromarray(img[:20]).save(tmp_path / "test/PNEUMONIA/person7_virus_2.jpeg")
    (tmp_path / "test/PNEUMONIA/person8_bacteria_3.jpeg").write_bytes(b"")

    report = inspect_dataset(tmp_path, progress=False)
    assert report["n_images"] == 5
    assert report["unreadable"] == [
        {"path": str(tmp_path / "test/PNEUMONIA/person8_bacteria_3.jpeg"), "reason": "file is empty"}
    ]
    assert report["duplicates"]["n_groups"] == 1 and report["duplicates"]["n_cross_split_groups"] == 1
    assert report["patients_in_several_splits"]["patients"] == {"person7": ["test", "train"]}
    assert report["image_size"]["width"]["max"] == 40


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
    cross = report["patients_in_several_splits"]["patients"]
    assert sum(1 for p, s in cross.items() if p.startswith("person") and s == ["test", "train"]) == 170
