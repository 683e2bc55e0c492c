"""Faster formulations of the long-layout path of ``stage_losses``, measured
against the engine (scratch code for issue 3, not used by the package). Written
against the engine at 8711c3d; the engine has since adopted ``reuse``, ``numpy``
and ``dense`` (see docs/performance.md), so today they measure about the same.

    /work/venv/bin/python bench/experiments/long_path.py /work/bench_data/small/long

Variants (each returns the full ``stage_losses`` table for the default
best-of-K selection and must equal the engine's):

- ``engine``: ``raft_polars.stage_losses`` as shipped.
- ``reuse``: the engine, but ``chosen`` taken from the prompt summary instead
  of running ``rank`` (the same group-by) a second time.
- ``native``: ``reuse`` + a token pass whose table codes (stage, selected) in
  one UInt8 (UInt16 past 250 stages), so the group-by has one small key, with
  the key arithmetic on the unsigned offsets (UInt32 for Int32 ids: gather's
  index type). (An earlier engine also cast the ids to Int64 first; the engine
  now works on the ids' own Int32 type with one unsigned compare per id, as
  measured in ``token_pass.py``.)
- ``numpy``: ``native`` + the per-prompt summary computed with numpy on the
  dense ids (bincount / maximum.at) instead of a Polars group-by with
  per-group sort_by.
- ``dense``: ``numpy`` + the candidate keys read in their own integer types, the
  summary from a dense (prompt x K) reward matrix, and the keys dropped before
  the token pass (only the summary and the UInt8 table live through it).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import report, run_interleaved

from raft_polars import _checks, stage_losses
from raft_polars import losses as L
from raft_polars.logs import ID_COLUMNS, StageLog, collect, read_log
from raft_polars.ranking import prompt_summary

_MAX_DENSE = 1 << 26
LP = pl.col("logprob")
AGGS = (
    (-LP.cast(pl.Float64).sum()).alias("nll"),
    pl.len().cast(pl.Int64).alias("tokens"),
    LP.max().cast(pl.Float64).alias("lp_max"),
    LP.null_count().cast(pl.Int64).alias("lp_nulls"),
)


# --- the per-prompt summary ---------------------------------------------------------


def _box(keys: pl.DataFrame) -> tuple[list[int], list[int], int] | None:
    """Lows, spans and size of the dense id box, or None when it does not fit."""
    if keys.height == 0 or not all(keys.schema[c].is_integer() for c in ID_COLUMNS):
        return None
    if any(keys[c].has_nulls() for c in ID_COLUMNS):
        return None
    lows = [int(keys[c].min()) for c in ID_COLUMNS]  # type: ignore[arg-type]
    spans = [int(keys[c].max()) - low + 1 for c, low in zip(ID_COLUMNS, lows, strict=True)]  # type: ignore[arg-type]
    size = spans[0] * spans[1] * spans[2]
    return (lows, spans, size) if size <= _MAX_DENSE else None


def numpy_summary(keys: pl.DataFrame) -> pl.DataFrame | None:
    """``prompt_summary(keys)`` with numpy on dense integer ids; None when it does
    not apply (ids not dense, nulls, duplicates or non-finite rewards: the Polars
    summary then finds and names the problem)."""
    box = _box(keys)
    if box is None:
        return None
    lows, spans, _ = box
    s, p, c = (keys[n].to_numpy().astype(np.int64) - low
               for n, low in zip(ID_COLUMNS, lows, strict=True))
    reward = keys["reward"].to_numpy()
    if not np.isfinite(reward).all():
        return None
    group = s * spans[1] + p
    if np.bincount(group * spans[2] + c).max() > 1:  # a duplicate candidate
        return None
    n_groups = spans[0] * spans[1]
    counts = np.bincount(group, minlength=n_groups)
    best = np.full(n_groups, -np.inf)
    np.maximum.at(best, group, reward)
    top = reward == best[group]
    ties = np.bincount(group, weights=top, minlength=n_groups)
    cand = np.full(n_groups, np.iinfo(np.int64).max)
    np.minimum.at(cand, group[top], c[top])
    sums = np.bincount(group, weights=reward, minlength=n_groups)
    used = np.flatnonzero(counts)
    n = pl.UInt32
    return pl.DataFrame({
        "stage": used // spans[1] + lows[0],
        "prompt": used % spans[1] + lows[1],
        "cand": cand[used] + lows[2],
        "reward": best[used],
        "candidates": pl.Series(counts[used], dtype=n),
        "cand_unique": pl.Series(counts[used], dtype=n),
        "null_cands": pl.Series(np.zeros(len(used)), dtype=n),
        "reward_sum": sums[used],
        "ties": pl.Series(ties[used], dtype=n),
        "bad_rewards": pl.Series(np.zeros(len(used)), dtype=n),
    })


def dense_summary(keys: pl.DataFrame) -> pl.DataFrame | None:
    """:func:`numpy_summary` on a dense ``(prompt, K)`` reward matrix: row max,
    first argmax (the smallest candidate among ties) and tie counts in O(box)
    time and memory, without the scattered ``ufunc.at`` passes. Used when the box
    is at most 4x the number of candidates (else :func:`numpy_summary`)."""
    box = _box(keys)
    if box is None:
        return None
    lows, spans, size = box
    if size > 4 * keys.height:
        return numpy_summary(keys)
    reward = keys["reward"].to_numpy()
    if not np.isfinite(reward).all():
        return None
    index = keys["stage"].to_numpy().astype(np.int64)
    index -= lows[0]
    index *= spans[1]
    index += keys["prompt"].to_numpy()
    index -= lows[1]
    index *= spans[2]
    index += keys["cand"].to_numpy()
    index -= lows[2]
    present = np.zeros(size, dtype=bool)
    present[index] = True
    if int(present.sum()) != len(index):  # a duplicate candidate
        return None
    matrix = np.full(size, -np.inf)
    matrix[index] = reward
    del index
    matrix = matrix.reshape(-1, spans[2])
    counts = present.reshape(-1, spans[2]).sum(axis=1)
    used = np.flatnonzero(counts)
    matrix = matrix[used]
    best = matrix.max(axis=1)
    cand = matrix.argmax(axis=1)  # the first maximum: the smallest candidate id
    ties = (matrix == best[:, None]).sum(axis=1)
    del matrix
    group = keys["stage"].to_numpy().astype(np.int64) - lows[0]
    group *= spans[1]
    group += keys["prompt"].to_numpy()
    group -= lows[1]
    sums = np.bincount(group, weights=reward, minlength=spans[0] * spans[1])[used]
    n = pl.UInt32
    return pl.DataFrame({
        "stage": used // spans[1] + lows[0],
        "prompt": used % spans[1] + lows[1],
        "cand": cand + lows[2],
        "reward": best,
        "candidates": pl.Series(counts[used], dtype=n),
        "cand_unique": pl.Series(counts[used], dtype=n),
        "null_cands": pl.Series(np.zeros(len(used)), dtype=n),
        "reward_sum": sums,
        "ties": pl.Series(ties, dtype=n),
        "bad_rewards": pl.Series(np.zeros(len(used)), dtype=n),
    })


# --- the token pass -----------------------------------------------------------------


Box = tuple[list[int], list[int], int]


def code_table(keys: pl.DataFrame, chosen: pl.DataFrame) -> tuple[np.ndarray, Box] | None:
    """The dense code table of the token pass: one UInt8 (UInt16 past 250 stages)
    per point of the id box, plus one for "outside": 0 = a candidate that is not
    selected (its rows are dropped), 1 = no reward row (orphan), 2 + i = selected,
    of the i-th stage of the box. None when the ids do not fit a dense box."""
    box = _box(keys)
    if box is None or box[1][0] >= 65000:
        return None
    lows, spans, size = box
    np_type = np.uint8 if spans[0] < 250 else np.uint16

    def index(frame: pl.DataFrame) -> np.ndarray:
        # in place in one int64 buffer: no per-column temporaries
        flat = frame["stage"].to_numpy().astype(np.int64)
        flat -= lows[0]
        flat *= spans[1]
        flat += frame["prompt"].to_numpy()
        flat -= lows[1]
        flat *= spans[2]
        flat += frame["cand"].to_numpy()
        flat -= lows[2]
        return flat

    table = np.ones(size + 1, dtype=np_type)  # orphan unless a reward row exists
    table[index(keys)] = 0
    table[index(chosen)] = 2 + (chosen["stage"].to_numpy() - lows[0])
    return table, box


def native_token_stats(log: StageLog, tokens: pl.LazyFrame, keys: pl.DataFrame | None,
                       chosen: pl.DataFrame,
                       coded: tuple[np.ndarray, Box] | None = None) -> pl.DataFrame | None:
    """Per-stage sums of the selected token rows, on the ids' own integer types.

    ``tokens`` is the token frame before the canonical Int64 cast; each row gets
    its code from :func:`code_table` (``coded``, or built from ``keys``). Ids
    outside the box (one unsigned comparison each) and null ids are orphans.
    """
    if coded is None:
        assert keys is not None
        coded = code_table(keys, chosen)
    if coded is None:
        return None
    table, (lows, spans, size) = coded
    schema = tokens.collect_schema()
    parts = []
    for name, low in zip(ID_COLUMNS, lows, strict=True):
        dtype = schema[name]
        if dtype not in (pl.Int32, pl.Int64, pl.UInt32, pl.UInt64):
            dtype = pl.Int32 if -(2**31) <= low < 2**31 else pl.Int64  # small ints: widen
        # the offset from the box's low corner, as unsigned: a negative difference
        # wraps to a huge number, so one comparison per id checks both bounds
        parts.append((pl.col(name).cast(dtype) - pl.lit(low, dtype)).reinterpret(signed=False))
    inside = pl.all_horizontal(*(part < span for part, span in zip(parts, spans, strict=True)))
    # unsigned arithmetic (UInt32 for Int32 ids): already gather's index type
    flat = (parts[0] * spans[1] + parts[1]) * spans[2] + parts[2]
    code = pl.lit(pl.Series("code", table)).gather(
        pl.when(inside).then(flat).otherwise(size)).alias("code")
    stats = collect(log, tokens.select(code, "logprob").filter(pl.col("code") != 0)
                    .group_by("code").agg(AGGS))
    orphans = stats.filter(pl.col("code") == 1)
    _checks.orphan_tokens(log, orphans)
    selected = stats.filter(pl.col("code") >= 2).select(
        (pl.col("code").cast(pl.Int64) - 2 + lows[0]).alias("stage"),
        *[a.meta.output_name() for a in AGGS])
    _checks.selected_logprobs(log, selected, chosen)
    return selected


# --- whole paths --------------------------------------------------------------------


def _finish(log: StageLog, summary: pl.DataFrame, chosen: pl.DataFrame,
            token_stats: pl.DataFrame) -> pl.DataFrame:
    per_stage = (
        chosen.lazy().group_by("stage")
        .agg(pl.len().alias("selected"), pl.col("reward").sum().alias("reward_best_sum"))
        .join(token_stats.lazy(), on="stage", how="left")
        .with_columns(pl.col("tokens").fill_null(0), pl.col("nll").fill_null(0.0),
                      pl.lit(None, pl.Float64).alias("seq_sum"), pl.lit(0).alias("seq_n"))
    )
    return L._reduce(log, summary, per_stage, None, "token")


def _glob(path: str) -> str:
    return f"{path}/**/*.parquet" if Path(path).is_dir() else path


def variant(tokens: str, rewards: str, *, native: bool, numpy: bool,
            dense: bool = False) -> pl.DataFrame:
    log = read_log(tokens, rewards=rewards)
    if dense:  # the candidate keys in the files' own integer types (no Int64 cast)
        keys = collect(log, pl.scan_parquet(_glob(rewards)).select(
            *ID_COLUMNS, pl.col("reward").cast(pl.Float64)))
        summary = dense_summary(keys)
        if summary is not None and native:
            _checks.candidates(log, summary)
            chosen = summary.select(*ID_COLUMNS, "reward")
            coded = code_table(keys, chosen)
            del keys  # only the summary and the code table live through the pass
            stats = native_token_stats(log, pl.scan_parquet(_glob(tokens)), None, chosen, coded)
            assert stats is not None
            return _finish(log, summary, chosen, stats)
    else:
        keys = collect(log, log.candidates.select(*ID_COLUMNS, "reward"))
        summary = numpy_summary(keys) if numpy else None
    if summary is None:
        summary = prompt_summary(keys.lazy()).collect(engine="in-memory")
    _checks.candidates(log, summary)
    chosen = summary.select(*ID_COLUMNS, "reward")  # best-of-K: the summary's best row
    stats = None
    if native:
        raw = pl.scan_parquet(_glob(tokens))
        stats = native_token_stats(log, raw, keys, chosen)
    if stats is None:  # the engine's own token pass on these keys
        status = L._token_status(log, L.Keys(keys, None, summary), chosen)
        stats = L._long_token_stats(log, status, chosen, per_response=False)
    return _finish(log, summary, chosen, stats)


VARIANTS = {
    "engine": lambda t, r: stage_losses(t, rewards=r),
    "reuse": lambda t, r: variant(t, r, native=False, numpy=False),
    "native": lambda t, r: variant(t, r, native=True, numpy=False),
    "numpy": lambda t, r: variant(t, r, native=True, numpy=True),
    "dense": lambda t, r: variant(t, r, native=True, numpy=True, dense=True),
}


def one(root: Path, name: str) -> None:
    """One call of one variant in this process; its time and peak RSS."""
    import resource

    t0 = time.perf_counter()
    VARIANTS[name](str(root / "tokens"), str(root / "rewards"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{name:8s} {time.perf_counter() - t0:7.2f} s  peak RSS {peak:6.0f} MiB")


def main() -> None:
    if sys.argv[1] == "--one":
        one(Path(sys.argv[2]), sys.argv[3])
        return
    root = Path(sys.argv[1])
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    tokens, rewards = str(root / "tokens"), str(root / "rewards")
    ref = stage_losses(tokens, rewards=rewards)
    methods = {
        "floor (tokens + rewards columns)": lambda: [
            pl.scan_parquet(f"{tokens}/*.parquet").select(
                pl.col("stage", "prompt", "cand", "logprob").sum()).collect(engine="streaming"),
            pl.scan_parquet(f"{rewards}/*.parquet").select(
                pl.col("stage", "prompt", "cand", "reward").sum()).collect(engine="streaming")],
        "engine stage_losses": lambda: stage_losses(tokens, rewards=rewards),
        "reuse summary as chosen": lambda: variant(tokens, rewards, native=False, numpy=False),
        "+ code table (one UInt8 group key)": lambda: variant(
            tokens, rewards, native=True, numpy=False),
        "+ numpy summary (maximum.at)": lambda: variant(tokens, rewards, native=True, numpy=True),
        "+ native keys, dense summary, keys freed": lambda: variant(
            tokens, rewards, native=True, numpy=True, dense=True),
    }
    results = run_interleaved(methods, reps)
    for name, out in results.items():
        if isinstance(out.value, pl.DataFrame):
            got = out.value
            same = got.columns == ref.columns and all(
                np.allclose(got[c].to_numpy().astype(float), ref[c].to_numpy().astype(float),
                            rtol=1e-12, atol=0) for c in ref.columns)
            print(f"{name}: same table as the engine's (rtol 1e-12): {same}; "
                  f"tokens identical: {got['tokens'].to_list() == ref['tokens'].to_list()}")
            if not same:
                print(got, ref)
    report(results, base="floor (tokens + rewards columns)")


if __name__ == "__main__":
    main()
