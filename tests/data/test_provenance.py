"""The commit recorded with runs and results: git's answer, or the PNEUMO_GIT_COMMIT override."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

import pneumo
from pneumo.utils.provenance import ENV_VAR, git_commit


def test_override_wins_and_short_form(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "d1ba8f0018aac4b4f8afec970750775d8b11e841")
    assert git_commit() == "d1ba8f0018aac4b4f8afec970750775d8b11e841"
    assert git_commit(short=True) == "d1ba8f0"


def test_without_override_it_is_the_checkout_head(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    package = Path(pneumo.__file__).resolve().parent
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=package, capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("pneumo is not running from a git checkout here")
    changes = subprocess.run(["git", "status", "--porcelain", "--", str(package.parent)], cwd=package,
                             capture_output=True, text=True).stdout.strip()  # fmt: skip
    assert git_commit() == head.stdout.strip() + ("-dirty" if changes else "")


def _copy_package(root: Path) -> Path:
    """A copy of provenance.py at ``root/src/pneumo/utils/``, loaded as its own module."""
    import importlib.util

    from pneumo.utils import provenance

    target = root / "src" / "pneumo" / "utils" / "provenance.py"
    target.parent.mkdir(parents=True)
    target.write_text(Path(provenance.__file__).read_text())
    spec = importlib.util.spec_from_file_location("provenance_copy", target)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _git(root: Path, *args: str) -> str:
    identity = {f"GIT_{who}_{field}": "t" for who in ("AUTHOR", "COMMITTER") for field in ("NAME", "EMAIL")}
    out = subprocess.run(
        ["git", *args], cwd=root, capture_output=True, text=True, check=True, env={**os.environ, **identity}
    )
    return out.stdout.strip()


def test_changed_sources_are_marked_dirty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    module = _copy_package(tmp_path)
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "x")
    head = _git(tmp_path, "rev-parse", "HEAD")
    assert module.git_commit() == head and module.git_commit(short=True) == head[:7]
    (tmp_path / "README").write_text("outside src: not a change of the code")
    assert module.git_commit() == head
    (tmp_path / "src" / "pneumo" / "utils" / "provenance.py").write_text("# changed\n")
    assert module.git_commit() == head + "-dirty" and module.git_commit(short=True) == head[:7] + "-dirty"


def test_an_install_inside_another_projects_checkout_reports_no_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    _git(tmp_path, "init", "-q")
    (tmp_path / "app.py").write_text("print()\n")
    _git(tmp_path, "add", "app.py")
    _git(tmp_path, "commit", "-qm", "another project")
    module = _copy_package(tmp_path / "venv" / "lib" / "site-packages")
    assert module.git_commit() is None
