"""Starting and resuming a run: the device, the run folder, the split, the config and environment, written once.

:func:`train` (a new run) and :func:`resume` (continue one) return the run folder. They prepare the data and hand
over to :class:`pneumo.training.engine.Trainer`, which owns the loop. ``after`` is called with the run folder, the
config and the device once training has finished (on the main process): the commands that train pass
``pneumo.trust.ood.fit_after_training``, so that every finished run gets its out-of-distribution detector, without
the engine knowing about it.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pneumo.data.dataset import image_changes, image_digests
from pneumo.data.tasks import get_task
from pneumo.runs.format import META_FILE, METRICS_FILE, STATE_TENSORS
from pneumo.runs.runinfo import config_changes, environment
from pneumo.runs.state import load_state
from pneumo.training import distributed as ddp
from pneumo.training.config import ConfigError, TrainConfig, load_yaml, validate_config
from pneumo.training.data import build_train_data, check_source_runs, resolve_split, save_split, with_synthetic
from pneumo.training.engine import Trainer
from pneumo.utils.atomic import write_json, write_text
from pneumo.utils.device import pick_device

log = logging.getLogger(__name__)

AfterTraining = Callable[[Path, TrainConfig, torch.device], None]

RUN_MARKERS = (META_FILE, METRICS_FILE, STATE_TENSORS)


def _set_determinism(cfg: TrainConfig, device: torch.device) -> None:
    deterministic = device.type == "cpu" if cfg.deterministic == "auto" else bool(cfg.deterministic)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def _prepare(cfg: TrainConfig) -> tuple[torch.device, ddp.DistInfo]:
    if cfg.threads:
        # On a shared CPU fewer threads than cores can be several times faster (OpenMP threads spin and thrash).
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    info = ddp.init(device)
    _set_determinism(cfg, device)
    return device, info


def train(cfg: TrainConfig, *, command: list[str] | None = None, after: AfterTraining | None = None) -> Path:
    """Start a new run from a resolved config; returns the run folder.

    Under ``torchrun`` every rank calls this; rank 0 creates the folder, writes the split and builds the cache.
    """
    device, info = _prepare(cfg)
    check_architecture(cfg)
    try:
        run_dir, created = _new_run_dir(cfg) if info.is_main else (None, False)
        run_dir = Path(str(ddp.broadcast_object(str(run_dir) if run_dir else None, info)))
        split_path = run_dir / "split.csv"
        user_split = str(Path(cfg.split_file).expanduser().resolve()) if cfg.split_file else None
        cfg = cfg.model_copy(
            update={
                "data": str(Path(cfg.data).expanduser().resolve()),
                "out": str(run_dir),
                "split_file": str(split_path),
                "weights": cfg.weights if cfg.weights in ("none", "imagenet") else str(Path(cfg.weights).resolve()),
                # saved absolute like the other paths, so that a resume from another folder finds the GAN run
                "synthetic": cfg.synthetic.model_copy(
                    update={"from_run": str(Path(cfg.synthetic.from_run).expanduser().resolve())}
                )
                if cfg.synthetic.enabled
                else cfg.synthetic,
            }
        )
        try:
            with ddp.main_first(info):
                if info.is_main:
                    records = resolve_split(cfg.model_copy(update={"split_file": user_split}))
                    check_source_runs(cfg, records)
                    save_split(records, cfg, split_path)
                    cfg.save(run_dir / "config.yaml")
                    write_json(run_dir / "env.json", environment(device, command, info.world))
                records = resolve_split(cfg)  # every rank reads the saved split: one source of truth
                records = with_synthetic(
                    cfg, records, get_task(cfg.task), run_dir, generate=info.is_main, progress=cfg.progress
                )
                data = build_train_data(cfg, records, get_task(cfg.task), progress=cfg.progress and info.is_main)
            trainer = Trainer(cfg, run_dir, data, info, device)  # loads the weights: a mismatch fails here
        except BaseException:
            # Nothing trained yet, so nothing to resume: a folder this call created goes again rather than stand
            # in `runs/` as an empty run (a folder that existed before is the user's and stays).
            if created:
                shutil.rmtree(run_dir, ignore_errors=True)
            raise
        trainer.fit()
    finally:
        ddp.shutdown()
    if info.is_main and after is not None:
        after(run_dir, cfg, device)
    return run_dir


def check_architecture(cfg: TrainConfig) -> None:
    """Build the architecture on the meta device (no memory, no weights) so that a bad ``model_kwargs``, freeze stage
    or an image size too small for the model fails now, with the model's own message, not after the split is written
    and the images are cached."""
    from pneumo.models import apply_freeze, check_input_size, get_model

    with torch.device("meta"):
        kwargs = {"in_chans": 1, "weights": None, "drop_rate": cfg.drop_rate, **cfg.model_kwargs}  # as the trainer
        model = get_model(cfg.model, num_classes=cfg.num_outputs, **kwargs)
    apply_freeze(model, cfg.freeze)
    check_input_size(model, cfg.image_size)


def _new_run_dir(cfg: TrainConfig) -> tuple[Path, bool]:
    """The run folder and whether this call created it; a folder that already holds a run is refused."""
    run_dir = Path(cfg.out) if cfg.out else cfg.default_out()
    run_dir = run_dir.expanduser().resolve()
    taken = [m for m in RUN_MARKERS if (run_dir / m).exists()]
    if taken:
        raise FileExistsError(
            f"{run_dir} already holds a run ({', '.join(taken)}); use --resume {run_dir} to continue it, "
            "or --out NEW_FOLDER to start another"
        )
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, created


def _write_metrics(run_dir: Path, history: list[dict]) -> None:
    """``metrics.jsonl`` as the checkpoint's epoch records say (written only where it differs)."""
    path = run_dir / "metrics.jsonl"
    text = "".join(_json_line(r) for r in history)
    if not path.is_file() or path.read_text() != text:
        write_text(path, text)


def resume(
    run_dir: str | Path,
    *,
    data: str | Path | None = None,
    finished_ok: bool = False,
    after: AfterTraining | None = None,
) -> Path:
    """Continue a run from its last checkpoint (``last.state.safetensors``), with the config it was started with.

    ``data``: where the run's dataset is now, when it moved (the images must be the same: checked, then recorded in
    ``config.yaml``). A run that has finished returns at once, with a warning on how to train longer, unless
    ``finished_ok`` (a caller that only needs it finished, such as ``pneumo reproduce``)."""
    run_dir = Path(run_dir).expanduser().resolve()
    raw = load_yaml(run_dir / "config.yaml")
    if "z_dim" in raw and not (run_dir / "checkpoint.json").is_file():  # a GAN's config, read as a classifier's
        raise ConfigError(f"{run_dir} is a GAN run: resume it with `pneumo gan train --resume {run_dir}`")
    cfg = validate_config(raw)
    moved_to = None if data is None else str(Path(data).expanduser().resolve())
    cfg = cfg.model_copy(
        update={"out": str(run_dir), "split_file": str(run_dir / "split.csv"), "data": moved_to or cfg.data}
    )
    if not Path(cfg.data).exists():
        raise FileNotFoundError(
            f"the dataset of {run_dir} is not at {cfg.data} any more; if it moved, resume with "
            f"`pneumo train --resume {run_dir} --data NEW_PATH`"
        )
    tensors, state = load_state(run_dir)
    if changed := config_changes(state.get("config"), cfg.model_dump(mode="json"), RESUME_FREE):
        raise ConfigError(
            f"{run_dir / 'config.yaml'} differs from the config the run was trained with ({'; '.join(changed)}): "
            "resuming would continue one run with another's settings. Put them back to resume, or start a new run: "
            f"pneumo train --config {run_dir / 'config.yaml'} --out NEW_FOLDER"
        )
    history = state["progress"]["history"]
    if state["progress"]["finished"]:
        # interrupted after the final state was saved, before its epoch's metrics line: the line is restored here
        _write_metrics(run_dir, history)
        # Not extended: the learning-rate schedule spans the configured epochs, so more epochs is another run.
        if finished_ok:
            log.info("the run in %s has finished training (%d epoch(s))", run_dir, len(history))
        else:
            log.warning(
                "the run in %s has already finished after %d epoch(s); nothing to resume. To train longer, start a "
                "run with more epochs: pneumo train --config %s --set epochs=N --out NEW_FOLDER",
                run_dir, len(history), run_dir / "config.yaml",
            )  # fmt: skip
        if after is not None:  # e.g. stopped while fitting its detector: fitted now
            after(run_dir, cfg, pick_device(cfg.device))
        return run_dir
    device, info = _prepare(cfg)
    try:
        with ddp.main_first(info):
            records = with_synthetic(cfg, resolve_split(cfg), get_task(cfg.task), run_dir, generate=False)
            data = build_train_data(cfg, records, get_task(cfg.task), progress=cfg.progress and info.is_main)
        if changed := image_changes(state.get("images"), image_digests((data.train, data.val))):
            raise ValueError(
                f"the images of {run_dir} changed since its training started ({' | '.join(changed)}): resuming "
                "would continue one run on other data. Restore them to resume, or start a new run: "
                f"pneumo train --config {run_dir / 'config.yaml'} --out NEW_FOLDER"
            )
        if info.is_main and moved_to is not None and moved_to != raw.get("data"):
            cfg.save(run_dir / "config.yaml")  # the same images, moved: later resumes and evaluations look there
        if info.is_main:  # drop epoch records written after the checkpoint (the epoch is redone)
            _write_metrics(run_dir, history)
        Trainer(cfg, run_dir, data, info, device, resume_from=(tensors, state)).fit()
    finally:
        ddp.shutdown()
    if info.is_main and after is not None:
        after(run_dir, cfg, device)
    return run_dir


# Settings a resume may change: where things are and how fast they run, not what is computed (``amp``, ``compile``
# and ``deterministic`` change rounding only; a resume on another machine may need them changed).
RESUME_FREE = frozenset(
    {"data", "out", "split_file", "cache_dir", "progress", "num_workers", "device", "threads", "data_path", "compile",
     "amp", "deterministic", "checkpoint_every_steps", "fit_ood", "ood_negatives"}
)  # fmt: skip


def _json_line(record: dict[str, Any]) -> str:
    return json.dumps(record) + "\n"
