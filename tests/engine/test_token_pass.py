"""The token pass's compiled loop against plain Python loops, and the exact
fallback of string prompt ids when two prompts share both hashes.

``scatter`` adds each token row into the slot of its candidate; with hashes, a
row's position is completed by its prompt's code, found in an open-addressing
table. The references here are dictionaries and loops over rows.
"""

from __future__ import annotations

import math
from typing import Any
from unittest import mock

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import long_frames, reference_losses
from strategies import ragged_logs

import raft_polars
import raft_polars._engine._compiled as compiled

_EMPTY = np.zeros(0, dtype=np.uint64)
_NO_PROMPTS = (_EMPTY, _EMPTY, np.zeros(0, dtype=np.int64))


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
    """The four per-slot sums with a loop over rows."""
    nll, tokens, top, nulls = [0.0] * slots, [0] * slots, [-math.inf] * slots, [0] * slots
    for at, value in zip(positions, values, strict=True):
        slot = table[at]
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
    positions = draw(st.lists(st.integers(0, size), min_size=n, max_size=n))
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
        _EMPTY,
        _EMPTY,
        _NO_PROMPTS,
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


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.text(max_size=4), min_size=1, max_size=8, unique=True),
    st.lists(st.text(max_size=4), max_size=30),
    st.data(),
)
def test_hashed_prompts_find_their_codes(
    names: list[str], rows: list[str], data: st.DataObject
) -> None:
    """A row's position is ``index + code * stride``; a prompt not in the table,
    or an index already outside, lands outside."""
    stride, size = 3, 3 * len(names)
    first, second = (pl.Series(names).hash(seed).to_numpy() for seed in (11, 29))
    prompts = compiled.hash_table(first, second)
    rows = rows + data.draw(st.lists(st.sampled_from(names), max_size=30))
    partial = data.draw(
        st.lists(st.integers(0, stride - 1) | st.just(size), min_size=len(rows), max_size=len(rows))
    )
    table = np.arange(size + 1, dtype=np.int32)  # slot = position: the count says where
    got = _sums(size + 1)
    series = pl.Series(rows, dtype=pl.String)
    compiled.scatter(
        np.array(partial, dtype=np.int64),
        series.hash(11).to_numpy(),
        series.hash(29).to_numpy(),
        prompts,
        stride,
        np.full(len(rows), -1.0),
        np.zeros(0, dtype=bool),
        table,
        *got,
    )
    code = {name: i for i, name in enumerate(names)}
    want = [0] * (size + 1)
    for row, at in zip(rows, partial, strict=True):
        want[size if at == size or row not in code else at + code[row] * stride] += 1
    assert got[1].tolist() == want


def test_a_hash_table_with_a_repeated_key_says_so() -> None:
    keys = np.array([5, 7, 5], dtype=np.uint64)
    assert len(compiled.hash_table(keys, keys)[2]) == 0
    assert len(compiled.hash_table(keys[:2], keys[:2])[2]) >= 2


@settings(max_examples=25, deadline=None)
@given(ragged_logs(zero_tokens=False), st.booleans())
def test_string_prompts_without_usable_hashes_take_the_exact_path(
    log: tuple[Any, Any], orphan: bool
) -> None:
    """When two prompts share both hashes (forced here), the token pass finds
    positions from the prompts' codes instead, with the same answer."""
    lps, rws = log
    prompts = [f"p{i}" for i in range(max(len(stage) for stage in rws))]
    tokens, rewards = long_frames(lps, rws, prompt_ids=prompts)
    calls: list[int] = []
    build = compiled.hash_table

    def collided(first: Any, second: Any) -> Any:
        calls.append(len(first))
        return (*build(first, second)[:2], np.zeros(0, dtype=np.int64))

    with mock.patch.object(compiled, "hash_table", collided):
        if orphan:
            extra = tokens.head(1).with_columns(pl.lit("nobody").alias("prompt"))
            with pytest.raises(raft_polars.RaftInputError, match="nobody"):
                raft_polars.stage_losses(pl.concat([tokens, extra]), rewards=rewards)
            return
        got = raft_polars.stage_losses(tokens, rewards=rewards)["loss"].to_list()
    assert calls  # the hashed path was tried first
    want = reference_losses(lps, rws)
    assert all(
        math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12) for a, b in zip(got, want, strict=True)
    )
