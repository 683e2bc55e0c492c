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
import os
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


def _logprobs(values: list[float | None], float_type: Any) -> tuple[Any, Any, list[float | None]]:
    """The log-probs as the kernel takes them (values, validity or None) and
    as it reads them (float32 widened exactly)."""
    array = np.array([np.nan if v is None else v for v in values], dtype=float_type)
    valid = np.array([v is not None for v in values]) if None in values else compiled.NO_MASK
    widened = [None if v is None else float(float_type(v)) for v in values]
    return array, valid, widened


@settings(max_examples=200, deadline=None)
@given(_rows(), st.sampled_from([np.int32, np.int64]), st.sampled_from([np.float32, np.float64]))
def test_scatter_adds_each_row_into_its_slot(
    case: tuple[list[int], list[float | None], list[int], int], index: Any, float_type: Any
) -> None:
    positions, values, table, slots = case
    array, valid, widened = _logprobs(values, float_type)
    got = _sums(slots)
    compiled.scatter(
        compiled.ids_of(
            (np.array(positions, dtype=index), None), None, None, (0, 0, 0), (len(table) - 1, 1, 1)
        ),
        compiled.NO_STRINGS,
        compiled.NO_STRINGS,
        compiled.NO_LOOKUP,
        array,
        valid,
        np.array(table, dtype=np.int32),
        *got,
    )
    want = _reference(positions, widened, table, slots)
    for mine, theirs in zip(got, want, strict=True):
        assert mine.tolist() == theirs  # the same additions in the same order: exact


# ids of every width; the loop reads them as int32 or int64 (the cand also as
# int16): a few widths per test run keep its compiled loops few
_ID_TYPES = [np.int16, np.int32, np.int64]


@st.composite
def _id_rows(draw: st.DrawFn) -> dict[str, Any]:
    """Token rows with three id columns (some absent, some with nulls, in runs
    of equal ids as logs hold them, and singly), a box around most of them."""
    lows = [draw(st.integers(-5, 5)) for _ in range(3)]
    spans = [draw(st.integers(1, 4)) for _ in range(3)]
    present = [True, draw(st.booleans()), draw(st.booleans())]
    n_runs = draw(st.integers(0, 12))
    rows: list[list[int | None]] = []
    for _ in range(n_runs):
        run = [
            draw(st.none() | st.integers(low - 2, low + span + 1))
            if draw(st.integers(0, 9)) == 0
            else draw(st.integers(low, low + span - 1))
            for low, span in zip(lows, spans, strict=True)
        ]
        rows += [list(run)] * draw(st.integers(1, 40))
    return {"lows": lows, "spans": spans, "present": present, "rows": rows}


@settings(max_examples=300, deadline=None)
@given(_id_rows(), st.data())
def test_scatter_finds_positions_from_the_ids(case: dict[str, Any], data: st.DataObject) -> None:
    """A row's position is ``((s - l0) * span1 + (p - l1)) * span2 + (c - l2)``
    when every present id lies in its span and is not null; otherwise the row
    is outside. An absent column counts 0. Runs of any length (the kernel
    compares rows in blocks) and ids of every width the loop reads."""
    lows, spans, present, rows = case["lows"], case["spans"], case["present"], case["rows"]
    size = spans[0] * spans[1] * spans[2]
    table = np.arange(size + 1, dtype=np.int32)  # slot = position: the count says where
    columns: list[compiled.Column | None] = []
    for axis in range(3):
        if not present[axis]:
            columns.append(None)
            continue
        kind = data.draw(st.sampled_from(_ID_TYPES))
        ids = [row[axis] for row in rows]
        values = np.array([0 if v is None else v for v in ids], dtype=kind)
        ok = np.array([v is not None for v in ids]) if None in ids else None
        columns.append((values, ok))
    stage, prompt, cand = columns
    assert stage is not None
    value = st.floats(-30, 0, width=32)
    drawn = data.draw(st.lists(value, min_size=len(rows), max_size=len(rows)))
    array = np.array(drawn, dtype=np.float32)
    got = _sums(size + 1)
    compiled.scatter(
        compiled.ids_of(stage, prompt, cand, lows, spans),
        compiled.NO_STRINGS,
        compiled.NO_STRINGS,
        compiled.NO_LOOKUP,
        array,
        compiled.NO_MASK,
        table,
        *got,
    )
    positions = []
    for row in rows:
        at = 0
        for axis in range(3):
            part = 0
            if present[axis]:
                value = row[axis]
                part = -1 if value is None else value - lows[axis]
            if not 0 <= part < spans[axis]:
                at = size
                break
            at = at * spans[axis] + part
        positions.append(at)
    want = _reference(positions, [float(v) for v in array], table.tolist(), size + 1)
    for mine, theirs in zip(got, want, strict=True):
        assert mine.tolist() == theirs


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
    """A row's position is ``code * stride + cand``, ``code`` its prompt's
    index in ``names``; a null prompt, a prompt not in ``names``, or a row
    whose stage is outside the box lands outside. Rows come in runs (a
    response's rows share a prompt) and singly."""
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
    # the position's other parts: a cand column (stage 0), or outside (a bad stage)
    cand = np.array([min(at, stride) for at in partial], dtype=np.int64)
    stage = np.array([0 if at < size else 1 for at in partial], dtype=np.int32)
    compiled.scatter(
        compiled.ids_of((stage, None), None, (cand, None), (0, 0, 0), (1, len(names), stride)),
        compiled.strings(_shaped(rows, how)),
        known,
        compiled.name_table(known),
        np.full(len(rows), -1.0),
        compiled.NO_MASK,
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


# --- the nested layout: each list's sums in one compiled pass ----------------------------

_LIST = st.none() | st.lists(
    st.none() | st.floats(-30, 1, width=32) | st.just(math.nan), max_size=6
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(_LIST, max_size=12),
    st.sampled_from([pl.Float32, pl.Float64, pl.Int32]),
    st.integers(0, 3),
)
def test_response_stats_of_each_list(lists: list[Any], inner: Any, skip: int) -> None:
    """Each list's NLL (added in order), length, largest value (-inf for an
    empty list; NaN never replaces it) and null count, all null for a null
    list; on a sliced column, several chunks, and log-probs of other types."""
    from raft_polars._engine import reduce

    if inner == pl.Int32:
        lists = [
            None if v is None else [None if x is None or math.isnan(x) else int(x) for x in v]
            for v in lists
        ]
    column = pl.Series("logprobs", [None, *lists], dtype=pl.List(inner)).slice(1)
    if skip and len(lists) > skip:  # several chunks
        column = pl.concat([column.slice(0, skip), column.slice(skip)], rechunk=False)
    frame = pl.DataFrame(
        {"stage": [0] * len(lists), "prompt": list(range(len(lists))), "cand": [1] * len(lists)}
    ).with_columns(column)

    class Log:  # the part of a StageLog the kernel uses
        @staticmethod
        def batches(query: pl.LazyFrame) -> Any:
            yield from query.collect_batches(engine="streaming")

        @staticmethod
        def collect(query: pl.LazyFrame) -> pl.DataFrame:
            return query.collect()

    got = reduce.response_stats(Log(), frame.lazy()).sort("prompt")  # type: ignore[arg-type]
    for row, values in zip(got.iter_rows(named=True), lists, strict=True):
        if values is None:
            assert (row["nll"], row["tokens"], row["lp_max"], row["lp_nulls"]) == (None,) * 4
            continue
        kept = [
            float(np.float32(v)) if inner == pl.Float32 else float(v)
            for v in values
            if v is not None
        ]
        nll, top = 0.0, -math.inf
        for value in kept:
            nll -= value
            top = value if value > top else top
        assert row["tokens"] == len(values)
        assert row["lp_nulls"] == len(values) - len(kept)
        assert (row["nll"] == nll) or (math.isnan(row["nll"]) and math.isnan(nll))
        assert row["lp_max"] == top


# --- how far ahead Polars decodes ------------------------------------------------------


def test_read_ahead_is_bounded_for_large_row_groups(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Row groups of millions of rows: Polars decodes 2 ahead (1 of wider rows or
    larger groups: about 32 MiB of decoded rows) while the pass runs, and the
    setting is gone after; small row groups, a path that is not
    a local file, or the user's own setting: nothing changes."""
    from raft_polars._engine.read import _READ_AHEAD, bounded_read_ahead, row_bytes

    monkeypatch.delenv(_READ_AHEAD, raising=False)
    large, small = tmp_path / "large.parquet", tmp_path / "small.parquet"
    pl.DataFrame({"x": pl.zeros(3 << 20, pl.Int8, eager=True)}).write_parquet(
        large, row_group_size=3 << 20
    )
    pl.DataFrame({"x": [1, 2, 3]}).write_parquet(small)
    with bounded_read_ahead([str(large)]):  # 3 Mi rows of narrow ids: 1 ahead (48 MiB)
        assert os.environ[_READ_AHEAD] == "1"
        assert pl.scan_parquet(large).select(pl.len()).collect().item() == 3 << 20
    assert _READ_AHEAD not in os.environ
    mid = tmp_path / "mid.parquet"  # pyarrow's 1 Mi rows: 2 ahead
    pl.DataFrame({"x": pl.zeros(1 << 20, pl.Int8, eager=True)}).write_parquet(
        mid, row_group_size=1 << 20
    )
    with bounded_read_ahead([str(mid)]):
        assert os.environ[_READ_AHEAD] == "2"
    # rows of string prompt ids (a 16-byte view and their bytes) or int64 ids: 1 ahead
    # (692 M string-id tokens: a peak of 701-788 MiB, against 1113-1230 with 2)
    wide = row_bytes(pl.Schema({"stage": pl.Int32(), "prompt": pl.String(), "cand": pl.Int16(),
                                "logprob": pl.Float32()}))  # fmt: skip
    assert wide == 42
    with bounded_read_ahead([str(mid)], wide):
        assert os.environ[_READ_AHEAD] == "1"
    assert row_bytes(pl.Schema({"a": pl.Int32(), "b": pl.Int16(), "c": pl.Float32()})) == 10
    for files in ([str(small)], [str(tmp_path / "none.parquet")], [], ["s3://b/k.parquet"]):
        with bounded_read_ahead(files):
            assert _READ_AHEAD not in os.environ
    monkeypatch.setenv(_READ_AHEAD, "5")
    with bounded_read_ahead([str(large)]):
        assert os.environ[_READ_AHEAD] == "5"
    assert os.environ[_READ_AHEAD] == "5"
