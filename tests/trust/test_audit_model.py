"""``audit_model`` on a tiny trained run, with a twin copy of its test images made here (aspect kept, re-encoded)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumo.trust.audit_model import audit_model, energy_shares
from pneumo.trust.regions import regions
from pneumo.trust.runs import open_run


@pytest.fixture
def twin_folder(trust_run: Path, tmp_path: Path) -> Path:
    """Every test image of the run, resized to a shorter side of 48 px (aspect kept) and re-encoded: another path
    from the same pixels, as the shared originals subset is; same file names and labels."""
    root = tmp_path / "twin"
    for r in open_run(trust_run).records:
        if r.split != "test":
            continue
        with Image.open(r.path) as img:
            w, h = img.size
            scale = 48 / min(w, h)
            small = img.convert("L").resize((round(w * scale), round(h * scale)), Image.Resampling.LANCZOS)
        target = root / "test" / r.label / r.name
        target.parent.mkdir(parents=True, exist_ok=True)
        small.save(target, format="JPEG", quality=95)
    return root


def test_audit_model_writes_all_checks(run_copy: Path, twin_folder: Path) -> None:
    result = audit_model(
        run_copy, originals=twin_folder, n_boot=50, perturbations=["blur", "mask border"], cam_images=8, seed=1
    )
    out = run_copy / "audit"
    saved = json.loads((out / "audit-model.json").read_text())
    html = (out / "audit-model.html").read_text()
    assert saved["test"]["n"] == result["test"]["n"] > 0
    for heading in ("Metadata-matched subset", "Resolution-normalised twin", "Grad-CAM energy", "blur"):
        assert heading in html

    # No manifest with original sizes: matching falls back to the stored files' size and aspect, and matches.
    m = result["matched"]
    assert m["cues"] == ["stored_bytes", "stored_aspect"]
    counts = list(m["class_counts"].values())
    assert counts[0] == counts[1] == m["n"] // 2
    assert all(b["matched"]["chi2_p"] > 0.05 for b in m["balance"].values())

    # The twin pairs every test image; its reference AUC is the full test AUC (same images, same outputs).
    t = result["twin"]
    assert t["n_pairs"] == result["test"]["n"]
    assert t["auc_reference"]["point"] == pytest.approx(result["test"]["auc"]["point"])
    assert t["delta_auc"]["point"] == pytest.approx(t["auc"]["point"] - t["auc_reference"]["point"])
    assert 0 <= t["prediction_changed"] <= 1

    assert list(result["perturbations"]) == ["blur", "mask border"]
    for p in result["perturbations"].values():
        assert p["delta_auc"]["low"] <= p["delta_auc"]["point"] <= p["delta_auc"]["high"]

    g = result["gradcam"]
    assert g["n_images"] == 8 and g["layer"] == "features.block4"
    assert g["share"]["centre"] + g["share"]["border"] <= 1 + 1e-9
    assert g["share"]["corners"] <= g["share"]["border"] + 1e-9  # corners lie inside the border band


def test_audit_model_without_twin(run_copy: Path, tmp_path: Path) -> None:
    result = audit_model(run_copy, originals=None, n_boot=20, perturbations=["noise"], cam_images=0, out=tmp_path)
    assert "skipped" in result["twin"] and "skipped" in result["gradcam"]
    assert (tmp_path / "audit-model.html").is_file()


def test_energy_shares_of_known_maps() -> None:
    size = 40
    reg = regions(size)
    uniform = np.ones((1, size, size))
    centre_only = reg.centre[None].astype(float)
    corner_only = reg.corners[None].astype(float)
    empty = np.zeros((1, size, size))
    shares, mean_map, used = energy_shares(np.concatenate([uniform, centre_only, corner_only, empty]))
    assert used == 3  # the all-zero map has no energy to share out
    np.testing.assert_allclose(shares["centre"], [reg.area("centre"), 1, 0])
    np.testing.assert_allclose(shares["border"], [reg.area("border"), 0, 1])
    np.testing.assert_allclose(shares["corners"], [reg.area("corners"), 0, 1])
    assert mean_map.sum() == pytest.approx(1.0)
