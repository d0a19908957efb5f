"""Reading a YAML settings file (a config the user wrote, a run's ``config.yaml``) into a mapping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pneumo.utils.errors import PneumoError


class ConfigError(PneumoError, ValueError):
    """A configuration that cannot be used; the message names the offending key(s)."""


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML ({_where(exc)}); fix or restore it") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    return data


def _where(exc: yaml.YAMLError) -> str:
    """One line: ``line N: problem`` (PyYAML's own message spans several, with a caret drawing)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"line {mark.line + 1}: {problem}" if mark is not None else problem
