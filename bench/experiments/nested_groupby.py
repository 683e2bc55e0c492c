"""Which aggregation of the nested one-pass group-by costs what (scratch, issue 3).

    /work/venv/bin/python bench/experiments/nested_groupby.py /work/bench_data/small/nested 5

The per-row list statistics ride along a ``group_by(stage, prompt)``; Polars runs
plain aggregations (len, sum, max, null_count) on its fast path, but evaluates
expressions such as ``sort_by(...).first()`` or ``(reward == reward.max()).sum()``
group by group.
"""

from __future__ import annotations

import sys
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import report, run_interleaved

from raft_polars.losses import response_stats

root = Path(sys.argv[1])
reps = int(sys.argv[2]) if len(sys.argv) > 2 else 5
rows = pl.scan_parquet(f"{root}/*.parquet").select(
    "stage", "prompt", "cand", pl.col("reward").cast(pl.Float64), *response_stats("logprobs"))
r = pl.col("reward")
carry = ("cand", "reward", "nll", "tokens", "lp_max", "lp_nulls")
BEST = pl.col(*carry).sort_by(["reward", "cand"], descending=[True, False]).first()


def grouped(*aggs: pl.Expr) -> pl.DataFrame:
    return rows.group_by("stage", "prompt").agg(*aggs).select(
        pl.exclude("stage", "prompt").cast(pl.Float64).sum()).collect(
        engine="streaming")


funcs = {
    "row stats only (sum of each)": lambda: rows.select(pl.all().sum()).collect(
        engine="streaming"),
    "group-by: len, sum, max (fast path)": lambda: grouped(
        pl.len(), r.sum().alias("s"), r.max().alias("m")),
    "+ best row: sort_by(reward, cand).first()": lambda: grouped(
        pl.len(), r.sum().alias("s"), BEST),
    "+ best row: top_k_by(k=1)": lambda: grouped(
        pl.len(), r.sum().alias("s"),
        pl.col(*carry).top_k_by(["reward", "cand"], k=1, reverse=[False, True]).first()),
    "+ n_unique(cand)": lambda: grouped(
        pl.len(), r.sum().alias("s"), BEST, pl.col("cand").n_unique().alias("u")),
    "+ ties (reward == max).sum()": lambda: grouped(
        pl.len(), r.sum().alias("s"), BEST, (r == r.max()).sum().alias("t")),
    "engine's prompt summary, all aggregations": lambda: grouped(
        BEST, pl.len(), pl.col("cand").n_unique().alias("u"),
        pl.col("cand").null_count().alias("nc"), r.sum().alias("s"),
        (r == r.max()).sum().alias("t"),
        (r.is_null() | r.is_nan() | r.is_infinite()).sum().alias("b")),
}
report(run_interleaved(funcs, reps), base="row stats only (sum of each)")
