"""``pneumo demo``: the synthetic walk ends with a model that beats the trivial baseline printed beside it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pneumo.cli import app


@pytest.mark.slow
def test_the_demo_model_beats_always_answering_the_majority_class(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # it printed accuracy 0.512 and ROC AUC 0.673 where always answering PNEUMONIA scored 0.744
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "run")])
    assert out.exit_code == 0, out.output
    numbers = {m[1]: float(m[2]) for m in re.finditer(r"^  (accuracy|roc_auc) +([0-9.]+) \[", out.stdout, re.M)}
    baseline = re.search(r"^  trivial baseline: always PNEUMONIA: accuracy ([0-9.]+), roc_auc 0.500$", out.stdout, re.M)
    assert baseline is not None, out.stdout
    assert numbers["accuracy"] > float(baseline[1]) + 0.05, out.stdout
    assert numbers["roc_auc"] > 0.8, out.stdout
    assert f"data: {tmp_path / 'cache' / 'pneumo' / 'demo' / 'data-v2' / 'chest_xray'}" in out.stdout  # not the old
