"""ACGAN training: data, the adversarial steps, per-epoch metrics, checkpoints, sample grids, resume.

Real images are the task's ``train`` split (validation carved from train by patient with
:func:`pneumo.data.splits.make_split`, or read from a split file), resized to the GAN size by the same
:class:`~pneumo.data.preprocess.PreprocessContract` + :class:`~pneumo.data.cache.ImageCache` as every model, and
scaled to ``[-1, 1]``. The ``val`` split only scores the discriminator's class head (macro AUC), which picks the
epoch exported to ``RUN/classifier``; the test split is never loaded.

Reproducibility: network initialisation uses ``torch.manual_seed(seed)``; data order, noise and generated labels come
from one ``torch.Generator`` whose state is checkpointed, so on CPU a resumed run gives the same weights as an
uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor
from torch.optim import Adam
from torch.optim.swa_utils import AveragedModel

from pneumo.data.dataset import build_split, image_changes, image_digests
from pneumo.data.preprocess import PreprocessContract
from pneumo.data.provenance import check_generated_images
from pneumo.data.records import Record, dataset_root, discover
from pneumo.data.splits import check_disjoint, make_split, read_split_csv, write_split_csv
from pneumo.data.tasks import get_task
from pneumo.gan.acgan import Discriminator, Generator
from pneumo.gan.checkpoint import build_generator, export_networks, load_training_state, save_training_state
from pneumo.gan.classifier import (
    CLASSIFIER_DIR,
    MODEL_NAME,
    class_logits,
    exported_epoch,
    set_last_epoch,
    write_classifier_run,
)
from pneumo.gan.config import TASK, GanConfig, read_config, save_config
from pneumo.gan.losses import discriminator_loss, generator_loss
from pneumo.gan.synth import class_grid, label_distribution, save_png, standing_statistics, to_gan_range
from pneumo.models.predict import val_metrics
from pneumo.models.registry import preprocess_contract
from pneumo.runs.format import STATE_TENSORS
from pneumo.runs.runinfo import append_metrics, config_changes, environment, read_metrics
from pneumo.runs.state import read_state_info
from pneumo.utils.atomic import write_json, write_text
from pneumo.utils.device import resolve_device
from pneumo.utils.progress import progress_bar

log = logging.getLogger(__name__)


@dataclass
class GanData:
    """Real images at the GAN size (uint8 ``(N, 1, S, S)``) and class indices, plus the split that produced them."""

    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    records: list[Record]
    root: Path
    contract: PreprocessContract
    digests: dict[str, list[list[str]]]  # :func:`image_digests` of train and val, checked on resume


def load_data(config: GanConfig, *, progress: bool = True) -> GanData:
    """Discover and split (or read ``config.split_csv``), cache at ``config.image_size``, load train + val."""
    if config.data is None:
        raise ValueError("no dataset given: pass --data PATH (or set data: in the config)")
    root = dataset_root(config.data)
    if config.split_csv:
        records = read_split_csv(Path(config.split_csv), root)
        if shared := [p for p, splits in check_disjoint(records).items() if {"train", "val"} <= set(splits)]:
            raise ValueError(
                f"{config.split_csv}: {len(shared)} patient(s) in both train and val (e.g. {shared[:3]}): the class "
                "head's epoch would be chosen on images of patients the GAN trained on"
            )
    else:
        records = make_split(
            discover(config.data),
            val_fraction=config.val_fraction,
            seed=config.seed if config.split_seed is None else config.split_seed,
            keep_official_val=config.keep_official_val,
            exclude_test_patients=config.exclude_test_patients,
        )
    check_generated_images(records)  # images of another GAN in the dataset: did it train on our val patients?
    task, contract = get_task(TASK), preprocess_contract(MODEL_NAME, image_size=config.image_size)
    cache_root = Path(config.cache_dir) if config.cache_dir else None
    splits = {
        name: build_split(
            name, records, task, contract, cache_root=cache_root, workers=config.workers, progress=progress
        )
        for name in ("train", "val")
    }
    if len(splits["train"]) < 2:
        raise ValueError(f"{config.data}: fewer than 2 training images for task {TASK}")
    return GanData(
        splits["train"].as_tensor(),
        torch.from_numpy(splits["train"].targets),
        splits["val"].as_tensor(),
        torch.from_numpy(splits["val"].targets),
        list(records),
        root,
        contract,
        image_digests(splits.values()),
    )


def ema_decay(decay: float, n: int) -> float:
    """The EMA decay of update ``n + 1``, with the usual warm-up ``min(decay, (1 + n) / (10 + n))``: short runs then
    sample from a meaningful average instead of the initial weights."""
    return min(decay, (1.0 + n) / (10.0 + n))


class ACGANSteps:
    """The networks, their optimisers and one discriminator / generator update each."""

    def __init__(self, config: GanConfig, label_probs: Tensor, device: torch.device, rng: torch.Generator):
        self.config, self.device, self.rng = config, device, rng
        self.label_probs = label_probs.float().cpu()
        self.generator: Generator = build_generator(config).to(device)
        self.discriminator = Discriminator(
            num_classes=len(label_probs),
            image_size=config.image_size,
            base_channels=config.d_channels,
            max_channels=config.max_channels,
        ).to(device)
        # AveragedModel holds the EMA copy and its count (checkpointed); the update is ours (:meth:`update_ema`)
        self.ema = AveragedModel(self.generator, use_buffers=False)
        self.ema_updates = 0  # = ema.n_averaged, counted on the host
        betas = (config.beta1, config.beta2)
        self.opt_g = Adam(self.generator.parameters(), lr=config.g_lr, betas=betas)
        self.opt_d = Adam(self.discriminator.parameters(), lr=config.d_lr, betas=betas)

    def _noise(self, n: int) -> tuple[Tensor, Tensor]:
        z = torch.randn(n, self.config.z_dim, generator=self.rng)
        labels = torch.multinomial(self.label_probs, n, replacement=True, generator=self.rng)
        if self.device.type == "cuda":  # from pageable memory a copy first waits for all queued GPU work
            z, labels = z.pin_memory(), labels.pin_memory()
        return z.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)

    @torch.no_grad()
    def update_ema(self) -> None:
        """What ``AveragedModel.update_parameters`` does with the warm-up decay (:func:`ema_decay`), counting updates on
        the host: it reads its device-side count three times a step, and each read made the host wait for the GPU."""
        ema, params = list(self.ema.module.parameters()), list(self.generator.parameters())
        if self.ema_updates == 0:
            torch._foreach_copy_(ema, params)
        else:
            torch._foreach_lerp_(ema, params, 1.0 - ema_decay(self.config.ema_decay, self.ema_updates))
        self.ema_updates += 1
        self.ema.n_averaged.add_(1)  # kept in step for checkpoints and AveragedModel users; no read here

    def d_step(self, real: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """One discriminator update on a real batch (in ``[-1, 1]``) and as many generated images."""
        c = self.config
        z, fake_labels = self._noise(len(real))
        with torch.no_grad():
            fake = self.generator(z, fake_labels)
        real_adv, real_cls = self.discriminator(real)
        fake_adv, fake_cls = self.discriminator(fake)
        loss = discriminator_loss(
            real_adv, real_cls, labels, fake_adv, fake_cls, fake_labels,
            kind=c.loss, aux_weight=c.aux_weight, smoothing=c.label_smoothing,
        )  # fmt: skip
        self.opt_d.zero_grad(set_to_none=True)
        loss.total.backward()
        self.opt_d.step()
        return {
            "d_loss": loss.total.detach(),
            "d_adv": loss.adversarial.detach(),
            "d_aux_real": loss.aux_real.detach(),
            "d_aux_fake": loss.aux_fake.detach(),
            "aux_acc_real": (real_cls.argmax(1) == labels).float().mean(),
            "aux_acc_fake": (fake_cls.argmax(1) == fake_labels).float().mean(),
            "d_real": real_adv.detach().mean(),
            "d_fake": fake_adv.detach().mean(),
        }

    def g_step(self, batch_size: int) -> dict[str, Tensor]:
        """One generator update, then the EMA update (parameters averaged, BatchNorm statistics copied)."""
        z, labels = self._noise(batch_size)
        self.discriminator.requires_grad_(False)  # no discriminator gradients needed here
        adv, cls = self.discriminator(self.generator(z, labels))
        total, g_adv, g_aux = generator_loss(adv, cls, labels, kind=self.config.loss, aux_weight=self.config.aux_weight)
        self.opt_g.zero_grad(set_to_none=True)
        total.backward()
        self.opt_g.step()
        self.discriminator.requires_grad_(True)
        self.update_ema()
        with torch.no_grad():
            for ema_buf, buf in zip(self.ema.module.buffers(), self.generator.buffers(), strict=True):
                ema_buf.copy_(buf)
        return {"g_loss": total.detach(), "g_adv": g_adv.detach(), "g_aux": g_aux.detach()}

    @property
    def ema_generator(self) -> Generator:
        return self.ema.module  # type: ignore[return-value]

    def exported_ema_generator(self) -> Generator:
        """The EMA generator as exported: with ``ema_standing_batches`` > 0 its BatchNorm statistics recomputed for
        its own weights (:func:`standing_statistics`); the training copy stays as it is."""
        c = self.config
        if c.ema_standing_batches == 0:
            return self.ema_generator
        return standing_statistics(
            self.ema_generator, self.label_probs, batches=c.ema_standing_batches, batch_size=c.batch_size, seed=c.seed
        )

    @property
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"g": self.opt_g, "d": self.opt_d}


def _truncate_metrics(path: Path, last_epoch: int) -> list[dict[str, Any]]:
    """Keep the lines up to ``last_epoch`` (a crash may have logged an epoch whose checkpoint was not written)."""
    rows = [r for r in read_metrics(path) if r["epoch"] <= last_epoch]
    write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return rows


def _export_epoch(
    run_dir: Path, config: GanConfig, data: GanData, steps: ACGANSteps, epoch: int, best: dict, *, new_best: bool
) -> None:
    """Everything derived from the state of ``epoch``: weight files, the class head when it is the best epoch so
    far, and the sample grid. Idempotent, so a resume can redo it."""
    ema = steps.exported_ema_generator()
    export_networks(
        run_dir, epoch=epoch, generator=steps.generator, generator_ema=ema, discriminator=steps.discriminator
    )
    if new_best and exported_epoch(run_dir) != epoch:
        auc = math.nan if best["val_auc"] is None else best["val_auc"]
        write_classifier_run(
            run_dir, steps.discriminator, config=config, contract=data.contract, records=data.records,
            data_root=data.root, epoch=epoch, val_auc=auc,
        )  # fmt: skip
    set_last_epoch(run_dir, epoch)
    samples = run_dir / "samples" / f"epoch_{epoch:04d}.png"
    if (epoch % config.sample_every == 0 or epoch == config.epochs) and not samples.is_file():
        save_png(class_grid(ema, config.samples_per_class, seed=config.seed), samples)


def default_run_dir() -> Path:
    return Path("runs") / f"acgan-{datetime.now():%Y%m%d-%H%M%S}"


def train_gan(config: GanConfig, out_dir: str | Path | None = None, *, progress: bool = True) -> Path:
    """Train a new ACGAN run in ``out_dir`` (default ``runs/acgan-<time>``); returns the run folder.

    The saved ``config.yaml`` has the dataset as an absolute path and ``split_csv`` pointing at the run's
    ``split.csv``, so ``--config RUN/config.yaml`` reproduces the run.
    """
    run_dir = (Path(out_dir) if out_dir is not None else default_run_dir()).expanduser().resolve()
    if (run_dir / "config.yaml").exists():
        if (run_dir / STATE_TENSORS).exists():
            raise FileExistsError(f"{run_dir} already holds a run; pass --resume {run_dir} or another --out")
        # interrupted before its first checkpoint: nothing to resume, and its metrics line (if any) goes with it
        log.warning("%s: a run interrupted before its first checkpoint; starting it again", run_dir)
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    data = load_data(config, progress=progress)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_split_csv(data.records, run_dir / "split.csv", data.root)
    config = config.model_copy(
        update={"data": str(Path(config.data or "").expanduser().resolve()), "split_csv": str(run_dir / "split.csv")}
    )
    save_config(config, run_dir / "config.yaml")
    return _fit(run_dir, config, data, resume=False, progress=progress)


# Settings a resume may change: where the data is and how it is read, the device, and what is exported (the learning
# rates are constant, so ``epochs`` may grow: ``--epochs N``).
RESUME_FREE = frozenset({"data", "split_csv", "cache_dir", "workers", "device", "epochs", "sample_every",
                         "samples_per_class"})  # fmt: skip


def resume_gan(
    run_dir: str | Path, *, epochs: int | None = None, data: str | Path | None = None, progress: bool = True
) -> Path:
    """Continue a run from its last checkpoint, optionally to a new total number of ``epochs``; ``data``: where its
    dataset is now, when it moved.

    Refused when ``config.yaml`` was edited (beyond :data:`RESUME_FREE`) or the training images changed since the run
    started: one run would continue with another's settings or data."""
    run_dir = Path(run_dir).expanduser().resolve()
    config = read_config(run_dir / "config.yaml").model_copy(update={"split_csv": str(run_dir / "split.csv")})
    saved = config
    if epochs is not None:
        config = config.model_copy(update={"epochs": epochs})
    if data is not None:
        config = config.model_copy(update={"data": str(Path(data).expanduser().resolve())})
    if config.data and not Path(config.data).exists():
        raise FileNotFoundError(
            f"the dataset of {run_dir} is not at {config.data} any more; if it moved, resume with "
            f"`pneumo gan train --resume {run_dir} --data NEW_PATH`"
        )
    state = read_state_info(run_dir)
    if epochs is not None and epochs < state["epoch"]:  # config.yaml would then understate what was trained
        raise ValueError(f"{run_dir} has trained {state['epoch']} epochs already; --epochs must be at least that")
    restart = f"start a new run: pneumo gan train --config {run_dir / 'config.yaml'} --out NEW_FOLDER"
    if changed := config_changes(state.get("config"), config.model_dump(mode="json"), RESUME_FREE):
        raise ValueError(
            f"{run_dir / 'config.yaml'} differs from the config the run was trained with ({'; '.join(changed)}): "
            f"put the settings back to resume, or {restart}"
        )
    images = load_data(config, progress=progress)
    if changed := image_changes(state.get("images"), images.digests):
        raise ValueError(
            f"the images of {run_dir} changed since its training started ({' | '.join(changed)}): restore them to "
            f"resume, or {restart}"
        )
    if config != saved:  # more epochs, or the same images found elsewhere: later resumes look there
        save_config(config, run_dir / "config.yaml")
    head_config = run_dir / CLASSIFIER_DIR / "config.yaml"
    if config.data != saved.data and head_config.is_file():  # and `pneumo evaluate RUN/classifier` too
        head = yaml.safe_load(head_config.read_text()) or {}
        write_text(head_config, yaml.safe_dump({**head, "data": config.data}, sort_keys=False))
    return _fit(run_dir, config, images, resume=True, progress=progress)


def _fit(run_dir: Path, config: GanConfig, data: GanData, *, resume: bool, progress: bool) -> Path:
    device = resolve_device(config.device)
    write_json(run_dir / "env.json", environment(device))
    torch.manual_seed(config.seed)
    rng = torch.Generator().manual_seed(config.seed)
    num_classes = get_task(TASK).num_classes
    steps = ACGANSteps(config, label_distribution(data.train_y, num_classes, config.fake_labels), device, rng)
    start, step, best = 1, 0, {"epoch": None, "val_auc": None}
    metrics_path = run_dir / "metrics.jsonl"
    if resume:
        info = load_training_state(
            run_dir,
            generator=steps.generator,
            generator_ema=steps.ema_generator,
            discriminator=steps.discriminator,
            optimizers=steps.optimizers,
            rng=rng,
        )
        steps.ema.n_averaged.fill_(info["ema_n_averaged"])
        steps.ema_updates = int(info["ema_n_averaged"])
        start, step, best = info["epoch"] + 1, info["step"], info["best"]
        exported = exported_epoch(run_dir)
        if exported is not None and exported > info["epoch"]:
            # a run of an earlier version, which exported the class head before saving the state, interrupted between
            # the two: classifier/ holds an epoch that is redone now, whose head replaces it
            log.warning("classifier/ holds epoch %d, after the checkpoint's %d: re-exported", exported, info["epoch"])
            best = {"epoch": None, "val_auc": None}
        _truncate_metrics(metrics_path, info["epoch"])
        # the exports of the checkpoint's epoch, in case the interruption fell between the state and them
        _export_epoch(run_dir, config, data, steps, info["epoch"], best, new_best=best["epoch"] == info["epoch"])
        log.info("resuming %s after epoch %d", run_dir, info["epoch"])

    train_x, train_y = data.train_x.to(device), data.train_y.to(device)
    val_x, val_y = to_gan_range(data.val_x).to(device), data.val_y.numpy()
    batch_size = min(config.batch_size, len(train_x))
    n_batches = len(train_x) // batch_size
    for epoch in range(start, config.epochs + 1):
        t0 = time.perf_counter()
        steps.generator.train()
        steps.discriminator.train()
        sums: dict[str, Tensor] = defaultdict(lambda: torch.zeros((), device=device))
        counts: dict[str, int] = defaultdict(int)
        order = torch.randperm(len(train_x), generator=rng).to(device)
        for b in progress_bar(
            range(n_batches), desc=f"epoch {epoch}/{config.epochs}", disable=not progress, leave=False
        ):
            idx = order[b * batch_size : (b + 1) * batch_size]
            parts = steps.d_step(to_gan_range(train_x[idx]), train_y[idx])
            # counted over the whole run (checkpointed): per epoch, fewer batches than d_steps never trained G
            if (step + 1) % config.d_steps == 0:
                parts |= steps.g_step(batch_size)
            step += 1
            for k, v in parts.items():
                sums[k] += v
                counts[k] += 1
        row: dict[str, Any] = {"epoch": epoch, "steps": step, **{k: float(sums[k]) / counts[k] for k in sums}}
        if len(val_y):
            row |= val_metrics(class_logits(steps.discriminator, val_x), val_y)
        else:
            row["val_auc"] = math.nan
        auc = row["val_auc"]
        # without a usable val AUC (no val split, a class missing) the first epoch is kept, as training does
        new_best = best["epoch"] is None or (not math.isnan(auc) and (best["val_auc"] is None or auc > best["val_auc"]))
        if new_best:
            best = {"epoch": epoch, "val_auc": None if math.isnan(auc) else auc}
        row["seconds"] = time.perf_counter() - t0
        # metrics, then the state (the resume point), then its exports: a resume truncates the metrics rows after
        # its state and rewrites the exports, so an interruption between any two writes loses nothing
        append_metrics(metrics_path, row)
        save_training_state(
            run_dir,
            epoch=epoch,
            generator=steps.generator,
            generator_ema=steps.ema_generator,
            discriminator=steps.discriminator,
            optimizers=steps.optimizers,
            rng=rng,
            info={
                "step": step,
                "best": best,
                "ema_n_averaged": steps.ema_updates,
                "config": config.model_dump(mode="json"),  # what a resume must continue with, on which images
                "images": data.digests,
            },
        )
        _export_epoch(run_dir, config, data, steps, epoch, best, new_best=new_best)
        log.info(
            "epoch %d: d_loss %.3f g_loss %.3f aux_acc_real %.3f val_auc %.3f",
            epoch, row.get("d_loss", math.nan), row.get("g_loss", math.nan), row.get("aux_acc_real", math.nan), auc,
        )  # fmt: skip
    return run_dir
