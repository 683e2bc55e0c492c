"""Random ragged logs through every entry point, against the reference (hypothesis)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import polars as pl
import pytest
from engine_cases import (
    ENTRIES,
    FRAME_ENTRIES,
    Case,
    Entry,
    cases,
    check_losses,
    check_selection,
    rounding_is_ambiguous,
    workdir,
)
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from strategies import LogProbs, Rewards, ragged_logs


def unambiguous(case: Case, reduction: str = "token") -> None:
    """Skip logs whose exact loss sits on a rounding half-way point (where the
    summation order alone may flip the 4th decimal)."""
    assume(not any(rounding_is_ambiguous(x) for x in case.expected_losses(reduction)))


def examples(entry: Entry) -> int:
    """Fewer examples where each writes files, to keep the suite quick."""
    return 12 if entry.writes_files else 20


def _settings(n: int) -> settings:
    return settings(
        max_examples=n,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@pytest.mark.parametrize("entry", ENTRIES, ids=str)
def test_random_logs(entry: Entry) -> None:
    @_settings(examples(entry))
    @given(case=cases())
    def run(case: Case) -> None:
        unambiguous(case)
        check_losses(entry, case)

    run()


@pytest.mark.parametrize(
    "entry",
    [
        e
        for e in ENTRIES
        if e.name
        in (
            "lists_losses",
            "nested-DataFrame",
            "long-DataFrame",
            "long-hive-fallback",
            "dask-nested-DataFrame",
            "dask-long-glob",
        )
    ],
    ids=str,
)
def test_random_logs_sequence_reduction(entry: Entry) -> None:
    @_settings(20)
    @given(case=cases())
    def run(case: Case) -> None:
        unambiguous(case, "sequence")
        check_losses(entry, case, reduction="sequence")

    run()


@pytest.mark.parametrize(
    "entry",
    [
        e
        for e in FRAME_ENTRIES
        if e.name
        in (
            "nested-DataFrame",
            "nested-Arrow",
            "nested-glob",
            "nested-hive",
            "long-DataFrame",
            "long-LazyFrame",
            "long-paths",
            "long-hive-fallback",
            "dask-nested-glob",
            "dask-long-paths",
            "dask-long-hive",
        )
    ],
    ids=str,
)
def test_random_selection(entry: Entry) -> None:
    @_settings(15)
    @given(case=cases())
    def run(case: Case) -> None:
        check_selection(entry, case)

    run()


@pytest.mark.parametrize(
    "entry",
    [e for e in ENTRIES if e.name in ("raft_alignment", "nested-Arrow", "long-paths")],
    ids=str,
)
def test_random_float32_logs(entry: Entry) -> None:
    """float32 log-probs (and rewards), accumulated in float64."""

    @_settings(15)
    @given(case=cases(float32=True, max_tokens=12))
    def run(case: Case) -> None:
        unambiguous(case)
        check_losses(entry, case)

    run()


@pytest.mark.parametrize(
    "entry",
    [e for e in ENTRIES if e.name in ("raft_alignment", "nested-file", "long-DataFrame")],
    ids=str,
)
def test_random_edge_shapes(entry: Entry) -> None:
    """K = 1, large magnitudes, Python ints, all-zero-token prompts, many prompts."""
    shapes = st.one_of(
        cases(max_k=1),
        cases(min_logprob=-1e6, ints=True),
        cases(max_tokens=1, max_prompts=8, max_k=6),
        cases(ties=False, negative_rewards=False, max_stages=5),
    )

    @_settings(15)
    @given(case=shapes)
    def run(case: Case) -> None:
        unambiguous(case)
        check_losses(entry, case)

    run()


@settings(max_examples=20, deadline=None)
@given(
    case=cases(ties=True, max_k=5),
    seeds=st.lists(st.integers(0, 2**16), min_size=2, max_size=2, unique=True),
)
def test_row_order_carries_no_meaning(case: Case, seeds: list[int]) -> None:
    """Two shuffles of the same log give the same table (losses to the last
    rounded digit, every count exactly) in both layouts."""
    for entry in (
        Entry("nested", "DataFrame"),
        Entry("long", "DataFrame"),
        Entry("long", "DataFrame", fallback=True),
    ):
        tables: list[pl.DataFrame] = []
        for seed in seeds:
            with workdir() as where:
                table = entry.losses(dataclasses.replace(case, shuffle=seed), where)
            assert isinstance(table, pl.DataFrame)
            tables.append(table)
        a, b = tables
        assert a.drop("loss", "reward_best_mean", "reward_mean", "reward_lift").equals(
            b.drop("loss", "reward_best_mean", "reward_mean", "reward_lift")
        )
        for x, y in zip(a["loss"], b["loss"], strict=True):
            assert math.isclose(x, y, rel_tol=1e-12, abs_tol=1e-15)
            if not rounding_is_ambiguous(x):
                assert round(x, 4) == round(y, 4)


def test_strategy_covers_the_edge_cases() -> None:
    """The default strategy does draw ties, zero-token responses, K = 1 and
    negative rewards (so the properties above exercise them)."""
    seen: set[str] = set()

    @settings(max_examples=100, deadline=None, database=None)
    @given(log=ragged_logs())
    def run(log: tuple[LogProbs, Rewards]) -> None:
        lps, rws = log
        for stage_lp, stage_rw in zip(lps, rws, strict=True):
            for resp, r in zip(stage_lp, stage_rw, strict=True):
                if r.count(max(r)) > 1:
                    seen.add("tie")
                if any(len(x) == 0 for x in resp):
                    seen.add("zero-tokens")
                if len(r) == 1:
                    seen.add("k1")
                if min(r) < 0:
                    seen.add("negative")
                assert all(math.isfinite(v) for v in r)
                assert all(math.isfinite(v) and v <= 0 for x in resp for v in x)

    run()
    assert seen == {"tie", "zero-tokens", "k1", "negative"}


@settings(max_examples=30, deadline=None)
@given(log=ragged_logs(float32=True))
def test_float32_strategy_is_float32_representable(log: tuple[LogProbs, Rewards]) -> None:
    lps, rws = log
    values = [v for stage in lps for p in stage for r in p for v in r]
    values += [v for stage in rws for p in stage for v in p]
    assert all(float(np.float32(v)) == v for v in values)
