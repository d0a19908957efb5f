"""Tests for the SYNTHETIC demo dataset generator (pneumo.data.synth)."""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pneumo.data.synth import generate_dataset, render_image

N = 120
NORMAL_NAME = re.compile(r"(NORMAL2-)?IM-\d{4}-\d{4}\.jpeg")
PNEUMONIA_NAME = re.compile(r"person\d+_(bacteria|virus)_\d+\.jpeg")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("synth"), n=N, seed=0, progress=False)


def _manifest(root: Path) -> list[dict[str, str]]:
    with open(root / "MANIFEST.csv", newline="") as f:
        return list(csv.DictReader(f))


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_names_and_readme(dataset: Path) -> None:
    assert dataset.name == "chest_xray"
    for split in ("train", "val", "test"):
        for label in ("NORMAL", "PNEUMONIA"):
            assert (dataset / split / label).is_dir()
    images = sorted(dataset.rglob("*.jpeg"))
    assert len(images) == N
    for path in images:
        pattern = NORMAL_NAME if path.parent.name == "NORMAL" else PNEUMONIA_NAME
        assert pattern.fullmatch(path.name), path
    assert len({p.name for p in images}) == N  # names unique across splits too
    readme = (dataset / "README.md").read_text()
    assert "SYNTHETIC" in readme and "not X-rays" in readme and "no medical meaning" in readme


def test_manifest_matches_files(dataset: Path) -> None:
    with open(dataset / "MANIFEST.csv", newline="") as f:
        assert next(csv.reader(f)) == ["path", "split", "label", "subtype", "patient_id"]
    rows = _manifest(dataset)
    on_disk = {p.relative_to(dataset).as_posix() for p in dataset.rglob("*.jpeg")}
    assert [r["path"] for r in rows] == sorted(on_disk)
    for r in rows:
        split, label, name = r["path"].split("/")
        assert (split, label) == (r["split"], r["label"])
        assert name.startswith(r["patient_id"] + ("-" if label == "NORMAL" else "_"))
        if label == "PNEUMONIA":
            assert r["subtype"] == PNEUMONIA_NAME.fullmatch(name).group(1)
            assert re.fullmatch(r"person\d+", r["patient_id"])
        else:
            assert r["subtype"] == "normal"
            assert re.fullmatch(r"(NORMAL2-)?IM-\d{4}", r["patient_id"])


def test_splits_by_patient_and_class_mix(dataset: Path) -> None:
    rows = _manifest(dataset)
    splits, subtypes, counts = defaultdict(set), defaultdict(set), defaultdict(int)
    for r in rows:
        splits[r["patient_id"]].add(r["split"])
        subtypes[r["patient_id"]].add(r["subtype"])
        counts[r["patient_id"]] += 1
    assert all(len(s) == 1 for s in splits.values()), "a patient is in two splits"
    assert all(len(s) == 1 for s in subtypes.values()), "a patient has two subtypes"
    assert set(counts.values()) <= {1, 2, 3} and max(counts.values()) > 1
    for split in ("train", "test"):
        assert {r["subtype"] for r in rows if r["split"] == split} == {"normal", "bacteria", "virus"}
    val = [r for r in rows if r["split"] == "val"]
    assert {r["label"] for r in val} == {"NORMAL", "PNEUMONIA"} and len(val) <= 8
    test_patients = sum(1 for s in splits.values() if s == {"test"})
    assert 0.08 <= test_patients / len(splits) <= 0.25
    # Quotas are exact up to rounding: 27 % normal, 48 % bacteria, 25 % virus.
    share = {s: sum(r["subtype"] == s for r in rows) / N for s in ("normal", "bacteria", "virus")}
    assert share == pytest.approx({"normal": 0.27, "bacteria": 0.48, "virus": 0.25}, abs=0.01)


def test_images_are_non_square_8bit_gray_and_geometry_is_no_shortcut(dataset: Path) -> None:
    rows = _manifest(dataset)
    sizes = []
    for r in rows:
        with Image.open(dataset / r["path"]) as im:
            assert im.format == "JPEG" and im.mode == "L"
            sizes.append(im.size)
    width, height = np.array(sizes).T
    assert np.all(width > height) and np.all(width <= 1.6 * height + 1)
    assert height.min() >= 160 and height.max() <= 256 and len(set(sizes)) > N // 2
    # Size is drawn from one distribution for all classes: neither aspect nor height separates them.
    # With 120 images the AUC of a useless feature has a standard error of about 0.05; 0.75 is 5 SE off 0.5.
    y = np.array([r["label"] == "PNEUMONIA" for r in rows])
    for feature in (width / height, height):
        auc = roc_auc_score(y, feature)
        assert max(auc, 1 - auc) < 0.75


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    first = _files(generate_dataset(tmp_path / "a", n=40, seed=7, progress=False))
    again = _files(generate_dataset(tmp_path / "b", n=40, seed=7, progress=False))
    other = _files(generate_dataset(tmp_path / "c", n=40, seed=8, progress=False))
    assert first == again
    assert first["MANIFEST.csv"] != other["MANIFEST.csv"]
    assert not {v for k, v in first.items() if k.endswith(".jpeg")} & set(other.values())


def test_refuses_bad_arguments(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(FileExistsError):
        generate_dataset(dataset.parent, n=N, seed=0, progress=False)
    with pytest.raises(ValueError):
        generate_dataset(tmp_path, n=5, progress=False)
    with pytest.raises(ValueError):
        render_image("covid", np.random.default_rng(0), 64, 80)


def test_render_image_contract_and_anatomy() -> None:
    a = render_image("virus", np.random.default_rng(3), 100, 137)
    assert a.dtype == np.uint8 and a.shape == (100, 137)
    assert np.array_equal(a, render_image("virus", np.random.default_rng(3), 100, 137))
    for seed, subtype in enumerate(["normal", "bacteria", "virus"] * 4):
        image = render_image(subtype, np.random.default_rng(seed), 100, 160).astype(float)
        # Radiograph-like: dark background at the sides, a bright body, and lung fields (at u = +-0.4 to 0.6
        # half-heights from the midline) darker than the mediastinum between them. Margins are about half the
        # smallest gaps seen over 200 seeds (78 and 18 grey levels).
        background, body = image[:, :5].mean(), image[:, 74:86].mean()
        lungs = (image[35:60, 45:60].mean() + image[35:60, 100:115].mean()) / 2
        assert body > background + 40
        assert image[35:60, 76:84].mean() > lungs + 8


def _center_crops(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n rendered images (half normal), centre-cropped to the square that holds the chest, pooled to 32x32."""
    rng = np.random.default_rng(seed)
    subtypes = rng.choice(["normal", "bacteria", "virus"], size=n, p=[0.5, 0.25, 0.25])
    crops = []
    for subtype in subtypes:
        height = 128
        width = int(height * rng.uniform(1.02, 1.6))
        image = render_image(str(subtype), rng, height, width)
        left = (width - height) // 2
        crop = Image.fromarray(image[:, left : left + height]).resize((32, 32), Image.Resampling.BOX)
        crops.append(np.asarray(crop, dtype=np.float32) / 255.0)
    return np.stack(crops), (subtypes != "normal").astype(int)


def test_learnable_but_not_by_mean_intensity() -> None:
    x_train, y_train = _center_crops(300, seed=0)
    x_test, y_test = _center_crops(200, seed=1)

    def features(x: np.ndarray) -> np.ndarray:
        # Per-image z-score removes exposure gain/offset; 2x2 pooling to 16x16 keeps lesion-scale structure.
        z = (x - x.mean((1, 2), keepdims=True)) / x.std((1, 2), keepdims=True)
        return z.reshape(len(z), 16, 2, 16, 2).mean((2, 4)).reshape(len(z), -1)

    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000))
    auc = roc_auc_score(y_test, model.fit(features(x_train), y_train).predict_proba(features(x_test))[:, 1])
    # This linear model reached held-out AUCs of 0.84-0.86 (three seed pairs; 0.77-0.79 before the severity floor);
    # the demo's CNN at 64 px reaches about 0.96 on its test split. With 200 held-out images the AUC's standard error is
    # about 0.035, so 0.65 is far above chance (0.5) yet safely below what the generator gives: the check fails
    # if the findings vanish (then about 0.49) or become too faint to learn.
    assert auc > 0.65, auc
    # Findings must not be a global brightness shortcut: exposure jitter dominates the mean (measured AUC
    # 0.53-0.61 over three seed pairs; 0.40-0.52 before the severity floor). 0.7 leaves room for sampling noise
    # (SE about 0.04) and still fails on a real shortcut (pneumonia 40 grey levels brighter gives 0.90).
    mean_auc = roc_auc_score(y_test, x_test.mean((1, 2)))
    assert max(mean_auc, 1 - mean_auc) < 0.7, mean_auc
