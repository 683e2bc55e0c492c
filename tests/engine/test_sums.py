"""Sums per group in a fixed order (`_engine.sums.group_sums`) and what they buy
at the entry points: the same log gives the same bits whatever the order of its
rows, where the semantics say the order means nothing.

Polars adds a group's floats in row order (and, on many threads, in an order
that changes from run to run): before, a shuffled nested log gave per-stage
losses a unit in the last place apart, and the same long log gave two different
loss vectors in 15 runs."""

from __future__ import annotations

import math
import random
from typing import Any

import dask_cluster
import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import nested_frame, reference_losses
from strategies import ragged_logs

import raft_polars as rp
from raft_polars._engine.sums import group_sums

# values whose sums depend on the order of the additions
_FLOATS = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
    st.sampled_from([0.1, 0.2, 0.3, -0.0, 1e-300, 1e16, -1e16]),
)


@st.composite
def _rows(draw: st.DrawFn) -> list[tuple[int | None, int, float | None, int | None]]:
    n = draw(st.integers(0, 40))
    ids = draw(st.lists(st.integers(0, 10**6), min_size=n, max_size=n, unique=True))
    return [
        (
            draw(st.one_of(st.none(), st.integers(0, 3))),
            ident,
            draw(st.one_of(st.none(), _FLOATS)),
            draw(st.one_of(st.none(), st.integers(-5, 5))),
        )
        for ident in ids
    ]


def _frame(rows: list[tuple[Any, ...]]) -> pl.DataFrame:
    schema = {"stage": pl.Int32, "id": pl.Int64, "x": pl.Float64, "k": pl.Int16}
    return pl.DataFrame(rows, schema=schema, orient="row")


_SUMS = {"x": pl.col("x"), "k": pl.col("k"), "n": pl.lit(1), "pos": pl.col("x") > 0}


@settings(max_examples=300, deadline=None)
@given(rows=_rows(), seed=st.integers(0, 2**32))
def test_group_sums_against_a_plain_loop_whatever_the_row_order(
    rows: list[tuple[Any, ...]], seed: int
) -> None:
    got = group_sums(_frame(rows), ["stage"], _SUMS, order=["id"])
    shuffled = rows[:]
    random.Random(seed).shuffle(shuffled)
    again = group_sums(_frame(shuffled), ["stage"], _SUMS, order=["id"])
    # the same bits, whatever the order the rows came in
    assert got.equals(again)
    assert got.schema == pl.Schema(
        {"stage": pl.Int32, "x": pl.Float64, "k": pl.Int64, "n": pl.Int64, "pos": pl.Int64}
    )
    # the plain reference: one row per stage (null last), nulls skipped
    groups: dict[Any, list[tuple[Any, ...]]] = {}
    for row in rows:
        groups.setdefault(row[0], []).append(row)
    stages = sorted(groups, key=lambda s: (s is None, s or 0))
    assert got["stage"].to_list() == stages
    for out, stage in zip(got.iter_rows(named=True), stages, strict=True):
        members = groups[stage]
        xs = [r[2] for r in members if r[2] is not None]
        assert out["k"] == sum(r[3] for r in members if r[3] is not None)
        assert out["n"] == len(members)
        assert out["pos"] == sum(1 for x in xs if x > 0)
        exact = math.fsum(xs)
        assert math.copysign(1.0, out["x"]) == 1.0 or out["x"] != 0.0  # never -0.0
        assert abs(out["x"] - exact) <= 1e-15 * math.fsum(abs(x) for x in xs) + 1e-300


def test_group_sums_of_nothing_keep_their_types() -> None:
    empty = _frame([])
    got = group_sums(empty, ["stage"], _SUMS, order=["id"])
    assert got.height == 0
    assert got.schema == pl.Schema(
        {"stage": pl.Int32, "x": pl.Float64, "k": pl.Int64, "n": pl.Int64, "pos": pl.Int64}
    )


def test_group_sums_of_minus_zero_is_zero() -> None:
    frame = pl.DataFrame({"stage": [0, 0, 1], "x": [-0.0, -0.0, -0.0]})
    got = group_sums(frame, ["stage"], {"x": pl.col("x")})
    assert [math.copysign(1.0, v) for v in got["x"]] == [1.0, 1.0]


def test_group_sums_without_order_keep_the_rows_order_among_equals() -> None:
    # partial sums of one response from three partitions: added in their order
    frame = pl.DataFrame({"stage": [0, 0, 0], "x": [1e16, 1.0, -1e16]})
    pairwise = np.add.reduce(np.array([1e16, 1.0, -1e16]))
    assert group_sums(frame, ["stage"], {"x": pl.col("x")})["x"].item() == pairwise + 0.0


@settings(max_examples=60, deadline=None)
@given(
    log=ragged_logs(max_stages=3, max_prompts=6, max_k=4, max_tokens=6),
    seed=st.integers(0, 2**32),
    text=st.booleans(),
)
def test_a_shuffled_nested_log_gives_the_same_bits(
    log: tuple[Any, Any], seed: int, text: bool
) -> None:
    lps, rws = log
    prompts = max(len(stage) for stage in rws)
    ids = [f"p{i}" for i in range(prompts)] if text else [i * 2**40 + 7 for i in range(prompts)]
    frame = nested_frame(lps, rws, prompt_ids=ids if text or seed % 2 else None)
    shuffled = frame.sample(fraction=1.0, shuffle=True, seed=seed % 2**32)
    got = rp.stage_losses(frame)
    again = rp.stage_losses(shuffled)
    names = ("loss", "tokens", "selected", "reward_best_mean", "reward_mean", "reward_lift")
    for name in names:
        assert got[name].to_list() == again[name].to_list(), name
    want = reference_losses(lps, rws)
    assert all(
        math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)
        for a, b in zip(got["loss"], want, strict=True)
    )
    stats, stats_again = rp.stage_stats(frame), rp.stage_stats(shuffled)
    for name in ("reward_std", "reward_best_std", "win_rate", "length_mean", "length_reward_corr"):
        assert stats[name].to_list() == stats_again[name].to_list(), name
    assert rp.best_of_n(frame).equals(rp.best_of_n(shuffled))


@pytest.mark.parametrize("engine", ["polars", "dask"])
@pytest.mark.parametrize("prompts", [["a", "b", "c"], [7, 2**40 + 7, 2**41 + 7]])
def test_best_of_n_adds_its_prompts_in_the_order_of_their_ids(
    prompts: list[object], engine: str
) -> None:
    """Text and sparse integer prompt ids (coded apart from the rows) are added in
    id order, as every other sum: 1 + 1 + 1e16, whatever the rows' order (on Dask,
    partition by partition, the partitions in the rows' order)."""
    frame = pl.DataFrame(
        {"stage": [0, 0, 0], "prompt": prompts, "cand": [0, 0, 0],
         "reward": [1.0, 1.0, 1e16], "logprobs": [[-1.0]] * 3}
    )  # fmt: skip
    want = (1.0 + 1.0 + 1e16) / 3
    on: Any = dask_cluster.engine() if engine == "dask" else "polars"
    for rows in ([0, 1, 2], [2, 0, 1], [1, 2, 0]):
        got = rp.best_of_n(frame[rows], engine=on)["expected_best"].item()
        assert got == want if engine == "polars" else got == pytest.approx(want, rel=1e-15)
