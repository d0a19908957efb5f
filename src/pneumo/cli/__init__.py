"""The ``pneumo`` command: thin wrappers that parse arguments, call one library function and print.

One module per command group keeps each wrapper short; no logic lives here.
"""

from __future__ import annotations

import logging
from typing import Any

import click
import typer
from typer.core import TyperGroup

from pneumo.cli import audit as audit_cli
from pneumo.cli import bench as bench_cli
from pneumo.cli import data as data_cli
from pneumo.cli import evaluate as evaluate_cli
from pneumo.cli import gan as gan_cli
from pneumo.cli import reproduce as reproduce_cli
from pneumo.cli import train as train_cli
from pneumo.cli import use as use_cli
from pneumo.cli.output import fail
from pneumo.utils.errors import PneumoError


class _Commands(TyperGroup):
    """The one place where pneumo's own errors (:class:`PneumoError`: bad input, a damaged file) become a one-line
    ``error: ...`` and exit status 2, whichever command raised them."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PneumoError as exc:
            fail(str(exc))


app = typer.Typer(
    name="pneumo",
    cls=_Commands,
    help="Pneumonia classification from pediatric chest X-rays. Research use only: not a medical device.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(data_cli.app, name="data")
app.add_typer(gan_cli.app, name="gan")
app.add_typer(audit_cli.app, name="audit")
app.command("train")(train_cli.train)
app.command("evaluate")(evaluate_cli.evaluate)
app.command("compare")(evaluate_cli.compare)
app.command("reproduce")(reproduce_cli.reproduce)
app.command("demo")(reproduce_cli.demo)
use_cli.register(app)
app.command("bench")(bench_cli.bench)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages.")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(message)s")


def main() -> None:
    app()
