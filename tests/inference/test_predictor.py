"""Predictor: every input kind, the decision rules (temperature, dummy class, operating point) and the OOD hook."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.special import softmax

import pneumo.api
from pneumo.data.decode import ImageDecodeError
from pneumo.inference import ModelLoadError, PredictionResult, Predictor
from pneumo.runs import ood as runs_ood
from pneumo.utils.digest import file_sha256

from .conftest import dicom_bytes, encode, make_fake_run, xray_like


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fake_run(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def predictor(run: Path) -> Predictor:
    return pneumo.api.load(run)


@pytest.fixture(scope="module")
def gray() -> np.ndarray:
    img = xray_like(48, 40, seed=3)
    img[0, 0], img[-1, -1] = 0, 255  # full range, so min-max stretching of deeper images gives it back exactly
    return img


def _probs(result: PredictionResult) -> np.ndarray:
    return np.array(list(result.probabilities.values()))


def test_result_fields_and_to_dict(predictor: Predictor, gray: np.ndarray) -> None:
    result = predictor.predict(gray)
    assert set(result.probabilities) == {"NORMAL", "PNEUMONIA"}
    assert sum(result.probabilities.values()) == pytest.approx(1.0)
    assert result.label in result.probabilities
    assert result.threshold == 0.5 and result.in_distribution is None and result.ood_score is None
    assert result.source == "<array>"
    assert result.to_dict() == {
        "probabilities": result.probabilities,
        "label": result.label,
        "threshold": 0.5,
        "in_distribution": None,
        "ood_score": None,
        "source": "<array>",
        "reason": None,
        "warning": None,
    }
    with pytest.raises(AttributeError):
        result.label = "x"  # type: ignore[misc]


def test_every_file_format_gives_the_prediction_of_the_same_pixels(
    predictor: Predictor, gray: np.ndarray, tmp_path: Path
) -> None:
    reference = _probs(predictor.predict(gray))
    rgba = np.dstack([gray, gray, gray, np.full_like(gray, 255)])
    palette = Image.fromarray(255 - gray, mode="P")  # indices inverted; the palette maps them back
    palette.putpalette([v for i in range(256) for v in (255 - i,) * 3])
    sources = {
        "8bit.png": encode(Image.fromarray(gray), "PNG"),
        "16bit.png": encode(Image.fromarray(gray.astype(np.uint16) * 257), "PNG"),
        "rgba.png": encode(Image.fromarray(rgba), "PNG"),
        "palette.png": encode(palette, "PNG"),
        "image.dcm": dicom_bytes(gray.astype(np.uint16) + 1000),
    }
    assert Image.open(io.BytesIO(sources["16bit.png"])).mode.startswith("I;16")
    assert Image.open(io.BytesIO(sources["palette.png"])).mode == "P"
    for name, data in sources.items():
        path = tmp_path / name
        path.write_bytes(data)
        result = predictor.predict(path)
        assert result.source == str(path)
        np.testing.assert_allclose(_probs(result), reference, atol=1e-6, err_msg=name)
    # JPEG is lossy: close, not equal, and decoded from a file path like the others
    (tmp_path / "img.jpg").write_bytes(encode(Image.fromarray(gray), "JPEG", quality=95))
    np.testing.assert_allclose(_probs(predictor.predict(tmp_path / "img.jpg")), reference, atol=0.05)


def test_bytes_pil_and_array_inputs_agree(predictor: Predictor, gray: np.ndarray) -> None:
    png = encode(Image.fromarray(gray), "PNG")
    results = predictor.predict([png, Image.fromarray(gray), gray, gray.astype(np.float32) / 255.0])
    assert [r.source for r in results] == ["<bytes>", "<PIL image>", "<array>", "<array>"]
    for r in results[1:]:
        np.testing.assert_allclose(_probs(r), _probs(results[0]), atol=1e-6)


def test_monochrome1_predicts_like_its_inverted_monochrome2_twin(predictor: Predictor, gray: np.ndarray) -> None:
    raw = gray.astype(np.uint16) + 1000  # spans exactly 255 values: stretching is exact
    twin = (raw.max() + raw.min() - raw).astype(np.uint16)
    mono1 = predictor.prepare(dicom_bytes(raw, photometric="MONOCHROME1"), "m1.dcm")
    mono2 = predictor.prepare(dicom_bytes(twin, photometric="MONOCHROME2"), "m2.dcm")
    np.testing.assert_array_equal(mono1.original, mono2.original)
    np.testing.assert_array_equal(mono1.original, 255 - gray)  # inversion applied, not ignored
    r1, r2 = predictor.predict_prepared([mono1, mono2])
    assert r1.probabilities == r2.probabilities and r1.label == r2.label


def test_dicom_window_is_applied(predictor: Predictor) -> None:
    raw = np.tile(np.linspace(0, 4000, 40), (48, 1)).astype(np.uint16)
    windowed = predictor.prepare(dicom_bytes(raw, window=(1000, 400)), "w.dcm").original
    plain = predictor.prepare(dicom_bytes(raw), "p.dcm").original
    assert (windowed[raw < 790] == 0).all() and (windowed[raw > 1210] == 255).all()
    inside = (raw > 850) & (raw < 1150)
    expected = (raw[inside].astype(float) - 800) / 400 * 255
    np.testing.assert_allclose(windowed[inside], expected, atol=3)
    assert not np.array_equal(windowed, plain)
    # rescale slope/intercept (modality LUT) before the window: the same picture in other stored units
    rescaled = predictor.prepare(dicom_bytes(raw // 2, slope=2.0, window=(1000, 400)), "r.dcm").original
    np.testing.assert_allclose(rescaled.astype(int), windowed.astype(int), atol=3)


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [({"frames": 3}, "multi-frame DICOM (3 frames)"), ({"with_pixels": False}, "no pixel data")],
)
def test_unsupported_dicoms_are_refused_clearly(predictor: Predictor, kwargs: dict, reason: str) -> None:
    with pytest.raises(ImageDecodeError) as err:
        predictor.predict(dicom_bytes(np.zeros((16, 16), np.uint16), **kwargs))
    assert reason in str(err.value)


def test_bad_files_name_the_file(predictor: Predictor, tmp_path: Path) -> None:
    fake = tmp_path / "notes.png"
    fake.write_text("this is not an image")
    with pytest.raises(ImageDecodeError, match=re.escape("notes.png: not a supported image format")):
        predictor.predict(fake)
    with pytest.raises(ImageDecodeError, match=re.escape("missing.png: cannot read file")):
        predictor.predict(tmp_path / "missing.png")


def test_batching_gives_the_same_results(run: Path, gray: np.ndarray) -> None:
    images = [xray_like(40 + i, 36, seed=i) for i in range(5)]
    one_by_one = [pneumo.api.load(run, batch_size=1).predict(im) for im in images]
    batched = pneumo.api.load(run, batch_size=2).predict(images)
    assert len(batched) == 5
    for a, b in zip(one_by_one, batched, strict=True):
        np.testing.assert_allclose(_probs(a), _probs(b), atol=1e-6)
    assert len({round(r.probabilities["NORMAL"], 6) for r in batched}) == 5  # the images really differ


def test_probabilities_are_softmax_of_task_logits_over_temperature(tmp_path: Path, gray: np.ndarray) -> None:
    plain = Predictor.load(make_fake_run(tmp_path, name="plain"))
    hot = Predictor.load(make_fake_run(tmp_path, name="hot", temperature=2.5))
    x = plain.model_input([plain.prepare(gray).resized])
    logits = plain.logits(x)
    np.testing.assert_allclose(hot.logits(x), logits)  # same seed, same weights
    np.testing.assert_allclose(_probs(plain.predict(gray)), softmax(logits[0]), atol=1e-6)
    np.testing.assert_allclose(_probs(hot.predict(gray)), softmax(logits[0] / 2.5), atol=1e-6)


def test_dummy_class_is_dropped(tmp_path: Path, gray: np.ndarray) -> None:
    p = Predictor.load(make_fake_run(tmp_path, dummy_class=True))
    out = p.run(p.model_input([p.prepare(gray).resized]))
    assert out.raw_logits.shape == (1, 3)
    result = p.predict(gray)
    assert list(result.probabilities) == ["NORMAL", "PNEUMONIA"]
    np.testing.assert_allclose(_probs(result), softmax(out.raw_logits[0, :2]), atol=1e-6)


def test_binary_label_uses_the_operating_point(tmp_path: Path, gray: np.ndarray) -> None:
    base = Predictor.load(make_fake_run(tmp_path, name="base"))
    p_pos = base.predict(gray).probabilities["PNEUMONIA"]
    for shift, expected in [(-0.01, "PNEUMONIA"), (0.01, "NORMAL"), (0.0, "PNEUMONIA")]:
        op = {"threshold": p_pos + shift, "method": "youden", "positive_class": "PNEUMONIA"}
        p = Predictor.load(make_fake_run(tmp_path, name=f"op{shift}", operating_point=op))
        result = p.predict(gray)
        assert result.threshold == pytest.approx(p_pos + shift)
        assert result.label == expected, (shift, result)
    # without an operating point: argmax, reported as threshold 0.5
    assert base.predict(gray).label == ("PNEUMONIA" if p_pos >= 0.5 else "NORMAL")


def test_three_classes_use_argmax_and_no_threshold(tmp_path: Path) -> None:
    p = Predictor.load(make_fake_run(tmp_path, task="three"))
    for seed in range(4):
        r = p.predict(xray_like(seed=seed))
        assert list(r.probabilities) == ["NORMAL", "BACTERIA", "VIRUS"]
        assert r.threshold is None
        assert r.label == max(r.probabilities, key=r.probabilities.get)


def test_ood_hook(tmp_path: Path, gray: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict = {}

    def score(params: dict, *, logits: np.ndarray, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        seen.update(params=params, logits=logits, features=features)
        s = features.mean(axis=1) * params["scale"]
        return s, s < params["cut"]

    monkeypatch.setattr(runs_ood, "score", score)
    monkeypatch.setattr(runs_ood, "check", lambda params: None)
    params = {"method": "fake", "scale": 2.0, "cut": 1e9}
    p = Predictor.load(make_fake_run(tmp_path, name="ood", ood=params, dummy_class=True))
    r = p.predict(gray)
    assert seen["params"] == params
    assert seen["logits"].shape == (1, 3)  # raw outputs, dummy included
    assert seen["features"].shape == (1, 8)  # pooled penultimate features of the tiny CNN
    assert r.ood_score == pytest.approx(float(seen["features"].mean() * 2.0))
    assert r.in_distribution is True
    assert p.model_card()["ood"] == {"enabled": True, "method": "fake", "active": True}

    assert r.warning is None
    outside = Predictor.load(make_fake_run(tmp_path, name="ood-out", ood={**params, "cut": -1e9}, dummy_class=True))
    r = outside.predict(gray)
    assert r.in_distribution is False
    assert r.warning == r.to_dict()["warning"] and "does not look like the chest X-rays" in r.warning

    # a run without an ood entry never calls the hook
    seen.clear()
    assert Predictor.load(make_fake_run(tmp_path, name="no-ood")).predict(gray).in_distribution is None
    assert not seen

    # ood parameters this version cannot use (another method): empty fields, not an invented verdict
    monkeypatch.undo()
    r = Predictor.load(tmp_path / "ood").predict(gray)
    assert r.in_distribution is None and r.ood_score is None


def test_load_errors_are_clear(tmp_path: Path, run: Path) -> None:
    with pytest.raises(ModelLoadError, match=re.escape("no checkpoint.json")):
        pneumo.api.load(tmp_path)
    with pytest.raises(ModelLoadError, match=re.escape("neither a run folder nor an .onnx file")):
        pneumo.api.load(tmp_path / "nothing.onnx")
    assert pneumo.api.load(run / "checkpoint.json").model_id == pneumo.api.load(run).model_id


def test_calibration_of_other_weights_is_refused(tmp_path: Path) -> None:
    run = make_fake_run(tmp_path, operating_point={"threshold": 0.3, "weights_sha256": "0" * 16}, temperature=2.0)
    with pytest.raises(ModelLoadError, match=r"fitted on other weights.*pneumo evaluate"):
        Predictor.load(run)
    digest = file_sha256(run / "best.safetensors")[:16]
    meta = json.loads((run / "checkpoint.json").read_text())
    meta["operating_point"]["weights_sha256"] = digest
    (run / "checkpoint.json").write_text(json.dumps(meta))
    assert Predictor.load(run).meta.threshold == 0.3


def test_model_card_shows_evaluations_of_these_weights_without_paths(tmp_path: Path) -> None:
    run = make_fake_run(tmp_path)
    digest = file_sha256(run / "best.safetensors")[:16]
    meta = json.loads((run / "checkpoint.json").read_text())
    op = {"threshold": 0.4, "positive_class": "PNEUMONIA", "weights_sha256": digest}
    (run / "checkpoint.json").write_text(json.dumps({**meta, "operating_point": op, "temperature": 1.2}))
    for folder, fitted_on in (("eval-own-test", digest), ("eval-old-test", "f" * 16)):
        (run / folder).mkdir()
        result = {
            "run_dir": str(run),
            "dataset": {"source": "/secret/data", "name": "own", "own": True, "split_file": "/secret/split.csv"},
            "operating_point": {**op, "weights_sha256": fitted_on},
            "calibration": {"temperature": 1.2},
            "metrics": {"at_0.5": {"point": {"roc_auc": 0.9}}},
            "plots": {"ROC curve": "roc.png"},
        }
        (run / folder / "metrics.json").write_text(json.dumps(result))
    card = Predictor.load(run).model_card()
    assert list(card["metrics"]) == ["eval-own-test"]  # eval-old-test scored other weights
    assert card["metrics"]["eval-own-test"]["metrics"]["at_0.5"]["point"]["roc_auc"] == 0.9
    assert "/secret" not in json.dumps(card) and str(tmp_path) not in json.dumps(card)


def test_model_id_is_run_name_plus_weights_hash(tmp_path: Path) -> None:
    a = Predictor.load(make_fake_run(tmp_path / "a", name="run", seed=0))
    b = Predictor.load(make_fake_run(tmp_path / "b", name="run", seed=1))
    assert a.model_id.startswith("run-") and b.model_id.startswith("run-")
    assert a.model_id != b.model_id


def test_predictor_uses_channels_last_and_eval_mode(predictor: Predictor) -> None:
    model = predictor.backend.model
    assert not model.training
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_a_run_folder_loads_with_device_auto(fake_run: Path) -> None:
    predictor = Predictor.load(fake_run, device="auto")
    assert predictor.backend.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ModelLoadError, match="device must be auto, cpu, cuda or cuda:N"):
        Predictor.load(fake_run, device="gpu")


def test_a_binary_model_without_a_validated_threshold_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="pneumo.inference.predictor"):
        Predictor.load(make_fake_run(tmp_path / "a"))
    assert "no threshold or temperature validated" in caplog.text and "pneumo evaluate" in caplog.text
    caplog.clear()
    op = {"threshold": 0.3, "method": "youden", "positive_class": "PNEUMONIA", "split": "val"}
    with caplog.at_level("WARNING", logger="pneumo.inference.predictor"):
        assert Predictor.load(make_fake_run(tmp_path / "b", operating_point=op)).meta.threshold == 0.3
    assert "no threshold" not in caplog.text


def test_ood_parameters_this_version_cannot_use_are_found_at_load(
    tmp_path: Path, gray: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    # Another method's (or version's) parameters: the model still predicts, with empty OOD fields and one warning at
    # load, instead of failing every prediction.
    run = make_fake_run(tmp_path, ood={"method": "mahalanobis-pca-tied", "version": 2})
    with caplog.at_level("WARNING"):
        predictor = Predictor.load(run)
    assert "cannot be used by this version" in caplog.text and "version 2" in caplog.text
    assert predictor.model_card()["ood"]["active"] is False
    result = predictor.predict(gray)
    assert result.ood_score is None and result.in_distribution is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"class_names": ["normal"]}, "need at least 2 class names"),
        ({"preprocess": {"image_size": 32, "geometry": "pad-and-crop"}}, "unknown geometry"),
        ({"task": None, "class_names": None}, "NoneType"),
        ({"operating_point": {"method": "youden"}}, r"operating_point needs a threshold in \[0, 1\]"),
        ({"operating_point": {"threshold": "0.4"}}, "operating_point needs a threshold"),
        ({"operating_point": {"threshold": 1.5}}, "operating_point needs a threshold"),
    ],
)
def test_unusable_model_metadata_names_the_file(tmp_path: Path, change: dict, message: str) -> None:
    from pneumo.inference.meta import ModelMeta

    run = make_fake_run(tmp_path)
    meta = json.loads((run / "checkpoint.json").read_text())
    (run / "checkpoint.json").write_text(json.dumps({**meta, **change}))
    with pytest.raises(ModelLoadError, match=message) as caught:
        Predictor.load(run)
    assert str(run) in str(caught.value)

    props = {**ModelMeta.from_checkpoint(meta, run).to_onnx_props()}
    props.update({f"pneumo.{k}": json.dumps(v) for k, v in change.items()})
    with pytest.raises(ModelLoadError, match=message) as caught:
        ModelMeta.from_onnx_props(props, tmp_path / "model.onnx")
    assert str(tmp_path / "model.onnx") in str(caught.value)


def test_prediction_lets_the_full_size_original_go(run: Path) -> None:
    predictor = Predictor.load(run, batch_size=2)
    big = xray_like(300, 200)
    kept, dropped = predictor.prepare(big), predictor.prepare(big, keep_original=False)
    assert kept.original.shape == (300, 200) and dropped.original is dropped.resized
    np.testing.assert_array_equal(kept.resized, dropped.resized)
    # a list is predicted a batch at a time, with the same answers as one by one
    images = [xray_like(60 + i, 50, seed=i) for i in range(5)]
    together = predictor.predict(images)
    alone = [predictor.predict(im) for im in images]
    assert len(together) == 5
    for a, b in zip(together, alone, strict=True):
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-6) and a.label == b.label


def test_an_ood_detector_of_other_weights_is_not_used(
    tmp_path: Path, gray: np.ndarray, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Like the threshold: a detector fitted before best.safetensors changed would score against stale features."""
    from pneumo.utils.digest import file_sha256

    monkeypatch.setattr(
        runs_ood, "score", lambda params, *, logits, features: (features.mean(axis=1), np.ones(len(features), bool))
    )
    monkeypatch.setattr(runs_ood, "check", lambda params: None)
    run = make_fake_run(tmp_path, name="fresh", ood={"method": "fake"})
    digest = file_sha256(run / "best.safetensors")[:16]
    meta = json.loads((run / "checkpoint.json").read_text())
    meta["ood"]["weights_sha256"] = digest
    (run / "checkpoint.json").write_text(json.dumps(meta))
    assert Predictor.load(run).predict(gray).in_distribution is True  # fitted on these weights: used

    meta["ood"]["weights_sha256"] = "0" * 16
    (run / "checkpoint.json").write_text(json.dumps(meta))
    stale = Predictor.load(run)
    assert stale.predict(gray).in_distribution is None and stale.model_card()["ood"]["enabled"] is False
    assert "fitted on other weights" in caplog.text and "pneumo audit ood-fit" in caplog.text


def test_a_run_is_loaded_with_the_digest_of_the_weights_it_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The weights file was hashed apart from reading it: a training replacing it in between paired these weights with
    another file's digest, so with another file's threshold check and model id."""
    import pneumo.inference.meta as meta_module

    run = make_fake_run(tmp_path)
    digest = file_sha256(run / "best.safetensors")

    def no_second_read(path: Path) -> str:
        raise AssertionError(f"{path} hashed again after loading")

    monkeypatch.setattr(meta_module, "file_sha256", no_second_read)
    predictor = Predictor.load(run)
    assert predictor.model_id.endswith(digest[:12])


def test_a_run_folder_contract_is_parsed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """load_run parses checkpoint.json's "preprocess"; the predictor's metadata takes that contract, not a re-parse."""
    from pneumo.data.preprocess import PreprocessContract

    run = make_fake_run(tmp_path)
    real = PreprocessContract.from_dict.__func__
    calls = []
    monkeypatch.setattr(PreprocessContract, "from_dict", classmethod(lambda cls, d: calls.append(d) or real(cls, d)))
    predictor = Predictor.load(run)
    assert len(calls) == 1 and predictor.meta.contract == PreprocessContract.from_dict(calls[0])
