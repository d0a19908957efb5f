"""Progress bars refresh rarely in log files and normally in a terminal."""

from __future__ import annotations

import io

from pneumo.utils.progress import LOG_INTERVAL_S, progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_files_get_a_slow_refresh_and_terminals_the_default() -> None:
    with progress_bar(total=3, file=io.StringIO()) as bar:
        assert bar.mininterval == LOG_INTERVAL_S
    with progress_bar(total=3, file=_Terminal()) as bar:
        assert bar.mininterval < 1
    with progress_bar(total=3, file=io.StringIO(), mininterval=2) as bar:
        assert bar.mininterval == 2
