"""The training configuration: one typed, validated model; precedence defaults < family defaults < YAML < flags < --set.

Every model here forbids unknown keys, so a typo (``augment.rotaton``) fails with a message naming the key and the
closest valid one. The resolved configuration is written to ``config.yaml`` in the run folder; loading it back gives
an equal config, so ``pneumo train --config RUN_DIR/config.yaml --out NEW_DIR`` reproduces the run (its
``split_file`` points at the run's ``split.csv``).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from pneumo.data.augment import AcquisitionAugmentConfig, AugmentConfig, _Strict
from pneumo.data.preprocess import DEFAULT_IMAGE_SIZE
from pneumo.data.tasks import TASKS
from pneumo.models.registry import get_model_spec, list_models
from pneumo.models.spec import DEFAULT_MODEL
from pneumo.utils.atomic import write_text
from pneumo.utils.yamlfile import ConfigError, load_yaml


class SyntheticConfig(_Strict):
    """Images from a trained ACGAN run (``pneumo gan train``) added to the **train** split only: ``per_class`` images
    of each GAN class, or ``balance`` to top the task's classes up to the largest one. Written to RUN_DIR/synthetic."""

    from_run: str | None = None
    per_class: int | Literal["balance"] | None = None

    @model_validator(mode="after")
    def _both_or_none(self) -> SyntheticConfig:
        if (self.from_run is None) != (self.per_class is None):
            raise ValueError("synthetic.from_run and synthetic.per_class must be given together")
        if isinstance(self.per_class, int) and self.per_class < 1:
            raise ValueError("synthetic.per_class must be >= 1 or 'balance'")
        return self

    @property
    def enabled(self) -> bool:
        return self.from_run is not None


class TrainConfig(_Strict):
    """Everything that defines a training run."""

    data: str
    task: str = "normal-pneumonia"
    model: str = DEFAULT_MODEL
    model_kwargs: dict[str, Any] = Field(default_factory=dict, description="extra get_model keywords")
    drop_rate: float = Field(0.2, ge=0, lt=1)
    weights: str = Field("none", description="none | imagenet | PATH (file or run folder)")
    freeze: str = Field("none", description="none | backbone | until:<stage>")
    backbone_lr_scale: float = Field(1.0, gt=0, le=1)
    unfreeze_epochs: list[int] = Field(default_factory=list)
    dummy_class: bool = False
    balance: Literal["weights", "sampler", "none"] = "weights"

    epochs: int = Field(10, ge=1)
    image_size: int = Field(DEFAULT_IMAGE_SIZE, ge=8)
    geometry: Literal["squash", "center-crop", "letterbox"] = "squash"
    batch_size: int = Field(32, ge=2)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: float = Field(0.9, ge=0, lt=1)
    schedule: Literal["cosine", "onecycle", "none"] = "cosine"
    warmup_epochs: float = Field(1.0, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    seed: int = Field(0, ge=0, lt=2**32)  # numpy seeds the split carve with it

    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    split_seed: int | None = Field(
        None,
        ge=0,
        lt=2**32,
        description="seed of the patient-grouped validation carve (default: seed); fix it to vary only training",
    )
    keep_official_val: bool = False
    exclude_test_patients: bool = Field(
        False, description="drop train/val images whose patient id also occurs in the test split"
    )
    split_file: str | None = None

    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    acquisition_augment: AcquisitionAugmentConfig = Field(default_factory=AcquisitionAugmentConfig)
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)

    early_stopping_patience: int | None = Field(5, ge=1)
    threshold_method: Literal["youden", "gap_midpoint", "prior_balanced"] = Field(
        "youden",
        description="binary tasks: how pneumo evaluate chooses the operating point on validation, declared before "
        "any test image is scored (pneumo evaluate --threshold-method or a target overrides it)",
    )
    fit_ood: bool = Field(True, description="fit the out-of-distribution detector (pneumo.trust.ood) after training")
    ood_negatives: str | None = Field(
        None,
        description="a folder or manifest of images that are NOT the training population (e.g. adult chest X-rays), "
        "added to the generated outlier-exposure negatives of the out-of-distribution detector",
    )
    num_workers: int | Literal["auto"] = "auto"
    data_path: Literal["auto", "loader", "resident"] = Field(
        "auto",
        description="loader: batches from the memory-mapped cache through a DataLoader; resident: the train and "
        "validation uint8 images copied to the training device once and batches indexed there (no loader, no "
        "host-to-device copy per step); auto: resident on CUDA when they take under a quarter of free GPU memory",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's own, one per core)")
    amp: bool | Literal["auto"] = Field(
        "auto",
        description="bf16 autocast in training (evaluation stays float32). auto/true: on CUDA and on a CPU with "
        "native bfloat16 (AVX-512 BF16 or AMX; about 1.8x faster for ResNet-18 there); false: float32, "
        "bit-reproducible on CPU, as the published CPU results were trained",
    )
    channels_last: bool = True
    compile: bool = False
    deterministic: bool | Literal["auto"] = "auto"
    max_steps_per_epoch: int | None = Field(None, ge=1)
    checkpoint_every_steps: int = Field(200, ge=1)
    cache_dir: str | None = None
    progress: bool = True
    out: str | None = None

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: str) -> str:
        if v.lower() in ("none", "imagenet"):
            return v.lower()
        return v

    @field_validator("model_kwargs")
    @classmethod
    def _model_kwargs(cls, v: dict[str, Any]) -> dict[str, Any]:
        # keywords the trainer sets itself, from settings of their own: given twice, training failed after caching
        reserved = sorted(set(v) & {"num_classes", "in_chans", "weights", "drop_rate", "load_head", "pretrained"})
        if reserved:
            raise ValueError(f"model_kwargs cannot set {', '.join(reserved)}: pneumo sets them from its own settings")
        return v

    @field_validator("task")
    @classmethod
    def _task(cls, v: str) -> str:
        return _registered(v, "task", sorted(TASKS))

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        return _registered(v, "model", list_models(trainable=True))

    @field_validator("freeze")
    @classmethod
    def _freeze(cls, v: str) -> str:
        if v in ("none", "backbone") or (v.startswith("until:") and len(v) > len("until:")):
            return v
        raise ValueError(f"freeze must be 'none', 'backbone' or 'until:<stage>', got {v!r}")

    @field_validator("unfreeze_epochs")
    @classmethod
    def _unfreeze(cls, v: list[int]) -> list[int]:
        if any(e < 1 for e in v):
            raise ValueError(f"unfreeze_epochs are 1-based epoch numbers, got {v}")
        return sorted(v)

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.weights == "imagenet" and "imagenet" not in get_model_spec(self.model).weights:
            raise ValueError(f"weights=imagenet: the {self.model!r} model has no ImageNet weights")
        if self.unfreeze_epochs and self.freeze == "none":
            raise ValueError("unfreeze_epochs needs a freeze policy (freeze=backbone or until:<stage>)")
        return self

    # --- derived --------------------------------------------------------------------------------------------
    @property
    def num_task_classes(self) -> int:
        return TASKS[self.task].num_classes

    @property
    def num_outputs(self) -> int:
        return self.num_task_classes + int(self.dummy_class)

    def default_out(self) -> Path:
        return Path("runs") / f"{self.task}-{self.model}-{datetime.now():%Y%m%d-%H%M%S}"

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def save(self, path: Path) -> None:
        write_text(path, self.to_yaml())


# --- building a config from its sources ------------------------------------------------------------------------


def parse_set(items: Iterable[str]) -> dict[str, Any]:
    """``["augment.rotation=10", "lr=3e-4"]`` -> nested dict; values are parsed as YAML scalars/lists."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set expects key=value (e.g. augment.rotation=10), got {item!r}")
        value = _scalar(raw)
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part} is set both as a value and as a section")
        node[leaf] = value
    return out


def _scalar(raw: str) -> Any:
    """A YAML value; also ``1e-3`` as a float (YAML 1.1, which PyYAML follows, wants ``1.0e-3``)."""
    if not raw.strip():
        return None
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def build_config(
    *,
    config_file: str | Path | None = None,
    flags: Mapping[str, Any] | None = None,
    overrides: Iterable[str] = (),
) -> TrainConfig:
    """Resolve a config: defaults < per-family defaults < YAML file < flags (None = not given) < ``--set``."""
    user: dict[str, Any] = load_yaml(config_file) if config_file else {}
    user = deep_merge(user, {k: v for k, v in (flags or {}).items() if v is not None})
    user = deep_merge(user, parse_set(overrides))
    return validate_config(deep_merge(family_defaults(user.get("model", DEFAULT_MODEL)), user))


def family_defaults(model: str) -> dict[str, Any]:
    """The model family's training defaults (its :class:`~pneumo.models.spec.ModelSpec`); ``{}`` for an unknown name,
    which validation then refuses with the registered names."""
    try:
        return get_model_spec(model).train_defaults()
    except ValueError:
        return {}


def _registered(name: str, what: str, names: list[str]) -> str:
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown {what} {name!r}{hint} (registered: {', '.join(names)})")
    return name


def validate_config(data: Mapping[str, Any]) -> TrainConfig:
    try:
        return TrainConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(_explain(exc)) from None


def _explain(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown setting {loc!r}{_suggest(err['loc'])}")
        elif err["type"] == "missing":
            lines.append(f"missing setting {loc!r}")
        else:
            lines.append(f"{loc or 'config'}: {err['msg']} (got {err.get('input')!r})")
    return "invalid training config:\n  " + "\n  ".join(dict.fromkeys(lines))


def _suggest(loc: tuple[Any, ...]) -> str:
    model: type[BaseModel] = TrainConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        sub = getattr(field, "annotation", None) if field else None
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            return ""
        model = sub
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; valid: {', '.join(model.model_fields)}"
