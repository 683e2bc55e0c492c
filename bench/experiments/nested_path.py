"""Cost of the pieces of the nested-layout path of ``stage_losses`` (scratch, issue 3).

    /work/venv/bin/python bench/experiments/nested_path.py /work/bench_data/small/nested 5
"""

from __future__ import annotations

import sys
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import report, run_interleaved

from raft_polars import stage_losses

root = Path(sys.argv[1])
reps = int(sys.argv[2]) if len(sys.argv) > 2 else 5
glob = f"{root}/*.parquet"
log = pl.scan_parquet(glob)
lp = pl.col("logprobs")
ids = pl.col("stage", "prompt", "cand")
STATS = {
    "nll": (-lp.cast(pl.List(pl.Float64)).list.sum()).alias("nll"),
    "len": lp.list.len().alias("tokens"),
    "max": lp.list.max().alias("lp_max"),
    "nulls": lp.list.count_matches(None).alias("lp_nulls"),
}


def rowstats(*names: str) -> pl.DataFrame:
    return log.select(ids.sum(), pl.col("reward").sum(),
                      *(STATS[n].sum() for n in names)).collect(engine="streaming")


def one_pass() -> pl.DataFrame:
    """The engine's shape: per-row stats ride along the best-of-K group-by."""
    stats = log.select(ids, "reward", *STATS.values())
    best = stats.group_by("stage", "prompt").agg(
        pl.col("cand", "reward", "nll", "tokens", "lp_max", "lp_nulls")
        .sort_by(["reward", "cand"], descending=[True, False]).first())
    return best.group_by("stage").agg(pl.col("nll").sum(), pl.col("tokens").sum()).collect(
        engine="streaming")


funcs = {
    "floor: ids + reward + logprobs.list.sum()": lambda: log.select(
        ids.sum(), pl.col("reward").sum(), lp.list.sum().sum()).collect(engine="streaming"),
    "floor': ids + reward + logprobs.list.len()": lambda: rowstats("len"),
    "row stats: nll (f64) only": lambda: rowstats("nll"),
    "row stats: nll + len": lambda: rowstats("nll", "len"),
    "row stats: nll + len + max": lambda: rowstats("nll", "len", "max"),
    "row stats: all four (engine)": lambda: rowstats("nll", "len", "max", "nulls"),
    "one pass with group-by, no checks": one_pass,
    "engine stage_losses": lambda: stage_losses(glob),
}
report(run_interleaved(funcs, reps), base="floor: ids + reward + logprobs.list.sum()")
