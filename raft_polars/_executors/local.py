"""The in-process executor: each kernel once, on the whole log.

Every fast path of the kernels applies: the dense box (ids, or prompt codes),
footer-proven bounds for the token pass, the nested layout's two passes (rank
the keys, then decode only the selected lists).
"""

from __future__ import annotations

import polars as pl

from raft_polars._engine.checks import raise_first
from raft_polars._engine.rank import Ranked, rank_keys
from raft_polars._engine.read import StageLog
from raft_polars._engine.reduce import (
    finish,
    nested_sums,
    selected_rows,
    token_counts,
    token_sums,
)
from raft_polars.selection import Reduction, Selection

__all__ = ["LocalExecutor"]


class LocalExecutor:
    """Runs the kernels in this process (Polars' streaming engine, all cores)."""

    def rank(self, log: StageLog, selection: Selection) -> Ranked:
        """Read the candidate keys, rank them, raise their first problem."""
        ranked = rank_keys(log.collect(log.keys()), selection)
        raise_first(ranked.problems, origin=log.origin, token_origin=log.token_origin)
        return ranked

    def losses(self, log: StageLog, selection: Selection, reduction: Reduction) -> pl.DataFrame:
        ranked = self.rank(log, selection)
        if log.layout == "nested":
            reduced = nested_sums(log, ranked.chosen, keys=ranked.keys)
        else:
            reduced = token_sums(
                log, ranked.keys, ranked.chosen, per_response=reduction == "sequence"
            )
        return finish(
            log, [ranked.stages, reduced.stages], [reduced.responses], reduced.problems, reduction
        )

    def selected(self, log: StageLog, selection: Selection) -> pl.LazyFrame:
        ranked = self.rank(log, selection)
        counts = None
        if log.layout == "long":
            counts = token_counts(log, ranked.keys, ranked.chosen)
        return selected_rows(log, ranked.chosen, keys=ranked.keys, counts=counts)
