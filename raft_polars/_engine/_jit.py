"""numba's ``njit`` with the package's loops cached outside the installed package.

numba caches a compiled loop next to its module by default, in
``site-packages/raft_polars/_engine/__pycache__``: files pip does not know, so
an uninstall leaves the directory behind, where it shadows a later editable
install of the package as an empty namespace package. The loops are cached in
the user's cache directory instead (``$XDG_CACHE_HOME/raft_polars/numba``, else
``~/.cache/raft_polars/numba``), one subdirectory per installed copy; a
``NUMBA_CACHE_DIR`` the user set is honoured as it is. Where no cache directory
can be written, numba falls back to its own choices; where a cache file cannot be
written (a full disk), the loop runs uncached.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from raft_polars.errors import RaftPolarsError


def _numba() -> Any:
    """numba, imported; an environment it refuses (``NUMBA_NUM_THREADS=0``, say)
    is said in one line, naming the variables set, not as numba's traceback."""
    try:
        import numba
    except (ValueError, TypeError, RuntimeError) as exc:
        set_ = sorted(f"{k}={v!r}" for k, v in os.environ.items() if k.startswith("NUMBA_"))
        msg = f"numba, which runs the compiled loops, cannot start: {exc}"
        if set_:
            msg += f" (the environment sets {', '.join(set_)}; unset or correct them)"
        raise RaftPolarsError(msg) from None
    return numba


numba = _numba()
from numba.core import config  # noqa: E402

__all__ = ["cache_dir", "njit"]

F = TypeVar("F", bound=Callable[..., Any])
_SETTING = threading.Lock()  # two modules may be imported by two threads at once


def cache_dir() -> Path:
    """The directory the package's compiled loops are cached in."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "raft_polars" / "numba"


def njit(**options: Any) -> Callable[[F], F]:
    """``numba.njit(nogil=True, cache=True, **options)``, cached in :func:`cache_dir`.

    numba picks a function's cache location once, when it is decorated, from
    ``numba.config.CACHE_DIR``: it is set for that moment only, so the user's
    other numba functions keep theirs. The setting is read under the same lock:
    read outside it, another thread's moment looked like the user's setting, and
    that thread's reset, landing within numba's two reads of it, put the cache
    in the working directory."""

    def decorate(function: F) -> F:
        jit = numba.njit(nogil=True, cache=True, **options)
        with _SETTING:
            if config.CACHE_DIR:  # type: ignore[attr-defined]  # the user's NUMBA_CACHE_DIR
                return _saved_quietly(jit(function))  # type: ignore[no-any-return]
            config.CACHE_DIR = str(cache_dir())  # type: ignore[attr-defined]
            try:
                return _saved_quietly(jit(function))  # type: ignore[no-any-return]
            finally:
                config.CACHE_DIR = ""  # type: ignore[attr-defined]

    return decorate


def _saved_quietly(dispatcher: Any) -> Any:
    """``dispatcher``, whose compiled loops are cached when they can be: a cache
    that cannot be written (a full disk, a quota) leaves them uncached, where
    numba raised and every command failed. (numba removes its partial file.)

    A cache file that cannot be read (left empty or cut short by a crash, a
    full disk or a copy; numba raised ``EOFError`` out of ``pickle`` at every
    later start) is a miss: its index is removed, and the loop is compiled and
    cached again."""
    cache = getattr(dispatcher, "_cache", None)
    save = getattr(cache, "save_overload", None)
    load = getattr(cache, "load_overload", None)
    if save is None or load is None:  # another numba: its own behaviour
        return dispatcher

    def save_overload(*args: Any, **kwargs: Any) -> None:
        with contextlib.suppress(OSError):
            save(*args, **kwargs)

    def load_overload(*args: Any, **kwargs: Any) -> Any:
        try:
            return load(*args, **kwargs)
        except Exception:  # a damaged cache file: whatever pickle or numba raise
            index = getattr(getattr(cache, "_cache_file", None), "_index_path", None)
            if isinstance(index, str):
                with contextlib.suppress(OSError):
                    os.unlink(index)
            return None

    cache.save_overload = save_overload  # type: ignore[union-attr]
    cache.load_overload = load_overload  # type: ignore[union-attr]
    return dispatcher
