"""The command line's standard error without the panic reports of Polars' Rust code.

A panic in Polars' Rust code (a corrupted page its decoder trips on) is caught
and reported as one ``raft-polars: error:`` line naming the file, but Rust's
panic hook has already written its own report, with a stack backtrace, to file
descriptor 2. While a command runs, :func:`without_panic_reports` points
descriptor 2 at a pipe and Python's ``sys.stderr`` at a copy of the real one; a
thread passes on what native code writes to the pipe (a Dask worker's log,
a library's warning), line by line, leaving out panic reports.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
import time
from collections.abc import Iterator

__all__ = ["PanicFilter", "without_panic_reports"]

_PANIC = re.compile(r"^thread '[^']*'( \(\d+\))? panicked at ")


class PanicFilter:
    """Lines in, the same lines out but for Rust's panic reports: from the
    ``thread '...' panicked at`` line (and the blank line Rust writes before it)
    to the ``note: ...`` line that ends it, or, with a full backtrace and no
    note, to the last indented line of the backtrace."""

    def __init__(self) -> None:
        self._inside = False
        self._backtrace = False
        self._blank: list[str] = []

    def lines(self, line: str) -> list[str]:
        """What to write for ``line`` (with its newline), in order."""
        if self._inside:
            if line.startswith("note: "):
                self._inside = False
                return []
            if line.startswith("stack backtrace:"):
                self._backtrace = True
                return []
            if not self._backtrace or line.startswith((" ", "\t")):
                return []  # the panic's message, or a frame of its backtrace
            self._inside = False  # a full backtrace ended without a note
        if not line.strip():
            self._blank.append(line)
            return []
        held, self._blank = self._blank, []
        if _PANIC.match(line):
            self._inside, self._backtrace = True, False
            return []
        return [*held, line]

    def close(self) -> list[str]:
        """What is left to write at the end."""
        held, self._blank = self._blank, []
        return [] if self._inside else held


@contextlib.contextmanager
def without_panic_reports() -> Iterator[None]:
    """Run the block with descriptor 2 filtered through :class:`PanicFilter`;
    nothing changes where descriptor 2 cannot be redirected."""
    python = sys.stderr
    try:
        python.flush()
        real = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    read, write = os.pipe()
    os.dup2(write, 2)
    os.close(write)
    sys.stderr = open(  # noqa: SIM115 - closed below, after the block
        real,
        "w",
        encoding=getattr(python, "encoding", None) or "utf-8",
        errors=getattr(python, "errors", None) or "backslashreplace",
        buffering=1,
        closefd=False,
    )
    heard = [time.monotonic()]  # when the relay last passed something on
    relay = threading.Thread(target=_relay, args=(read, real, heard), name="raft-polars-stderr")
    relay.daemon = True
    relay.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        sys.stderr.close()
        sys.stderr = python
        os.dup2(real, 2)  # the pipe's last writer here closes: the relay sees its end
        # a process the block started may still hold the pipe open (a local Dask
        # cluster's resource tracker, to the end): wait while it writes, at most 2 s,
        # not 2 s whenever it is silent
        start = time.monotonic()
        while relay.is_alive() and time.monotonic() - start < _LINGER:
            relay.join(timeout=0.05)
            if time.monotonic() - heard[0] > _QUIET:
                break
        if not relay.is_alive():  # else the relay still writes to it
            os.close(real)


_LINGER = 2.0  # seconds the end of the block waits at most for the pipe's other writers
_QUIET = 0.2  # ... and at most this long after the last thing they wrote


def _relay(read: int, real: int, heard: list[float]) -> None:
    """Pass the pipe's lines on to ``real``, leaving out panic reports; ``heard``
    holds when it last read something."""
    screen = PanicFilter()
    pending = b""
    with contextlib.suppress(OSError), open(read, "rb", buffering=0) as pipe:
        while chunk := pipe.read(1 << 16):
            heard[0] = time.monotonic()
            pending += chunk
            *whole, pending = pending.split(b"\n")
            for raw in whole:
                _write(real, screen.lines(raw.decode(errors="replace") + "\n"))
    if pending:  # a last line without its newline
        _write(real, screen.lines(pending.decode(errors="replace")))
    _write(real, screen.close())


def _write(real: int, lines: list[str]) -> None:
    if lines:
        with contextlib.suppress(OSError):
            os.write(real, "".join(lines).encode())
