"""Text tables of metrics with confidence intervals (Markdown or aligned plain text)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from pneumo.evaluation.bootstrap import CI

MISSING = "n/a"


def _number(value: float, digits: int) -> str:
    return MISSING if value is None or math.isnan(value) else f"{value:.{digits}f}"


def format_ci(ci: CI | Mapping[str, float], digits: int = 3) -> str:
    """``0.912 [0.889, 0.934]``; the point alone when the interval is undefined, ``n/a`` for a NaN point.

    Accepts a :class:`CI` or a mapping with ``point``, ``low`` and ``high``.
    """
    point, low, high = (ci.point, ci.low, ci.high) if isinstance(ci, CI) else (ci["point"], ci["low"], ci["high"])
    text = _number(point, digits)
    if text != MISSING and not (math.isnan(low) or math.isnan(high)):
        text += f" [{_number(low, digits)}, {_number(high, digits)}]"
    return text


def format_value(value: Any, digits: int = 3) -> str:
    """Cell text: CIs via :func:`format_ci`, floats rounded, None as ``n/a``, anything else ``str``."""
    if isinstance(value, CI) or (isinstance(value, Mapping) and {"point", "low", "high"} <= value.keys()):
        return format_ci(value, digits)
    if value is None:
        return MISSING
    if isinstance(value, float):
        return _number(value, digits)
    return str(value)


def _escape_markdown(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def compare_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], markdown: bool = True, digits: int = 3
) -> str:
    """A table with one line per row dict and the given columns (missing cells are ``n/a``).

    ``markdown=True`` gives a GitHub-flavoured Markdown table; ``False`` gives space-aligned plain text.
    Example row: ``{"run": "resnet18", "roc_auc": CI(0.912, 0.889, 0.934)}``.
    """
    if not columns:
        raise ValueError("at least one column is needed")
    cells = [[format_value(row.get(column), digits) for column in columns] for row in rows]
    header = [str(column) for column in columns]
    if markdown:
        lines = ["| " + " | ".join(_escape_markdown(h) for h in header) + " |"]
        lines.append("|" + "|".join(" --- " for _ in header) + "|")
        lines += ["| " + " | ".join(_escape_markdown(c) for c in line) + " |" for line in cells]
        return "\n".join(lines) + "\n"
    widths = [max([len(h), *(len(line[i]) for line in cells)]) for i, h in enumerate(header)]
    text_rows = [header, ["-" * w for w in widths], *cells]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in text_rows) + "\n"


def ci_rows(cis: Mapping[str, CI], metrics: Sequence[str] | None = None, **extra: Any) -> list[dict[str, Any]]:
    """Rows ``{"metric", "point", "low", "high", **extra}`` for :func:`write_html_report` and the model card,
    in the order of ``metrics`` (default: all of ``cis``); e.g. ``ci_rows(cis, split="test")``."""
    names = list(cis) if metrics is None else [m for m in metrics if m in cis]
    return [
        {"metric": name, "point": cis[name].point, "low": cis[name].low, "high": cis[name].high, **extra}
        for name in names
    ]
