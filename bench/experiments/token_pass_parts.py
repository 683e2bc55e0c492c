"""What each piece of the long layout's token pass costs (issue 3, scratch).

    /work/venv/bin/python bench/experiments/token_pass_parts.py /work/bench_data/small 7

Variants of the engine's token pass on the same files, interleaved, medians, x
the floor of the 4 token columns. The table is a stand-in (every K-th candidate
"selected"): the cost does not depend on which ones are.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import polars as pl


def main() -> None:
    root, reps = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 5
    scan = pl.scan_parquet(f"{root}/long/tokens/*.parquet").select(
        "stage", "prompt", "cand", "logprob")
    keys = pl.scan_parquet(f"{root}/long/rewards/*.parquet").select(
        "stage", "prompt", "cand").collect()
    n_s, n_p, n_k = (int(keys[c].max()) + 1 for c in ("stage", "prompt", "cand"))
    size = n_s * n_p * n_k
    table = np.ones(size + 1, dtype=np.uint8)
    table[::n_k] = 2
    status_table = pl.lit(pl.Series("t", table))
    code = np.zeros(size + 1, dtype=np.uint8)  # stage folded in: 2 + stage = selected
    code[::n_k] = 2 + (np.arange(size + 1)[::n_k] // (n_p * n_k)).astype(np.uint8)
    code_table = pl.lit(pl.Series("c", code))
    s, p, c, lp = pl.col("stage"), pl.col("prompt"), pl.col("cand"), pl.col("logprob")
    aggs = [(-lp.cast(pl.Float64).sum()).alias("nll"), pl.len().alias("n"),
            lp.max().alias("mx"), lp.null_count().alias("nulls")]
    key = (s * n_p + p) * n_k + c
    checked = pl.when(pl.all_horizontal(
        s.reinterpret(signed=False) < n_s, p.reinterpret(signed=False) < n_p,
        c.reinterpret(signed=False) < n_k)).then(key).otherwise(size)

    def grouped(status: pl.Expr, agg: list[pl.Expr] = aggs) -> Callable[[], object]:
        return lambda: (scan.with_columns(status.alias("status"))
                        .filter(pl.col("status") != 1).group_by("stage", "status").agg(agg)
                        .collect(engine="streaming"))

    variants: dict[str, Callable[[], object]] = {
        "floor (4 token columns)": lambda: scan.select(
            pl.col("stage", "prompt", "cand", "logprob").sum()).collect(engine="streaming"),
        "position only, summed": lambda: scan.select(key.sum(), lp.sum()).collect(
            engine="streaming"),
        "+ gather, summed": lambda: scan.select(
            status_table.gather(key).cast(pl.UInt32).sum(), lp.sum()).collect(engine="streaming"),
        "+ filter, summed": lambda: scan.with_columns(status_table.gather(key).alias("status"))
        .filter(pl.col("status") != 1).select(pl.col("status").cast(pl.UInt32).sum(), lp.sum())
        .collect(engine="streaming"),
        "engine (footers proved the bounds)": grouped(status_table.gather(key)),
        "engine, bounds checked per row": grouped(status_table.gather(checked)),
        "sums and counts only": grouped(status_table.gather(key), aggs[:2]),
        "one UInt8 code (stage folded in)": lambda: scan.select(
            code_table.gather(key).alias("code"), "logprob").filter(pl.col("code") != 0)
        .group_by("code").agg(aggs).collect(engine="streaming"),
        "filter, then group by stage": lambda: scan.filter(status_table.gather(key) != 1)
        .group_by("stage").agg(aggs).collect(engine="streaming"),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(reps):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    floor = statistics.median(times["floor (4 token columns)"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:38s} {median:7.3f} s  {median / floor:5.2f}x")


if __name__ == "__main__":
    main()
