"""Exceptions raised by raft_polars.

Every error the package raises on purpose derives from :class:`RaftPolarsError`.
Errors about the user's input also derive from :class:`ValueError`, so code that
already catches ``ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = ["MissingDependencyError", "RaftInputError", "RaftPolarsError"]


class RaftPolarsError(Exception):
    """Base class of every error raised by raft_polars."""


class RaftInputError(RaftPolarsError, ValueError):
    """The stage log (lists, files or frames) is malformed or holds bad values.

    The message names where (stage, prompt, candidate, file, column) and what was
    found.
    """


class MissingDependencyError(RaftPolarsError, ImportError):
    """An optional dependency (plotting, distributed engine) is not installed."""
