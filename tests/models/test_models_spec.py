"""The model spec: per-model (and per-weights) preprocessing and defaults, one contract builder, registry names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pneumo.data.preprocess import DEFAULT_IMAGE_SIZE, GRAY_MEAN, GRAY_STD, PreprocessContract
from pneumo.models import registry
from pneumo.models.cnn import PneumoCNN
from pneumo.models.spec import ModelSpec, WeightsSpec
from pneumo.training.config import ConfigError, build_config, validate_config
from pneumo.training.data import contract_for


@pytest.fixture
def toy_model(monkeypatch: pytest.MonkeyPatch) -> str:
    """A model registered for one test only, whose ImageNet weights expect their own normalisation and size."""
    spec = ModelSpec(
        image_size=96,
        lr=3e-3,
        batch_size=8,
        epochs=4,
        weights={"imagenet": WeightsSpec(mean=0.5, std=0.25, image_size=112)},
    )

    def build(*, num_classes: int, in_chans: int, drop_rate: float, pretrained: bool, **kwargs: Any) -> PneumoCNN:
        return PneumoCNN(num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate, widths=(4, 8), depths=(1, 1))

    monkeypatch.setitem(registry._REGISTRY, "toy", build)
    monkeypatch.setitem(registry._SPECS, "toy", spec)
    return "toy"


def test_the_contract_comes_from_the_spec_and_its_weights(toy_model: str) -> None:
    assert registry.preprocess_contract(toy_model) == PreprocessContract(image_size=96, mean=GRAY_MEAN, std=GRAY_STD)
    pretrained = registry.preprocess_contract(toy_model, weights="imagenet", geometry="letterbox")
    assert pretrained == PreprocessContract(image_size=112, geometry="letterbox", mean=0.5, std=0.25)
    # the run's own size wins over the weights'; a run folder or file as weights keeps the model's normalisation
    assert registry.preprocess_contract(toy_model, weights="imagenet", image_size=64).image_size == 64
    assert registry.preprocess_contract(toy_model, weights="/some/run").mean == GRAY_MEAN


def test_training_takes_family_defaults_and_normalisation_from_the_spec(toy_model: str, tmp_path: Path) -> None:
    cfg = build_config(flags={"data": str(tmp_path), "model": toy_model})
    assert (cfg.lr, cfg.batch_size, cfg.epochs, cfg.image_size) == (3e-3, 8, 4, 96)
    pretrained = build_config(
        flags={"data": str(tmp_path), "model": toy_model, "weights": "imagenet", "image_size": 112}
    )
    assert (contract_for(pretrained).mean, contract_for(pretrained).std) == (0.5, 0.25)
    with pytest.raises(ConfigError, match="the 'cnn' model has no ImageNet weights"):  # the spec declares none
        build_config(flags={"data": str(tmp_path), "weights": "imagenet"})


def test_model_and_task_names_are_checked_against_the_registries(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown model 'resnet181'; did you mean 'resnet18'\?"):
        validate_config({"data": str(tmp_path), "model": "resnet181"})
    with pytest.raises(ConfigError, match="unknown model 'acgan_discriminator'"):  # registered, but not for training
        validate_config({"data": str(tmp_path), "model": "acgan_discriminator"})
    with pytest.raises(ConfigError, match=r"unknown task 'normal-virus'.*registered: bacteria-virus, normal-bacteria"):
        validate_config({"data": str(tmp_path), "task": "normal-virus"})


def test_a_new_task_in_the_table_is_accepted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from pneumo.data import tasks

    extra = tasks.Task("virus-or-not", ("other", "virus"), lambda r: r.subtype, "made up")
    monkeypatch.setitem(tasks.TASKS, extra.name, extra)
    cfg = validate_config({"data": str(tmp_path), "task": "virus-or-not"})
    assert cfg.num_task_classes == 2


def test_one_default_image_size(tmp_path: Path, synthetic_data: Path) -> None:
    """`pneumo data cache` fills the cache a default `pneumo train` reads (it filled one at 224 px for a 128 px run)."""
    from pneumo.cli import app
    from pneumo.data.cache import ImageCache

    cfg = build_config(flags={"data": str(synthetic_data)})
    assert cfg.image_size == DEFAULT_IMAGE_SIZE == PreprocessContract().image_size
    assert {registry.get_model_spec(m).image_size for m in registry.list_models(trainable=True)} == {DEFAULT_IMAGE_SIZE}
    result = CliRunner().invoke(app, ["data", "cache", str(synthetic_data), "--cache-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert f"at {DEFAULT_IMAGE_SIZE}px" in result.output
    assert ImageCache(contract_for(cfg), tmp_path).file.is_file()
