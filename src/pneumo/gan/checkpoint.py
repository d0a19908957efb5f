"""GAN run files: network weights, optimiser and RNG state for ``--resume``, all safetensors + JSON (no pickle).

Run folder::

    config.yaml  split.csv  env.json  metrics.jsonl
    last.state.safetensors  last.state.json   (the three networks, optimisers, RNG states, EMA count, epoch, best:
                                               the resumable-state format of pneumo.runs.state)
    generator.safetensors  generator_ema.safetensors  discriminator.safetensors   (network weights, last epoch)
    samples/epoch_XXXX.png   classifier/   (the discriminator's class head as a pneumo classifier run)

The resumable state is one atomic file, written first at the end of an epoch; the weight files and ``classifier/``
are exports of it, written next (each atomically, with the epoch in its metadata) and rewritten on resume, so a crash
between two writes leaves a run that resumes. States written before the networks moved into the state file resume
from the weight files, and refuse a set whose epochs disagree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn
from torch.optim import Optimizer

from pneumo.gan.acgan import Generator
from pneumo.gan.config import GanConfig, read_config
from pneumo.runs.state import capture_rng, load_state, optimizer_from_parts, optimizer_to_parts, restore_rng, save_state
from pneumo.utils.atomic import save_safetensors

GENERATOR = "generator.safetensors"
GENERATOR_EMA = "generator_ema.safetensors"
DISCRIMINATOR = "discriminator.safetensors"


def build_generator(config: GanConfig, num_classes: int = 3) -> Generator:
    return Generator(
        num_classes=num_classes,
        z_dim=config.z_dim,
        image_size=config.image_size,
        base_channels=config.g_channels,
        max_channels=config.max_channels,
        embed_dim=config.embed_dim,
    )


_FILES = {"generator": GENERATOR, "generator_ema": GENERATOR_EMA, "discriminator": DISCRIMINATOR}


def _networks(generator: nn.Module, generator_ema: nn.Module, discriminator: nn.Module) -> dict[str, nn.Module]:
    return {"generator": generator, "generator_ema": generator_ema, "discriminator": discriminator}


def save_training_state(
    run_dir: Path,
    *,
    epoch: int,
    generator: nn.Module,
    generator_ema: nn.Module,
    discriminator: nn.Module,
    optimizers: dict[str, Optimizer],
    rng: torch.Generator,
    info: dict[str, Any],
) -> None:
    """Write the state to resume from after ``epoch``: networks, optimisers and RNG states in one atomic file."""
    tensors, rng_info = capture_rng()
    tensors["rng.data"] = rng.get_state()
    for key, net in _networks(generator, generator_ema, discriminator).items():
        tensors |= {f"net.{key}.{k}": v.detach().cpu() for k, v in net.state_dict().items()}
    opt_info = {}
    for name, opt in optimizers.items():
        opt_tensors, opt_info[name] = optimizer_to_parts(opt)
        tensors |= {f"{name}.{k}": v for k, v in opt_tensors.items()}
    save_state(run_dir, tensors, {"epoch": epoch, "rng": rng_info, "optimizers": opt_info, **info})


def export_networks(
    run_dir: Path, *, epoch: int, generator: nn.Module, generator_ema: nn.Module, discriminator: nn.Module
) -> None:
    """The three networks as standalone weight files (what :func:`load_generator` and ``pneumo gan synth`` read)."""
    meta = {"epoch": str(epoch), "format": "1"}
    for key, net in _networks(generator, generator_ema, discriminator).items():
        save_safetensors(run_dir / _FILES[key], {k: v.cpu() for k, v in net.state_dict().items()}, metadata=meta)


def _file_epoch(path: Path) -> int:
    with safe_open(path, framework="pt") as f:
        return int((f.metadata() or {}).get("epoch", -1))


def load_training_state(
    run_dir: Path,
    *,
    generator: nn.Module,
    generator_ema: nn.Module,
    discriminator: nn.Module,
    optimizers: dict[str, Optimizer],
    rng: torch.Generator,
) -> dict[str, Any]:
    """Restore what :func:`save_training_state` wrote; returns its info (epoch, step, best, ...)."""
    tensors, info = load_state(run_dir)
    nets = _networks(generator, generator_ema, discriminator)
    if any(k.startswith("net.") for k in tensors):
        for key, net in nets.items():
            prefix = f"net.{key}."
            net.load_state_dict({k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)})
    else:  # a state from before the networks moved into it: the weight files must all hold its epoch
        epochs = {file: _file_epoch(run_dir / file) for file in _FILES.values()}
        if any(e != info["epoch"] for e in epochs.values()):
            raise ValueError(f"{run_dir}: checkpoint files disagree on the epoch ({epochs}, state {info['epoch']})")
        for key, net in nets.items():
            net.load_state_dict(load_file(run_dir / _FILES[key]))
    for name, opt in optimizers.items():
        prefix = f"{name}."
        own = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
        optimizer_from_parts(opt, own, info["optimizers"][name])
    restore_rng(tensors, info["rng"])
    rng.set_state(tensors["rng.data"])
    return info


def load_generator(run_dir: str | Path, *, ema: bool = True, device: str | torch.device = "cpu") -> Generator:
    """The (EMA by default) generator of a GAN run, in eval mode; its config is ``read_config(run/config.yaml)``."""
    run_dir = Path(run_dir)
    config = read_config(run_dir / "config.yaml")
    generator = build_generator(config)
    path = run_dir / (GENERATOR_EMA if ema else GENERATOR)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a pneumo GAN run folder?")
    generator.load_state_dict(load_file(path))
    return generator.to(device).eval()
