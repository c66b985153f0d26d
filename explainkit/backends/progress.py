"""Progress of a run phase on stderr: a tqdm bar on a terminal, plain lines elsewhere.

A CI log, ``nohup`` or a notebook cell is not a terminal: there a bar would print nothing useful
(or one line per refresh), so each phase prints one line at most every ``interval`` seconds with
the images done, the rate and the time left, plus a last line when it ends::

    explainkit: analyze: 320/1000 images (32%), 2.14 images/s, about 5m18s left

A step without images (``total`` 0, e.g. an analyzer's finalize) prints one line when it ends,
on a terminal too::

    explainkit: finalize gradcam: done in 42s
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import IO

from tqdm import tqdm

__all__ = ["DEFAULT_INTERVAL_S", "Progress", "format_duration"]

#: Seconds between two progress lines when stderr is not a terminal.
DEFAULT_INTERVAL_S = 30.0


def format_duration(seconds: float) -> str:
    """``75`` → ``"1m15s"``; ``3725`` → ``"1h02m"``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class Progress:
    """Progress of one phase (a pass over ``total`` images).

    Parameters
    ----------
    phase : str
        What runs (``"analyze"``, ``"round 1: gradcam metrics"``).
    total : int
        Images in the phase.
    enabled : bool or None
        ``None``: a bar on a terminal, lines otherwise; ``True``: a bar even when not a terminal;
        ``False``: nothing.
    interval : float
        Least seconds between two lines (not a terminal).
    stream : file, optional
        Where to write (default ``sys.stderr``).
    clock : callable
        Seconds (monotonic).
    """

    def __init__(self, phase: str, total: int, *, enabled: bool | None = None,
                 interval: float = DEFAULT_INTERVAL_S, stream: IO[str] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.phase = phase
        self.total = int(total)
        self.interval = float(interval)
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.done = 0
        self.started = clock()
        self.last = self.started
        tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.mode = "off" if enabled is False else ("bar" if tty or enabled else "lines")
        if self.mode == "bar" and not self.total:
            self.mode = "lines"
        self.bar = tqdm(total=self.total, file=self.stream, desc=phase, unit="img", leave=False) \
            if self.mode == "bar" else None

    def update(self, images: int) -> None:
        """``images`` more are done."""
        self.done += int(images)
        if self.bar is not None:
            self.bar.update(images)
        elif self.mode == "lines" and self.done < self.total:
            now = self.clock()
            if now - self.last >= self.interval:
                self.last = now
                self._line(now)

    def close(self) -> None:
        """End of the phase: close the bar, or print the last line."""
        if self.bar is not None:
            self.bar.close()
        elif self.mode == "lines":
            self._line(self.clock(), final=True)

    def _line(self, now: float, final: bool = False) -> None:
        elapsed = now - self.started
        if not self.total:
            self.stream.write(f"explainkit: {self.phase}: done in {format_duration(elapsed)}\n")
            self.stream.flush()
            return
        rate = self.done / elapsed if elapsed > 0 else 0.0
        pct = f" ({100 * self.done / self.total:.0f}%)"
        if final:
            tail = f"done in {format_duration(elapsed)}"
        elif rate > 0:
            tail = f"about {format_duration((self.total - self.done) / rate)} left"
        else:
            tail = "time left unknown"
        self.stream.write(f"explainkit: {self.phase}: {self.done}/{self.total} images{pct}, "
                          f"{rate:.3g} images/s, {tail}\n")
        self.stream.flush()
