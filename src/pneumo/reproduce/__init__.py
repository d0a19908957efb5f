"""Experiment suites (YAML rows under ``experiments/``), the ``pneumo reproduce`` runner and the results table."""
