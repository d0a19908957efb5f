"""Which code produced a result: the git commit of the pneumo source tree, ``-dirty`` when it had changes.

``PNEUMO_GIT_COMMIT`` overrides the lookup. Set it where the source travels without a trustworthy ``.git`` (a copy
of the working tree on a lent GPU machine, a container build); otherwise git is asked about the checkout that holds
this very file, and the answer is None elsewhere (an installed wheel, even one inside another project's checkout).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ENV_VAR = "PNEUMO_GIT_COMMIT"
DIRTY = "-dirty"
_SRC = Path(__file__).resolve().parents[2]  # the folder holding the pneumo package (src/ in a checkout)


def _git(*args: str, cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_commit(*, short: bool = False) -> str | None:
    commit = os.environ.get(ENV_VAR, "").strip()
    if not commit:
        top = _git("rev-parse", "--show-toplevel", cwd=_SRC)
        if not top or Path(top).resolve() != _SRC.parent:  # not the pneumo checkout: another project's repository
            return None
        head = _git("rev-parse", "HEAD", cwd=_SRC)
        if not head:
            return None
        changes = _git("status", "--porcelain", "--", str(_SRC), cwd=_SRC)
        commit = head + (DIRTY if changes else "")
    return (short_commit(commit) if short else commit) or None


def short_commit(commit: str) -> str:
    """The first 7 hex digits, keeping a ``-dirty`` mark."""
    sha, dirty = commit.removesuffix(DIRTY), commit.endswith(DIRTY)
    return sha[:7] + (DIRTY if dirty else "")
