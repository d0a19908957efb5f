"""``pneumo.data`` and ``pneumo.trust`` load their modules on first use (so that ONNX prediction needs no PyTorch):
every exported name must still resolve, to the object its module defines, whatever was imported before."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import pneumo.data
import pneumo.trust


@pytest.mark.parametrize("package", [pneumo.data, pneumo.trust], ids=lambda p: p.__name__)
def test_every_exported_name_resolves_to_its_definition(package) -> None:
    for name in package.__all__:
        value = getattr(package, name)
        module = importlib.import_module(f"{package.__name__}.{package._MODULE_OF[name]}")
        assert value is getattr(module, name), name
    assert set(package.__all__) == set(package._MODULE_OF)
    assert set(package.__all__) <= set(dir(package))
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        package.nope  # noqa: B018


def test_a_submodule_imported_first_does_not_shadow_a_function() -> None:
    """Importing ``pneumo.trust.model_audit`` binds ``model_audit`` on the package; no exported function may share a
    name with a submodule, or the module would replace it (``from pneumo.trust import audit_model`` -> a module)."""
    code = (
        "import pneumo.trust.model_audit, pneumo.trust.data_audit, pneumo.trust.ood\n"
        "from pneumo.trust import audit_data, audit_model, fit_ood\n"
        "assert all(callable(f) for f in (audit_data, audit_model, fit_ood)), (audit_data, audit_model)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    for package in (pneumo.data, pneumo.trust):
        submodules = {p.stem for p in Path(package.__file__).parent.glob("*.py")}
        assert not submodules & set(package.__all__), package.__name__
