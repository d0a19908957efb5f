"""Experiment declarations: one YAML file per row of the results table, under ``experiments/``.

A file looks like::

    name: resnet18-bacteria-virus-transfer
    suites: [cpu]
    kind: train                     # train | gan
    description: ResNet-18 on bacteria vs virus, initialised from the normal-pneumonia run
    train:                          # a TrainConfig overlay (``data`` comes from --data)
      task: bacteria-virus
      model: resnet18
      weights: run:resnet18-normal-pneumonia   # another experiment's run folder
      image_size: 128
      epochs: 8
    baseline: resnet18-bacteria-virus          # optional: report the paired difference against this row

``run:<name>`` anywhere in the overlay stands for that experiment's run folder (of the same seed where it has one),
so experiments are ordered by these dependencies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

SUITES = ("quick", "cpu", "full")
GAN_TASK = "normal-bacteria-virus"  # pneumo.gan.config.TASK (not imported: declarations load without torch)
DEFAULT_TASK = "normal-pneumonia"  # TrainConfig's default
RUN_REF = "run:"


class Experiment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    suites: list[Literal["quick", "cpu", "full"]]
    kind: Literal["train", "gan"] = "train"
    description: str = ""
    train: dict[str, Any] = Field(default_factory=dict)
    gan: dict[str, Any] = Field(default_factory=dict)
    baseline: str | None = None
    seeds: list[int] = Field(default_factory=lambda: [0])

    @property
    def task(self) -> str:
        """The task its test predictions are for (a GAN row: the discriminator's three classes)."""
        return GAN_TASK if self.kind == "gan" else str(self.train.get("task", DEFAULT_TASK))

    def references(self) -> set[str]:
        found: set[str] = set()

        def walk(value: Any) -> None:
            if isinstance(value, str) and value.startswith(RUN_REF):
                found.add(value.removeprefix(RUN_REF))
            elif isinstance(value, dict):
                for v in value.values():
                    walk(v)
            elif isinstance(value, list):
                for v in value:
                    walk(v)

        walk(self.train)
        walk(self.gan)
        return found


def default_experiments_dir() -> Path:
    """``./experiments`` when run from a checkout, else the one beside the installed source tree."""
    here = Path.cwd() / "experiments"
    return here if here.is_dir() else Path(__file__).resolve().parents[3] / "experiments"


def load_suite(suite: str, directory: Path | None = None) -> list[Experiment]:
    """The experiments of one suite, ordered so that every ``run:`` reference comes first."""
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; choose one of {SUITES}")
    directory = directory or default_experiments_dir()
    files = sorted(directory.rglob("*.yaml"))
    if not files:
        raise FileNotFoundError(f"no experiment YAML files under {directory}")
    all_experiments = {}
    for path in files:
        try:
            exp = Experiment.model_validate(yaml.safe_load(path.read_text()))
        except Exception as exc:
            raise ValueError(f"{path}: {exc}") from exc
        if exp.name in all_experiments:
            raise ValueError(f"{path}: experiment name {exp.name!r} is used twice")
        all_experiments[exp.name] = exp
    chosen = {n: e for n, e in all_experiments.items() if suite in e.suites}
    return _ordered(chosen)


def _ordered(experiments: dict[str, Experiment]) -> list[Experiment]:
    ordered: list[Experiment] = []
    state: dict[str, str] = {}

    def visit(name: str, trail: tuple[str, ...]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            raise ValueError(f"experiments depend on each other in a cycle: {' -> '.join((*trail, name))}")
        if name not in experiments:
            raise ValueError(f"experiment {trail[-1]!r} refers to {name!r}, which is not in this suite")
        state[name] = "visiting"
        exp = experiments[name]
        base = experiments.get(exp.baseline or "")
        if base is not None and base.task != exp.task:
            raise ValueError(
                f"experiment {name!r} ({exp.task}) has baseline {base.name!r} ({base.task}): a paired difference "
                "needs the same task"
            )
        for dep in sorted(exp.references() | ({exp.baseline} if exp.baseline else set())):
            visit(dep, (*trail, name))
        state[name] = "done"
        ordered.append(exp)

    for name in experiments:
        visit(name, ())
    return ordered


def resolve_refs(value: Any, run_dirs: dict[str, dict[int, Path]], seed: int) -> Any:
    """Replace ``run:<name>`` strings by that experiment's run folder for ``seed`` (else its first seed's).

    Seed ``s`` of a transfer row thus starts from seed ``s`` of its source, trained on the same split; a source with
    one seed (e.g. the GAN) serves every seed, and the training's leak check refuses a split that does not match.
    """
    if isinstance(value, str) and value.startswith(RUN_REF):
        runs = run_dirs[value.removeprefix(RUN_REF)]
        return str(runs.get(seed, next(iter(runs.values()))))
    if isinstance(value, dict):
        return {k: resolve_refs(v, run_dirs, seed) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_refs(v, run_dirs, seed) for v in value]
    return value
