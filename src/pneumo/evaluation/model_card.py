"""MODEL_CARD.md: what the model is, what it may (and may not) be used for, and how well it did."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pneumo.evaluation.compare import format_value
from pneumo.evaluation.report import to_plain, to_yaml
from pneumo.utils.atomic import write_text

# Limitations that hold for every model trained on this dataset; run-specific ones are appended.
KNOWN_LIMITATIONS: tuple[str, ...] = (
    "Single-centre pediatric data: all images come from one hospital (Guangzhou Women and Children's Medical "
    "Center), children aged 1-5 years; performance elsewhere is unknown.",
    "Acquisition shortcut: the original file size alone separates the classes with ROC AUC 0.93 on the test "
    "split, so a model can score well by learning acquisition artefacts rather than pathology.",
    "Patient ids overlap between train and test in the official split; metrics on that split are optimistic "
    "unless a patient-disjoint split is used.",
    "Not validated on adults, other hospitals, other scanners or prospective data.",
    "Labels are image-level diagnoses from the dataset curators, not confirmed clinical outcomes.",
)

DATA_DESCRIPTION = (
    "Kermany et al. pediatric chest X-ray dataset (Guangzhou Women and Children's Medical Center; "
    "anterior-posterior chest radiographs of children aged 1-5), single centre, licensed CC BY 4.0 "
    "(Kermany, Zhang & Goldbaum, Mendeley Data, doi:10.17632/rscbjbr9sj)."
)
SYNTHETIC_DESCRIPTION = (
    "**SYNTHETIC data** written by `pneumo data synth`: procedurally generated pictures, not X-rays, from no "
    "patient. The metrics below describe the pipeline on that data and say nothing about chest X-rays."
)
OTHER_DESCRIPTION = (
    "A dataset whose file names do not follow the Kermany release (see the dataset path below); the dataset's "
    "provenance, population and licence are whatever its source documents."
)
SYNTHETIC_LIMITATIONS: tuple[str, ...] = (
    "Trained and evaluated on SYNTHETIC images: no number here may be reported as model performance on X-rays.",
)
GENERAL_LIMITATIONS: tuple[str, ...] = (
    "Not validated on other hospitals, other scanners or prospective data.",
    "Labels are whatever the dataset provides, not confirmed clinical outcomes.",
)
SYNTHETIC_BANNER = "> **SYNTHETIC data: these numbers describe the pipeline, not X-rays.**\n"
DataKind = Literal["kermany", "synthetic", "other"]
_BY_KIND: dict[str, tuple[str, tuple[str, ...]]] = {
    "kermany": (DATA_DESCRIPTION, KNOWN_LIMITATIONS),
    "synthetic": (SYNTHETIC_DESCRIPTION, SYNTHETIC_LIMITATIONS),
    "other": (OTHER_DESCRIPTION, GENERAL_LIMITATIONS),
}


def _bullets(mapping: Mapping[str, Any]) -> str:
    if not mapping:
        return "- (not recorded)\n"
    lines = []
    for key, value in mapping.items():
        plain = to_plain(value)
        if isinstance(plain, (dict, list)):
            block = to_yaml(plain).rstrip().replace("\n", "\n    ")
            lines.append(f"- **{key}**:\n\n    ```yaml\n    {block}\n    ```\n")
        else:
            lines.append(f"- **{key}**: {format_value(plain)}")
    return "\n".join(lines) + "\n"


def _metrics_markdown(rows: Sequence[Mapping[str, Any]], default_split: str) -> str:
    if not rows:
        return "No metrics recorded.\n"
    lines = ["| Metric | Split | Point estimate | 95 % CI |", "| --- | --- | --- | --- |"]
    for row in rows:
        ci = row.get("ci")
        point, low, high = (
            (ci.point, ci.low, ci.high)
            if ci is not None
            else (row.get("point", math.nan), row.get("low", math.nan), row.get("high", math.nan))
        )
        interval = "n/a" if math.isnan(low) or math.isnan(high) else f"[{low:.3f}, {high:.3f}]"
        split = row.get("split", default_split)
        lines.append(f"| {row.get('metric', '')} | {split} | {format_value(float(point))} | {interval} |")
    return "\n".join(lines) + "\n"


def _operating_point(threshold: float | Mapping[str, Any] | None, class_names: Sequence[str]) -> str:
    if threshold is None:
        return "No decision threshold: the predicted class is the one with the highest probability (argmax).\n"
    info = dict(threshold) if isinstance(threshold, Mapping) else {"value": threshold}
    value = info.pop("value", info.pop("threshold", None))
    method = info.pop("method", "not recorded")
    split = info.pop("split", "validation")
    positive = class_names[1] if len(class_names) == 2 else "the positive class"
    text = (
        f"Predict **{positive}** when its probability is >= **{format_value(value, 4)}**.\n\n"
        f"The threshold was chosen on the **{split}** split (method: {method}).\n"
    )
    if "test" in str(split).lower():
        text += "\n**Warning**: a threshold chosen on the test split makes test metrics at it optimistic.\n"
    else:
        text += "The test split never influenced it.\n"
    return text + (_bullets(info) if info else "")


def _calibration(temperature: float | Mapping[str, Any] | None) -> str:
    if temperature is None:
        return "Probabilities are not recalibrated (no temperature scaling); treat them as scores, not risks.\n"
    info = dict(temperature) if isinstance(temperature, Mapping) else {"temperature": temperature}
    value = info.pop("temperature", info.pop("value", None))
    text = (
        f"Temperature scaling with **T = {format_value(value, 3)}**, fitted by minimising the negative "
        "log-likelihood on the validation split: probabilities are `softmax(logits / T)`. T > 1 means the raw "
        "model was over-confident. Calibration on other populations is not guaranteed.\n"
    )
    return text + (_bullets(info) if info else "")


def render_model_card(
    *,
    run_name: str,
    task: str,
    class_names: Sequence[str],
    model: Mapping[str, Any] | str,
    data_summary: Mapping[str, Any],
    preprocess: Mapping[str, Any],
    metrics_table: Sequence[Mapping[str, Any]],
    threshold: float | Mapping[str, Any] | None,
    temperature: float | Mapping[str, Any] | None,
    limitations: Sequence[str],
    metrics_split: str = "test",
    data_kind: DataKind = "kermany",
    ood: str | None = None,
) -> str:
    """The Markdown text of :func:`write_model_card`."""
    model_info = {"architecture": model} if isinstance(model, str) else dict(model)
    description, known = _BY_KIND[data_kind]
    all_limitations = list(dict.fromkeys([*known, *limitations]))
    parts = [
        f"# Model card: {run_name}\n",
        "> **Research use only. This is NOT a medical device** and must not be used for diagnosis, triage or "
        "any clinical decision.\n",
        *([SYNTHETIC_BANNER] if data_kind == "synthetic" else []),
        "## Model details\n",
        _bullets({"run": run_name, "task": task, "classes": ", ".join(map(str, class_names)), **model_info}),
        "## Intended use\n",
        "- Intended: research and teaching on pediatric chest X-ray classification, benchmarking, and studying "
        "shortcut learning and calibration.\n"
        "- Out of scope: diagnosis, screening, triage or any use on real patients. The model is **not a medical "
        "device**, has no regulatory clearance, and its outputs are not medical advice.\n",
        "## Data\n",
        description + "\n",
        _bullets(data_summary),
        "## Preprocessing contract\n",
        "Inputs must be preprocessed exactly like this at inference time, or the metrics below do not apply:\n",
        _bullets(preprocess),
        "## Metrics\n",
        "Point estimates with 95 % percentile bootstrap confidence intervals (patients resampled where patient "
        f"ids are known; threshold and temperature held fixed), computed on the **{metrics_split}** split unless a "
        "row says otherwise.\n",
        _metrics_markdown(metrics_table, metrics_split),
        "## Operating point\n",
        _operating_point(threshold, class_names),
        "## Calibration\n",
        _calibration(temperature),
        *(["## Out-of-distribution check\n", ood] if ood else []),
        "## Known failure modes and limitations\n",
        "\n".join(f"- {item}" for item in all_limitations) + "\n",
    ]
    return "\n".join(parts)


def write_model_card(
    path: str | os.PathLike[str],
    *,
    run_name: str,
    task: str,
    class_names: Sequence[str],
    model: Mapping[str, Any] | str,
    data_summary: Mapping[str, Any],
    preprocess: Mapping[str, Any],
    metrics_table: Sequence[Mapping[str, Any]],
    threshold: float | Mapping[str, Any] | None,
    temperature: float | Mapping[str, Any] | None,
    limitations: Sequence[str],
    metrics_split: str = "test",
    data_kind: DataKind = "kermany",
    ood: str | None = None,
) -> Path:
    """Write MODEL_CARD.md and return its path.

    ``threshold``: a float, a mapping ``{"value", "method", "split", ...}``, or None (multi-class argmax).
    ``temperature``: a float, a mapping ``{"temperature", "ece_before", "ece_after", ...}``, or None.
    ``metrics_table`` rows as for :func:`~pneumo.evaluation.report.write_html_report`; a row's ``split``
    overrides ``metrics_split``. ``ood``: Markdown on the out-of-distribution check (flag rates, metrics on the
    images that pass). ``data_kind`` picks the data description and the limitations listed before
    ``limitations`` (:data:`KNOWN_LIMITATIONS` for the Kermany release).
    """
    text = render_model_card(
        run_name=run_name,
        task=task,
        class_names=class_names,
        model=model,
        data_summary=data_summary,
        preprocess=preprocess,
        metrics_table=metrics_table,
        threshold=threshold,
        temperature=temperature,
        limitations=limitations,
        metrics_split=metrics_split,
        data_kind=data_kind,
        ood=ood,
    )
    write_text(path, text)
    return Path(path)
