"""raft_polars: the columnar engine for RAFT (Reward rAnked FineTuning) stage logs.

The three RAFT steps are the engine's three kernels (``raft_polars._engine``):
read any source into a canonical frame, rank the candidates of each prompt,
reduce the selected responses to per-stage losses and statistics. The public
functions take the same options and an ``engine=`` keyword (``"polars"`` in
this process, ``"dask"`` on a cluster); the exact semantics are in
``docs/semantics.md``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from raft_polars.errors import MissingDependencyError, RaftInputError, RaftPolarsError

if TYPE_CHECKING:
    from raft_polars._engine.read import StageLog, read_log
    from raft_polars.api import (
        best_of_n,
        collect,
        prompt_stats,
        select_best,
        stage_losses,
        stage_stats,
        write_selected,
    )
    from raft_polars.lists import lists_losses, raft_alignment
    from raft_polars.selection import Selection
    from raft_polars.validation import ValidationReport, validate

__all__ = [
    "MissingDependencyError",
    "RaftInputError",
    "RaftPolarsError",
    "Selection",
    "StageLog",
    "ValidationReport",
    "best_of_n",
    "collect",
    "lists_losses",
    "prompt_stats",
    "raft_alignment",
    "read_log",
    "select_best",
    "stage_losses",
    "stage_stats",
    "validate",
    "write_selected",
]

__version__ = "0.1.0"

# where each public name lives: imported on first use, so that ``import
# raft_polars`` (and the command line's start, which must answer Ctrl-C with one
# line) does not wait for Polars, pyarrow and numpy
_HOMES = {
    "StageLog": "raft_polars._engine.read",
    "read_log": "raft_polars._engine.read",
    **dict.fromkeys(
        [
            "best_of_n",
            "collect",
            "prompt_stats",
            "select_best",
            "stage_losses",
            "stage_stats",
            "write_selected",
        ],
        "raft_polars.api",
    ),
    "lists_losses": "raft_polars.lists",
    "raft_alignment": "raft_polars.lists",
    "Selection": "raft_polars.selection",
    "ValidationReport": "raft_polars.validation",
    "validate": "raft_polars.validation",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:  # a submodule not imported yet is imported by its full name
        msg = f"module 'raft_polars' has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
