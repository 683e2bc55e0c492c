"""raft_polars: the columnar engine for RAFT (Reward rAnked FineTuning) stage logs.

The three RAFT steps, one module each: :mod:`raft_polars.logs` reads stage logs
into a canonical frame, :mod:`raft_polars.ranking` selects the best candidates,
:mod:`raft_polars.losses` reduces them to per-stage SFT losses and statistics.
"""

from __future__ import annotations

from raft_polars.errors import MissingDependencyError, RaftInputError, RaftPolarsError
from raft_polars.lists import lists_losses, raft_alignment
from raft_polars.logs import StageLog, read_log
from raft_polars.losses import select_best, stage_losses
from raft_polars.ranking import Selection
from raft_polars.validate import ValidationReport, validate

__all__ = [
    "MissingDependencyError",
    "RaftInputError",
    "RaftPolarsError",
    "Selection",
    "StageLog",
    "ValidationReport",
    "lists_losses",
    "raft_alignment",
    "read_log",
    "select_best",
    "stage_losses",
    "validate",
]

__version__ = "0.1.0"
