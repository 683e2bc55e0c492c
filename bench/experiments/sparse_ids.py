"""Sparse integer prompt ids (issue 3, scratch): the engine's hash-join fallback
against dense codes per prompt, by a join on the prompt column alone or by
``replace_strict``, then the dense path.

    /work/venv/bin/python bench/experiments/sparse_ids.py /work/bench_data/small/long /tmp/sparse

Writes the small long layout with prompt ids multiplied by a large odd number
(a box far too sparse) under the second argument, once.
"""

import os
import statistics
import sys
import time

import numpy as np
import polars as pl

import raft_polars
from raft_polars._dense import box_of, gather
from raft_polars.ranking import dense_summary

root, out = sys.argv[1], sys.argv[2]
M = 1_000_003_777
tok = pl.scan_parquet(f"{root}/tokens/*.parquet").with_columns(
    (pl.col("prompt").cast(pl.Int64) * M).alias("prompt")
)
rew = pl.scan_parquet(f"{root}/rewards/*.parquet").with_columns(
    (pl.col("prompt").cast(pl.Int64) * M).alias("prompt")
)
t, r = f"{out}/tokens/t.parquet", f"{out}/rewards/r.parquet"
if not os.path.exists(r):
    os.makedirs(f"{out}/tokens", exist_ok=True)
    os.makedirs(f"{out}/rewards", exist_ok=True)
    tok.sink_parquet(t)
    rew.sink_parquet(r)
lp = pl.col("logprob")
aggs = [
    (-lp.cast(pl.Float64).sum()).alias("nll"),
    pl.len().alias("tokens"),
    lp.max(),
    lp.null_count().alias("nn"),
]


def floor():
    pl.scan_parquet(t).select(pl.col("stage", "prompt", "cand", "logprob").sum()).collect(
        engine="streaming"
    )
    pl.scan_parquet(r).select(pl.col("stage", "prompt", "cand", "reward").sum()).collect(
        engine="streaming"
    )


def ours():
    return raft_polars.stage_losses(t, rewards=r)


def replace():
    keys = (
        pl.scan_parquet(r).select("stage", "prompt", "cand", "reward").collect(engine="streaming")
    )
    cats = keys["prompt"].unique(maintain_order=True)
    code = pl.col("prompt").replace_strict(
        cats, pl.int_range(len(cats), eager=True), default=None, return_dtype=pl.Int64
    )
    k2 = keys.with_columns(code)
    return coded_pass(k2, pl.scan_parquet(t).select("stage", code.alias("prompt"), "cand",
                                                    "logprob"))


def joinp():
    keys = (
        pl.scan_parquet(r).select("stage", "prompt", "cand", "reward").collect(engine="streaming")
    )
    cats = (
        keys.select(pl.col("prompt").unique(maintain_order=True))
        .with_row_index("code")
        .with_columns(pl.col("code").cast(pl.Int64))
    )
    k2 = keys.join(cats, on="prompt").drop("prompt").rename({"code": "prompt"})
    scan = (
        pl.scan_parquet(t)
        .select("stage", "prompt", "cand", "logprob")
        .join(cats.lazy(), on="prompt", how="left")
        .select("stage", pl.col("code").alias("prompt"), "cand", "logprob")
    )
    return coded_pass(k2, scan)


def coded_pass(keys: pl.DataFrame, scan: pl.LazyFrame) -> pl.DataFrame:
    """The dense path on keys and token rows whose ``prompt`` holds the codes."""
    summ = dense_summary(keys)
    box = box_of(keys)
    table = np.zeros(box.size + 1, dtype=np.uint8)
    table[box.index(keys)] = 1
    table[box.index(summ)] = 2
    ex = gather(table, box, scan.collect_schema(), checked=True)  # null codes: outside
    return (
        scan.select("stage", ex.alias("status"), "logprob")
        .filter(pl.col("status") != 1)
        .group_by("stage", "status")
        .agg(aggs)
        .collect(engine="streaming")
    )


V = {"floor": floor, "engine": ours, "join on prompt": joinp, "replace_strict": replace}
res = {k: [] for k in V}
for _ in range(5):
    for k, f in V.items():
        t0 = time.perf_counter()
        f()
        res[k].append(time.perf_counter() - t0)
fl = statistics.median(res["floor"])
for k, v in res.items():
    print(k, round(statistics.median(v), 3), round(statistics.median(v) / fl, 2))
