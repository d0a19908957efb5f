"""Using a trained model: predict, explain (Grad-CAM) and export to ONNX.

``pneumo.load(path)`` returns a :class:`Predictor` for a run folder or an ONNX export.
"""

from pneumo.inference.meta import DISCLAIMER, ModelLoadError, ModelMeta
from pneumo.inference.predictor import ExplainUnavailable, Predictor, PreparedImage
from pneumo.inference.result import Explanation, PredictionResult

__all__ = [
    "DISCLAIMER",
    "ExplainUnavailable",
    "Explanation",
    "ModelLoadError",
    "ModelMeta",
    "PredictionResult",
    "Predictor",
    "PreparedImage",
    "export_onnx",
]


def __getattr__(name: str):  # export pulls in the onnx package: import it only when asked for
    if name == "export_onnx":
        from pneumo.inference.onnx import export_onnx

        return export_onnx
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
