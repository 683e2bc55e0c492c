"""Progress of long calls, for whoever asked to hear it.

The library prints nothing: the executors call :func:`report` at each step (keys
ranked, token rows summed, shards done), and :func:`reporting` installs a
receiver for the calls inside it. The CLI installs one that redraws a line on
its terminal's stderr.

Examples
--------
>>> import polars as pl
>>> import raft_polars as rp
>>> from raft_polars._progress import reporting
>>> log = pl.DataFrame({"stage": [0, 0], "prompt": [0, 0], "cand": [0, 1],
...                     "reward": [0.2, 0.4], "logprobs": [[-2.0], [-1.5]]})
>>> heard = []
>>> with reporting(heard.append):
...     _ = rp.stage_losses(log)
>>> heard[0].startswith("ranked 2 candidates")
True
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["Clock", "Meter", "report", "reporting"]

_RECEIVER: ContextVar[Callable[[str], None] | None] = ContextVar("raft_progress", default=None)


def report(message: str) -> None:
    """Tell the receiver installed by :func:`reporting`, if any."""
    receiver = _RECEIVER.get()
    if receiver is not None:
        receiver(message)


def active() -> bool:
    """Whether anyone listens (to skip work done only for the messages)."""
    return _RECEIVER.get() is not None


@contextmanager
def reporting(receiver: Callable[[str], None]) -> Iterator[None]:
    """Send the progress messages of the calls inside to ``receiver``."""
    token = _RECEIVER.set(receiver)
    try:
        yield
    finally:
        _RECEIVER.reset(token)


class Clock:
    """Seconds since the clock was made, for the messages."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def lap(self) -> float:
        now = time.perf_counter()
        elapsed, self.start = now - self.start, now
        return elapsed


class Meter:
    """A count of work done (rows, files), told as it grows: at once, then at
    most every ``every`` seconds, and at :meth:`done`. The receiver is the one
    installed where the meter is made, so that it may count in other threads
    (decoding threads, Polars' own) which do not share the context.
    """

    def __init__(self, what: str, verb: str = "checked", every: float = 0.25) -> None:
        self.what, self.verb, self.every = what, verb, every
        self.total = 0
        self._receiver = _RECEIVER.get()
        self._clock = Clock()
        self._told: float | None = None
        self._lock = threading.Lock()

    def add(self, count: int) -> None:
        if self._receiver is None:
            return
        with self._lock:
            self.total += count
            now = self._clock.elapsed()
            if self._told is not None and now - self._told < self.every:
                return
            self._told = now
            self._receiver(self._message())

    def done(self) -> None:
        if self._receiver is not None:
            with self._lock:
                self._receiver(self._message())

    def _message(self) -> str:
        return f"{self.verb} {self.total:,} {self.what} ({self._clock.elapsed():.1f} s)"
