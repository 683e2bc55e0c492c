"""``validate`` on every executor: the same report, and the right counts when a
response's token rows are spread over several files (the Dask executor then
aggregates those responses again from their rows)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Literal

import dask_cluster
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import long_frames, nested_frame, write_split
from strategies import ragged_logs

import raft_polars as rp
import raft_polars.dask as rd

LPS = [[[[-1.0, -2.0, -0.5], [-2.0, -4.0]], [[-0.5, -0.5], [-3.0]]], [[[-0.25], [-1.0]]]]
RWS = [[[0.1, 0.9], [0.7, 0.2]], [[1.0, 0.0]]]


def _report(engine: str, **kwargs: Any) -> dict[str, Any]:
    on: rd.DaskEngine | Literal["polars"] = dask_cluster.engine() if engine == "dask" else "polars"
    return rp.validate(**kwargs, engine=on).to_dict()


def _both(**kwargs: Any) -> dict[str, Any]:
    local = _report("polars", **kwargs)
    assert _report("dask", **kwargs) == local
    return local


def _counts(report: dict[str, Any]) -> dict[str, int]:
    return {p["kind"]: p["count"] for p in report["problems"]}


def test_clean_log_split_over_files(tmp_path: Path) -> None:
    tokens, rewards = long_frames(LPS, RWS, shuffle=3)
    write_split(tokens, tmp_path / "t", 3)  # rows dealt round-robin: responses split
    write_split(rewards, tmp_path / "r", 2)
    report = _both(source=str(tmp_path / "t"), rewards=str(tmp_path / "r"))
    assert report["ok"]
    assert report["summary"] == {"stages": 2, "prompts": 3, "candidates": 6, "tokens": 10}


def test_token_problems_across_files(tmp_path: Path) -> None:
    tokens, rewards = long_frames(LPS, RWS)
    first = (pl.col("stage") == 0) & (pl.col("prompt") == 0) & (pl.col("cand") == 0)
    # the same position in two files, a gap, a bad value, a token without reward
    dup = tokens.filter(first & (pl.col("token") == 1))
    other = (pl.col("stage") == 0) & (pl.col("prompt") == 0) & (pl.col("cand") == 1)
    gap = tokens.filter(~(other & (pl.col("token") == 0)))
    bad = gap.with_columns(
        pl.when(first & (pl.col("token") == 0)).then(0.5).otherwise("logprob").alias("logprob")
    )
    orphan = tokens.head(1).with_columns(pl.lit(9, pl.Int64).alias("cand"))
    write_split(bad, tmp_path / "t", 2)
    dup.write_parquet(tmp_path / "t" / "part-dup.parquet")
    orphan.write_parquet(tmp_path / "t" / "part-orphan.parquet")
    rewards.write_parquet(tmp_path / "rewards.parquet")
    report = _both(source=str(tmp_path / "t"), rewards=str(tmp_path / "rewards.parquet"))
    assert _counts(report) == {
        "bad_logprob_unselected": 1,
        "orphan_tokens": 1,
        "duplicate_token": 1,
        "token_gap": 1,
    }
    dup_place = next(p for p in report["problems"] if p["kind"] == "duplicate_token")
    assert dup_place["locations"] == [{"stage": 0, "prompt": 0, "cand": 0, "token": 1, "rows": 2}]


def test_nested_problems_across_files(tmp_path: Path) -> None:
    frame = nested_frame(LPS, RWS, shuffle=1)
    best = (pl.col("stage") == 0) & (pl.col("prompt") == 0) & (pl.col("cand") == 1)
    frame = frame.with_columns(
        pl.when(best).then(pl.lit([-1.0, float("nan")])).otherwise("logprobs").alias("logprobs")
    )
    write_split(pl.concat([frame, frame.head(1)]), tmp_path / "n", 3)  # a duplicate too
    report = _both(source=str(tmp_path / "n"))
    assert _counts(report) == {"duplicate_candidate": 1, "bad_logprob_selected": 1}


@pytest.mark.parametrize("strategy", [{}, {"strategy": "global", "fraction": 0.5}])
def test_selection_options(tmp_path: Path, strategy: dict[str, Any]) -> None:
    write_split(nested_frame(LPS, RWS, shuffle=2), tmp_path / "n", 2)
    assert _both(source=str(tmp_path / "n"), **strategy)["ok"]


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    log=ragged_logs(max_stages=2),
    parts=st.integers(1, 3),
    layout=st.sampled_from(["nested", "long"]),
    drop=st.integers(0, 50),
    copy=st.integers(0, 50),
)
def test_random_faults_same_report(
    log: tuple[list[Any], list[Any]], parts: int, layout: str, drop: int, copy: int
) -> None:
    """Random logs with a dropped and a duplicated row, spread over files: the
    same report on both executors."""
    lps, rws = log
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if layout == "nested":
            frame = nested_frame(lps, rws, shuffle=drop)
            frame = pl.concat([frame, frame.slice(copy % frame.height, 1)])
            write_split(frame, root / "n", parts)
            kwargs: dict[str, Any] = {"source": str(root / "n")}
        else:
            tokens, rewards = long_frames(lps, rws, shuffle=drop)
            if tokens.height:
                tokens = pl.concat([tokens, tokens.slice(copy % tokens.height, 1)])
                tokens = tokens.filter(pl.int_range(pl.len()) != drop % tokens.height)
            write_split(tokens, root / "t", parts)
            write_split(rewards, root / "r", 1)
            kwargs = {"source": str(root / "t"), "rewards": str(root / "r")}
        _both(**kwargs)
