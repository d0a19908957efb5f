"""The training loop (:class:`Trainer`); :mod:`pneumo.training.run` starts and resumes the runs it trains.

Reproducibility: the data order of an epoch is a function of (seed, epoch, rank), the augmentation of a step a
function of (seed, epoch, step, rank), and the remaining randomness (dropout) comes from torch's global RNG, seeded
per rank, whose state (every rank's) is checkpointed. On CPU deterministic algorithms are on, so a run resumed after
a kill ends with bit-identical weights to an uninterrupted one. Model selection and early stopping use the
validation ROC AUC; test is never read.

Dummy class (``dummy_class=true``): the model gets ``K + 1`` outputs and training sees extra images labelled ``K``:

* bacteria-virus: the out-of-task images of the train split (the NORMAL images);
* normal-pneumonia (and any task whose train split has no out-of-task image): patch-shuffled copies of training
  images made on the fly (:func:`pneumo.data.augment.shuffled_patches`), about ``1/(K+1)`` of each batch. They
  keep an X-ray's grey levels and texture but no anatomy: "not a chest X-ray of either class", the closest sound
  stand-in for out-of-distribution inputs we can make without another dataset.

Validation and :func:`predict_logits` score the ``K`` task logits only (``task_logits``).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler

import pneumo
from pneumo.data.augment import BatchAugmenter, shuffled_patches
from pneumo.data.dataset import image_digests
from pneumo.data.preprocess import normalize
from pneumo.data.tasks import get_task
from pneumo.models import PneumoNet, apply_freeze, get_model, unfreeze_stages
from pneumo.models.predict import autocast_for, predict_rows, val_metrics
from pneumo.runs.checkpoint import model_state, save_weights, weights_meta
from pneumo.runs.format import FORMAT, write_run_meta
from pneumo.runs.runinfo import append_metrics
from pneumo.runs.state import (
    capture_rng,
    optimizer_from_parts,
    optimizer_to_parts,
    rank_rng_tensors,
    restore_rng,
    save_state,
    torch_rng_state,
)
from pneumo.training import distributed as ddp
from pneumo.training.config import TrainConfig
from pneumo.training.data import (
    BatchedSplit,
    EpochOrder,
    ResidentSplit,
    TrainData,
    class_weights,
    collate_batch,
    resident_bytes,
    shard,
    source_has_same_outputs,
)
from pneumo.training.optim import add_unfrozen_group, build_optimizer, lr_factor, set_lr
from pneumo.utils.device import cpu_has_native_bf16
from pneumo.utils.errors import PneumoError
from pneumo.utils.progress import progress_bar

log = logging.getLogger(__name__)


def _step_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    # Distinct, reproducible stream per (seed, epoch, step, rank); mixed by a SeedSequence, not added naively.
    return int(np.random.SeedSequence([seed, epoch, step, rank]).generate_state(1)[0])


def _dropout_seed(seed: int, rank: int) -> int:
    """Seed of torch's global RNG (dropout) on ranks other than 0 (the trailing word only keeps it apart from
    :func:`_step_seed`'s streams)."""
    return int(np.random.SeedSequence([seed, rank, 0x64726F70]).generate_state(1)[0])


class TrainingDivergedError(PneumoError, RuntimeError):
    """The loss became NaN or infinite: the run stops with a message instead of training on garbage."""


@dataclass
class Progress:
    """Everything the loop needs to continue where it stopped (saved as JSON with the state tensors)."""

    epoch: int = 1  # the epoch in progress (1-based)
    step_in_epoch: int = 0  # steps of ``epoch`` already done
    global_step: int = 0
    n_unfrozen: int = 0  # stages released by gradual unfreezing so far
    best_epoch: int | None = None
    best_auc: float | None = None
    bad_epochs: int = 0
    epoch_loss_sum: float = 0.0  # running sums of the epoch in progress
    epoch_samples: int = 0
    finished: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)


class _EpochBatches(Sampler[list[int]]):
    """A batch sampler whose content is set per epoch (one object, so DataLoader workers can persist)."""

    def __init__(self, batches: list[list[int]] | None = None) -> None:
        self.batches = batches or []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def uses_amp(amp: bool | str, device: torch.device) -> bool:
    """Whether training runs under bf16 autocast: ``auto`` and ``true`` on CUDA and on a CPU with native bfloat16
    (AVX-512 BF16 or AMX, where it is about twice as fast; emulated, it would be slower); ``false`` never, the
    bit-reproducible float32 path the published CPU results used. Evaluation runs in float32 either way."""
    if device.type == "cuda":
        return amp in ("auto", True)
    return device.type == "cpu" and amp in ("auto", True) and cpu_has_native_bf16()


class Trainer:
    def __init__(
        self,
        cfg: TrainConfig,
        run_dir: Path,
        data: TrainData,
        dist_info: ddp.DistInfo,
        device: torch.device,
        resume_from: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None,
    ) -> None:
        self.cfg, self.run_dir, self.data, self.dist, self.device = cfg, run_dir, data, dist_info, device
        self.task = get_task(cfg.task)
        self.k = self.task.num_classes
        self.main = dist_info.is_main
        self.amp = uses_amp(cfg.amp, device)
        self.precisions = {self.precision}
        if cfg.amp is True and not self.amp:
            log.warning("amp=true: this CPU has no native bfloat16 (AVX-512 BF16 or AMX); training in float32")
        elif self.amp and device.type == "cpu" and self.main:
            log.info("training in bf16 autocast (this CPU has native bfloat16); --set amp=false trains in float32")

        torch.manual_seed(cfg.seed)
        self.model = self._build_model(load_weights=resume_from is None)
        if self.dist.rank:
            # Dropout draws from torch's global RNG: seeded alike, every rank would drop the same units for its own
            # images. Rank 0 keeps the stream of a single-process run, whose results therefore do not change.
            torch.manual_seed(_dropout_seed(cfg.seed, self.dist.rank))
        self.optimizer = build_optimizer(self.model, cfg)
        self.progress = Progress()
        if resume_from is not None:
            self._restore(*resume_from)
            self._repair_best()
        self.net = self._wrap(self.model)
        self._image_digests = image_digests((data.train, data.val)) if self.main else None

        self.resident = self._use_resident()
        if self.resident:
            self.train_set: BatchedSplit = ResidentSplit(data.train, device)
            self.val_set: BatchedSplit = ResidentSplit(data.val, device)
        else:
            self.train_set, self.val_set = BatchedSplit(data.train), BatchedSplit(data.val)
        weighted = self.k + 1 if data.dummy_from_data else self.k
        self.order = EpochOrder(
            data.train.targets,
            seed=cfg.seed,
            rank=dist_info.rank,
            world=dist_info.world,
            weighted_classes=weighted if cfg.balance == "sampler" else None,
        )
        per_rank = len(self.order.indices(1))
        self.steps_per_epoch = max(1, per_rank // cfg.batch_size)
        if cfg.max_steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, cfg.max_steps_per_epoch)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.warmup_steps = round(cfg.warmup_epochs * self.steps_per_epoch)
        self.synth_dummies = max(1, round(cfg.batch_size / cfg.num_outputs)) if self._dummy_on_the_fly else 0
        self.criterion = nn.CrossEntropyLoss(weight=self._loss_weights(), label_smoothing=cfg.label_smoothing)
        self.augment = BatchAugmenter(cfg.augment, cfg.acquisition_augment)
        self.batches = _EpochBatches()
        self.loader = None if self.resident else self._loader()
        # Reading the loss back stalls a GPU's queue; on CUDA it is read every few steps, on CPU every step.
        self.sync_every = 1 if device.type == "cpu" else 25
        self._pending: list[tuple[torch.Tensor, int]] = []
        self.writer = self._tensorboard()

    # --- setup ----------------------------------------------------------------------------------------------------
    @property
    def _dummy_on_the_fly(self) -> bool:
        return self.cfg.dummy_class and not self.data.dummy_from_data

    def _build_model(self, load_weights: bool = True) -> PneumoNet:
        cfg = self.cfg
        weights = None if cfg.weights == "none" or not load_weights else cfg.weights  # resume: the state has them
        model = get_model(
            cfg.model,
            num_classes=cfg.num_outputs,
            in_chans=1,
            weights=weights,
            drop_rate=cfg.drop_rate,
            load_head=weights is None or source_has_same_outputs(weights, self.task.class_names, cfg.dummy_class),
            **cfg.model_kwargs,
        )
        apply_freeze(model, cfg.freeze)
        model.num_task_classes = self.k
        model.preprocess_contract = self.data.contract
        model = model.to(self.device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def _wrap(self, model: nn.Module) -> nn.Module:
        net: nn.Module = model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            net = DistributedDataParallel(model, device_ids=ids)
        if self.cfg.compile:
            net = torch.compile(net)
        return net

    def _loss_weights(self) -> torch.Tensor | None:
        if self.cfg.balance != "weights":
            return None
        targets = self.data.train.targets
        if self._dummy_on_the_fly:
            # Expected share of made-up dummies per epoch joins the counts, so every class weighs the same.
            n_dummy = round(len(targets) * self.synth_dummies / self.cfg.batch_size)
            targets = np.concatenate([targets, np.full(n_dummy, self.k, dtype=targets.dtype)])
        w = class_weights(targets, self.cfg.num_outputs)
        return torch.tensor(w, dtype=torch.float32, device=self.device)

    def _use_resident(self) -> bool:
        choice, device = self.cfg.data_path, self.device
        if choice != "auto":
            return choice == "resident"
        if device.type != "cuda":
            return False  # on CPU the memory-mapped cache already is in RAM: nothing to gain
        need = resident_bytes(self.data.train, self.data.val)
        free, _ = torch.cuda.mem_get_info(device)
        log.info("data path: %s of images, %s free on %s", _mib(need), _mib(free), device)
        return need < free / 4

    def _resident_batches(self):
        """The epoch's remaining batches indexed on the device: one host-to-device copy of the order per epoch."""
        if not self.batches.batches:
            return
        order = torch.tensor(self.batches.batches, dtype=torch.int64).to(self.device)
        for idx in order:
            yield self.train_set.__getitems__(idx)

    def _loader(self) -> DataLoader:
        workers = self.cfg.num_workers
        if workers == "auto":
            # CPU: the cache is in memory and a batch is one memcpy, so workers only add IPC (measured slower).
            workers = 0 if self.device.type == "cpu" else min(4, max(1, (len(_cpus()) // self.dist.world) - 1))
        return DataLoader(
            self.train_set,
            batch_sampler=self.batches,
            collate_fn=collate_batch,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,
            # Its own generator: each epoch's iterator draws a worker seed, which must not move the global RNG
            # (dropout uses it), or a resumed epoch would draw that seed at another point than the original.
            generator=torch.Generator().manual_seed(self.cfg.seed),
        )

    def _tensorboard(self) -> Any:
        if not self.main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return None
        return SummaryWriter(str(self.run_dir / "tensorboard"))

    # --- state ----------------------------------------------------------------------------------------------------
    def _unfreeze_one(self) -> None:
        released = unfreeze_stages(self.model, 1)
        add_unfrozen_group(self.optimizer, self.model, self.cfg)
        if self.cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        log.info("unfroze %s", ", ".join(released) or "nothing (all stages already train)")

    def _restore(self, tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
        p = Progress(**info["progress"])
        if info.get("world_size", 1) != self.dist.world:
            log.warning(
                "resuming a %s-process run with %s processes: the data order changes, results will not be identical",
                info.get("world_size", 1), self.dist.world,
            )  # fmt: skip
        for _ in range(p.n_unfrozen):  # replay gradual unfreezing so that the optimizer's groups match
            self._unfreeze_one()
        model_state = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
        self.model.load_state_dict(model_state, strict=True)
        optimizer_from_parts(self.optimizer, tensors, info["optimizer"])
        if not restore_rng(tensors, info["rng"], rank=self.dist.rank):
            # A state saved by fewer processes (or before per-rank states were saved): a fresh stream for this
            # rank, distinct per resume point; the run is not bit-identical to an uninterrupted one anyway.
            log.warning("no saved RNG state for rank %d: its dropout stream restarts", self.dist.rank)
            torch.manual_seed(_step_seed(self.cfg.seed, p.epoch, p.step_in_epoch, self.dist.rank))
        self.progress = p
        # an earlier version saved one "precision" string
        self.precisions |= set(info.get("precisions") or ([info["precision"]] if "precision" in info else []))
        if len(self.precisions) > 1:
            log.warning(
                "this run trained in %s before and goes on in %s here",
                " and ".join(sorted(self.precisions - {self.precision})),
                self.precision,
            )

    @property
    def precision(self) -> str:
        return "bf16 autocast" if self.amp else "float32"

    def _save_last(self) -> None:
        """last.safetensors + resumable state + checkpoint.json (rank 0 only)."""
        self._flush_losses()
        rank_states = ddp.all_gather_object(torch_rng_state(), self.dist)  # every rank's dropout stream
        if not self.main:
            return
        save_weights(self.run_dir / "last.safetensors", self.model, {"epoch": self._last_epoch()})
        opt_tensors, opt_info = optimizer_to_parts(self.optimizer)
        rng_tensors, rng_info = capture_rng()
        tensors = {f"model.{k}": v for k, v in model_state(self.model).items()}
        tensors.update(opt_tensors)
        tensors.update(rng_tensors)
        tensors.update(rank_rng_tensors(rank_states))
        info = {
            "progress": self.progress.__dict__,
            "optimizer": opt_info,
            "rng": rng_info,
            "world_size": self.dist.world,
            "config": self.cfg.model_dump(mode="json"),  # what a resume must continue with (checked there)
            "images": self._image_digests,  # and on which images (checked there too)
            "data_order": "DistributedSampler/WeightedRandomSampler seeded by (seed, epoch); augmentation by "
            "(seed, epoch, step, rank)",
            # what `amp` resolved to; a run resumed where it resolves otherwise (another CPU, CPU <-> CUDA) used both
            "precisions": sorted(self.precisions),
        }
        save_state(self.run_dir, tensors, info)
        self._write_meta()

    def _last_epoch(self) -> int:
        """The epoch the current weights come from (a step checkpoint inside an epoch counts as that epoch)."""
        p = self.progress
        return p.epoch - 1 if p.step_in_epoch == 0 else p.epoch

    def _write_meta(self) -> None:
        p = self.progress
        write_run_meta(self.run_dir, run_meta(self.cfg, self.data, p.best_epoch, p.best_auc, self._last_epoch()))

    # --- loop -----------------------------------------------------------------------------------------------------
    def fit(self) -> Progress:
        cfg, p = self.cfg, self.progress
        if p.finished:
            log.info("the run in %s has already finished", self.run_dir)
            return p
        try:
            while p.epoch <= cfg.epochs:
                self._train_epoch()
                self._end_epoch()
                if p.finished:
                    break
            p.finished = True
            self._save_last()
        finally:
            if self.writer is not None:
                self.writer.close()
        ddp.barrier()
        return p

    def _train_epoch(self) -> None:
        cfg, p = self.cfg, self.progress
        if p.step_in_epoch == 0 and p.epoch in cfg.unfreeze_epochs:
            self._unfreeze_one()
            p.n_unfrozen += 1
            if self.dist.enabled:
                self.net = self._wrap(self.model)  # DDP must see the newly trainable parameters
        order = self.order.indices(p.epoch)
        b = cfg.batch_size
        batches = [order[i * b : (i + 1) * b] for i in range(self.steps_per_epoch)]
        self.batches.batches = batches[p.step_in_epoch :]
        self.net.train()
        bar = progress_bar(
            total=self.steps_per_epoch,
            initial=p.step_in_epoch,
            desc=f"epoch {p.epoch}/{cfg.epochs}",
            disable=not (self.main and cfg.progress),
            leave=False,
            file=sys.stderr,
        )
        self._epoch_start = time.perf_counter()
        self._epoch_images = 0
        batches = self._resident_batches() if self.loader is None else self.loader
        for images, targets, _ in batches:
            loss, n = self._train_step(images, targets)
            self._pending.append((loss, n))
            p.step_in_epoch += 1
            p.global_step += 1
            self._epoch_images += n
            bar.update()
            if len(self._pending) >= self.sync_every:
                last = self._flush_losses()
                postfix = {"loss": f"{last:.4f}", "img_s": f"{self._images_per_s():.0f}", **self._last_val()}
                bar.set_postfix(postfix, refresh=False)  # shown at the bar's own refresh (throttled in log files)
            if p.global_step % cfg.checkpoint_every_steps == 0 and p.step_in_epoch < self.steps_per_epoch:
                self._save_last()
        self._flush_losses()
        bar.close()
        self._train_seconds = time.perf_counter() - self._epoch_start

    def _flush_losses(self) -> float:
        """Add the pending step losses to the epoch's sums (one device sync); returns the last step's loss."""
        p, last = self.progress, math.nan
        for loss, n in self._pending:
            last = float(loss)
            p.epoch_loss_sum += last * n
            p.epoch_samples += n
        self._pending.clear()
        return last

    def _images_per_s(self) -> float:
        return self._epoch_images / max(1e-9, time.perf_counter() - self._epoch_start)

    def _last_val(self) -> dict[str, str]:
        history = self.progress.history
        return {"val_auc": f"{history[-1]['val_auc']:.4f}"} if history else {}

    def _train_step(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
        cfg, p, dev = self.cfg, self.progress, self.device
        images = images.to(dev, non_blocking=True)
        targets = targets.to(dev, non_blocking=True)
        g = torch.Generator(device=dev).manual_seed(_step_seed(cfg.seed, p.epoch, p.step_in_epoch, self.dist.rank))
        if self.synth_dummies:
            pick = torch.randperm(images.shape[0], generator=g, device=dev)[: self.synth_dummies]
            images = torch.cat([images, shuffled_patches(images[pick], g)])
            targets = torch.cat([targets, torch.full((len(pick),), self.k, dtype=targets.dtype, device=dev)])
        if self.augment.active:
            images = self.augment(images, g)
        x = normalize(images, self.data.contract)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        set_lr(self.optimizer, lr_factor(p.global_step, self.total_steps, self.warmup_steps, cfg.schedule))
        with autocast_for(dev, self.amp):
            logits = self.net(x)
        loss = self.criterion(logits.float(), targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            trainable = [q for q in self.model.parameters() if q.requires_grad]
            torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
        self.optimizer.step()
        return loss.detach(), int(targets.shape[0])

    def validate(self) -> dict[str, float]:
        """Validation metrics on the task classes, gathered over all ranks (every rank gets the same numbers)."""
        ddp.broadcast_buffers(self.model, self.dist)
        n = len(self.data.val)
        rows = shard(n, self.dist.rank, self.dist.world)
        logits = predict_rows(
            self.model,
            self.val_set,
            rows,
            contract=self.data.contract,
            n_task=self.k,
            batch_size=self.cfg.batch_size * 2,
            device=self.device,
            amp=self.amp,
        )
        gathered = ddp.gather_logits(torch.as_tensor(rows), logits, n, self.dist)
        return val_metrics(gathered, self.data.val.targets)

    def _end_epoch(self) -> None:
        cfg, p = self.cfg, self.progress
        loss_sum, samples = ddp.all_reduce_mean([p.epoch_loss_sum, float(p.epoch_samples)], self.dist, self.device)
        metrics = self.validate()
        train_loss = loss_sum / max(1.0, samples)
        if not math.isfinite(train_loss) or math.isnan(metrics["val_loss"]):
            raise TrainingDivergedError(
                f"training diverged in epoch {p.epoch} (train loss {train_loss}, validation loss "
                f"{metrics['val_loss']}): lower the learning rate or set grad_clip; best.safetensors still holds "
                f"epoch {p.best_epoch}"
            )
        images_per_s = self._epoch_images * self.dist.world / max(1e-9, self._train_seconds)
        record = {
            "epoch": p.epoch,
            "train_loss": train_loss,
            **metrics,
            "lr": self.optimizer.param_groups[0]["lr"],
            "images_per_s": images_per_s,
            "seconds": time.perf_counter() - self._epoch_start,
            "steps": p.global_step,
        }
        auc = metrics["val_auc"]
        improved = p.best_epoch is None or (not math.isnan(auc) and (p.best_auc is None or auc > p.best_auc))
        if improved:
            p.best_epoch, p.best_auc, p.bad_epochs = p.epoch, None if math.isnan(auc) else auc, 0
        else:
            p.bad_epochs += 1
        p.history.append(record)
        patience = cfg.early_stopping_patience
        if patience is not None and p.bad_epochs >= patience:
            log.info("early stopping: no validation AUC gain for %d epochs (best epoch %s)", patience, p.best_epoch)
            p.finished = True
        p.epoch += 1
        p.step_in_epoch = 0
        p.epoch_loss_sum, p.epoch_samples = 0.0, 0
        self._save_last()
        if self.main:
            # after the state that holds this record: a metrics line without a state would leave a folder that can
            # be neither resumed (no state) nor started again (it holds a run)
            append_metrics(self.run_dir / "metrics.jsonl", record)
            if self.writer is not None:
                for key, value in record.items():
                    if key != "epoch":
                        self.writer.add_scalar(key, value, record["epoch"])
            log.info(
                "epoch %d/%d train_loss %.4f val_loss %.4f val_auc %.4f val_acc %.3f %.0f img/s",
                record["epoch"], cfg.epochs, record["train_loss"], metrics["val_loss"], auc, metrics["val_accuracy"],
                images_per_s,
            )  # fmt: skip
        if improved:
            # Only after the state that knows this epoch is saved: written before, an interruption in between
            # would leave best.safetensors holding an epoch that resuming redoes, and on a GPU (not bit-identical)
            # perhaps never reaches again. An interruption after the state is repaired by _repair_best.
            self._save_best()

    def _save_best(self) -> None:
        if self.main:
            p = self.progress
            save_weights(self.run_dir / "best.safetensors", self.model, {"epoch": p.best_epoch, "val_auc": p.best_auc})

    def _repair_best(self) -> None:
        """After a restore at an epoch's end that was the best so far: write best.safetensors if the interruption
        came between saving the state and writing it (the restored weights are that epoch's)."""
        p = self.progress
        if not self.main or p.step_in_epoch != 0 or p.best_epoch is None or p.best_epoch != p.epoch - 1:
            return
        if weights_meta(self.run_dir / "best.safetensors").get("epoch") != p.best_epoch:
            log.warning(
                "best.safetensors did not hold the best epoch %d (interrupted while saving it): rewritten", p.best_epoch
            )
            self._save_best()


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


def _cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def run_meta(
    cfg: TrainConfig, data: TrainData, best_epoch: int | None, best_auc: float | None, last_epoch: int
) -> dict[str, Any]:
    task = get_task(cfg.task)
    return {
        "format": FORMAT,
        "pneumo_version": pneumo.__version__,
        "task": cfg.task,
        "class_names": list(task.class_names),
        "model": {
            "name": cfg.model,
            "num_outputs": cfg.num_outputs,
            "in_chans": 1,
            "kwargs": {"drop_rate": cfg.drop_rate, **cfg.model_kwargs},
        },
        "dummy_class": cfg.dummy_class,
        "preprocess": data.contract.to_dict(),
        "best": {"epoch": best_epoch, "val_auc": best_auc},
        "last": {"epoch": last_epoch},
        "operating_point": None,
        "temperature": None,
        "ood": None,
    }
