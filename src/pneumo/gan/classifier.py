"""The discriminator's class head as an ordinary pneumo classifier run (``GAN_RUN/classifier/``).

It follows the training checkpoint contract (``checkpoint.json``, ``best.safetensors``, ``config.yaml``,
``split.csv``; written with :mod:`pneumo.runs`), so ``pneumo evaluate GAN_RUN/classifier`` treats it
like any classifier run. The epoch is chosen by the class head's macro one-vs-rest ROC AUC on the validation split
(carved from train by patient; :func:`pneumo.models.predict.val_metrics`, the metric classifier training selects
on); the test split is never used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import Tensor

import pneumo
from pneumo.data.preprocess import PreprocessContract
from pneumo.data.records import Record
from pneumo.data.splits import write_split_csv
from pneumo.data.tasks import get_task
from pneumo.gan.acgan import Discriminator
from pneumo.gan.config import TASK, GanConfig
from pneumo.runs.checkpoint import save_weights
from pneumo.runs.format import FORMAT, read_run_meta, update_run_meta, write_run_meta
from pneumo.utils.atomic import write_text

CLASSIFIER_DIR = "classifier"
MODEL_NAME = "acgan_discriminator"


@torch.no_grad()
def class_logits(discriminator: Discriminator, images: Tensor, batch_size: int = 512) -> np.ndarray:
    """Class-head logits for ``images`` already in ``[-1, 1]`` on the discriminator's device (eval mode)."""
    was_training = discriminator.training
    discriminator.eval()
    out = [discriminator(images[i : i + batch_size])[1].float().cpu() for i in range(0, len(images), batch_size)]
    discriminator.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, discriminator.num_classes), dtype=np.float32)


def _classifier_config(config: GanConfig) -> str:
    """``config.yaml`` of the classifier run: the GAN's config plus the keys evaluation and run tables read."""
    data = config.model_dump(mode="json")
    data |= {"model": MODEL_NAME, "weights": "none", "trained_as": "ACGAN discriminator class head (see ../)"}
    return yaml.safe_dump(data, sort_keys=False)


def write_classifier_run(
    run_dir: Path,
    discriminator: Discriminator,
    *,
    config: GanConfig,
    contract: PreprocessContract,
    records: Sequence[Record],
    data_root: Path,
    epoch: int,
    val_auc: float,
) -> Path:
    """Write ``run_dir/classifier`` with the class head at ``epoch`` as its best (and, for now, last) checkpoint."""
    out = run_dir / CLASSIFIER_DIR
    out.mkdir(parents=True, exist_ok=True)
    auc = None if math.isnan(val_auc) else val_auc
    net = discriminator.export_classifier(contract.mean, contract.std)
    save_weights(out / "best.safetensors", net, {"epoch": epoch, "val_auc": auc})
    write_text(out / "config.yaml", _classifier_config(config))
    write_split_csv(records, out / "split.csv", data_root)
    write_run_meta(
        out,
        {
            "format": FORMAT,
            "pneumo_version": pneumo.__version__,
            "task": TASK,
            "class_names": list(get_task(TASK).class_names),
            "model": {
                "name": MODEL_NAME,
                "num_outputs": discriminator.num_classes,
                "in_chans": 1,
                "kwargs": discriminator.classifier_kwargs(contract.mean, contract.std),
            },
            "dummy_class": False,
            "preprocess": contract.to_dict(),
            "best": {"epoch": epoch, "val_auc": auc},
            "last": {"epoch": epoch},
            "operating_point": None,
            "temperature": None,
            "ood": None,
        },
    )
    return out


def exported_epoch(run_dir: Path) -> int | None:
    """The GAN epoch whose class head ``run_dir/classifier`` holds (``None`` before the first export)."""
    if not (run_dir / CLASSIFIER_DIR / "checkpoint.json").is_file():
        return None
    return (read_run_meta(run_dir / CLASSIFIER_DIR).get("best") or {}).get("epoch")


def set_last_epoch(run_dir: Path, epoch: int) -> None:
    """Record the GAN's last trained epoch in the classifier's ``checkpoint.json``."""
    if (run_dir / CLASSIFIER_DIR / "checkpoint.json").is_file():
        update_run_meta(run_dir / CLASSIFIER_DIR, last={"epoch": epoch})
