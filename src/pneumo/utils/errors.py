"""The base of pneumo's error types: what a command can report as one line (the CLI prints its message)."""

from __future__ import annotations


class PneumoError(Exception):
    """An error whose message says what is wrong and what to do; raised for bad input, not for bugs."""
