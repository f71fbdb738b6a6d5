"""A one-line progress bar for a terminal, and a quiet line-per-step fallback for logs.

On a terminal the line is redrawn in place (carriage return); otherwise (CI, tests, a pipe)
a line is printed each time another tenth of the work is done, so logs stay short.
"""

from __future__ import annotations

import sys
from typing import TextIO

BAR_WIDTH = 28


class ProgressBar:
    def __init__(self, total: float, *, stream: TextIO | None = None) -> None:
        self.total = max(total, 1e-9)
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty()
        self._last_tenth = -1
        self._width = 0

    def update(self, done: float, status: str) -> None:
        fraction = min(max(done / self.total, 0.0), 1.0)
        if self.interactive:
            filled = round(BAR_WIDTH * fraction)
            line = f"\r[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {fraction:4.0%}  {status}"
            padding = max(0, self._width - len(line))
            self._width = len(line)
            self.stream.write(line + " " * padding)
            self.stream.flush()
            return
        tenth = int(fraction * 10)
        if tenth > self._last_tenth:
            self._last_tenth = tenth
            self.stream.write(f"{fraction:4.0%}  {status}\n")
            self.stream.flush()

    def finish(self, status: str) -> None:
        self.update(self.total, status)
        if self.interactive:
            self.stream.write("\n")
            self.stream.flush()
