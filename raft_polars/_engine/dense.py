"""The integer fast path: ``(stage, prompt, cand)`` ids as positions in a dense box.

When the ids are integers whose ranges multiply to a small enough box, a
candidate is a position ``((stage - s0) * span_p + (prompt - p0)) * span_c +
(cand - c0)``. Ranking then works on numpy arrays indexed by position, and a
token row finds its candidate's status with one gather from a 1-byte table
instead of a hash join. Everything here returns None when the ids do not fit,
and the caller takes the general (hash) path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import polars as pl

from raft_polars._engine.read import ID_COLUMNS

__all__ = [
    "MAX_BOX",
    "NUMPY_INTS",
    "Box",
    "PromptCodes",
    "box_of",
    "gather",
    "position",
    "prompt_codes",
]

# the largest box: a 1-byte table of 64 MiB
MAX_BOX = 1 << 26
_INT64 = (-(2**63), 2**63 - 1)
_INT32 = (-(2**31), 2**31 - 1)
# the integer types numpy holds (not Int128 / UInt128)
NUMPY_INTS = frozenset(
    {pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64}
)


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

    def index(self, frame: pl.DataFrame, axes: int = 3) -> npt.NDArray[np.signedinteger[Any]]:
        """Each row's position in the box (``axes=2``: of its ``(stage, prompt)``).

        The ids must lie inside the box. Built in place in one buffer, int32 for
        any box of up to 2**31 positions (half the memory of int64).
        """
        kind: type[np.signedinteger[Any]] = np.int32 if self.size < 2**31 else np.int64
        flat: npt.NDArray[np.signedinteger[Any]] = _offsets(frame["stage"], self.lows[0]).astype(
            kind
        )  # a copy, written in place
        for axis in range(1, axes):
            flat *= self.spans[axis]
            flat += _offsets(frame[ID_COLUMNS[axis]], self.lows[axis])
        return flat

    def ids(self, prompts: npt.NDArray[np.int64]) -> dict[str, npt.NDArray[np.int64]]:
        """The ``stage`` and ``prompt`` ids of ``(stage, prompt)`` positions."""
        return {
            "stage": prompts // self.spans[1] + self.lows[0],
            "prompt": prompts % self.spans[1] + self.lows[1],
        }


def _offsets(series: pl.Series, low: int) -> npt.NDArray[np.signedinteger[Any]]:
    """``series - low`` as numpy, for ids inside the box (so in ``[0, span)``)."""
    values = series.to_numpy()
    if values.dtype == np.int32 or (values.dtype.kind in "iu" and values.dtype.itemsize <= 2):
        narrow = values.astype(np.int32, copy=False)  # low is one of the values: it fits
        return narrow if low == 0 else narrow - np.int32(low)
    return values.astype(np.int64) - low  # inside a box, even UInt64 values fit Int64


def box_of(frame: pl.DataFrame) -> Box | None:
    """The box around ``frame``'s ids, or None: not integers of at most 64 bits,
    nulls, empty, or more than :data:`MAX_BOX` positions."""
    if frame.height == 0 or not all(frame.schema[c] in NUMPY_INTS for c in ID_COLUMNS):
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


def position(
    box: Box,
    schema: pl.Schema,
    *,
    checked: bool = True,
    names: Sequence[str] = ID_COLUMNS,
) -> pl.Expr:
    """Each row's position in ``box``, or ``box.size`` ("outside").

    The position is computed in the id columns' own integer type where the box's
    bounds fit it (Int32 arithmetic is cheaper than Int64 on hundreds of millions
    of rows). A row outside the box, or with a null id, gets ``box.size``.
    ``checked=False`` leaves out those bounds checks: only for rows known to lie
    inside the box. ``names``: the frame's columns of
    ``stage, prompt, cand`` (the prompt's codes, say).
    """
    parts = []
    kind: pl.DataType
    for name, low, span in zip(names, box.lows, box.spans, strict=True):
        dtype = schema[name]
        if dtype == pl.Int32 and _INT32[0] <= low and low + span - 1 <= _INT32[1]:
            # x - low wraps only when |x - low| >= 2**31: never into [0, span)
            column, kind = pl.col(name), pl.Int32()
        elif dtype == pl.Int64:
            column, kind = pl.col(name), pl.Int64()
        else:  # narrow or unsigned ids: the products need room
            column, kind = pl.col(name).cast(pl.Int64, strict=False), pl.Int64()
        parts.append(column if low == 0 else column - pl.lit(low, kind))
    flat = (parts[0] * box.spans[1] + parts[1]) * box.spans[2] + parts[2]  # < size inside
    if not checked:
        return flat
    # one unsigned comparison checks both 0 <= part and part < span
    inside = pl.all_horizontal(
        *(
            part.reinterpret(signed=False) < span
            for part, span in zip(parts, box.spans, strict=True)
        )
    )
    return pl.when(inside).then(flat).otherwise(box.size)  # null ids: outside too


def gather(
    table: npt.NDArray[np.uint8],
    box: Box,
    schema: pl.Schema,
    *,
    checked: bool = True,
    names: Sequence[str] = ID_COLUMNS,
) -> pl.Expr:
    """Each row's entry of ``table`` (one per box position, then one for
    "outside") at its :func:`position`."""
    flat = position(box, schema, checked=checked, names=names)
    return pl.lit(pl.Series("table", table)).gather(flat)


FrameT = TypeVar("FrameT", pl.DataFrame, pl.LazyFrame)


@dataclass(frozen=True)
class PromptCodes:
    """Prompt ids as dense integer codes ``0 .. n-1``, so that they fit a box.

    For prompt ids that do not fit one themselves: strings (the codes are the
    physical values of a ``pl.Enum`` of the candidate rows' prompts) and sparse
    integers such as 64-bit hashes (the codes come from a join on the prompt
    column alone). A prompt id that is not among the candidate rows' (a token row
    without a reward row) gets a null code, which the box sends to "outside".
    """

    categories: pl.Series

    def attach(self, frame: FrameT, name: str) -> FrameT:
        """``frame`` with the code of its ``prompt`` as a new Int64 column ``name``."""
        if self.categories.dtype == pl.String:
            enum = pl.Enum(self.categories)
            return frame.with_columns(
                pl.col("prompt").cast(enum, strict=False).to_physical().cast(pl.Int64).alias(name)
            )
        dtype = frame.collect_schema()["prompt"]
        table = pl.DataFrame(
            {
                # a category that the frame's id type cannot hold cannot match either
                "prompt": self.categories.cast(dtype, strict=False),
                name: pl.int_range(len(self.categories), eager=True, dtype=pl.Int64),
            }
        )
        other = table.lazy() if isinstance(frame, pl.LazyFrame) else table
        return frame.join(other, on="prompt", how="left", maintain_order="left")

    def encode(self, frame: pl.DataFrame) -> pl.DataFrame:
        """``frame`` with its ``prompt`` replaced by the codes."""
        coded = self.attach(frame, "_prompt_code")
        return coded.with_columns(pl.col("_prompt_code").alias("prompt")).drop("_prompt_code")

    def decode(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Codes back to the prompt ids."""
        return frame.with_columns(self.categories.gather(frame["prompt"]).alias("prompt"))


def prompt_codes(keys: pl.DataFrame) -> PromptCodes | None:
    """Codes for the prompt ids of ``keys`` (strings, or integers too sparse for a
    box), or None: null prompt ids, or stage and cand ids that are not integers."""
    prompt = keys.schema["prompt"]
    if (
        not (prompt == pl.String or prompt in NUMPY_INTS)
        or keys["prompt"].has_nulls()
        or not (keys.schema["stage"] in NUMPY_INTS and keys.schema["cand"] in NUMPY_INTS)
    ):
        return None
    # in the ids' order: whatever is added prompt by prompt in the order of the codes
    # (best_of_n's sums) is added in the order of the ids, as every other sum
    return PromptCodes(keys["prompt"].unique().sort())
