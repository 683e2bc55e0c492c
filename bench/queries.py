"""The compared methods, one function each.

Every method has the same shape: ``build(files) -> query`` does the untimed setup
(nothing that reads the data), ``query()`` is what the benchmark times and returns
``{stage: (loss, tokens)}`` with the unrounded float64 loss and the number of tokens
in the selected responses (``tokens`` is None where a method does not count them).

``files`` is the dict of :func:`datagen.paths`: ``{"tokens", "rewards"}`` globs for
the long layout, ``{"nested"}`` for the nested one. Heavy libraries are imported
inside the builders, so a worker process only imports what its method needs.

The tie rule everywhere: the largest reward wins, ties to the smallest ``cand``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Result = dict[int, tuple[float, int | None]]
Query = Callable[[], Result]


def _rows(rows: Any) -> Result:
    return {int(s): (float(loss), None if n is None else int(n)) for s, loss, n in rows}


# --- (a) the read floor: Polars scans the same columns with a trivial sum ----------


def floor(files: dict[str, str], layout: str) -> Query:
    """Polars reads every column the query needs and sums each one; no answer.

    Long: ``stage, prompt, cand, logprob`` of the tokens plus ``stage, prompt, cand,
    reward`` of the rewards. Nested: ``stage, prompt, cand, reward, logprobs``
    (``logprobs`` summed per list, then over rows).
    """
    import polars as pl

    def total(name: str, schema: pl.Schema) -> pl.Expr:
        # string ids (the long_str case) are summed by their byte lengths
        col = pl.col(name)
        return col.str.len_bytes().sum() if schema[name] == pl.String else col.sum()

    def ids(glob: str) -> list[pl.Expr]:
        schema = pl.scan_parquet(glob).collect_schema()
        return [total(name, schema) for name in ("stage", "prompt", "cand")]

    if layout == "nested":
        plan = [
            pl.scan_parquet(files["nested"]).select(
                *ids(files["nested"]), pl.col("reward").sum(), pl.col("logprobs").list.sum().sum()
            )
        ]
    else:
        plan = [
            pl.scan_parquet(files["tokens"]).select(*ids(files["tokens"]), pl.col("logprob").sum()),
            pl.scan_parquet(files["rewards"]).select(
                *ids(files["rewards"]), pl.col("reward").sum()
            ),
        ]

    def query() -> Result:
        for lf in plan:
            lf.collect(engine="streaming")
        return {}

    return query


# --- (b) DuckDB ----------------------------------------------------------------------

# the fastest of the formulations tried (see bench/README.md): a SEMI JOIN of the
# token rows on the best candidates (long), and one pass carrying per-row list
# statistics through arg_max (nested); the struct key (reward, -cand) is the tie rule
_DUCKDB_LONG = """
WITH best AS (
    SELECT stage, prompt, arg_max(cand, (reward, -cand)) AS cand
    FROM read_parquet('{rewards}') GROUP BY stage, prompt
)
SELECT t.stage, -sum(t.logprob::DOUBLE) / count(*) AS loss, count(*) AS tokens
FROM read_parquet('{tokens}') AS t
SEMI JOIN best AS b ON t.stage = b.stage AND t.prompt = b.prompt AND t.cand = b.cand
GROUP BY t.stage ORDER BY t.stage
"""
_DUCKDB_NESTED = """
WITH rows AS (
    SELECT stage, prompt, cand, reward,
           list_sum(logprobs::DOUBLE[]) AS lp, len(logprobs) AS n
    FROM read_parquet('{nested}')
), best AS (
    SELECT stage, arg_max(lp, (reward, -cand)) AS lp, arg_max(n, (reward, -cand)) AS n
    FROM rows GROUP BY stage, prompt
)
SELECT stage, -sum(lp) / sum(n) AS loss, sum(n) AS tokens
FROM best GROUP BY stage ORDER BY stage
"""


def duckdb(files: dict[str, str], layout: str) -> Query:
    """DuckDB's best SQL; a fresh in-memory connection per call, opened untimed."""
    import duckdb as ddb

    sql = (_DUCKDB_NESTED if layout == "nested" else _DUCKDB_LONG).format(**files)
    pending: list[Any] = [ddb.connect()]

    def query() -> Result:
        con = pending.pop()
        try:
            rows = con.execute(sql).fetchall()
        finally:
            con.close()
        pending.append(ddb.connect())  # the next call's connection, outside its timing
        return _rows(rows)

    return query


# --- (c) pandas --------------------------------------------------------------------


def pandas(files: dict[str, str], layout: str) -> Query:
    """Idiomatic pandas: read, sort + drop_duplicates for the best, merge, groupby."""
    import glob

    import numpy as np
    import pandas as pd

    def listing(pattern: str) -> list[str]:
        return sorted(glob.glob(pattern))

    by = ["stage", "prompt", "reward", "cand"]
    order = [True, True, False, True]
    if layout == "nested":
        source = listing(files["nested"])

        def query() -> Result:
            df = pd.read_parquet(source, columns=["stage", "prompt", "cand", "reward", "logprobs"])
            keys = df[["stage", "prompt", "cand", "reward"]].sort_values(by, ascending=order)
            best = df.loc[keys.drop_duplicates(["stage", "prompt"]).index]
            per = (
                pd.DataFrame(
                    {
                        "stage": best["stage"].to_numpy(),
                        "nll": -best["logprobs"].map(lambda a: a.sum(dtype=np.float64)).to_numpy(),
                        "n": best["logprobs"].map(len).to_numpy(),
                    }
                )
                .groupby("stage")
                .sum()
            )
            return _rows(zip(per.index, per["nll"] / per["n"], per["n"], strict=True))

        return query
    tokens, rewards = listing(files["tokens"]), listing(files["rewards"])

    def query_long() -> Result:
        rw = pd.read_parquet(rewards, columns=["stage", "prompt", "cand", "reward"])
        best = rw.sort_values(by, ascending=order).drop_duplicates(["stage", "prompt"])
        tok = pd.read_parquet(tokens, columns=["stage", "prompt", "cand", "logprob"])
        sel = tok.merge(best[["stage", "prompt", "cand"]], on=["stage", "prompt", "cand"])
        del tok
        sel["logprob"] = sel["logprob"].astype(np.float64)
        per = sel.groupby("stage")["logprob"].agg(["sum", "count"])
        return _rows(zip(per.index, -per["sum"] / per["count"], per["count"], strict=True))

    return query_long


# --- (d) a hand-written Polars query ------------------------------------------------


def polars(files: dict[str, str], layout: str) -> Query:
    """Best candidate per prompt, inner join back onto the log-probs, pooled mean.

    The plain way to write it, on the streaming engine, no validation.
    """
    import polars as pl

    key = ["stage", "prompt", "cand"]
    best_of = pl.col("cand").sort_by(["reward", "cand"], descending=[True, False]).first()
    if layout == "nested":
        log = pl.scan_parquet(files["nested"])
        best = log.select(*key, "reward").group_by("stage", "prompt").agg(best_of)
        plan = (
            log.join(best, on=key, how="inner")
            .group_by("stage")
            .agg(
                (-pl.col("logprobs").cast(pl.List(pl.Float64)).list.sum()).sum().alias("nll"),
                pl.col("logprobs").list.len().sum().alias("tokens"),
            )
        )
    else:
        best = pl.scan_parquet(files["rewards"]).group_by("stage", "prompt").agg(best_of)
        plan = (
            pl.scan_parquet(files["tokens"])
            .select(*key, "logprob")
            .join(best, on=key, how="inner")
            .group_by("stage")
            .agg((-pl.col("logprob").cast(pl.Float64).sum()).alias("nll"), pl.len().alias("tokens"))
        )
    plan = plan.select("stage", pl.col("nll") / pl.col("tokens"), "tokens").sort("stage")

    def query() -> Result:
        return _rows(plan.collect(engine="streaming").iter_rows())

    return query


# --- (e) raft_polars ----------------------------------------------------------------


def raft_polars(files: dict[str, str], layout: str) -> Query:
    """``raft_polars.stage_losses`` with its defaults (validations on)."""
    from raft_polars import stage_losses

    def query() -> Result:
        if layout == "nested":
            out = stage_losses(files["nested"])
        else:
            out = stage_losses(files["tokens"], rewards=files["rewards"])
        return _rows(out.select("stage", "loss", "tokens").iter_rows())

    return query


FILE_METHODS: dict[str, Callable[[dict[str, str], str], Query]] = {
    "floor": floor,
    "duckdb": duckdb,
    "pandas": pandas,
    "polars": polars,
    "raft_polars": raft_polars,
}


# --- (f) the list API ---------------------------------------------------------------

SEED_LOGPROBS = [
    [[[-2.0, -1.8], [-1.5, -1.6]]],
    [[[-0.6, -0.5], [-0.7, -0.8]]],
    [[[-0.2, -0.1], [-0.3, -0.4]]],
]
SEED_REWARDS = [[[0.2, 0.4]], [[0.75, 0.7]], [[0.95, 0.8]]]
SEED_ANSWER = [1.55, 0.55, 0.15]


def numpy_loop(stages_log_probs: list[Any], stages_rewards: list[Any]) -> list[float]:
    """The plain numpy solution of the seed task: argmax per prompt, pooled mean."""
    import numpy as np

    losses = []
    for lps, rws in zip(stages_log_probs, stages_rewards, strict=True):
        total, count = 0.0, 0
        for prompt_lps, prompt_rws in zip(lps, rws, strict=True):
            best = np.asarray(prompt_lps[int(np.argmax(prompt_rws))], dtype=np.float64)
            total += float(best.sum())
            count += best.size
        losses.append(round(-total / count, 4))
    return losses


def list_case(shape: dict[str, int], seed: int) -> tuple[list[Any], list[Any]]:
    """The nested Python lists of the list-API case, from the package's generator."""
    import numpy as np

    from raft_polars.synth import iter_chunks

    k = shape["k"]
    lps: list[Any] = [[] for _ in range(shape["stages"])]
    rws: list[Any] = [[] for _ in range(shape["stages"])]
    for chunk in iter_chunks(seed=seed, **shape):
        responses = [v.tolist() for v in np.split(chunk.logprob, chunk.offsets[1:-1])]
        rewards = chunk.reward.tolist()
        lps[chunk.stage].extend(responses[i : i + k] for i in range(0, len(responses), k))
        rws[chunk.stage].extend(rewards[i : i + k] for i in range(0, len(rewards), k))
    return lps, rws
