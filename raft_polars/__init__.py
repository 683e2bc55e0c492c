"""raft_polars: the columnar engine for RAFT (Reward rAnked FineTuning) stage logs.

The three RAFT steps are the engine's three kernels (``raft_polars._engine``):
read any source into a canonical frame, rank the candidates of each prompt,
reduce the selected responses to per-stage losses and statistics. The public
functions take the same options and an ``engine=`` keyword (``"polars"`` in
this process, ``"dask"`` on a cluster); the exact semantics are in
``docs/semantics.md``.
"""

from __future__ import annotations

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
from raft_polars.errors import MissingDependencyError, RaftInputError, RaftPolarsError
from raft_polars.lists import lists_losses, raft_alignment
from raft_polars.selection import Selection
from raft_polars.validate import ValidationReport, validate

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
