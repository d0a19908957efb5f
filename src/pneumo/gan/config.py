"""The ACGAN training configuration (pydantic, unknown keys refused), saved as ``config.yaml`` in the run folder."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pneumo.utils.atomic import write_text

TASK = "normal-bacteria-virus"


class GanConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # data: real images are the train split of a patient-grouped split; its val split scores the class head
    data: str | None = Field(None, description="dataset folder or CSV manifest")
    task: Literal["normal-bacteria-virus"] = TASK
    split_csv: str | None = Field(None, description="reuse this split file instead of carving a new one")
    val_fraction: float = Field(0.1, gt=0.0, lt=0.5)
    split_seed: int | None = Field(
        None,
        description="seed of the patient-grouped validation carve (default: seed, as in pneumo train); a classifier "
        "that uses this GAN's images must carve the same split",
    )
    keep_official_val: bool = False
    exclude_test_patients: bool = Field(
        False, description="drop train/val images whose patient id also occurs in the test split"
    )
    cache_dir: str | None = None
    workers: int = Field(0, ge=0, description="processes decoding images into the cache")

    # networks
    image_size: int = 64
    z_dim: int = Field(128, ge=1)
    embed_dim: int = Field(128, ge=1)
    g_channels: int = Field(64, ge=1)
    d_channels: int = Field(64, ge=1)
    max_channels: int = Field(512, ge=1)

    # optimisation and stabilisers
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(64, ge=2)
    g_lr: float = Field(1e-4, gt=0.0)
    d_lr: float = Field(4e-4, gt=0.0, description="two time-scale update rule: D learns faster than G")
    beta1: float = Field(0.0, ge=0.0, lt=1.0)
    beta2: float = Field(0.9, ge=0.0, lt=1.0)
    loss: Literal["hinge", "nonsaturating"] = "hinge"
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5, description="one-sided, nonsaturating loss only")
    aux_weight: float = Field(1.0, ge=0.0)
    d_steps: int = Field(1, ge=1, description="discriminator steps per generator step")
    ema_decay: float = Field(
        0.999,
        ge=0.0,
        lt=1.0,
        description="EMA of generator weights, used for sampling; a cap: step n decays by min(ema_decay, (1 + n) / "
        "(10 + n)), about 0.988 after 730 steps and 0.9988 after 7,300",
    )
    ema_standing_batches: int = Field(
        0, ge=0, description="batches that recompute the EMA generator's BatchNorm statistics at export (0: copy)"
    )
    fake_labels: Literal["data", "uniform"] = Field("data", description="class draw for generated images")

    # bookkeeping
    seed: int = 0
    device: str = "auto"
    sample_every: int = Field(5, ge=1, description="epochs between fixed-noise sample grids")
    samples_per_class: int = Field(8, ge=1)

    @model_validator(mode="after")
    def _check(self) -> GanConfig:
        if self.image_size < 16 or self.image_size & (self.image_size - 1):
            raise ValueError(f"image_size must be a power of two >= 16 (64 default, 128 option), got {self.image_size}")
        if self.label_smoothing and self.loss != "nonsaturating":
            raise ValueError("label_smoothing applies to loss=nonsaturating only (the hinge loss has a margin)")
        return self


def load_config(path: str | Path | None = None, overrides: Iterable[str] = (), **fields: Any) -> GanConfig:
    """Config from a YAML file (or defaults), then keyword fields, then ``key=value`` overrides (YAML values)."""
    data: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of config keys")
        data.update(loaded)
    data.update({k: v for k, v in fields.items() if v is not None})
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r} is not key=value")
        data[key.strip()] = yaml.safe_load(value)
    return validate(data)


def validate(data: dict[str, Any], where: str = "GAN config") -> GanConfig:
    """A :class:`GanConfig`, or a ``ValueError`` with one short line per problem (not pydantic's full dump)."""
    try:
        return GanConfig.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "config"
            problem = "unknown setting" if err["type"] == "extra_forbidden" else err["msg"]
            got = "" if err["type"] == "extra_forbidden" else f" (got {err.get('input')!r})"
            lines.append(f"{loc}: {problem}{got}")
        raise ValueError(f"invalid {where}:\n  " + "\n  ".join(lines)) from None


def save_config(config: GanConfig, path: Path) -> None:
    write_text(path, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))


def read_config(path: Path) -> GanConfig:
    """The config of a GAN run (``RUN/config.yaml``); a classifier run is named as such, not as 30 config errors."""
    if (path.parent / "checkpoint.json").is_file():
        raise ValueError(f"{path.parent} is a classifier run (pneumo train), not a GAN run (pneumo gan train)")
    if not path.is_file():
        raise FileNotFoundError(f"{path.parent} is not a GAN run folder (no config.yaml)")
    return validate(yaml.safe_load(path.read_text()) or {}, f"GAN config {path}")
