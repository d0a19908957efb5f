"""A run folder opened for use: model, metadata, config, task, contract and its split's images (audits, OOD)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pneumo.data.dataset import SplitData, build_split
from pneumo.data.preprocess import PreprocessContract
from pneumo.data.records import DatasetError, Record, dataset_root
from pneumo.data.splits import read_split_csv
from pneumo.data.tasks import Task, get_task
from pneumo.models.depth_features import depth_features
from pneumo.runs.checkpoint import load_run
from pneumo.runs.format import CONFIG_FILE, SPLIT_FILE, read_run_meta
from pneumo.runs.ood import score
from pneumo.utils.yamlfile import load_yaml


@dataclass
class RunContext:
    run_dir: Path
    meta: dict[str, Any]
    config: dict[str, Any]
    task: Task
    contract: PreprocessContract
    cache_root: Path | None
    records: list[Record]  # the run's split.csv

    @property
    def dataset_root(self) -> Path:
        return dataset_root(self.config["data"])

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["class_names"])

    def split(self, name: str, records: Sequence[Record] | None = None, *, progress: bool = False) -> SplitData:
        """The task's images of split ``name`` (of ``records``, default the run's own), through the run's contract."""
        chosen = self.records if records is None else records
        data = build_split(name, chosen, self.task, self.contract, cache_root=self.cache_root, progress=progress)
        if len(data) == 0:
            raise DatasetError(f"{self.run_dir}: no readable {self.task.name} image in the {name} split")
        return data


def open_run(run_dir: str | Path) -> RunContext:
    run_dir = Path(run_dir).expanduser().resolve()
    meta = read_run_meta(run_dir)
    config = load_yaml(run_dir / CONFIG_FILE)
    records = read_split_csv(run_dir / SPLIT_FILE, dataset_root(config["data"]))
    cache_root = Path(config["cache_dir"]) if config.get("cache_dir") else None
    return RunContext(
        run_dir,
        meta,
        config,
        get_task(meta["task"]),
        PreprocessContract.from_dict(meta["preprocess"]),
        cache_root,
        records,
    )


def load_model(ctx: RunContext, device: str | torch.device = "cpu", which: str = "best") -> torch.nn.Module:
    model, _ = load_run(ctx.run_dir, which, device=device)
    return model


def split_images(split: SplitData) -> np.ndarray:
    """All images of a split as one uint8 ``N x S x S`` array (read from the cache)."""
    return np.ascontiguousarray(split.images.array[split.images.rows])


def score_images(
    params: Mapping[str, Any],
    model: torch.nn.Module,
    images: np.ndarray,
    contract: PreprocessContract,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, in_distribution)`` of uint8 model-size images under the stored OOD check ``params``, with either
    method's features."""
    raw, pen, dep, _ = depth_features(model, images, contract, batch_size=batch_size, device=device)
    return score(params, logits=raw, features=pen, depth_features=dep)
