"""Printing helpers shared by the CLI modules."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NoReturn

import typer

DEVICE_HELP = "auto (CUDA when available) | cpu | cuda | cuda:N"


def fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def os_error(exc: OSError) -> str:
    """A one-line message for a file-system failure (a full disk while caching or checkpointing), naming the file."""
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc} (free space, or set PNEUMO_CACHE_DIR / --out elsewhere)"


def check_device(device: str) -> None:
    """Refuse a ``--device`` the run could not use (a bad name, CUDA without a GPU) before any work starts."""
    from pneumo.utils.device import resolve_device

    try:
        resolve_device(device)
    except ValueError as exc:
        fail(f"--device: {exc}")


def print_table(rows: Sequence[dict[str, Any]], title: str | None = None) -> None:
    """A plain aligned text table (markdown-compatible), fine in logs and terminals alike."""
    if title:
        typer.echo(title)
    if not rows:
        typer.echo("(empty)")
        return
    cols = list(rows[0])
    cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    typer.echo("| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)) + " |")
    typer.echo("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        typer.echo("| " + " | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) + " |")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "" if v is None else str(v)
