"""Run the pneumo benchmark suite without the ``pneumo`` entry point: ``python benchmarks/run.py --quick``.

Same options as ``pneumo bench`` (``--help``); the suite itself lives in :mod:`pneumo.bench`.
"""

import typer

from pneumo.cli.bench import bench

if __name__ == "__main__":
    typer.run(bench)
