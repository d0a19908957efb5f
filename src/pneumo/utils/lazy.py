"""Package names that load their submodule on first use (PEP 562).

``pneumo.data`` and ``pneumo.trust`` export names whose modules need PyTorch; an ONNX-only deployment imports their
light modules (decode, preprocess, the OOD scorer) and must not pay for the others.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, module_of: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``name`` comes from the submodule ``module_of[name]``, imported
    when the name is first asked for, then kept on the package so that later lookups skip this function."""
    namespace = vars(sys.modules[package])

    def __getattr__(name: str) -> Any:
        if name not in module_of:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module_of[name]}"), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *module_of})

    return __getattr__, __dir__
