"""The integer fast path: ``(stage, prompt, cand)`` ids as positions in a dense box.

When the ids are integers whose ranges multiply to a small enough box, a
candidate is a position ``((stage - s0) * span_p + (prompt - p0)) * span_c +
(cand - c0)``. Ranking then works on numpy arrays indexed by position, and a
token row finds its candidate's status with one gather from a 1-byte table
instead of a hash join. Everything here returns None when the ids do not fit,
and the caller takes the general (hash) path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import polars as pl

from raft_polars.logs import ID_COLUMNS

__all__ = ["MAX_BOX", "Box", "box_of", "gather"]

# the largest box: a 1-byte table of 64 MiB
MAX_BOX = 1 << 26
_INT64 = (-(2**63), 2**63 - 1)
_INT32 = (-(2**31), 2**31 - 1)


@dataclass(frozen=True)
class Box:
    """The dense ``stage x prompt x cand`` box: low corner and extent of each id."""

    lows: tuple[int, int, int]
    spans: tuple[int, int, int]

    @property
    def size(self) -> int:
        return self.spans[0] * self.spans[1] * self.spans[2]

    @property
    def prompts(self) -> int:
        """Positions of ``(stage, prompt)`` pairs: the box without its cand axis."""
        return self.spans[0] * self.spans[1]

    def index(self, frame: pl.DataFrame, axes: int = 3) -> npt.NDArray[np.int64]:
        """Each row's position in the box (``axes=2``: of its ``(stage, prompt)``).

        The ids must lie inside the box. Built in place in one int64 buffer.
        """
        flat = _ints(frame["stage"]).astype(np.int64)  # a copy, written in place
        flat -= self.lows[0]
        for axis in range(1, axes):
            flat *= self.spans[axis]
            flat += _ints(frame[ID_COLUMNS[axis]])
            flat -= self.lows[axis]
        return flat

    def ids(self, prompts: npt.NDArray[np.int64]) -> dict[str, npt.NDArray[np.int64]]:
        """The ``stage`` and ``prompt`` ids of ``(stage, prompt)`` positions."""
        return {"stage": prompts // self.spans[1] + self.lows[0],
                "prompt": prompts % self.spans[1] + self.lows[1]}


def _ints(series: pl.Series) -> npt.NDArray[np.int64]:
    values = series.to_numpy()
    if values.dtype == np.uint64:  # inside a box: the values fit Int64
        values = values.astype(np.int64)
    return values


def box_of(frame: pl.DataFrame) -> Box | None:
    """The box around ``frame``'s ids, or None: not integers, nulls, empty, or
    more than :data:`MAX_BOX` positions."""
    if frame.height == 0 or not all(frame.schema[c].is_integer() for c in ID_COLUMNS):
        return None
    if any(frame[c].has_nulls() for c in ID_COLUMNS):
        return None
    bounds = frame.select(
        *(pl.col(c).min().alias(f"{c}_min") for c in ID_COLUMNS),
        *(pl.col(c).max().alias(f"{c}_max") for c in ID_COLUMNS),
    ).row(0, named=True)
    lows = tuple(int(bounds[f"{c}_min"]) for c in ID_COLUMNS)
    highs = tuple(int(bounds[f"{c}_max"]) for c in ID_COLUMNS)
    if not all(_INT64[0] <= v <= _INT64[1] for v in (*lows, *highs)):
        return None
    spans = tuple(high - low + 1 for low, high in zip(lows, highs, strict=True))
    box = Box(lows, spans)  # type: ignore[arg-type]
    return box if box.size <= MAX_BOX else None


def gather(table: npt.NDArray[np.uint8], box: Box, schema: pl.Schema) -> pl.Expr:
    """Each row's entry of ``table`` (one per box position, then one for "outside").

    The position is computed in the id columns' own integer type where the box's
    bounds fit it (Int32 arithmetic is cheaper than Int64 on hundreds of millions
    of rows). A row outside the box, or with a null id, gets the last entry.
    """
    parts = []
    for name, low, span in zip(ID_COLUMNS, box.lows, box.spans, strict=True):
        if schema[name] == pl.Int32 and _INT32[0] <= low and low + span - 1 <= _INT32[1]:
            # x - low wraps only when |x - low| >= 2**31: never into [0, span)
            parts.append(pl.col(name) - pl.lit(low, pl.Int32))
        else:
            parts.append(pl.col(name).cast(pl.Int64, strict=False) - pl.lit(low, pl.Int64))
    # one unsigned comparison checks both 0 <= part and part < span
    inside = pl.all_horizontal(
        *(part.reinterpret(signed=False) < span
          for part, span in zip(parts, box.spans, strict=True))
    )
    flat = (parts[0] * box.spans[1] + parts[1]) * box.spans[2] + parts[2]  # < size inside
    key = pl.when(inside).then(flat).otherwise(box.size)  # null ids: outside too
    return pl.lit(pl.Series("table", table)).gather(key)
