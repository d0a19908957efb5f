"""The ``pneumo`` command: thin wrappers that parse arguments, call one library function and print.

One module per command group keeps each wrapper short; no logic lives here.
"""

from __future__ import annotations

import logging

import typer

from pneumo.cli import data as data_cli

app = typer.Typer(
    name="pneumo",
    help="Pneumonia classification from pediatric chest X-rays. Research use only: not a medical device.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(data_cli.app, name="data")


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages.")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(message)s")


def main() -> None:
    app()
