"""Training engine: typed config, batch augmentation on the device, DDP, resumable safetensors checkpoints.

Entry points: :func:`train` (new run from a :class:`TrainConfig`), :func:`resume` (continue a run folder),
:func:`build_config` (defaults < family defaults < YAML < flags < ``--set``), :func:`load_run` and
:func:`predict_logits` for everyone who uses a trained model.
"""

from pneumo.training.checkpoint import load_run, read_run_meta, save_weights, update_run_meta
from pneumo.training.config import ConfigError, TrainConfig, build_config, load_yaml, validate_config
from pneumo.training.predict import predict_logits, roc_auc, val_metrics
from pneumo.training.run import resume, train
from pneumo.training.runinfo import read_metrics

__all__ = [
    "ConfigError",
    "TrainConfig",
    "build_config",
    "load_run",
    "load_yaml",
    "predict_logits",
    "read_metrics",
    "read_run_meta",
    "resume",
    "roc_auc",
    "save_weights",
    "train",
    "update_run_meta",
    "val_metrics",
    "validate_config",
]
