"""Which code produced a result: the git commit of the pneumo source tree.

``PNEUMO_GIT_COMMIT`` overrides the lookup. Set it where the source travels without a trustworthy ``.git`` (a copy
of the working tree on a lent GPU machine, a container build); otherwise ``git rev-parse`` runs in the package's
own folder, and the answer is None outside a git checkout (an installed wheel).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ENV_VAR = "PNEUMO_GIT_COMMIT"


def git_commit(*, short: bool = False) -> str | None:
    commit = os.environ.get(ENV_VAR, "").strip()
    if not commit:
        try:
            out = subprocess.run(
                ["git", "rev-parse", "HEAD"],
                cwd=Path(__file__).resolve().parent,
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        commit = out.stdout.strip()
    return (commit[:7] if short else commit) or None
