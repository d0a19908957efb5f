"""A GAN run and a classifier run mistaken for each other, and bad GAN settings, give one clear line each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pneumo.gan.config import load_config, read_config, save_config
from pneumo.training import resume
from pneumo.training.config import ConfigError


def test_a_classifier_run_is_named_as_such_where_a_gan_run_is_expected(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("model: cnn\ntask: normal-pneumonia\nimage_size: 64\n")
    (tmp_path / "checkpoint.json").write_text(json.dumps({"format": 1}))
    with pytest.raises(ValueError, match=r"is a classifier run \(pneumo train\), not a GAN run") as caught:
        read_config(tmp_path / "config.yaml")
    assert "pydantic" not in str(caught.value)
    with pytest.raises(FileNotFoundError, match="is not a GAN run folder"):
        read_config(tmp_path / "missing" / "config.yaml")


def test_a_gan_run_is_named_as_such_where_a_classifier_run_is_expected(tmp_path: Path) -> None:
    save_config(load_config(None, data="somewhere"), tmp_path / "config.yaml")
    with pytest.raises(ConfigError, match=r"is a GAN run: resume it with `pneumo gan train --resume"):
        resume(tmp_path)


def test_bad_gan_settings_give_short_lines_not_a_pydantic_dump() -> None:
    with pytest.raises(ValueError) as caught:
        load_config(None, overrides=["colour=1", "epochs=0"])
    message = str(caught.value)
    assert message.startswith("invalid GAN config:") and "colour: unknown setting" in message
    assert "epochs: " in message and "(got 0)" in message and "errors.pydantic.dev" not in message
    with pytest.raises(ValueError, match="image_size") as caught:
        load_config(None, image_size=48)
    assert "errors.pydantic.dev" not in str(caught.value)
