"""Training figures: images/s, seconds per epoch, share of step time waiting for data, achieved GFLOP/s.

Three pipelines train the same model with the same step (AdamW, cross-entropy, gradient clipping, as
:mod:`pneumo.training.engine` does):

* ``naive``: torchvision ``ImageFolder`` + PIL transforms (decode, resize and augment every image every epoch), NCHW,
  float32 - the baseline every speed-up is measured against, in the same run;
* ``cached`` (the engine's path): uint8 batches from the memory-mapped cache, augmentation on the device
  (:class:`~pneumo.data.augment.BatchAugmenter`), channels_last, bf16 autocast on CUDA;
* ``resident`` (:func:`device_resident_epoch`): the whole uint8 cache in device memory, batches indexed there, no
  DataLoader at all - the GPU data path the engine could adopt.

The step below mirrors ``Trainer._train_step``, which has no hook for timing its parts; keep the two in step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from pneumo.bench.data import (
    BenchData,
    cached_loader,
    loader_workers,
    naive_dataset,
    naive_loader,
    warmup_batches,
)
from pneumo.bench.machine import count_train_flops, sync
from pneumo.data.augment import BatchAugmenter
from pneumo.data.dataset import SplitData
from pneumo.data.preprocess import PreprocessContract, normalize
from pneumo.models import get_model
from pneumo.models.predict import autocast_for
from pneumo.models.registry import preprocess_contract
from pneumo.training.config import AcquisitionAugmentConfig, AugmentConfig, build_config
from pneumo.training.data import ResidentSplit
from pneumo.training.optim import build_optimizer
from pneumo.utils.device import cpu_has_native_bf16

Pipeline = Literal["naive", "cached", "resident"]


@dataclass(frozen=True)
class Variant:
    """One way of training: data pipeline, memory format, precision, compilation and threads."""

    name: str
    pipeline: Pipeline
    channels_last: bool = True
    amp: bool = False  # bf16 autocast (CUDA only)
    compile: bool = False
    threads: int | None = None  # None: the run's thread count
    fullres: bool = False  # naive pipeline on the full-resolution JPEG copies

    def describe(self) -> str:
        parts = {"naive": "ImageFolder+PIL", "cached": "cache+DataLoader", "resident": "cache on device"}[self.pipeline]
        parts += ", channels_last" if self.channels_last else ", NCHW"
        parts += ", bf16" if self.amp else ", fp32"
        if self.compile:
            parts += ", compiled"
        if self.threads is not None:
            parts += f", {self.threads} thread(s)"
        if self.fullres:
            parts += ", full-res JPEGs"
        return parts


def cpu_bf16(device: torch.device) -> bool:
    """Whether the engine's ``amp=true`` trains in bf16 here: a CPU with native bfloat16 (CUDA: bf16 by default)."""
    return device.type == "cpu" and cpu_has_native_bf16()


def main_variants(device: torch.device, *, compile: bool) -> list[Variant]:
    cuda = device.type == "cuda"
    return [
        Variant("naive", "naive", channels_last=False),
        Variant("pneumo", "cached", amp=cuda),
        Variant("resident", "resident", amp=cuda, compile=compile),
    ]


def ablation_chain(device: torch.device, *, compile: bool) -> list[tuple[str, Variant]]:
    """Variants that change one thing at a time from the naive baseline, with the name of the change."""
    cuda = device.type == "cuda"
    chain = [
        ("baseline (decode every epoch, NCHW, fp32)", Variant("naive", "naive", channels_last=False)),
        ("cache instead of decoding", Variant("cached-nchw", "cached", channels_last=False)),
        ("channels_last", Variant("cached-fp32" if cuda else "pneumo", "cached")),
    ]
    if cuda:
        chain.append(("bf16 autocast", Variant("pneumo", "cached", amp=True)))
    if compile:
        chain.append(("torch.compile", Variant("pneumo-compile", "cached", amp=cuda, compile=True)))
    chain.append(("cache resident on the device", Variant("resident", "resident", amp=cuda, compile=compile)))
    return chain


def side_variants(device: torch.device, *, threads: int) -> list[tuple[str, Variant, str]]:
    """(what it shows, variant, the variant it is compared with)."""
    out = [
        (
            "naive on full-resolution JPEGs",
            Variant("naive-fullres", "naive", channels_last=False, fullres=True),
            "naive",
        )
    ]
    if cpu_bf16(device):  # the engine with `--set amp=true` (the CPU default stays float32): bf16 alone
        out.append(("bf16 autocast (amp=true; native bfloat16)", Variant("pneumo-bf16", "cached", amp=True), "pneumo"))
    if threads > 1:
        # the same variant as "pneumo" but for the thread count (bf16 on CUDA too), so the ratio shows threads alone
        one = Variant("pneumo-1-thread", "cached", amp=device.type == "cuda", threads=1)
        out.append((f"1 thread instead of {threads}", one, "pneumo"))
    return out


# --- the device-resident loop -----------------------------------------------------------------------------------


@dataclass
class EpochStats:
    steps: int
    images: int
    seconds: float
    loss: float
    gather_seconds: float | None = None  # with ``profile``: indexing the resident batch
    prep_seconds: float | None = None  # with ``profile``: augmentation + normalisation

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


def resident_tensors(split: SplitData, device: torch.device | str) -> tuple[Tensor, Tensor]:
    """The split's uint8 ``(N, 1, S, S)`` images and int64 targets, moved to ``device`` once (as the engine does)."""
    resident = ResidentSplit(split, torch.device(device))
    return resident.images, resident.targets


def device_resident_epoch(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    optimizer: torch.optim.Optimizer,
    *,
    contract: PreprocessContract,
    batch_size: int,
    criterion: nn.Module | None = None,
    augmenter: BatchAugmenter | None = None,
    generator: torch.Generator | None = None,
    amp: bool = False,
    channels_last: bool = True,
    grad_clip: float | None = 1.0,
    max_steps: int | None = None,
    profile: bool = False,
) -> EpochStats:
    """One training epoch over a uint8 image tensor that already lives on the training device.

    Batches are a random permutation indexed on the device (last partial batch dropped), augmented by
    ``augmenter`` on the device, normalised by ``contract``, optionally channels_last, under bf16 autocast on CUDA
    with ``amp``. ``model`` may be a ``torch.compile``-d module. No host round trip happens inside the loop (the loss
    is summed on the device); ``profile`` synchronises after each phase to time it, which costs some overlap on GPU.
    """
    device = images.device
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 (N, 1, S, S), got {images.dtype} {tuple(images.shape)}")
    if targets.device != device or targets.shape[0] != images.shape[0]:
        raise ValueError("targets must be on the images' device, one per image")
    n = images.shape[0]
    steps = n // batch_size if max_steps is None else min(n // batch_size, max_steps)
    if steps < 1:
        raise ValueError(f"{n} images make no full batch of {batch_size}")
    criterion = criterion or nn.CrossEntropyLoss()
    if generator is None:
        generator = torch.Generator(device=device).manual_seed(0)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    model.train()
    order = torch.randperm(n, device=device, generator=generator)
    loss_sum = torch.zeros((), device=device)
    gather_s = prep_s = 0.0
    sync(device)
    start = time.perf_counter()
    for step in range(steps):
        if profile:
            sync(device)  # else the previous step's queued GPU work would be timed as indexing
        t0 = time.perf_counter()
        idx = order[step * batch_size : (step + 1) * batch_size]
        x, y = images.index_select(0, idx), targets.index_select(0, idx)
        if profile:
            sync(device)
            t1 = time.perf_counter()
            gather_s += t1 - t0
        if augmenter is not None and augmenter.active:
            x = augmenter(x, generator)
        x = normalize(x, contract)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if profile:
            sync(device)
            prep_s += time.perf_counter() - t1
        with autocast_for(device, amp):
            logits = model(x)
        loss = criterion(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        loss_sum += loss.detach() * batch_size
    sync(device)
    seconds = time.perf_counter() - start
    return EpochStats(
        steps,
        steps * batch_size,
        seconds,
        float(loss_sum) / (steps * batch_size),
        gather_s if profile else None,
        prep_s if profile else None,
    )


# --- measurement ------------------------------------------------------------------------------------------------


@dataclass
class TrainSetup:
    model: nn.Module  # the parameters
    net: nn.Module  # what is called (compiled or not)
    optimizer: torch.optim.Optimizer
    criterion: nn.Module
    grad_clip: float | None
    batch_size: int


def _setup(model_name: str, size: int, batch_size: int, variant: Variant, device: torch.device) -> TrainSetup:
    """Model, optimizer and loss exactly as the engine builds them for this model (family defaults)."""
    cfg = build_config(
        flags={
            "data": "<bench>",
            "model": model_name,
            "image_size": size,
            "batch_size": batch_size,
            "channels_last": variant.channels_last,
            "compile": variant.compile,
            "progress": False,
        }
    )
    torch.manual_seed(0)
    model = get_model(cfg.model, num_classes=cfg.num_outputs, in_chans=1, weights=None, drop_rate=cfg.drop_rate)
    model = model.to(device)
    if variant.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg)
    # static shapes, as the engine (one size per process) compiles: otherwise a later size in the same process is
    # compiled with symbolic sizes, and the figures depend on the order of the measurements
    net = torch.compile(model, dynamic=False) if variant.compile else model
    return TrainSetup(model, net, optimizer, nn.CrossEntropyLoss(), cfg.grad_clip, batch_size)


def _optimize(s: TrainSetup, x: Tensor, y: Tensor, device: torch.device, amp: bool) -> None:
    with autocast_for(device, amp):
        logits = s.net(x)
    loss = s.criterion(logits.float(), y)
    s.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if s.grad_clip:
        torch.nn.utils.clip_grad_norm_([p for p in s.model.parameters() if p.requires_grad], s.grad_clip)
    s.optimizer.step()


@dataclass
class StepTimes:
    total: list[float] = field(default_factory=list)
    wait: list[float] = field(default_factory=list)
    prep: list[float] = field(default_factory=list)
    warmup_seconds: float = 0.0

    def set_shares(self, per_step: float, steps: int, wait_share: float, prep_share: float) -> None:
        """``steps`` steps timed without synchronising (``per_step`` seconds each), split by shares of a step.

        Shares, not seconds, carry over from the steps they were measured in: seconds of synchronised (profiled)
        steps divided by the unsynchronised step time mixed two measurements (a naive loader on CUDA showed a data
        wait of 175 % of its step)."""
        self.total = [per_step] * steps
        self.wait = [per_step * wait_share] * steps
        self.prep = [per_step * prep_share] * steps


def _share(part: float, whole: float) -> float:
    return part / whole if whole > 0 else float("nan")


def _loader_steps(
    batches: Iterable,
    prepare: Callable[[Tensor], Tensor],
    s: TrainSetup,
    variant: Variant,
    device: torch.device,
    warmup: int,
    steps: int,
    profile_steps: int = 0,
) -> StepTimes:
    """Step times of a loader-fed variant: waiting for the loader (+ host-to-device copy), preparing the batch, all.

    The timed steps synchronise only at their ends, as training does: on CUDA the host queues step i+1 while the
    device still runs step i, which a synchronisation in every step would forbid (the device-resident variant is
    timed the same way). With ``profile_steps`` (CUDA), the waiting and preparing times come from that many more
    steps that synchronise after each phase; otherwise (CPU, where synchronising is free) from the timed steps.
    """
    times = StepTimes()
    it = iter(batches)
    s.net.train()

    def step(profile: bool) -> tuple[float, float, float]:
        t0 = time.perf_counter()
        batch = next(it)
        x = batch[0].to(device, non_blocking=True)
        y = batch[1].to(device, non_blocking=True)
        if profile:
            sync(device)
        t1 = time.perf_counter()
        x = prepare(x)
        if profile:
            sync(device)
        t2 = time.perf_counter()
        _optimize(s, x, y, device, variant.amp)
        if profile:
            sync(device)
        return t1 - t0, t2 - t1, time.perf_counter() - t0

    start = time.perf_counter()
    for _ in range(warmup):
        step(profile=False)
    sync(device)
    times.warmup_seconds = time.perf_counter() - start
    timed_start = time.perf_counter()
    timed = [step(profile=not profile_steps) for _ in range(steps)]
    sync(device)  # a CUDA step is only done when the device is
    per_step = (time.perf_counter() - timed_start) / steps
    if profile_steps:
        # The wait is the host's time blocked on the loader in the timed steps themselves (no synchronisation is
        # needed to see it): synchronised steps give the workers more time per batch and wait less. Only the split of
        # the rest into preparation and compute needs the synchronised steps.
        profiled = [step(profile=True) for _ in range(profile_steps)]
        wait_share = min(_share(sum(t[0] for t in timed) / steps, per_step), 1.0)
        times.set_shares(per_step, steps, wait_share, _share(sum(p[1] for p in profiled), sum(p[2] for p in profiled)))
    else:
        times.wait, times.prep, times.total = ([t[k] for t in timed] for k in range(3))
    return times


def _resident_steps(
    split: SplitData,
    contract: PreprocessContract,
    s: TrainSetup,
    variant: Variant,
    device: torch.device,
    warmup: int,
    steps: int,
) -> StepTimes:
    images, targets = resident_tensors(split, device)
    if images.shape[0] < s.batch_size:  # a tiny --data subset: repeat it to fill one batch
        reps = -(-s.batch_size // images.shape[0])
        images, targets = images.repeat(reps, 1, 1, 1), targets.repeat(reps)
    augmenter = BatchAugmenter(AugmentConfig(), AcquisitionAugmentConfig())
    generator = torch.Generator(device=device).manual_seed(0)
    common = {
        "contract": contract,
        "batch_size": s.batch_size,
        "criterion": s.criterion,
        "augmenter": augmenter,
        "generator": generator,
        "amp": variant.amp,
        "channels_last": variant.channels_last,
        "grad_clip": s.grad_clip,
    }

    def run(n_steps: int, profile: bool) -> list[EpochStats]:
        out = []
        while n_steps > 0:
            stats = device_resident_epoch(
                s.net, images, targets, s.optimizer, max_steps=n_steps, profile=profile, **common
            )
            out.append(stats)
            n_steps -= stats.steps
        return out

    times = StepTimes()
    start = time.perf_counter()
    run(warmup, profile=False)
    times.warmup_seconds = time.perf_counter() - start
    cpu = device.type == "cpu"  # synchronising is free on CPU: profile the timed run itself
    timed = run(steps, profile=cpu)
    per_step = sum(e.seconds for e in timed) / steps
    profiled = timed if cpu else run(min(steps, 10), profile=True)
    profiled_s = sum(e.seconds for e in profiled)
    gather = sum(e.gather_seconds or 0.0 for e in profiled)
    prep = sum(e.prep_seconds or 0.0 for e in profiled)
    times.set_shares(per_step, steps, _share(gather, profiled_s), _share(prep, profiled_s))
    return times


def measure_training(
    model_name: str,
    size: int,
    variant: Variant,
    *,
    split: SplitData,
    data: BenchData,
    fullres: BenchData | None,
    device: torch.device,
    batch_size: int,
    warmup: int,
    steps: int,
) -> dict:
    """Train ``steps`` timed steps (after ``warmup``) of ``model_name`` at ``size`` px the ``variant`` way."""
    contract = preprocess_contract(model_name, image_size=size)
    threads_before = torch.get_num_threads()
    if variant.threads is not None:
        torch.set_num_threads(variant.threads)
    try:
        s = _setup(model_name, size, batch_size, variant, device)
        if variant.pipeline == "resident":
            times = _resident_steps(split, contract, s, variant, device, warmup, steps)
        else:
            workers = loader_workers(device)
            profile_steps = min(steps, 10) if device.type == "cuda" else 0
            # the batches the workers prefetch are used up in the warm-up: in the timed steps they arrived in no time
            # and flattered the naive pipeline (its first timed steps did not wait for decoding)
            warmup += warmup_batches(workers) - 1
            n_batches = warmup + steps + profile_steps
            if variant.pipeline == "naive":
                source = fullres if variant.fullres and fullres is not None else data
                dataset = naive_dataset(source, contract, AugmentConfig())
                batches = naive_loader(dataset, batch_size, n_batches, workers=workers, device=device)

                def prepare(x: Tensor) -> Tensor:
                    return x  # already augmented, normalised, NCHW

            else:
                batches = cached_loader(split, batch_size, n_batches, workers=workers, device=device)
                augmenter = BatchAugmenter(AugmentConfig(), AcquisitionAugmentConfig())
                generator = torch.Generator(device=device).manual_seed(0)

                def prepare(x: Tensor) -> Tensor:
                    x = normalize(augmenter(x, generator), contract)
                    return x.contiguous(memory_format=torch.channels_last) if variant.channels_last else x

            times = _loader_steps(batches, prepare, s, variant, device, warmup, steps, profile_steps)
        threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads_before)
    total = sum(times.total)
    return {
        "model": model_name,
        "size": size,
        "variant": variant.name,
        "pipeline": variant.describe(),
        "batch_size": batch_size,
        "threads": threads,
        "steps": steps,
        "warmup_steps": warmup,
        "warmup_seconds": times.warmup_seconds,
        "step_seconds": total / steps,
        "images_per_s": steps * batch_size / total,
        "data_wait_share": sum(times.wait) / total,
        "prep_share": sum(times.prep) / total,
    }


def run_training_section(
    *,
    models: Sequence[str],
    sizes: Sequence[int],
    splits: dict[int, SplitData],
    data: BenchData,
    fullres: BenchData | None,
    device: torch.device,
    batch_sizes: dict[str, int],
    warmup: int,
    steps: int,
    compile: bool,
    epoch_images: int,
    peak_gflops: float,
    reference: tuple[str, int],
    log: Callable[[str], None] = lambda _: None,
    on_row: Callable[[dict], None] = lambda _: None,
) -> dict:
    """Every model x size with the main variants, then the one-change-at-a-time chain at ``reference``.

    ``on_row`` is called with each finished measurement (the suite uses it to save partial results)."""
    threads = torch.get_num_threads()
    results: list[dict] = []
    measured: dict[tuple[str, int, str], dict] = {}
    flops: dict[tuple[str, int], int] = {}

    def measure(model_name: str, size: int, variant: Variant) -> dict:
        key = (model_name, size, variant.name)
        if key not in measured:
            log(f"training {model_name} {size}px {variant.name} ({variant.describe()})")
            if (model_name, size) not in flops:
                net = get_model(model_name, num_classes=2, in_chans=1, weights=None)
                # Batch 2: batch norm refuses one value per channel in train mode (1x1 maps at small sizes).
                flops[(model_name, size)] = count_train_flops(net, (2, 1, size, size)) // 2
            row = measure_training(
                model_name,
                size,
                variant,
                split=splits[size],
                data=data,
                fullres=fullres,
                device=device,
                batch_size=batch_sizes[model_name],
                warmup=warmup,
                steps=steps,
            )
            per_image = flops[(model_name, size)]
            row["train_gflop_per_image"] = per_image / 1e9
            row["achieved_gflops"] = per_image * row["images_per_s"] / 1e9
            # the CPU reference is a float32 matmul: a bf16 row's share of it would mean nothing
            same_precision = not (variant.amp and device.type == "cpu")
            row["peak_fraction"] = row["achieved_gflops"] / peak_gflops if peak_gflops and same_precision else None
            row["epoch_seconds"] = epoch_images / row["images_per_s"]
            measured[key] = row
            results.append(row)
            on_row(row)
        return measured[key]

    for model_name in models:
        for size in sizes:
            for variant in main_variants(device, compile=compile):
                measure(model_name, size, variant)

    ref_model, ref_size = reference
    chain_rows, previous = [], None
    for change, variant in ablation_chain(device, compile=compile):
        row = measure(ref_model, ref_size, variant)
        chain_rows.append(
            {
                "change": change,
                "variant": variant.name,
                "pipeline": variant.describe(),
                "images_per_s": row["images_per_s"],
                "factor": None if previous is None else row["images_per_s"] / previous["images_per_s"],
                "vs_baseline": row["images_per_s"] / chain_rows[0]["images_per_s"] if chain_rows else 1.0,
            }
        )
        previous = row
    side_rows = []
    for what, variant, against in side_variants(device, threads=threads):
        row = measure(ref_model, ref_size, variant)
        other = measured[(ref_model, ref_size, against)]
        side_rows.append(
            {
                "what": what,
                "variant": variant.name,
                "images_per_s": row["images_per_s"],
                "compared_with": against,
                "ratio": row["images_per_s"] / other["images_per_s"],
            }
        )
    for row in results:
        naive = measured.get((row["model"], row["size"], "naive"))
        if naive is not None and row is not naive:
            row["speedup_vs_naive"] = row["images_per_s"] / naive["images_per_s"]
    pneumo = measured[(ref_model, ref_size, "pneumo")]
    fullres_naive = measured.get((ref_model, ref_size, "naive-fullres"))
    if fullres_naive:
        side_rows.append(
            {
                "what": "pneumo vs naive on full-resolution JPEGs",
                "variant": "pneumo",
                "images_per_s": pneumo["images_per_s"],
                "compared_with": "naive-fullres",
                "ratio": pneumo["images_per_s"] / fullres_naive["images_per_s"],
            }
        )
    return {
        "epoch_images": epoch_images,
        "batch_sizes": batch_sizes,
        "steps": steps,
        "warmup_steps": warmup,
        "compile": compile,
        "reference": {"model": ref_model, "size": ref_size},
        "results": results,
        "speedup_chain": chain_rows,
        "side_by_side": side_rows,
        "notes": [
            "images/s from wall time of timed steps after warm-up; seconds per epoch extrapolated to epoch_images",
            "data wait: time blocked on the loader plus the host-to-device copy (resident: indexing the batch)",
            "GFLOP/s counts convolutions and matmuls of forward+backward only (FlopCounterMode)",
            "% of peak: against the matmul reference of the run (float32 on CPU: none for a bf16 row there)",
        ],
    }
