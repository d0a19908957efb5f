from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from safetensors.torch import load_file
from typer.testing import CliRunner

from pneumo.cli.train import train as train_command
from pneumo.data import build_split, dataset_root, get_task, read_split_csv
from pneumo.training import load_run, predict_logits, read_metrics, read_run_meta, roc_auc, train
from pneumo.training.data import contract_for

SCRIPT = Path(__file__).with_name("train_script.py")


def run_python(args: list[str], timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    """Run a child with one thread (as its sibling runs), so that CPU results are comparable bit for bit."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def python_script(*args: str) -> list[str]:
    return [sys.executable, str(SCRIPT), *args]


def _save(cfg, out: Path, tmp_path: Path) -> Path:
    path = tmp_path / f"{out.name}.yaml"
    cfg.model_copy(update={"out": str(out)}).save(path)
    return path


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(a), load_file(b)
    assert wa.keys() == wb.keys()
    differing = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differing, f"{len(differing)} tensors differ, e.g. {differing[:3]}"


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical(make_cfg, tmp_path: Path) -> None:
    # Dropout, augmentation, the weighted sampler and the schedule all draw randomness that resume must restore.
    # The uninterrupted reference and the resume run here (one thread, like the child); only the killed run is a
    # child process (importing torch in a child is the slow part).
    cfg = make_cfg("drop_rate=0.3", "balance=sampler", "checkpoint_every_steps=2", epochs=2, max_steps_per_epoch=5)
    ref = train(cfg.model_copy(update={"out": str(tmp_path / "ref")}))

    # Steps 1-5 are epoch 1; step checkpoints after global steps 2, 4, 6 and 8; the child dies before step 10,
    # so step 9 (epoch 2) is lost and must be redone.
    killed = tmp_path / "killed"
    proc = run_python(python_script("train", str(_save(cfg, killed, tmp_path)), "10"), check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    progress = json.loads((killed / "last.state.json").read_text())["progress"]
    assert (progress["epoch"], progress["step_in_epoch"], progress["global_step"]) == (2, 3, 8)
    assert [r["epoch"] for r in read_metrics(killed)] == [1]

    app = typer.Typer()
    app.command()(train_command)
    result = CliRunner().invoke(app, ["--resume", str(killed)])
    assert result.exit_code == 0, result.output
    assert str(killed) in result.output

    _same_weights(ref / "last.safetensors", killed / "last.safetensors")
    _same_weights(ref / "best.safetensors", killed / "best.safetensors")
    drop = ("seconds", "images_per_s")
    strip = [{k: v for k, v in r.items() if k not in drop} for r in read_metrics(killed)]
    assert strip == [{k: v for k, v in r.items() if k not in drop} for r in read_metrics(ref)]
    assert json.loads((killed / "last.state.json").read_text())["progress"]["finished"] is True
    assert CliRunner().invoke(app, ["--resume", str(killed)]).exit_code == 0  # finished: nothing left to do
    _same_weights(ref / "last.safetensors", killed / "last.safetensors")


@pytest.mark.slow
def test_torchrun_two_processes_evaluate_once_and_resume_bit_identical(make_cfg, tmp_path: Path) -> None:
    # Two processes (gloo on CPU) with dropout. The gathered validation AUC must be the single-process one; each rank
    # must draw its own dropout masks; a run killed after a step checkpoint and resumed must end bit-identical to an
    # uninterrupted one, which needs every rank's RNG state.
    cfg = make_cfg("drop_rate=0.3", "checkpoint_every_steps=2", epochs=2, max_steps_per_epoch=3)
    torchrun = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", "2", str(SCRIPT)]
    ref = tmp_path / "ref"
    run_python([*torchrun, "train", str(_save(cfg, ref, tmp_path))])

    assert json.loads((ref / "env.json").read_text())["world_size"] == 2
    gathered_auc = read_metrics(ref)[-1]["val_auc"]
    model, _ = load_run(ref, "last")
    records = read_split_csv(ref / "split.csv", dataset_root(cfg.data))
    val = build_split("val", records, get_task(cfg.task), contract_for(cfg), progress=False)
    probs = torch.softmax(torch.from_numpy(predict_logits(model, val, batch_size=7)), dim=1).numpy()
    assert np.isfinite(gathered_auc)
    assert roc_auc(val.targets, probs) == pytest.approx(gathered_auc, abs=1e-9)
    best = max(read_metrics(ref), key=lambda r: r["val_auc"])
    assert read_run_meta(ref)["best"]["val_auc"] == best["val_auc"]

    killed = tmp_path / "killed"
    proc = run_python([*torchrun, "train", str(_save(cfg, killed, tmp_path)), "5"], check=False)
    assert proc.returncode != 0
    state = load_file(killed / "last.state.safetensors")
    assert json.loads((killed / "last.state.json").read_text())["progress"]["global_step"] == 4
    assert not torch.equal(state["rng.torch"], state["rng.torch.rank1"]), "both ranks drew the same dropout stream"

    run_python([*torchrun, "cli", "--resume", str(killed)])
    _same_weights(ref / "last.safetensors", killed / "last.safetensors")
    _same_weights(ref / "best.safetensors", killed / "best.safetensors")
