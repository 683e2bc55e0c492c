"""The token pass's compiled loop against plain Python loops.

``scatter`` adds each token row into the slot of its candidate; with string
prompt ids, a row's position is completed by its prompt's code, found from the
row's Arrow string view (the previous row's code when the view or the bytes are
the same, else an exact lookup). The references here are dictionaries and loops
over rows, on strings in every representation Polars hands over: one view per
row, views shared by a dictionary page, sliced columns, several chunks.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import long_frames, reference_losses
from strategies import ragged_logs

import raft_polars
import raft_polars._engine._compiled as compiled


def _sums(slots: int) -> list[Any]:
    return [
        np.zeros(slots),
        np.zeros(slots, dtype=np.int64),
        np.full(slots, -np.inf),
        np.zeros(slots, dtype=np.int64),
    ]


def _reference(
    positions: list[int], values: list[float | None], table: list[int], slots: int
) -> list[list[Any]]:
    """The four per-slot sums with a loop over rows; a position that is not
    one of the table's is its last (no candidate)."""
    nll, tokens, top, nulls = [0.0] * slots, [0] * slots, [-math.inf] * slots, [0] * slots
    outside = len(table) - 1
    for at, value in zip(positions, values, strict=True):
        slot = table[at if 0 <= at <= outside else outside]
        if slot < 0:
            continue
        tokens[slot] += 1
        if value is None:
            nulls[slot] += 1
            continue
        nll[slot] -= value
        top[slot] = max(top[slot], value)
    return [nll, tokens, top, nulls]


@st.composite
def _rows(draw: st.DrawFn) -> tuple[list[int], list[float | None], list[int], int]:
    size = draw(st.integers(1, 12))
    slots = draw(st.integers(1, 6))
    table = draw(st.lists(st.integers(-1, slots - 1), min_size=size + 1, max_size=size + 1))
    n = draw(st.integers(0, 40))
    # mostly the table's positions, some beyond it (ids a corrupted page holds)
    position = st.integers(0, size) | st.integers(-(2**31), 2**31 - 1)
    positions = draw(st.lists(position, min_size=n, max_size=n))
    value = st.floats(-30, 0, allow_nan=False, width=32)
    values = draw(st.lists(st.none() | value, min_size=n, max_size=n))
    return positions, values, table, slots


@settings(max_examples=200, deadline=None)
@given(_rows(), st.sampled_from([np.int32, np.int64]), st.sampled_from([np.float32, np.float64]))
def test_scatter_adds_each_row_into_its_slot(
    case: tuple[list[int], list[float | None], list[int], int], index: Any, float_type: Any
) -> None:
    positions, values, table, slots = case
    nulls = any(v is None for v in values)
    array = np.array([np.nan if v is None else v for v in values], dtype=float_type)
    valid = np.array([v is not None for v in values]) if nulls else np.zeros(0, dtype=bool)
    got = _sums(slots)
    compiled.scatter(
        np.array(positions, dtype=index),
        compiled.NO_STRINGS,
        compiled.NO_STRINGS,
        compiled.NO_LOOKUP,
        0,
        array,
        valid,
        np.array(table, dtype=np.int32),
        *got,
    )
    # the values as the kernel reads them (float32 widened exactly)
    widened = [None if v is None else float(float_type(v)) for v in values]
    want = _reference(positions, widened, table, slots)
    for mine, theirs in zip(got, want, strict=True):
        assert mine.tolist() == theirs  # the same additions in the same order: exact


# prompt ids that share lengths and first bytes, on both sides of the 12 bytes a
# view holds whole (a 12-byte and a 13-byte id differ in where their bytes are)
_PROMPT = st.text(alphabet="ab\u00e9", max_size=16) | st.sampled_from(
    ["", "a" * 12, "a" * 13, "a" * 12 + "b", "aaaa" + "b" * 20, "aaaa" + "b" * 19 + "c"]
)


def _shaped(rows: list[str | None], how: str) -> pl.Series:
    """``rows`` as a Polars string column made one of the ways the token pass
    meets them."""
    import io

    series = pl.Series("prompt", rows, dtype=pl.String)
    if how == "dictionary":  # decoded from a dictionary page: rows share views
        buffer = io.BytesIO()
        pl.DataFrame([series]).write_parquet(buffer, use_pyarrow=True)
        buffer.seek(0)
        return pl.read_parquet(buffer)["prompt"]
    if how == "sliced":  # an offset into a longer column
        padded = pl.Series("prompt", ["x" * 20, None, *rows, "y"], dtype=pl.String)
        return padded.slice(2, len(rows))
    if how == "chunks":  # several chunks, each with its own buffers
        half = len(rows) // 2
        parts = [pl.Series("prompt", part, dtype=pl.String) for part in (rows[:half], rows[half:])]
        return pl.concat(parts, rechunk=False)
    return series


@settings(max_examples=200, deadline=None)
@given(
    st.lists(_PROMPT, min_size=1, max_size=8, unique=True),
    st.lists(st.none() | _PROMPT, max_size=30),
    st.sampled_from(["plain", "dictionary", "sliced", "chunks"]),
    st.data(),
)
def test_string_prompts_find_their_codes(
    names: list[str], extra: list[str | None], how: str, data: st.DataObject
) -> None:
    """A row's position is ``index + code * stride``, ``code`` its prompt's
    index in ``names``; a null prompt, a prompt not in ``names``, or an index
    already outside lands outside. Rows come in runs (a response's rows share a
    prompt) and singly."""
    stride, size = 3, 3 * len(names)
    drawn = data.draw(st.lists(st.sampled_from(names), max_size=12))
    runs = [name for name in drawn for _ in range(data.draw(st.integers(1, 4)))]
    rows: list[str | None] = [*data.draw(st.permutations([*extra, *drawn])), *runs]
    partial = data.draw(
        st.lists(st.integers(0, stride - 1) | st.just(size), min_size=len(rows), max_size=len(rows))
    )
    table = np.arange(size + 1, dtype=np.int32)  # slot = position: the count says where
    got = _sums(size + 1)
    known = compiled.strings(_shaped(list(names), data.draw(st.sampled_from(["plain", "sliced"]))))
    compiled.scatter(
        np.array(partial, dtype=np.int64),
        compiled.strings(_shaped(rows, how)),
        known,
        compiled.name_table(known),
        stride,
        np.full(len(rows), -1.0),
        np.zeros(0, dtype=bool),
        table,
        *got,
    )
    code = {name: i for i, name in enumerate(names)}
    want = [0] * (size + 1)
    for row, at in zip(rows, partial, strict=True):
        found = None if row is None else code.get(row)
        want[size if at == size or found is None else at + found * stride] += 1
    assert got[1].tolist() == want


@settings(max_examples=25, deadline=None)
@given(ragged_logs(zero_tokens=False), st.booleans(), st.integers(0, 40))
def test_string_prompt_ids_of_any_length(log: tuple[Any, Any], orphan: bool, width: int) -> None:
    """Long-layout logs whose prompt ids are strings (of ``width`` characters
    and more, sharing their first bytes) give the reference's losses; an orphan
    token row is named."""
    lps, rws = log
    prompts = [f"{'p' * width}{i}" for i in range(max(len(stage) for stage in rws))]
    tokens, rewards = long_frames(lps, rws, prompt_ids=prompts)
    if orphan:
        extra = tokens.head(1).with_columns(pl.lit("p" * width + "x").alias("prompt"))
        with pytest.raises(raft_polars.RaftInputError, match="p" * width + "x"):
            raft_polars.stage_losses(pl.concat([tokens, extra]), rewards=rewards)
        return
    got = raft_polars.stage_losses(tokens, rewards=rewards)["loss"].to_list()
    want = reference_losses(lps, rws)
    assert all(
        math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12) for a, b in zip(got, want, strict=True)
    )
