"""String prompt ids in the long layout (scratch, issue 3).

    /work/venv/bin/python bench/experiments/string_ids.py /work/bench_data/small/long_str 5

The engine falls back to a hash join of every token row on (stage, prompt, cand)
with a status table. Alternative: give each prompt string of the rewards a dense
integer code once (a small table), turn the token rows' strings into those codes
with a cast to ``pl.Enum`` (unknown strings become null: orphans), and reuse the
integer dense-table pass on the codes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import report, run_interleaved

from raft_polars import stage_losses

root = Path(sys.argv[1])
reps = int(sys.argv[2]) if len(sys.argv) > 2 else 5
tokens_glob, rewards_glob = f"{root}/tokens/*.parquet", f"{root}/rewards/*.parquet"
LP = pl.col("logprob")
AGGS = [(-LP.cast(pl.Float64).sum()).alias("nll"), pl.len().alias("tokens"),
        LP.max().alias("lp_max"), LP.null_count().alias("lp_nulls")]


def enum_pass() -> pl.DataFrame:
    keys = pl.read_parquet(rewards_glob, columns=["stage", "prompt", "cand", "reward"])
    prompts = keys["prompt"].unique(maintain_order=True)
    enum = pl.Enum(prompts)
    keys = keys.with_columns(pl.col("prompt").cast(enum).to_physical())
    best = (keys.sort(["stage", "prompt", "reward", "cand"], descending=[False, False, True, False])
            .unique(["stage", "prompt"], keep="first"))
    lows = [int(keys[c].min()) for c in ("stage", "prompt", "cand")]
    spans = [int(keys[c].max()) - lo + 1
             for c, lo in zip(("stage", "prompt", "cand"), lows, strict=True)]
    size = spans[0] * spans[1] * spans[2]

    def index(frame: pl.DataFrame) -> np.ndarray:
        c = [frame[n].to_numpy().astype(np.int64) - lo
             for n, lo in zip(("stage", "prompt", "cand"), lows, strict=True)]
        return (c[0] * spans[1] + c[1]) * spans[2] + c[2]

    table = np.ones(size + 1, np.uint8)
    table[index(keys)] = 0
    table[index(best)] = 2 + best["stage"].to_numpy() - lows[0]
    parts = [
        (pl.col("stage") - lows[0]).reinterpret(signed=False),
        pl.col("prompt").cast(enum, strict=True).to_physical().cast(pl.UInt32) - lows[1],
        (pl.col("cand") - lows[2]).reinterpret(signed=False),
    ]
    inside = pl.all_horizontal(*(p < s for p, s in zip(parts, spans, strict=True)))
    flat = (parts[0] * spans[1] + parts[1]) * spans[2] + parts[2]
    code = pl.lit(pl.Series("code", table)).gather(pl.when(inside).then(flat).otherwise(size))
    return (pl.scan_parquet(tokens_glob).select(code.alias("code"), "logprob")
            .filter(pl.col("code") != 0).group_by("code").agg(AGGS)
            .sort("code").collect(engine="streaming"))


def hash_join() -> pl.DataFrame:
    """The hand-written Polars query: best per prompt, semi join, per stage."""
    best = pl.scan_parquet(rewards_glob).group_by("stage", "prompt").agg(
        pl.col("cand").sort_by(["reward", "cand"], descending=[True, False]).first())
    return (pl.scan_parquet(tokens_glob).join(best, on=["stage", "prompt", "cand"], how="semi")
            .group_by("stage").agg(AGGS).sort("stage").collect(engine="streaming"))


def hashed_pass() -> pl.DataFrame:
    """Prompt strings hashed to UInt64 (vectorised), then a left join on three
    integer keys with the status table of all candidates. A hash collision of an
    orphan row with a real prompt would go unnoticed (probability ~2**-64 a row);
    collisions among the rewards' own prompts are checked."""
    keys = pl.read_parquet(rewards_glob, columns=["stage", "prompt", "cand", "reward"])
    keys = keys.with_columns(pl.col("prompt").hash(seed=7).alias("h"))
    assert keys.select(pl.col("h").n_unique()).item() == keys["prompt"].n_unique()
    best = (keys.sort(["stage", "h", "reward", "cand"], descending=[False, False, True, False])
            .unique(["stage", "h"], keep="first"))
    status = keys.select("stage", "h", "cand", pl.lit(1, pl.UInt8).alias("status")).update(
        best.select("stage", "h", "cand", pl.lit(2, pl.UInt8).alias("status")),
        on=["stage", "h", "cand"])
    return (pl.scan_parquet(tokens_glob)
            .select("stage", pl.col("prompt").hash(seed=7).alias("h"), "cand", "logprob")
            .join(status.lazy(), on=["stage", "h", "cand"], how="left")
            .filter(pl.col("status").ne_missing(1))
            .group_by("stage", "status").agg(AGGS).sort("stage").collect(engine="streaming"))


def prompt_join_pass() -> pl.DataFrame:
    """A left join on (stage, prompt) only, with one row per prompt: its best
    candidate and its candidate id range. When every prompt's candidate ids are
    contiguous (checked on the rewards; else the engine's join applies), a token
    row is selected if cand == best, not selected if inside the range, and an
    orphan otherwise (or if its prompt is unknown)."""
    keys = pl.read_parquet(rewards_glob, columns=["stage", "prompt", "cand", "reward"])
    prompts = keys.group_by("stage", "prompt").agg(
        pl.col("cand").sort_by(["reward", "cand"], descending=[True, False]).first()
        .alias("best"),
        pl.col("cand").min().alias("lo"), pl.col("cand").max().alias("hi"), pl.len())
    assert (prompts["hi"] - prompts["lo"] + 1 == prompts["len"]).all()  # contiguous ids
    cand = pl.col("cand")
    code = (pl.when(cand == pl.col("best")).then(2)
            .when(cand.is_between(pl.col("lo"), pl.col("hi"))).then(1).otherwise(0)
            .cast(pl.UInt8).alias("status"))  # null prompt: otherwise -> orphan
    return (pl.scan_parquet(tokens_glob).select("stage", "prompt", "cand", "logprob")
            .join(prompts.lazy().drop("len"), on=["stage", "prompt"], how="left")
            .select("stage", code, "logprob").filter(pl.col("status") != 1)
            .group_by("stage", "status").agg(AGGS).sort("stage").collect(engine="streaming"))


funcs = {
    "floor (the token and reward columns)": lambda: [
        pl.scan_parquet(tokens_glob).select(pl.col("stage", "cand", "logprob").sum(),
                                            pl.col("prompt").str.len_bytes().sum())
        .collect(engine="streaming"),
        pl.scan_parquet(rewards_glob).select(pl.col("stage", "cand", "reward").sum(),
                                             pl.col("prompt").str.len_bytes().sum())
        .collect(engine="streaming")],
    "engine stage_losses (hash-join fallback)": lambda: stage_losses(
        str(root / "tokens"), rewards=str(root / "rewards")),
    "semi join on (stage, prompt, cand), no checks": hash_join,
    "prompt strings -> Enum codes -> dense table": enum_pass,
    "prompt strings hashed, join on 3 integer keys": hashed_pass,
    "left join on (stage, prompt), one row a prompt": prompt_join_pass,
}
out = run_interleaved(funcs, reps)
ref = out["engine stage_losses (hash-join fallback)"].value
got = out["prompt strings -> Enum codes -> dense table"].value
sel = got.filter(pl.col("code") >= 2)
print("Enum pass, tokens per stage equal the engine's:",
      sel["tokens"].to_list() == ref["tokens"].to_list(),
      "| losses equal (rtol 1e-12):",
      np.allclose(sel["nll"].to_numpy() / sel["tokens"].to_numpy(), ref["loss"].to_numpy(),
                  rtol=1e-12))
pj = out["left join on (stage, prompt), one row a prompt"].value.filter(pl.col("status") == 2)
print("prompt join, tokens per stage equal the engine's:",
      pj["tokens"].to_list() == ref["tokens"].to_list(), "| orphan rows:",
      out["left join on (stage, prompt), one row a prompt"].value.filter(
          pl.col("status") == 0).height)
report(out, base="floor (the token and reward columns)")
