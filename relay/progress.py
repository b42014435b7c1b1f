"""Progress of a long command (`relay export`, `relay import`, `relay probe`) on stderr.

On a terminal, one line rewritten in place (`\\r`), at most every TERMINAL_REFRESH seconds,
and ended with a newline when the command finishes. Anywhere else (a log file, a pipe, a
container's log), whole lines: one every PROGRESS_SECONDS seconds or every PROGRESS_COUNT
items, whichever comes first. Each shows the count, the rate and the time so far.

The commands take `--progress-seconds` and `--progress-count` to change the two periods
(the tests lower them to see lines from a small import).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

PROGRESS_SECONDS = 5.0
PROGRESS_COUNT = 100_000
TERMINAL_REFRESH = 0.2


class Progress:
    """Counts items of one command and reports them on `stream` (stderr by default)."""

    def __init__(
        self,
        label: str,
        unit: str,
        *,
        stream: TextIO | None = None,
        seconds: float = PROGRESS_SECONDS,
        count: int = PROGRESS_COUNT,
        terminal: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.unit = unit
        self.stream = sys.stderr if stream is None else stream
        self.seconds = seconds
        self.count = count
        self.terminal = _isatty(self.stream) if terminal is None else terminal
        self.clock = clock
        self.started = clock()
        self.done = 0
        self.detail = ""
        self._shown_at = self.started
        self._shown_done = 0
        self._drawn = False  # a terminal line is waiting for its newline

    def advance(self, items: int = 1, detail: str | None = None) -> None:
        self.update(self.done + items, detail)

    def update(self, done: int, detail: str | None = None) -> None:
        """`done` items so far; `detail` (the rest of the line) replaces the last one."""
        self.done = done
        if detail is not None:
            self.detail = detail
        now = self.clock()
        if self.terminal:
            if now - self._shown_at >= TERMINAL_REFRESH:
                self._draw(now)
        elif now - self._shown_at >= self.seconds or done - self._shown_done >= self.count:
            self._write(self.line(now) + "\n")
            self._shown_at, self._shown_done = now, done

    def finish(self) -> None:
        """Ends the terminal line (showing the last count); nothing otherwise: the command
        prints its own summary."""
        if self.terminal and (self._drawn or self.done):
            self._draw(self.clock())
            self._write("\n")
            self._drawn = False

    def line(self, now: float | None = None) -> str:
        elapsed = max((self.clock() if now is None else now) - self.started, 1e-9)
        rate = self.done / elapsed
        detail = f", {self.detail}" if self.detail else ""
        return (
            f"relay {self.label}: {self.done} {self.unit}{detail}, "
            f"{rate:.0f} {self.unit}/s, {elapsed:.1f} s"
        )

    def _draw(self, now: float) -> None:
        self._write("\r" + self.line(now) + "\x1b[K")
        self._shown_at, self._shown_done = now, self.done
        self._drawn = True

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # stderr closed: progress is not worth failing for
            pass


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (OSError, ValueError):
        return False
