"""Executors: where the kernels of :mod:`raft_polars._engine` run.

Both executors have one shape (:class:`Executor`): the in-process one runs each
kernel once on the whole log; the Dask one plans partitions, runs the same
kernels as tasks and adds up their small results. :func:`executor` maps the
``engine=`` keyword of the public functions onto one of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Protocol, TypeAlias

import polars as pl

from raft_polars.errors import RaftInputError

if TYPE_CHECKING:
    from raft_polars._engine.read import StageLog
    from raft_polars._engine.validate import Checked
    from raft_polars.dask import DaskEngine
    from raft_polars.selection import Reduction, Selection

__all__ = ["Engine", "Executor", "executor"]

Engine: TypeAlias = "Literal['polars', 'dask'] | DaskEngine"


class Executor(Protocol):
    """Runs the kernels: rank, then reduce, then combine."""

    def losses(self, log: StageLog, selection: Selection, reduction: Reduction) -> pl.DataFrame:
        """The per-stage table of ``stage_losses``."""
        ...

    def selected(self, log: StageLog, selection: Selection) -> pl.LazyFrame:
        """The selected batch of ``select_best``."""
        ...

    def validate(self, log: StageLog, selection: Selection, limit: int) -> Checked:
        """The findings and sizes of ``validate``."""
        ...

    def stats(
        self, log: StageLog, selection: Selection, reduction: Reduction
    ) -> tuple[pl.DataFrame, list[pl.DataFrame]]:
        """The ``stage_losses`` table and the partitions' statistics sums."""
        ...

    def prompts(self, log: StageLog, selection: Selection) -> pl.DataFrame:
        """The per-prompt table of ``prompt_stats``."""
        ...

    def best_of_n(self, log: StageLog, selection: Selection) -> list[pl.DataFrame]:
        """The partitions' best-of-n sums."""
        ...


def executor(engine: object) -> Executor:
    """The executor for an ``engine=`` value: ``"polars"`` (in this process),
    ``"dask"`` (the current ``distributed`` client, else a local cluster) or a
    :class:`raft_polars.dask.DaskEngine` (an explicit client or cluster)."""
    if engine == "polars":
        from raft_polars._executors.local import LocalExecutor

        return LocalExecutor()
    if engine == "dask":
        from raft_polars._executors.dask import DaskExecutor

        return DaskExecutor(None)
    if type(engine).__name__ == "DaskEngine":
        from raft_polars._executors.dask import DaskExecutor
        from raft_polars.dask import DaskEngine

        if isinstance(engine, DaskEngine):
            return DaskExecutor(engine)
    msg = f"engine must be 'polars', 'dask' or a raft_polars.dask.DaskEngine, got {engine!r}"
    raise RaftInputError(msg)
