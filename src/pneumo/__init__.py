"""pneumo: pneumonia classification from pediatric chest X-rays.

A research tool, not a medical device: its outputs must not be used for diagnosis or treatment.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load"]


def __getattr__(name: str):  # lazy, so that ``import pneumo`` stays light (no torch, no FastAPI)
    if name == "load":
        from pneumo.api import load

        return load
    raise AttributeError(f"module 'pneumo' has no attribute {name!r}")
