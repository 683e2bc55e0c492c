"""How the command line ends on Ctrl-C (SIGINT), SIGTERM and SIGHUP: at once,
with one line at most, no traceback, and no partial output.

Python raises a signal's ``KeyboardInterrupt`` (or a handler's ``SystemExit``)
wherever the main thread runs Python code next, which may be a callback that
Polars' or pyo3's Rust code, or ctypes and numba, called: there the exception
was swallowed (the command ran on and exited 0), turned into a panic (a
traceback, exit 1) or into another error (exit 2, the Ctrl-C blamed on a data
file). So :func:`install` (the command line's, never the library's) gives
these signals a handler that raises nothing; Python's own C handler writes the
signal's number to a pipe (``signal.set_wakeup_fd``), and a thread that reads
it ends the process: it removes the temporary files of the writes in progress
(:func:`temporary`), says ``interrupted`` on Ctrl-C, stops the worker
processes the command started (a local Dask cluster's) and exits with
128 + the signal's number, without unwinding anything.

A write's final rename is done under :func:`renaming`: a signal that comes
during it is acted on once the rename is done (the output is then complete) or
undone (the temporary file is removed).

Once the command's work is done and its output complete (:func:`finished`,
which the command line's dispatcher calls when a command ends with its result,
and :func:`running` undoes as the next one starts), a signal ends the process
at once with the command's exit status, silently: its standard output flushed
and the worker processes stopped, as ever. What comes after the result is the
process's own cleanup (the wait for a local Dask cluster's helper processes to
let go of the standard error, the ``atexit`` functions), seconds long at times:
a signal then no longer says that the output is partial. An error's exit has no
such mark: a signal then ends it with 128 + the signal's number.

Polars also hooks SIGINT itself and stops its query with a ``KeyboardInterrupt``
(or a reader's error) of its own: the command line's reports of errors wait
(:func:`hold_if_signalled`) while a signal came, so that the ending speaks once.
And the console script ends with :func:`exit_now`, without the interpreter's
finalization, which gives the signals back their default handlers first.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

__all__ = [
    "exit_now",
    "finished",
    "hold_if_signalled",
    "install",
    "renaming",
    "running",
    "temporary",
    "temporary_name",
]

TMP_PREFIX = ".raft-tmp-"  # a write's temporary name: this, the process id, 12 hex digits

_TEMPORARY: set[str] = set()  # paths of the writes in progress, removed on a signal
_RENAMING = threading.Lock()  # held by a write's rename, and by the ending
_NAMES = ("SIGINT", "SIGTERM", "SIGHUP")
_installed: list[int] = []  # the signals handled here, once installed
_wakeup: list[int] = []  # the read end of the wake-up pipe, once installed
_SEEN = threading.Lock()  # the watcher's taking of a signal, atomic to hold_if_signalled
_taken: list[int] = []  # the signals the watcher took
_finished: list[int] = []  # the exit status of the command that finished, once it did
_PROG = "raft-polars"


def temporary_name(directory: str | os.PathLike[str]) -> str:
    """A new temporary name in ``directory`` (``.raft-tmp-<pid>-<12 hex digits>``:
    hidden from reads, and known by the pid for the removal of stale ones)."""
    return os.path.join(directory, f"{TMP_PREFIX}{os.getpid()}-{os.urandom(6).hex()}")


@contextlib.contextmanager
def temporary(path: str | os.PathLike[str]) -> Iterator[None]:
    """Within the block, ``path`` (a file or a directory) is removed should a
    signal end the command."""
    name = os.fspath(path)
    _TEMPORARY.add(name)
    try:
        yield
    finally:
        _TEMPORARY.discard(name)


@contextlib.contextmanager
def renaming() -> Iterator[None]:
    """Within the block, a signal waits: a rename is completed or undone first."""
    with _RENAMING:
        yield


def finished(code: int = 0) -> None:
    """Mark the command as finished with the exit status ``code``: its work is
    done and its output complete. A signal that comes later ends the process
    at once with ``code`` (not 128 + its number), silently."""
    _finished[:] = [code]


def running() -> None:
    """Mark a command as started: not finished (the mark of an earlier command
    run in the same process, through ``main``, is dropped)."""
    _finished.clear()


def install() -> None:
    """End the process on SIGINT, SIGTERM and SIGHUP as described above, for
    those whose handling is still Python's default (a SIGHUP ignored under
    ``nohup``, a SIGINT ignored in a background job, stay so). Only from the
    main thread; a second call does nothing."""
    if _installed or threading.current_thread() is not threading.main_thread():
        return
    defaults = {signal.SIG_DFL, signal.default_int_handler}
    numbers = [
        number
        for number in (getattr(signal, name, None) for name in _NAMES)
        if number is not None and signal.getsignal(number) in defaults
    ]
    if not numbers:
        return
    read, write = os.pipe()
    os.set_blocking(write, False)
    try:
        signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    except (ValueError, OSError):
        os.close(read)
        os.close(write)
        return
    watcher = threading.Thread(target=_watch, args=(read,), name="raft-polars-signals")
    watcher.daemon = True
    watcher.start()
    _wakeup.append(read)
    _installed.extend(numbers)
    for number in numbers:
        signal.signal(number, _noted)


def _noted(number: int, frame: Any) -> None:
    """The handler run in the main thread: nothing (the watcher ends the process)."""


def _watch(read: int) -> None:
    """Wait for a signal's number on the wake-up pipe; end on one of ours."""
    import select

    while True:
        try:
            select.select([read], [], [])
            with _SEEN:
                got = os.read(read, 64)
                ours = [n for n in got if n in _installed and signal.getsignal(n) is _noted]
                _taken.extend(ours)
        except InterruptedError:
            continue
        except OSError:
            return
        if not got:
            return
        if ours:
            _end(ours[0])


def _pending() -> bool:
    """Whether one of our signals came: taken by the watcher, or still in the
    pipe (Python's C handler writes it there before anything else runs).
    Called holding ``_SEEN``."""
    if _taken:
        return True
    import select

    try:
        ready, _, _ = select.select(_wakeup[:1], [], [], 0)
    except (OSError, ValueError):
        return False
    return bool(ready)


def hold_if_signalled(seconds: float = 30.0) -> None:
    """Where a signal came, wait for its ending (which says what there is to
    say, and exits): the main thread is about to report an error, or to end
    with a traceback, that the signal caused (Polars turns Ctrl-C into a
    ``KeyboardInterrupt`` of its own, raised from the query it stops, or into
    an error of a reader it stopped)."""
    if not _wakeup:
        return
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with _SEEN:
            if not _pending():  # none came, or the byte was another signal's
                return
        time.sleep(0.01)


def exit_now(code: int) -> None:
    """End the process with ``code`` once a command is over: its standard
    streams flushed and the ``atexit`` functions run, but not the
    interpreter's finalization, during which a signal is no longer ours
    (Python restores the default handlers first: SIGTERM then killed the
    process, -15, with its output written, and Ctrl-C too)."""
    import atexit

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            if stream is not None:
                stream.flush()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):  # what the atexit functions wrote
        with contextlib.suppress(Exception):
            if stream is not None:
                stream.flush()
    os._exit(code)


def _end(number: int) -> None:
    """Remove the writes' temporary files, say so on Ctrl-C, stop the worker
    processes started, exit with 128 + ``number``; or, once the command had
    :func:`finished`, flush its standard output, stop the worker processes and
    exit with its status."""
    _RENAMING.acquire()  # a rename in progress is finished first; no other starts
    if _finished:
        for stream in (sys.stdout, sys.stderr):  # flushed already: whatever is left
            with contextlib.suppress(Exception):
                if stream is not None:
                    stream.flush()
        _stop_children()
        os._exit(_finished[0])
    for path in list(_TEMPORARY):
        _remove(path)
    if number == signal.SIGINT:
        _say(f"{_PROG}: error: interrupted\n")
    _stop_children()
    os._exit(128 + number)


def _remove(path: str) -> None:
    """Remove a temporary file or directory. A directory (``generate``'s) is
    renamed first, to a temporary name of the same form: the main thread, still
    writing, can no longer add a file to it by its name, so that the removal of
    what it holds is not undone by a file made meanwhile (a new part left the
    directory behind)."""
    try:
        os.unlink(path)
    except OSError:
        if os.path.isdir(path) and not os.path.islink(path):
            import shutil  # not at the top: installed while the process starts

            away = temporary_name(os.path.dirname(path))
            with contextlib.suppress(OSError):
                os.rename(path, away)
                path = away
            shutil.rmtree(path, ignore_errors=True)


def _say(text: str) -> None:
    """Write ``text`` to the command's standard error (while native stderr goes
    through the panic filter's pipe, ``sys.stderr`` is the real one), on a
    terminal after clearing the progress line."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, ValueError, OSError):
        fd = 2
    with contextlib.suppress(OSError):
        if os.isatty(fd):
            text = "\r\x1b[K" + text
        os.write(fd, text.encode())


def _stop_children() -> None:
    """Kill the worker processes this process started (a local Dask cluster's):
    left alone, they would outlive it."""
    multiprocessing = sys.modules.get("multiprocessing")
    if multiprocessing is None:
        return
    with contextlib.suppress(Exception):
        for child in multiprocessing.active_children():
            with contextlib.suppress(Exception):
                child.kill()
