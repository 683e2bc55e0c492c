"""Cost of each piece of the long-layout token pass (scratch, issue 3).

    /work/venv/bin/python bench/experiments/token_pass.py /work/bench_data/small/long 7

Every variant reads the same four token columns; interleaved repetitions.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import report, run_interleaved

root = Path(sys.argv[1])
reps = int(sys.argv[2]) if len(sys.argv) > 2 else 5
tokens = pl.scan_parquet(f"{root}/tokens/*.parquet")
keys = pl.read_parquet(f"{root}/rewards/*.parquet")
ids = ("stage", "prompt", "cand")
chosen = (keys.sort(["stage", "prompt", "reward", "cand"], descending=[False, False, True, False])
          .unique(["stage", "prompt"], keep="first"))
lows = [int(keys[c].min()) for c in ids]
spans = [int(keys[c].max()) - lo + 1 for c, lo in zip(ids, lows, strict=True)]
size = spans[0] * spans[1] * spans[2]


def index(frame: pl.DataFrame) -> np.ndarray:
    c = [frame[n].to_numpy().astype(np.int64) - lo for n, lo in zip(ids, lows, strict=True)]
    return (c[0] * spans[1] + c[1]) * spans[2] + c[2]


table = np.ones(size + 1, np.uint8)
table[index(keys)] = 0
table[index(chosen)] = 2 + chosen["stage"].to_numpy() - lows[0]
TABLE = pl.Series("code", table)
LP = pl.col("logprob")
AGGS = [(-LP.cast(pl.Float64).sum()).alias("nll"), pl.len().alias("tokens"),
        LP.max().alias("lp_max"), LP.null_count().alias("lp_nulls")]


def parts(skip_zero: bool, cast64: bool = False) -> list[pl.Expr]:
    out = []
    for name, lo in zip(ids, lows, strict=True):
        col = pl.col(name).cast(pl.Int64) if cast64 else pl.col(name)
        out.append(col if (skip_zero and lo == 0) else col - lo)
    return out


def code(bounds: str, skip_zero: bool = False, cast64: bool = False) -> pl.Expr:
    p = parts(skip_zero, cast64)
    flat = (p[0] * spans[1] + p[1]) * spans[2] + p[2]
    if bounds == "none":  # wrong for ids outside the box: a lower bound only
        return pl.lit(TABLE).gather(flat).alias("code")
    if bounds == "u32":  # arithmetic on the unsigned differences: IdxSize for gather
        u = [x.reinterpret(signed=False) for x in p]
        inside = pl.all_horizontal(*(x < s for x, s in zip(u, spans, strict=True)))
        flat = (u[0] * spans[1] + u[1]) * spans[2] + u[2]
        return pl.lit(TABLE).gather(pl.when(inside).then(flat).otherwise(size)).alias("code")
    if bounds == "unsigned":
        inside = pl.all_horizontal(
            *(x.reinterpret(signed=False) < s for x, s in zip(p, spans, strict=True)))
    else:  # the engine's two comparisons per id
        inside = pl.all_horizontal(*((x >= 0) & (x < s) for x, s in zip(p, spans, strict=True)))
    key = pl.when(inside).then(flat).otherwise(size)
    if bounds == "engine":
        key = key.fill_null(size)
    return pl.lit(TABLE).gather(key).alias("code")


def pass_(c: pl.Expr, aggs: list[pl.Expr] = AGGS) -> pl.DataFrame:
    return (tokens.select(c, "logprob").filter(pl.col("code") != 0).group_by("code").agg(aggs)
            .collect(engine="streaming"))


funcs = {
    "floor: sum of the 4 token columns": lambda: tokens.select(
        pl.col(*ids, "logprob").sum()).collect(engine="streaming"),
    "code only (unsigned bounds), sum(code)": lambda: tokens.select(
        code("unsigned").cast(pl.Int64).sum(), LP.sum()).collect(engine="streaming"),
    "pass, engine bounds on Int64 casts": lambda: pass_(code("engine", cast64=True)),
    "pass, engine bounds on native ints": lambda: pass_(code("engine")),
    "pass, unsigned bounds": lambda: pass_(code("unsigned")),
    "pass, unsigned bounds, skip '- 0'": lambda: pass_(code("unsigned", skip_zero=True)),
    "pass, u32 arithmetic": lambda: pass_(code("u32")),
    "pass, no bounds (lower bound, not valid)": lambda: pass_(code("none", skip_zero=True)),
    "pass, unsigned, 2 aggs (sum, len)": lambda: pass_(code("unsigned"), AGGS[:2]),
    "group_by(stage, prompt, cand) of all rows": lambda: tokens.group_by(*ids).agg(AGGS)
    .collect(engine="streaming"),
}
report(run_interleaved(funcs, reps), base="floor: sum of the 4 token columns")
