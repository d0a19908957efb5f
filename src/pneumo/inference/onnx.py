"""Export a run to ONNX: the graph plus everything prediction needs, in ``metadata_props``.

The graph takes the normalised float input ``input`` ``(N, 1, S, S)`` (dynamic batch) and returns ``logits`` (task
logits, dummy class dropped), ``raw_logits`` (every output), ``features`` (pooled penultimate features) and
``depth_features`` (every stage's pooled mean and std), the last two for OOD scores. The contract, class names, task,
operating point, temperature, OOD parameters, model id and pneumo version are JSON strings under ``pneumo.*`` keys,
so ``pneumo.load("model.onnx")`` predicts with onnxruntime alone.
"""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from pneumo.inference.backends import ONNX_DEPTH_OUTPUT, ONNX_INPUT, ONNX_OUTPUTS, OnnxBackend
from pneumo.inference.predictor import Predictor
from pneumo.inference.torch_backend import FeatureHead, TorchBackend
from pneumo.utils.atomic import atomic_path
from pneumo.utils.errors import PneumoError

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17


class ExportError(PneumoError, RuntimeError):
    """The export failed or does not reproduce the PyTorch model."""


def _torch_export(graph: torch.nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    names = [*ONNX_OUTPUTS, ONNX_DEPTH_OUTPUT]
    dynamic_axes = {name: {0: "batch"} for name in (ONNX_INPUT, *names)}
    try:
        # The TorchScript exporter is robust for these plain CNNs on CPU; it is deprecated, hence the filter.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                graph,
                (example,),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=[ONNX_INPUT],
                output_names=names,
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
            )
        return
    except Exception as exc:  # a torch without (or failing in) the legacy exporter: torch.export + onnxscript
        log.warning("legacy ONNX exporter unavailable (%s); using the dynamo exporter", exc)
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(
        graph,
        (example,),
        dynamo=True,
        opset_version=opset,
        input_names=[ONNX_INPUT],
        output_names=names,
        dynamic_shapes=({0: batch},),
        external_data=False,
    )
    program.save(str(path))
    imports = onnx.load(str(path), load_external_data=False).opset_import
    written = next((o.version for o in imports if o.domain in ("", "ai.onnx")), None)
    if written != opset:  # onnxscript may fail to convert down and keep its own opset: a runtime would reject it
        raise ExportError(
            f"the dynamo exporter wrote opset {written}, not the requested {opset}; export with --opset {written} "
            "or with a torch that still has the TorchScript exporter"
        )


def export_onnx(
    model: str | Path | Predictor, out: str | Path, *, opset: int = DEFAULT_OPSET, verify: bool = True
) -> Path:
    """Write ``out`` atomically from a run folder (or a PyTorch :class:`Predictor`) and return its path.

    With ``verify`` the written file is loaded with onnxruntime and must match PyTorch within 1e-4 on a random
    batch of 3, or :class:`ExportError` is raised and nothing is written.
    """
    if opset < 17:
        raise ValueError(f"opset must be >= 17, got {opset}")
    if Path(out).suffix.lower() != ".onnx":  # pneumo.load, predict and serve tell an export by its suffix
        raise ExportError(f"{out}: name the ONNX file with the suffix .onnx")
    predictor = model if isinstance(model, Predictor) else Predictor.from_run(model)
    if not isinstance(predictor.backend, TorchBackend):
        raise ExportError("export needs a run folder (PyTorch weights), not an ONNX model")
    meta = predictor.meta
    in_chans = 1  # the contract yields one channel; FeatureHead replicates it for 3-channel models
    size = meta.contract.image_size
    graph = FeatureHead(copy_to_cpu(predictor.backend.model), meta.n_task).eval()
    out = Path(out)
    with atomic_path(out) as tmp:
        with torch.no_grad():
            _torch_export(graph, torch.zeros(2, in_chans, size, size), tmp, opset)
        proto = onnx.load(str(tmp))
        for key, value in meta.to_onnx_props().items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        proto.producer_name = "pneumo"
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        if verify:
            _verify(predictor, tmp, size)
    return out


def copy_to_cpu(model: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(model).to("cpu", memory_format=torch.contiguous_format).eval()


def _verify(predictor: Predictor, path: Path, size: int, atol: float = 1e-4, rtol: float = 1e-5) -> None:
    # the backend, not a Predictor: a Predictor's load-time warnings would name the temporary file
    backend = OnnxBackend(path)
    backend.meta(path)  # the metadata must read back too
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((3, 1, size, size), dtype=np.float32))
    ours, theirs = predictor.run(x), backend(x.numpy())
    # The logits decide (all columns: a dummy class's feed the out-of-distribution check), within atol. The pooled
    # features feed that check too; they can be in the hundreds (ResNet-50), where float32 rounding alone is above
    # 1e-4 (PyTorch differs from itself by that between memory layouts), so they are compared relative to their size.
    # Multi-depth features (pooled means and standard deviations of early stages) hold many values near zero, where a
    # relative bound does not help: measured up to 1.4e-4 apart for EfficientNet-Lite0, far below what moves the
    # check's logistic score, so they get a looser absolute bound.
    for name, a, b, rel, tol in (
        ("logits", ours.raw_logits, theirs.raw_logits, 0.0, atol),
        ("features", ours.features, theirs.features, rtol, atol),
        ("depth features", getattr(ours, "depth_features", None), getattr(theirs, "depth_features", None), rtol, 1e-3),
    ):
        if a is None and b is None:  # a backend without multi-depth features (a stand-in in tests)
            continue
        if a is None or b is None:
            raise ExportError(f"ONNX {name}: one side has none; export discarded")
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        excess = np.abs(a - b) - (tol + rel * np.abs(a))
        if not float(excess.max()) <= 0:
            diff = float(np.abs(a - b).max())
            limit = f"{tol:.0e}" + (f" + {rel:.0e} x |value|" if rel else "")
            raise ExportError(f"ONNX {name} differ from PyTorch by {diff:.2e} (> {limit}); export discarded")
