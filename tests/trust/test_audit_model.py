"""``audit_model`` on a tiny trained run, with a twin copy of its test images made here (aspect kept, re-encoded)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import pytorch_grad_cam
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from pneumo.runs.context import open_run
from pneumo.trust import perturb
from pneumo.trust.forward import forward_arrays, task_probabilities
from pneumo.trust.matching import matched_subset
from pneumo.trust.model_audit import (
    audit_model,
    energy_shares,
    gradcam_section,
    perturbation_section,
    twin_section,
)
from pneumo.trust.regions import regions

from .conftest import RunOutputs


@pytest.fixture
def recording_cam(monkeypatch: pytest.MonkeyPatch) -> list[tuple[torch.Tensor, list[int]]]:
    """Swap in a GradCAM that records each batch's input and the class each map is asked for."""
    calls: list[tuple[torch.Tensor, list[int]]] = []

    class RecordingGradCAM(pytorch_grad_cam.GradCAM):
        def __call__(self, input_tensor, targets=None, **kwargs):  # type: ignore[no-untyped-def]
            calls.append((input_tensor.detach().clone(), [t.category for t in targets]))
            return super().__call__(input_tensor, targets, **kwargs)

    monkeypatch.setattr(pytorch_grad_cam, "GradCAM", RecordingGradCAM)  # gradcam_section imports it when called
    return calls


def _perturbed_probs(out: RunOutputs, fn: perturb.ImageFn, seed: int) -> np.ndarray:
    raw, _ = forward_arrays(out.model, perturb.apply(out.images, fn, seed=seed), out.ctx.contract, device="cpu")
    return task_probabilities(raw, len(out.ctx.class_names))


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


def test_audit_model_writes_all_checks(
    run_copy: Path, twin_folder: Path, run_outputs: RunOutputs, recording_cam: list
) -> None:
    y, probs = run_outputs.y, run_outputs.probs
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
    assert all(b["matched"]["ks_p"] > 0.05 for b in m["balance"].values())
    # the matched images, named as predictions.csv names them, for `pneumo compare --paired-with ... --images`
    listed = (out / "matched-images.csv").read_text().splitlines()
    assert listed[0] == "path" and len(listed) - 1 == m["n"] == len(set(listed[1:]))
    assert all(
        not Path(p).is_absolute() and (p.startswith("test/NORMAL/") or p.startswith("test/PNEUMONIA/"))
        for p in listed[1:]
    )
    # What cues alone still do on the subset (matching balances the matched ones only), beside the full test: each
    # cue oriented on train, and the data audit's models fitted on train.
    residual = m["residual"]
    sizes = np.asarray(m["values"]["stored_bytes"])
    for split, rows in (("test", np.arange(len(y))), ("matched", np.asarray(m["index"]))):
        auc = roc_auc_score(y[rows], sizes[rows])
        assert residual["cues"]["stored_bytes"][split]["point"] == pytest.approx(auc) or residual["cues"][
            "stored_bytes"][split]["point"] == pytest.approx(1 - auc)  # fmt: skip
    assert {"logistic on all cues", "gradient boosting on all cues"} <= residual["models"].keys()
    assert all(0 <= aucs["matched"]["point"] <= 1 for aucs in residual["models"].values())
    assert "The best model on cues alone" in html.replace("\n", " ")
    # Its AUC is that of the matched rows, not of the full test split.
    idx = np.asarray(m["index"])
    assert 0 < len(idx) < len(y)
    assert m["auc"]["point"] == pytest.approx(roc_auc_score(y[idx], probs[idx, 1]))
    assert result["test"]["auc"]["point"] == pytest.approx(roc_auc_score(y, probs[:, 1]))
    # The matching's own randomness: the AUC of other draws (seeds 1, 2, ...), the first of them this very subset.
    d, values = m["draws"], np.column_stack([m["values"][c] for c in m["cues"]])
    draws = [roc_auc_score(y[i], probs[i, 1]) for s in range(1, 21) for i in [matched_subset(
        values, y, n_bins=m["n_bins"], num_classes=2, seed=s).index]]  # fmt: skip
    assert d["n"] == 20 and d["mean"] == pytest.approx(np.mean(draws))
    assert d["sd"] == pytest.approx(np.std(draws, ddof=1)) and d["min"] <= m["auc"]["point"] <= d["max"]
    html_text = html.replace("\n", " ")
    assert "over 20 draws (seeds 1 to 20) the AUC was" in html_text
    # a toy test split leaves few images per class: said so
    assert m["small"] == (min(counts) < 30) and ("Warning: the matched subset is small" in html_text) == m["small"]

    # The twin pairs every test image; its reference AUC is the full test AUC (same images, same outputs).
    t = result["twin"]
    assert t["n_pairs"] == result["test"]["n"]
    assert t["auc_reference"]["point"] == pytest.approx(result["test"]["auc"]["point"])
    assert t["delta_auc"]["point"] == pytest.approx(t["auc"]["point"] - t["auc_reference"]["point"])
    assert 0 <= t["prediction_changed"] <= 1

    assert list(result["perturbations"]) == ["blur", "mask border"]
    for name, p in result["perturbations"].items():
        assert p["delta_auc"]["low"] <= p["delta_auc"]["point"] <= p["delta_auc"]["high"]
        # The model saw the perturbed images: AUC and changes are those of its outputs on them.
        new = _perturbed_probs(run_outputs, perturb.select([name])[0], seed=1)
        assert p["auc"]["point"] == pytest.approx(roc_auc_score(y, new[:, 1]))
        assert p["delta_auc"]["point"] == pytest.approx(p["auc"]["point"] - result["test"]["auc"]["point"])
        assert p["prediction_changed"] == pytest.approx(np.mean(new.argmax(1) != probs.argmax(1)))
        assert p["mean_abs_probability_change"] == pytest.approx(np.abs(new - probs).max(axis=1).mean())
    # Masking the border band moves every output (blur at 32 px, sigma 0.24 px, rounds back to the same pixels).
    assert result["perturbations"]["mask border"]["mean_abs_probability_change"] > 1e-3
    # Each probe reports what it did to its input, and the table names the probe that did nothing at this size.
    blurred, masked = (
        perturb.apply(run_outputs.images, perturb.select([n])[0], seed=1) for n in ("blur", "mask border")
    )
    masked_diff = np.abs(masked.astype(float) - run_outputs.images.astype(float))
    assert result["perturbations"]["mask border"]["mean_abs_pixel_change"] == pytest.approx(masked_diff.mean())
    assert result["perturbations"]["mask border"]["images_changed"] == 1.0
    assert np.array_equal(blurred, run_outputs.images)
    assert (
        result["perturbations"]["blur"]["mean_abs_pixel_change"]
        == result["perturbations"]["blur"]["images_changed"]
        == 0
    )
    assert "| blur (changed no pixel at this size) |" in saved["table"]
    assert "| mask border |" in saved["table"]

    g = result["gradcam"]
    assert g["n_images"] == 8 and g["layer"] == "features.block4"
    assert g["share"]["centre"] + g["share"]["border"] <= 1 + 1e-9
    assert g["share"]["corners"] <= g["share"]["border"] + 1e-9  # corners lie inside the border band
    # Each map's target is the class the model predicts for that very image.
    assert sum(len(targets) for _, targets in recording_cam) == 8
    for x, targets in recording_cam:
        with torch.no_grad():
            raw = run_outputs.model.eval()(x).double().numpy()
        predicted = task_probabilities(raw, len(run_outputs.ctx.class_names)).argmax(1)
        assert targets == predicted.tolist()


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


def _twin_of(out: RunOutputs, rows: np.ndarray, root: Path) -> Path:
    """A twin folder holding byte-identical copies of the given test images (same names and labels)."""
    for i in rows:
        r = out.records[i]
        target = root / "test" / r.label / r.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(r.path, target)
    return root


@pytest.mark.parametrize("every", [1, 2])
def test_twin_of_identical_files_changes_nothing(run_outputs: RunOutputs, tmp_path: Path, every: int) -> None:
    # Every image, or every second one: a twin that is the same file pairs each image with itself, so the twin's
    # outputs equal the originals' row for row and nothing changes; pairing with the wrong originals would.
    out = run_outputs
    rows = np.arange(0, len(out.y), every)
    assert len(np.unique(out.y[rows])) == 2
    t = twin_section(
        out.ctx,
        out.model,
        out.records,
        out.y,
        out.probs,
        out.groups,
        _twin_of(out, rows, tmp_path / "twin"),
        device=torch.device("cpu"),
        batch_size=64,
        n_boot=50,
        seed=0,
    )
    assert t["n_pairs"] == len(rows)
    expected = roc_auc_score(out.y[rows], out.probs[rows, 1])
    assert t["auc_reference"]["point"] == pytest.approx(expected)
    assert t["auc"]["point"] == pytest.approx(expected)
    assert t["delta_auc"] == pytest.approx({"point": 0.0, "low": 0.0, "high": 0.0}, abs=1e-9)
    assert t["prediction_changed"] == 0.0
    assert t["mean_abs_probability_change"] == pytest.approx(0.0, abs=1e-6)


def test_perturbations_change_what_they_destroy_and_not_what_they_keep(
    run_outputs: RunOutputs, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = run_outputs
    probes = {
        "identity": perturb.Perturbation("identity", "stretch 1 x 1: the same image", perturb.stretch(1.0, 1.0)),
        "blank": perturb.Perturbation("blank", "every pixel mid grey", lambda img, rng: np.full_like(img, 128)),
    }
    monkeypatch.setattr(perturb, "default_perturbations", lambda: probes)
    result = perturbation_section(
        out.ctx,
        out.model,
        out.images,
        out.y,
        out.probs,
        out.groups,
        ["identity", "blank"],
        device=torch.device("cpu"),
        batch_size=64,
        n_boot=50,
        seed=0,
    )
    reference = roc_auc_score(out.y, out.probs[:, 1])
    same = result["identity"]
    assert same["auc"]["point"] == pytest.approx(reference)
    assert same["delta_auc"] == pytest.approx({"point": 0.0, "low": 0.0, "high": 0.0}, abs=1e-9)
    assert same["prediction_changed"] == 0.0 and same["mean_abs_probability_change"] == pytest.approx(0, abs=1e-6)

    # A blank image carries no signal: every output is the same, so the AUC is 0.5 in every replicate.
    blank = result["blank"]
    raw, _ = forward_arrays(out.model, np.full_like(out.images[:1], 128), out.ctx.contract, device="cpu")
    p_blank = task_probabilities(raw, 2)[0]
    assert blank["description"] == "every pixel mid grey"
    assert blank["auc"] == pytest.approx({"point": 0.5, "low": 0.5, "high": 0.5})
    assert blank["auc_reference"]["point"] == pytest.approx(reference)
    assert blank["delta_auc"]["point"] == pytest.approx(0.5 - reference)
    assert blank["prediction_changed"] == pytest.approx(np.mean(out.probs.argmax(1) != p_blank.argmax()))
    assert blank["mean_abs_probability_change"] == pytest.approx(np.abs(out.probs - p_blank).max(axis=1).mean())
    assert blank["mean_abs_probability_change"] > 1e-3


def test_gradcam_maps_the_class_it_is_given(run_outputs: RunOutputs, recording_cam: list) -> None:
    out = run_outputs
    n = len(out.images)

    def shares(predicted: np.ndarray) -> dict[str, float]:
        g = gradcam_section(
            out.ctx, out.model, out.images, predicted, max_images=n, device=torch.device("cpu"), batch_size=16, seed=0
        )
        assert g["n_images"] == n and g["target"] == "decided class"
        return g["share"]

    alternating = np.arange(n) % 2
    shares(alternating)
    assert [c for _, targets in recording_cam for c in targets] == alternating.tolist()
    # The target matters: the maps of class 0 and of class 1 spread their energy differently.
    assert shares(np.zeros(n, dtype=np.int64)) != pytest.approx(shares(np.ones(n, dtype=np.int64)), abs=1e-6)


def test_decisions_as_deployed_use_the_validated_threshold_on_tempered_probabilities() -> None:
    from pneumo.trust.model_audit import _paired, deployed_decisions

    names = ["normal", "pneumonia"]
    logits = np.array([[0.0, 0.5], [0.0, 2.0], [0.0, -1.0], [0.0, 4.0]])
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    meta = {"operating_point": {"threshold": 0.7, "positive_class": "pneumonia"}, "temperature": 2.0}
    decide, rule = deployed_decisions(meta, names)
    tempered = 1 / (1 + np.exp(-logits[:, 1] / 2.0))  # 0.56, 0.73, 0.38, 0.88
    assert decide(probs).tolist() == (tempered >= 0.7).astype(int).tolist() == [0, 1, 0, 1]
    assert "pneumonia when p >= 0.7" in rule and "temperature 2" in rule
    # not fitted yet, or three classes: argmax
    assert deployed_decisions({}, names)[1] == "argmax"
    assert deployed_decisions(meta, ["normal", "bacteria", "virus"])[1] == "argmax"

    # the first image's logit goes from 0.5 to 3.0: untempered p = 0.62 -> 0.95 (argmax pneumonia both times),
    # tempered 0.56 -> 0.82, across the threshold 0.7: only the decision as deployed changes
    new_logits = logits.copy()
    new_logits[0, 1] = 3.0
    new = np.exp(new_logits) / np.exp(new_logits).sum(1, keepdims=True)
    y = np.array([1, 1, 0, 1])
    paired = _paired(y, probs, new, [0, 1, 2, 3], names, n_boot=20, seed=0, decide=decide)
    assert paired["prediction_changed"] == 0.0 and paired["decision_changed"] == 0.25


def test_gradcam_explains_the_decision_as_deployed(
    run_copy: Path, run_outputs: RunOutputs, recording_cam: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thresholded binary run decides otherwise than argmax near its threshold: the map explains the decision."""
    from pneumo.trust import model_audit

    def opposite(probs: np.ndarray) -> np.ndarray:  # a rule that disagrees with argmax everywhere
        return 1 - probs.argmax(1)

    monkeypatch.setattr(model_audit, "deployed_decisions", lambda meta, names: (opposite, "the opposite class"))
    model_audit.audit_model(run_copy, originals=None, n_boot=5, perturbations=[], cam_images=8, seed=1)
    assert sum(len(targets) for _, targets in recording_cam) == 8
    for x, targets in recording_cam:
        with torch.no_grad():
            raw = run_outputs.model.eval()(x).double().numpy()
        assert targets == opposite(task_probabilities(raw, len(run_outputs.ctx.class_names))).tolist()


def test_a_model_too_small_for_gradcam_skips_that_section(
    run_copy: Path, recording_cam: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pneumo.inference import gradcam

    monkeypatch.setattr(gradcam, "cam_unavailable_reason", lambda model, size: f"nothing to localise at {size} px")
    result = audit_model(run_copy, originals=None, n_boot=5, perturbations=[], cam_images=8, seed=1)
    assert result["gradcam"] == {"skipped": "nothing to localise at 32 px"} and recording_cam == []


def test_matching_draws_measure_how_much_the_random_draw_moves_the_auc() -> None:
    from pneumo.trust.model_audit import _matching_draws

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    values = rng.normal(size=400) + y  # a cue that differs by class, so cells keep a random part of one class
    probs = np.column_stack([1 - (p := rng.random(400)), p])
    d = _matching_draws(values[:, None], y, probs, [5], ["a", "b"], seed=0)
    assert d is not None and d["n"] == 20 and d["sd"] > 0 and d["min"] < d["mean"] < d["max"]
    assert _matching_draws(values[:, None], np.zeros(400, dtype=int), probs, [5], ["a", "b"], seed=0) is None


def test_a_threshold_fitted_on_other_weights_is_refused(run_copy: Path) -> None:
    """predict and serve refuse such a checkpoint.json; the audit used its threshold for the decisions as deployed."""
    from pneumo.training import read_run_meta, update_run_meta

    op = {"threshold": 0.4, "method": "youden", "positive_class": "PNEUMONIA", "weights_sha256": "0" * 16}
    update_run_meta(run_copy, operating_point=op, temperature=1.0)
    assert read_run_meta(run_copy)["operating_point"]["weights_sha256"] == "0" * 16
    with pytest.raises(ValueError, match=r"fitted on other weights than best.safetensors; fit them again with "
                       r"`pneumo evaluate"):  # fmt: skip
        audit_model(run_copy, n_boot=10, perturbations=[], cam_images=0)
