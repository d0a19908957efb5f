"""Progress bars that stay readable in log files.

tqdm redraws up to ten times a second; in a terminal that overwrites one line, but a log file (CI, ``nohup``, a
reproduce run) gets every redraw. Without a TTY the bar is refreshed at most every 30 s.
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm

LOG_INTERVAL_S = 30.0


def progress_bar(*args: Any, **kwargs: Any) -> tqdm:
    """``tqdm(*args, **kwargs)`` on stderr, with ``mininterval`` raised when stderr is not a terminal."""
    stream = kwargs.setdefault("file", sys.stderr)
    if not getattr(stream, "isatty", lambda: False)():
        kwargs.setdefault("mininterval", LOG_INTERVAL_S)
    return tqdm(*args, **kwargs)
