"""Child process of the training tests (also run by torchrun).

``train CONFIG.yaml [KILL_AT_STEP]``: train from a config file; with KILL_AT_STEP the process (under torchrun: rank 0)
SIGKILLs itself just before that (1-based) training step, i.e. mid-epoch and after the last step checkpoint.
``cli ARGS...``: the ``pneumo train`` command with ARGS (e.g. ``--resume RUN_DIR``).
"""

from __future__ import annotations

import os
import signal
import sys


def main() -> None:
    mode, *rest = sys.argv[1:]
    if mode == "cli":
        import typer

        from pneumo.cli.train import train as train_command

        app = typer.Typer()
        app.command()(train_command)
        app(rest)
        return

    from pneumo.training import train, validate_config
    from pneumo.training.config import load_yaml
    from pneumo.training.engine import Trainer

    cfg = validate_config(load_yaml(rest[0]))
    if len(rest) > 1:
        kill_at = int(rest[1])
        original = Trainer._train_step
        calls = 0

        def step_then_maybe_die(self, *args, **kwargs):
            nonlocal calls
            calls += 1
            # Under torchrun only rank 0 dies: it writes the checkpoints, and has finished the last one by then. Were
            # another rank to die first, torchrun could stop rank 0 in the middle of writing it.
            if calls == kill_at and os.environ.get("RANK", "0") == "0":
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self, *args, **kwargs)

        Trainer._train_step = step_then_maybe_die
    train(cfg)


if __name__ == "__main__":
    main()
