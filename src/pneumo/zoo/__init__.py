"""Trained models that ship with pneumo, by name: ``pneumo predict xray.jpeg`` works without a dataset.

Each model is a run folder under this package, named ``<task>-v<N>`` (``normal-pneumonia-v1``): weights
(safetensors), ``checkpoint.json``, ``config.yaml``, the split, the test evaluation and ``MODEL_CARD.md``, without
optimiser or resume state, plus ``SHA256SUMS`` (``sha256sum -c`` format) of every other file, checked whenever a
model is resolved. A name is accepted with or without the ``pneumo/`` prefix and without the version
(``normal-pneumonia`` is its highest version). ``index.json`` names the default model and describes each one.
Nothing here imports torch: listing and resolving read JSON and hash files only.
"""

from __future__ import annotations

from pneumo.zoo.catalog import (
    CHECKSUMS_FILE,
    DEFAULT_ALIAS,
    PREFIX,
    ZOO_DIR,
    ShippedModel,
    ZooError,
    default_model,
    describe,
    is_model_name,
    list_models,
    model_rows,
    names_a_model,
    resolve_model,
    shipped_model,
    verify_checksums,
    writable_copy,
)

__all__ = [
    "CHECKSUMS_FILE",
    "DEFAULT_ALIAS",
    "PREFIX",
    "ZOO_DIR",
    "ShippedModel",
    "ZooError",
    "default_model",
    "describe",
    "is_model_name",
    "list_models",
    "model_rows",
    "names_a_model",
    "resolve_model",
    "shipped_model",
    "verify_checksums",
    "writable_copy",
]
