"""An ONNX export predicts where PyTorch is not installed (Python API, ``pneumo predict``, ``pneumo serve``):
NumPy, Pillow, SciPy and onnxruntime are enough (FastAPI for the service).

The export is what a deployment ships; pulling in PyTorch (about 1 GB) to run it would defeat it. The check runs
in a fresh interpreter in which ``import torch`` fails, and compares its answers with this process's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pneumo.api
from pneumo.data.preprocess import PreprocessContract, normalize, normalize_array
from pneumo.inference.onnx import export_onnx
from pneumo.runs.format import update_run_meta
from pneumo.trust.ood_depth import fit_depth_scorer

from .conftest import make_fake_run, xray_like

# What the README's slim install leaves out: PyTorch and everything only training, evaluation or export needs.
BLOCKED = (
    "torch",
    "torchvision",
    "sklearn",
    "matplotlib",
    "onnx",
    "onnxscript",
    "safetensors",
    "yaml",
    "pytorch_grad_cam",
)

SCRIPT = """
import json, sys
for name in {blocked!r}:
    sys.modules[name] = None  # any import of it now raises ImportError
import pneumo
from fastapi.testclient import TestClient
from typer.testing import CliRunner
from pneumo.cli import app
from pneumo.serve.app import create_app

model, files = sys.argv[1], sys.argv[2:]
predictor = pneumo.load(model)
api = [r.to_dict() for r in predictor.predict(files)]
cli = CliRunner().invoke(app, ["predict", model, *files, "--format", "json"])
with open(files[0], "rb") as f:
    http = TestClient(create_app(predictor)).post("/v1/predict", files={{"file": ("x0.png", f, "image/png")}})
try:
    pneumo.load(sys.argv[1].rsplit("/", 1)[0] + "/run")
    run_folder = "loaded"
except pneumo.inference.ModelLoadError as exc:
    run_folder = str(exc)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {blocked!r} and sys.modules[m] is not None)
out = {{"api": api, "cli": json.loads(cli.stdout), "http": http.json(), "loaded": loaded, "run_folder": run_folder}}
print(json.dumps(out))
"""


def test_normalize_array_equals_normalize_for_every_uint8_value() -> None:
    import torch

    values = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    for contract in (PreprocessContract(), PreprocessContract(mean=0.5, std=0.25)):
        expected = normalize(torch.from_numpy(values), contract).numpy()
        got = normalize_array(values, contract)
        assert got.dtype == np.float32 and got.shape == (1, 1, 16, 16)
        np.testing.assert_array_equal(got, expected)


@pytest.fixture(scope="module")
def export_with_ood(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("onnx-no-torch")
    run = make_fake_run(root, operating_point={"threshold": 0.4, "method": "youden", "positive_class": "PNEUMONIA"})
    predictor = pneumo.api.load(run)
    images = np.stack([xray_like(32, 32, seed=i) for i in range(40)])
    noise = np.random.default_rng(0).integers(0, 256, (30, 32, 32), dtype=np.uint8)
    depth = predictor.run(predictor.model_input(images)).depth_features
    graph = predictor.backend.graph
    ood = fit_depth_scorer(
        depth[:30], predictor.run(predictor.model_input(noise)).depth_features, depth[30:],
        stages=graph.stage_names, depth_dims=graph.depth_dims,
    ).to_params()  # fmt: skip
    update_run_meta(run, ood=ood)  # a real (multi-depth) detector, so that scoring runs too
    Image.fromarray(noise[0]).save(root / "noise.png")
    files = []
    for i in range(3):
        path = root / f"x{i}.png"
        Image.fromarray(xray_like(60, 45 + 5 * i, seed=100 + i)).save(path)
        files.append(path)
    return export_onnx(run, root / "model.onnx"), [*files, root / "noise.png"]


def test_an_onnx_export_predicts_without_torch(export_with_ood: tuple[Path, list[Path]]) -> None:
    onnx_path, files = export_with_ood
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(blocked=BLOCKED), str(onnx_path), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["loaded"] == []
    assert out["run_folder"].endswith(
        "a run folder needs PyTorch (import of torch halted; None in sys.modules); "
        "install it, or export the run with `pneumo export` and use the .onnx file"
    )
    expected = [r.to_dict() for r in pneumo.api.load(onnx_path).predict(files)]
    assert out["api"] == out["cli"] == expected  # the Python API and `pneumo predict`
    assert {k: v for k, v in out["http"].items() if k in expected[0]} == {**expected[0], "source": "x0.png"}
    assert all(r["ood_score"] is not None and r["in_distribution"] is not None for r in out["api"])
    assert [r["in_distribution"] for r in out["api"]] == [True, True, True, False]
    assert out["api"][-1]["reason"].startswith("the image is unlike the chest X-rays")
    # the run folder (PyTorch) gives the same verdicts and scores as its export
    from_run = pneumo.api.load(onnx_path.parent / "run").predict(files)
    assert [r.in_distribution for r in from_run] == [r["in_distribution"] for r in out["api"]]
    np.testing.assert_allclose([r.ood_score for r in from_run], [r["ood_score"] for r in out["api"]], atol=1e-3)
    assert {r["threshold"] for r in out["api"]} == {0.4}


def test_an_export_without_depth_features_drops_a_multidepth_check(
    export_with_ood: tuple[Path, list[Path]], caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from pneumo.inference.backends import ONNX_OUTPUTS, OnnxBackend
    from pneumo.inference.predictor import Predictor

    onnx_path, files = export_with_ood
    backend = OnnxBackend(onnx_path)
    backend.outputs = list(ONNX_OUTPUTS)  # as a graph exported before the multi-depth check
    with caplog.at_level(logging.WARNING, logger="pneumo.inference.predictor"):
        predictor = Predictor(backend, backend.meta(onnx_path), onnx_path)
    assert "lacks the depth_features output its OOD check needs" in caplog.text
    result = predictor.predict(files[-1])
    assert result.in_distribution is None and result.ood_score is None and result.reason is None


SERVE_SCRIPT = """
import json, sys
from fastapi.testclient import TestClient
import pneumo.serve
app = pneumo.serve.create_app(sys.argv[1])
with open(sys.argv[2], "rb") as f:
    answer = TestClient(app).post("/v1/predict", files={"file": ("x0.png", f, "image/png")}).json()
loaded = sorted(m for m in sys.modules if m.split(".")[:2] in (["pneumo", "training"], ["pneumo", "trust"]))
print(json.dumps({"answer": answer, "loaded": loaded}))
"""


def test_serving_a_run_folder_imports_nothing_from_training(export_with_ood: tuple[Path, list[Path]]) -> None:
    """``pneumo serve RUN`` reads the run folder through :mod:`pneumo.runs`, not the training engine (pydantic, YAML,
    the training loop) nor the trust package (scikit-learn): the OOD verdict comes from the stored parameters."""
    onnx_path, files = export_with_ood
    proc = subprocess.run(
        [sys.executable, "-c", SERVE_SCRIPT, str(onnx_path.parent / "run"), str(files[0])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["loaded"] == []
    assert out["answer"]["in_distribution"] is not None and out["answer"]["threshold"] == 0.4
