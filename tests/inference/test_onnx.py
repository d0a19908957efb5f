"""ONNX export: parity with PyTorch, dynamic batch, metadata round trip, atomic writes, onnxruntime-only loading."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import pneumo.api
from pneumo.inference import ExplainUnavailable, ModelLoadError, Predictor
from pneumo.inference.onnx import ExportError, export_onnx

from .conftest import TINY_CNN, make_fake_run, xray_like

OP = {"threshold": 0.37, "method": "youden", "positive_class": "PNEUMONIA"}
OOD = {"method": "energy", "threshold": -3.5, "stats": [1.0, 2.0]}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("onnx")
    run = make_fake_run(root, dummy_class=True, operating_point=OP, temperature=1.7, geometry="letterbox")
    scored_at = {"operating_point": OP, "calibration": {"temperature": 1.7}}
    for name, result in (("eval-test", {"auroc": 0.91, "n": 624, **scored_at}), ("eval-old", {"auroc": 0.5})):
        (run / name).mkdir()  # eval-old was scored at another operating point: it describes another model
        (run / name / "metrics.json").write_text(json.dumps(result))
    return run, export_onnx(run, root / "model.onnx")


def test_graph_inputs_outputs_and_opset(exported: tuple[Path, Path]) -> None:
    proto = onnx.load(str(exported[1]))
    onnx.checker.check_model(proto)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    (inp,) = proto.graph.input
    dims = inp.type.tensor_type.shape.dim
    assert inp.name == "input" and dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 32, 32]
    outputs = {o.name: o.type.tensor_type.shape.dim for o in proto.graph.output}
    assert list(outputs) == ["logits", "raw_logits", "features", "depth_features"]
    # every stage's mean and std: the multi-depth OOD check scores them
    from pneumo.inference.backends import OnnxBackend

    depth = OnnxBackend(exported[1])(np.zeros((2, 1, 32, 32), np.float32)).depth_features
    assert depth.shape == (2, 2 * sum(TINY_CNN["widths"]))
    assert outputs["logits"][1].dim_value == 2  # task logits: the dummy class is dropped
    assert outputs["raw_logits"][1].dim_value == 3


def test_metadata_round_trip(exported: tuple[Path, Path]) -> None:
    run, path = exported
    props = {p.key: json.loads(p.value) for p in onnx.load(str(path)).metadata_props}
    assert props["pneumo.class_names"] == ["NORMAL", "PNEUMONIA"]
    assert props["pneumo.task"] == "binary"
    assert props["pneumo.operating_point"] == OP
    assert props["pneumo.temperature"] == 1.7
    assert props["pneumo.ood"] is None
    assert props["pneumo.preprocess"]["geometry"] == "letterbox"
    assert props["pneumo.pneumo_version"] == "0.1.0"
    assert props["pneumo.metrics"] == {
        "eval-test": {"auroc": 0.91, "n": 624, "operating_point": OP, "calibration": {"temperature": 1.7}}
    }
    torch_meta, onnx_meta = Predictor.load(run).meta, Predictor.load(path).meta
    assert onnx_meta == torch_meta  # every field, the model id included


@pytest.mark.parametrize("batch", [1, 5])
def test_logits_and_probabilities_match_pytorch(exported: tuple[Path, Path], batch: int) -> None:
    run, path = exported
    torch_p, onnx_p = pneumo.api.load(run), pneumo.api.load(path)
    x = torch.randn(batch, 1, 32, 32, generator=torch.Generator().manual_seed(batch))
    np.testing.assert_allclose(onnx_p.logits(x), torch_p.logits(x), atol=1e-4, rtol=0)
    np.testing.assert_allclose(onnx_p.run(x).features, torch_p.run(x).features, atol=1e-4, rtol=0)
    images = [xray_like(50, 40 + i, seed=i) for i in range(batch)]
    for a, b in zip(torch_p.predict(images), onnx_p.predict(images), strict=True):
        assert a.label == b.label and a.threshold == b.threshold == 0.37
        np.testing.assert_allclose(list(a.probabilities.values()), list(b.probabilities.values()), atol=1e-4)


def test_onnx_predictor_needs_no_pytorch_model(exported: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    def no_torch(*_a: object, **_k: object) -> None:
        raise AssertionError("the ONNX path must not build a PyTorch model")

    monkeypatch.setattr("pneumo.inference.torch_backend.load_run", no_torch)
    monkeypatch.setattr("pneumo.models.get_model", no_torch)
    p = pneumo.api.load(exported[1])
    assert p.predict(xray_like()).label in p.class_names
    assert p.model_card()["format"] == "onnx" and p.model_card()["metrics"]["eval-test"]["auroc"] == 0.91
    with pytest.raises(ExplainUnavailable):
        p.explain(xray_like())
    with pytest.raises(ExportError, match="needs a run folder"):
        export_onnx(p, exported[1].parent / "again.onnx")
    with pytest.raises(ModelLoadError, match="ONNX models run on the CPU"):
        pneumo.api.load(exported[1], device="cuda")


def test_export_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = make_fake_run(tmp_path)
    out = tmp_path / "out" / "model.onnx"

    def broken(*_a: object, **_k: object) -> None:
        raise ExportError("parity failed")

    monkeypatch.setattr("pneumo.inference.onnx._verify", broken)
    with pytest.raises(ExportError):
        export_onnx(run, out)
    assert list(out.parent.iterdir()) == []  # neither the file nor a temporary left behind
    monkeypatch.undo()
    assert export_onnx(run, out) == out and out.is_file()
    assert [p.name for p in out.parent.iterdir()] == ["model.onnx"]


def test_export_refuses_old_opsets(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="opset"):
        export_onnx(make_fake_run(tmp_path), tmp_path / "m.onnx", opset=13)


def test_export_refuses_a_name_that_loading_would_not_recognise(tmp_path: Path) -> None:
    from pneumo.inference.onnx import ExportError

    with pytest.raises(ExportError, match=r"model\.bin: name the ONNX file with the suffix \.onnx"):
        export_onnx(make_fake_run(tmp_path), tmp_path / "model.bin")
    assert not (tmp_path / "model.bin").exists()


def test_three_channel_model_exports_with_one_channel_input(tmp_path: Path) -> None:
    run = make_fake_run(tmp_path, kwargs={"widths": [4, 8], "depths": [1, 1], "in_chans": 3})
    meta = json.loads((run / "checkpoint.json").read_text())
    meta["model"]["in_chans"] = 3
    meta["model"]["kwargs"] = {"widths": [4, 8], "depths": [1, 1]}
    (run / "checkpoint.json").write_text(json.dumps(meta))
    path = export_onnx(run, tmp_path / "rgb.onnx")
    x = torch.randn(2, 1, 32, 32)
    np.testing.assert_allclose(Predictor.load(path).logits(x), Predictor.load(run).logits(x), atol=1e-4)


def test_the_onnx_backend_takes_a_thread_count(exported: tuple[Path, Path]) -> None:
    from pneumo.inference.backends import OnnxBackend

    _, onnx_path = exported
    assert OnnxBackend(onnx_path, threads=1).session.get_session_options().intra_op_num_threads == 1
    assert OnnxBackend(onnx_path).session.get_session_options().intra_op_num_threads == 0  # onnxruntime's choice


def test_the_dynamo_fallback_writes_the_opset_asked_for_or_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a torch whose TorchScript exporter fails, the dynamo exporter may keep its own opset: never silently."""
    real_export = torch.onnx.export

    def no_legacy(*args: object, **kwargs: object) -> object:
        if kwargs.get("dynamo") is False:
            raise RuntimeError("no TorchScript exporter here")
        return real_export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", no_legacy)
    out = tmp_path / "m.onnx"
    for opset in (17, 18):
        try:
            export_onnx(make_fake_run(tmp_path, name=f"run{opset}"), out, opset=opset)
        except ExportError as exc:
            assert f"not the requested {opset}" in str(exc) and not out.exists()
        else:
            assert [o.version for o in onnx.load(str(out)).opset_import if o.domain in ("", "ai.onnx")] == [opset]


def test_export_warnings_name_the_run_not_a_temporary_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = make_fake_run(tmp_path)  # no threshold: loading it warns, once, naming the run
    export_onnx(run, tmp_path / "m.onnx")
    warnings = [r.getMessage() for r in caplog.records if "no threshold" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith(str(run)) and ".tmp" not in warnings[0]


def test_onnxruntime_threads_follow_the_option_or_omp_num_threads(
    exported: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """onnxruntime ignores OMP_NUM_THREADS and starts a thread per core; pneumo.load could not set them at all."""
    path = exported[1]
    threads = lambda p: p.backend.session.get_session_options().intra_op_num_threads  # noqa: E731
    assert threads(pneumo.api.load(path, threads=1)) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads(pneumo.api.load(path)) == 2
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert threads(pneumo.api.load(path)) == 0  # onnxruntime's own choice


def test_non_finite_outputs_are_an_error_not_a_label(exported: tuple[Path, Path]) -> None:
    """NaN >= threshold is False: broken weights labelled every image NORMAL without a word."""
    predictor = pneumo.api.load(exported[1])
    real = predictor.backend
    predictor.backend = lambda x: type(out := real(x))(out.raw_logits * np.nan, out.features)
    with pytest.raises(FloatingPointError, match="non-finite outputs for <array>"):
        predictor.predict(xray_like(50, 40, seed=0))


def test_export_verifies_the_features_the_ood_check_uses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the logits were compared: a graph whose pooled features differ would pass, and its OOD verdicts not."""
    import pneumo.inference.onnx as onnx_export
    from pneumo.inference.backends import OnnxBackend

    class DriftingFeatures(OnnxBackend):
        def __call__(self, x: np.ndarray):
            out = super().__call__(x)
            return type(out)(out.raw_logits, out.features + 1e-3)

    monkeypatch.setattr(onnx_export, "OnnxBackend", DriftingFeatures)
    with pytest.raises(ExportError, match=r"ONNX features differ from PyTorch by 1.00e-03"):
        export_onnx(make_fake_run(tmp_path), tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()


@pytest.mark.parametrize(
    ("logit_drift", "feature_drift", "refused"),
    [
        (np.zeros(3), 2e-4, None),  # 2e-4 on features of 300 is float32 rounding (a healthy ResNet-50 was refused)
        (np.zeros(3), 0.3, "features"),  # 1e-3 of their size is not
        (np.array([0.0, 0.0, 1e-3]), 0.0, "logits"),  # a dummy column feeds the OOD check: it was not compared
    ],
)
def test_export_verification_tolerances(
    monkeypatch: pytest.MonkeyPatch, logit_drift: np.ndarray, feature_drift: float, refused: str | None
) -> None:
    import types

    import pneumo.inference.onnx as onnx_export

    logits, features = np.zeros((3, 3), np.float32), np.full((3, 2048), 300.0, np.float32)

    class Backend:
        def __init__(self, path: Path) -> None:
            pass

        def meta(self, path: Path) -> None:
            return None

        def __call__(self, x: np.ndarray) -> types.SimpleNamespace:
            return types.SimpleNamespace(raw_logits=logits + logit_drift, features=features + feature_drift)

    monkeypatch.setattr(onnx_export, "OnnxBackend", Backend)
    predictor = types.SimpleNamespace(run=lambda x: types.SimpleNamespace(raw_logits=logits, features=features))
    if refused is None:
        onnx_export._verify(predictor, Path("model.onnx"), 8)
    else:
        with pytest.raises(ExportError, match=f"ONNX {refused} differ"):
            onnx_export._verify(predictor, Path("model.onnx"), 8)
