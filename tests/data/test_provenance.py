"""The commit recorded with runs and results: git's answer, or the PNEUMO_GIT_COMMIT override."""

from __future__ import annotations

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
    assert git_commit() == head.stdout.strip()
