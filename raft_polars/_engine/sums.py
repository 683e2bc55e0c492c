"""Sums per group that come out the same, to the last bit, on every run.

Polars adds a group's floats in an order that depends on how its threads split
the rows: the same log gave per-stage NLL sums one unit in the last place apart
from one run to the next, and at a 4-decimal half that flips a printed digit.
:func:`group_sums` sorts the rows by the group and then by columns that tell
them apart, and adds each group's values with numpy (pairwise, in that order),
so a sum depends only on the values and their ids: not on the order the rows
came in, nor on the threads.

Examples
--------
>>> import polars as pl
>>> from raft_polars._engine.sums import group_sums
>>> frame = pl.DataFrame({"stage": [1, 0, 1], "prompt": [1, 0, 0], "x": [0.2, 0.5, 0.1]})
>>> group_sums(frame, ["stage"], {"x": pl.col("x"), "n": pl.lit(1)}, order=["prompt"]).rows()
[(0, 0.5, 1), (1, 0.30000000000000004, 2)]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
import polars as pl

__all__ = ["group_starts", "group_sums", "in_order"]


def group_sums(
    frame: pl.DataFrame,
    by: Sequence[str],
    sums: Mapping[str, pl.Expr],
    *,
    order: Sequence[str] = (),
) -> pl.DataFrame:
    """One row per distinct ``by`` (sorted by it, nulls last) with each of
    ``sums`` added up over the group's rows, nulls skipped: floats as Float64,
    integers and booleans as Int64.

    The rows are sorted by ``by``, then ``order``, keeping their order among
    equals; the sums are the same bits whatever the order of ``frame``'s rows
    when ``by`` and ``order`` tell every row apart, and the same on every run
    in any case. A float sum is never -0.0 (it starts from 0.0, as Polars')."""
    keys = [*by, *(c for c in order if c not in by)]
    named = [expr.alias(name) for name, expr in sums.items()]
    schema = frame.lazy().select(named).collect_schema()
    types = {n: pl.Float64 if schema[n].is_float() else pl.Int64 for n in sums}
    # nulls as zeros, added exactly: x + 0.0 is x, but for -0.0 (turned to 0.0 below)
    rows = frame.select(
        *keys, *(e.cast(types[n]).fill_null(0) for n, e in zip(sums, named, strict=True))
    )
    if not in_order(rows, keys):
        rows = rows.sort(keys, nulls_last=True, maintain_order=True)
    if not rows.height:
        return rows.select(*by, *sums)
    starts = group_starts(rows, by)
    totals = []
    for name, dtype in types.items():
        with np.errstate(over="ignore", invalid="ignore"):  # inf, as Polars' sum gives
            added = np.add.reduceat(rows[name].to_numpy(), starts)
        totals.append(pl.Series(name, added + 0.0 if dtype == pl.Float64 else added, dtype))
    return rows.select(pl.col(list(by)).gather(starts)).with_columns(totals)


def group_starts(rows: pl.DataFrame, by: Sequence[str]) -> npt.NDArray[np.intp]:
    """The first row of each run of equal ``by`` in ``rows`` (not empty)."""
    group = rows.select((pl.struct(list(by)) if len(by) > 1 else pl.col(by[0])).rle_id())
    ids = group.to_series().to_numpy()
    return np.concatenate([[0], np.flatnonzero(ids[1:] != ids[:-1]) + 1])


def in_order(rows: pl.DataFrame, keys: Sequence[str]) -> bool:
    """Whether ``rows`` already come sorted by ``keys`` with no null key (the
    engine's frames mostly do; a check is a tenth of a sort)."""
    if not keys or any(rows[k].has_nulls() for k in keys):
        return not keys
    ascending = pl.lit(value=True)
    for key in reversed(keys):
        now, before = pl.col(key), pl.col(key).shift(1)
        ascending = (now > before) | ((now == before) & ascending)
    return bool(rows.select(ascending.fill_null(value=True).all()).item())
