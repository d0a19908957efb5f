"""Evaluation on plain arrays: metrics, patient-level bootstrap CIs, validation-chosen thresholds,
calibration, plots, an HTML report, a model card and comparison tables.

Plots live in :mod:`pneumo.evaluation.plots` (not imported here, so that importing metrics does not load
matplotlib).
"""

from pneumo.evaluation.bootstrap import CI, bootstrap_ci
from pneumo.evaluation.calibration import (
    ReliabilityCurve,
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    nll,
    reliability_curve,
)
from pneumo.evaluation.compare import ci_rows, compare_table, format_ci
from pneumo.evaluation.metrics import (
    MetricSuite,
    binary_metrics,
    compute_metrics,
    multiclass_metrics,
    scalar_metrics,
)
from pneumo.evaluation.model_card import KNOWN_LIMITATIONS, write_model_card
from pneumo.evaluation.report import BANNER, write_html_report
from pneumo.evaluation.threshold import choose_threshold

__all__ = [
    "BANNER",
    "CI",
    "KNOWN_LIMITATIONS",
    "MetricSuite",
    "ReliabilityCurve",
    "apply_temperature",
    "binary_metrics",
    "bootstrap_ci",
    "choose_threshold",
    "ci_rows",
    "compare_table",
    "compute_metrics",
    "expected_calibration_error",
    "fit_temperature",
    "format_ci",
    "multiclass_metrics",
    "nll",
    "reliability_curve",
    "scalar_metrics",
    "write_html_report",
    "write_model_card",
]
