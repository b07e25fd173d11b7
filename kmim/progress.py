"""Progress for terminals and for log files: a tqdm bar when stderr is a terminal; otherwise whole lines, no
carriage returns, at most one every LOG_INTERVAL_S seconds (a batch job's log stays small and readable with `tail`).
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm

LOG_INTERVAL_S = 60.0  # seconds between lines of a bar written to a log file


def is_terminal() -> bool:
    return sys.stderr.isatty()


class LineBar(tqdm):  # type: ignore[misc]  # tqdm ships no type information
    """tqdm that writes its status as a whole line (no carriage return) at most every `mininterval` seconds, and
    nothing before the first step or when it is cleared."""

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg == "" or (msg is None and self.n == 0):
            return True
        self.fp.write((msg if msg is not None else self.__str__()).strip() + "\n")
        self.fp.flush()
        return True

    def clear(self, nolock: bool = False) -> None:
        """Nothing to erase: a line once written stays (tqdm.write would otherwise send a carriage return)."""

    def moveto(self, n: int) -> None:
        """No cursor movement (tqdm moves between nested bars with newlines and escape codes)."""

    def close(self) -> None:
        """The final status as one line (when the bar is kept and moved at all), never a carriage return."""
        if not getattr(self, "disable", True) and self.leave and self.n > 0:
            self.fp.write(self.__str__().strip() + "\n")
            self.fp.flush()
        self.sp = None  # tqdm's close then writes nothing itself
        super().close()


def progress_bar(iterable: Any = None, **kwargs: Any) -> tqdm:
    """tqdm(iterable, **kwargs) on a terminal; a LineBar writing a line every LOG_INTERVAL_S seconds otherwise."""
    if is_terminal():
        return tqdm(iterable, **kwargs)
    kwargs.setdefault("mininterval", LOG_INTERVAL_S)
    return LineBar(iterable, dynamic_ncols=False, ncols=100, **kwargs)
