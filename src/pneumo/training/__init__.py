"""Training engine: typed config, batch augmentation on the device, DDP, resumable safetensors checkpoints.

Entry points: :func:`train` (new run from a :class:`TrainConfig`), :func:`resume` (continue a run folder),
:func:`build_config` (defaults < family defaults < YAML < flags < ``--set``). Reading a run folder is
:mod:`pneumo.runs`; scoring a model on a split is :mod:`pneumo.models.predict` (both re-exported here).
"""

from pneumo.models.predict import predict_logits, roc_auc, val_metrics
from pneumo.runs.checkpoint import load_run, save_weights
from pneumo.runs.format import read_run_meta, update_run_meta
from pneumo.runs.runinfo import read_metrics
from pneumo.training.config import ConfigError, TrainConfig, build_config, load_yaml, validate_config
from pneumo.training.run import resume, train

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
