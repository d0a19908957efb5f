"""A single self-contained HTML evaluation report (inline CSS, plots as base64 data URIs, no scripts)."""

from __future__ import annotations

import base64
import datetime as dt
import html
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pneumo.evaluation.bootstrap import CI
from pneumo.evaluation.compare import format_value
from pneumo.utils.atomic import write_text

BANNER = "Research use only: not a medical device"
_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}
_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; max-width: 1100px;
       padding: 0 1.5rem 3rem; color: #1b1f23; line-height: 1.45; }
.banner { background: #b00020; color: #fff; font-weight: 700; padding: .7rem 1rem; margin: 0 -1.5rem 1rem;
          text-align: center; }
h1 { margin-top: .5rem; } h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .25rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: .5rem 0; }
th, td { border: 1px solid #d0d7de; padding: .3rem .6rem; text-align: left; vertical-align: top; }
th { background: #f6f8fa; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f6f8fa; padding: .8rem; overflow-x: auto; font-size: .85rem; }
figure { margin: 1rem 0; } figure img { max-width: 100%; height: auto; border: 1px solid #d0d7de; }
figcaption { font-size: .9rem; color: #57606a; } .text { white-space: pre-wrap; }
footer { margin-top: 2rem; font-size: .8rem; color: #57606a; }
"""


def to_plain(value: Any) -> Any:
    """Convert numpy scalars/arrays, paths, tuples, sets and dataclass-like objects to YAML/JSON-safe values."""
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(to_plain(v) for v in value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, CI):
        return value.to_dict()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def to_yaml(value: Any) -> str:
    return yaml.safe_dump(to_plain(value), sort_keys=False, allow_unicode=True, default_flow_style=False)


def _cell(value: Any) -> str:
    if isinstance(value, (Mapping, list, tuple)):
        return f"<td><pre>{html.escape(to_yaml(value))}</pre></td>"
    numeric = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
    css = ' class="num"' if numeric else ""
    return f"<td{css}>{html.escape(format_value(to_plain(value)))}</td>"


def _metrics_table(rows: Sequence[Mapping[str, Any]], ci_label: str) -> str:
    """Columns: metric, any extra keys of the rows (e.g. split, model), point estimate, CI."""
    if not rows:
        return "<p>No metrics.</p>"
    extra = [k for row in rows for k in row if k not in ("metric", "point", "low", "high", "ci")]
    extra = list(dict.fromkeys(extra))
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ["Metric", *extra, "Point estimate", ci_label])
    body = []
    for row in rows:
        ci = row.get("ci")
        point, low, high = (
            (ci.point, ci.low, ci.high)
            if isinstance(ci, CI)
            else (row.get("point", math.nan), row.get("low", math.nan), row.get("high", math.nan))
        )
        interval = "n/a" if math.isnan(low) or math.isnan(high) else f"[{low:.3f}, {high:.3f}]"
        cells = [
            f"<td>{html.escape(str(row.get('metric', '')))}</td>",
            *(_cell(row.get(k)) for k in extra),
            f'<td class="num">{html.escape(format_value(float(point)))}</td>',
            f'<td class="num">{html.escape(interval)}</td>',
        ]
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _key_value_table(data: Mapping[str, Any]) -> str:
    if not data:
        return "<p>None.</p>"
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th>{_cell(v)}</tr>" for k, v in data.items())
    return f"<table><tbody>{rows}</tbody></table>"


def _figure(name: str, path: Path) -> str:
    mime = _MIME.get(path.suffix.lower())
    if mime is None:
        raise ValueError(f"unsupported image type for the report: {path}")
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    label = html.escape(name)
    return f'<figure><img src="data:{mime};base64,{encoded}" alt="{label}"><figcaption>{label}</figcaption></figure>'


def render_html_report(
    *,
    title: str,
    config: Mapping[str, Any],
    data_summary: Mapping[str, Any],
    metrics_table: Sequence[Mapping[str, Any]],
    plots: Mapping[str, str | os.PathLike[str]],
    limitations: Sequence[str],
    extra_sections: Mapping[str, str] | None = None,
    ci_label: str = "95 % CI",
) -> str:
    """The HTML text of :func:`write_html_report`."""
    sections = [
        ("Metrics", _metrics_table(metrics_table, ci_label)),
        ("Data", _key_value_table(data_summary)),
        ("Plots", "".join(_figure(name, Path(p)) for name, p in plots.items()) or "<p>No plots.</p>"),
    ]
    sections += [
        (name, f'<div class="text">{html.escape(text)}</div>') for name, text in (extra_sections or {}).items()
    ]
    items = "".join(f"<li>{html.escape(item)}</li>" for item in limitations)
    sections.append(("Limitations", f"<ul>{items}</ul>" if items else "<p>None listed.</p>"))
    sections.append(("Configuration", f"<pre>{html.escape(to_yaml(dict(config)))}</pre>"))
    body = "\n".join(f"<section><h2>{html.escape(name)}</h2>\n{content}</section>" for name, content in sections)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        f'<div class="banner" role="note">{BANNER}. Not for diagnosis or clinical decisions.</div>\n'
        f"<h1>{html.escape(title)}</h1>\n{body}\n"
        f"<footer>Generated by pneumo on {stamp}. {BANNER}.</footer>\n</body>\n</html>\n"
    )


def write_html_report(
    path: str | os.PathLike[str],
    *,
    title: str,
    config: Mapping[str, Any],
    data_summary: Mapping[str, Any],
    metrics_table: Sequence[Mapping[str, Any]],
    plots: Mapping[str, str | os.PathLike[str]],
    limitations: Sequence[str],
    extra_sections: Mapping[str, str] | None = None,
) -> Path:
    """Write one self-contained HTML report and return its path.

    ``metrics_table`` rows hold ``metric`` and either ``point``/``low``/``high`` or ``ci`` (a :class:`CI`);
    other keys (e.g. ``split``) become extra columns (see :func:`~pneumo.evaluation.compare.ci_rows`).
    ``plots`` maps a caption to an image file that is embedded as a base64 data URI. All text is escaped.
    """
    text = render_html_report(
        title=title,
        config=config,
        data_summary=data_summary,
        metrics_table=metrics_table,
        plots=plots,
        limitations=limitations,
        extra_sections=extra_sections,
    )
    write_text(path, text)
    return Path(path)
