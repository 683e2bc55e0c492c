"""Helpers of the Dask tests: the local cluster, a small log strategy and
the comparison of results.

The cluster is made here and wrapped in a fixture by the test module that uses it,
not in a ``tests/dask/conftest.py``: under pytest's default import mode a second
``conftest`` module would shadow ``tests/conftest.py`` for ``from conftest import``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
from hypothesis import strategies as st
from reference import long_frames, nested_frame, write_split


def local_cluster() -> Iterator[Any]:
    """A ``distributed.Client`` on a local cluster: two worker processes with one
    thread each, bound to 127.0.0.1, dashboard off; nothing leaves loopback."""
    from raft_polars.dask import connect

    with connect(workers=2) as active:
        yield active


LogProbs = list[list[list[list[float]]]]
Rewards = list[list[list[float]]]

# few distinct rewards: ties are common
_REWARDS = st.one_of(
    st.sampled_from([-1.0, 0.0, 0.5, 1.0]),
    st.floats(-5.0, 5.0, allow_nan=False, allow_infinity=False),
)
_LOGPROBS = st.one_of(
    st.sampled_from([0.0, -0.5, -1.0]), st.floats(-20.0, 0.0, allow_nan=False, allow_infinity=False)
)


@st.composite
def ragged_logs(
    draw: st.DrawFn,
    *,
    max_stages: int = 3,
    max_prompts: int = 4,
    max_k: int = 4,
    max_tokens: int = 4,
) -> tuple[LogProbs, Rewards]:
    """A ragged log ``(lps, rws)``; a response may hold no tokens (and then, rarely,
    a stage's selection has none: both engines must raise the same error)."""
    lps: LogProbs = []
    rws: Rewards = []
    for _ in range(draw(st.integers(1, max_stages))):
        stage_lp, stage_rw = [], []
        for _ in range(draw(st.integers(1, max_prompts))):
            k = draw(st.integers(1, max_k))
            stage_rw.append(draw(st.lists(_REWARDS, min_size=k, max_size=k)))
            stage_lp.append(
                [
                    draw(
                        st.lists(
                            _LOGPROBS,
                            min_size=draw(st.sampled_from([1, 1, 0])),
                            max_size=max_tokens,
                        )
                    )
                    for _ in range(k)
                ]
            )
        lps.append(stage_lp)
        rws.append(stage_rw)
    return lps, rws


def layout_files(
    lps: LogProbs,
    rws: Rewards,
    root: Path,
    *,
    layout: str,
    parts: int,
    reward_parts: int = 1,
    **kwargs: Any,
) -> dict[str, Any]:
    """Write the log as Parquet files; the keyword arguments of the entry points."""
    if layout == "nested":
        write_split(nested_frame(lps, rws, **kwargs), root / "nested", parts)
        return {"source": str(root / "nested")}
    tokens, rewards = long_frames(lps, rws, **kwargs)
    write_split(tokens, root / "tokens", parts)
    write_split(rewards, root / "rewards", reward_parts)
    return {"source": str(root / "tokens"), "rewards": str(root / "rewards")}


def assert_same(expected: pl.DataFrame, got: pl.DataFrame) -> None:
    """Same columns, types and integers; floats equal up to summation order."""
    assert got.columns == expected.columns
    assert got.schema == expected.schema
    assert got.height == expected.height
    for name in expected.columns:
        left, right = expected[name].to_list(), got[name].to_list()
        if expected.schema[name] == pl.Float64:
            for a, b in zip(left, right, strict=True):
                assert (a is None) == (b is None), (name, left, right)
                if a is not None:
                    assert math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12), (name, left, right)
        else:
            assert left == right, (name, left, right)
    if "loss" in expected.columns:
        rounded = [None if x is None else round(x, 4) for x in expected["loss"].to_list()]
        assert [None if x is None else round(x, 4) for x in got["loss"].to_list()] == rounded
