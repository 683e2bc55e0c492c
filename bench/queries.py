"""The compared methods, one function each.

Every method has the same shape: ``build(files) -> query`` does the untimed setup
(nothing that reads the data), ``query()`` is what the benchmark times and returns
``{stage: (loss, tokens)}`` with the unrounded float64 loss and the number of tokens
in the selected responses (``tokens`` is None where a method does not count them).

``files`` is the dict of :func:`datagen.paths` or :func:`writers.paths`:
``{"tokens", "rewards"}`` globs for the long layout, ``{"nested"}`` for the nested
one, ``{"wide"}`` for wide rows (one per prompt: ``stage, prompt``, a ``rewards``
list and a ``logprobs`` list of lists). A glob ending in ``.jsonl`` is read as JSON
lines, any other as Parquet. Heavy libraries are imported inside the builders, so a
worker process only imports what its method needs.

The tie rule everywhere: the largest reward wins, ties to the smallest ``cand``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Result = dict[Any, tuple[Any, ...]]
Query = Callable[[], Result]


def _rows(rows: Any) -> Result:
    return {int(s): (float(loss), None if n is None else int(n)) for s, loss, n in rows}


def layout_of(files: dict[str, str]) -> str:
    """``long``, ``nested`` or ``wide``, from the keys of ``files``."""
    return "long" if "tokens" in files else next(iter(files))


def scan(glob: str) -> Any:
    """A Polars LazyFrame of the files: JSON lines or Parquet, by the extension."""
    import polars as pl

    return pl.scan_ndjson(glob) if glob.endswith(".jsonl") else pl.scan_parquet(glob)


def duck_read(glob: str) -> str:
    """The DuckDB table function reading the files."""
    if glob.endswith(".jsonl"):
        return f"read_json('{glob}', format = 'newline_delimited')"
    return f"read_parquet('{glob}')"


def duck_candidates(files: dict[str, str], *, logprobs: bool = True) -> str:
    """DuckDB rows ``stage, prompt, cand, reward`` (and ``logprobs``, a list) of every
    candidate: the rewards table, the nested rows, or the wide rows unnested."""
    layout = layout_of(files)
    if layout == "long":
        return f"SELECT stage, prompt, cand, reward FROM {duck_read(files['rewards'])}"
    lists = ", logprobs" if logprobs else ""
    if layout == "nested":
        return f"SELECT stage, prompt, cand, reward{lists} FROM {duck_read(files['nested'])}"
    lists = ", unnest(logprobs) AS logprobs" if logprobs else ""
    return (
        "SELECT stage, prompt, unnest(range(len(rewards))) AS cand, "
        f"unnest(rewards) AS reward{lists} FROM {duck_read(files['wide'])}"
    )


# --- (a) the read floor: Polars scans the same columns with a trivial sum ----------


def floor(files: dict[str, str], layout: str, *, columns: str = "losses") -> Query:
    """Polars reads every column the query needs and sums each one; no answer.

    Long: ``stage, prompt, cand, logprob`` of the tokens plus ``stage, prompt, cand,
    reward`` of the rewards. Nested: ``stage, prompt, cand, reward, logprobs``
    (``logprobs`` summed per list, then over rows). Wide: ``stage, prompt, rewards,
    logprobs`` (every list flattened and summed). ``columns="keys"`` reads the
    candidate rows' ids and rewards only (long: the rewards table; nested, wide: no
    log-probs); ``columns="all"`` every column of every file.
    """
    import polars as pl

    def total(name: str, dtype: pl.DataType) -> pl.Expr:
        # string ids are summed by their byte lengths, a list per row then over rows
        # (a list of lists exploded into its inner lists first, as the wide rows
        # become candidate rows)
        col = pl.col(name)
        if dtype == pl.String:
            return col.str.len_bytes().sum()
        if isinstance(dtype, pl.List) and isinstance(dtype.inner, pl.List):
            col, dtype = col.explode(), dtype.inner
        return col.list.sum().sum() if isinstance(dtype, pl.List) else col.sum()

    def plan(glob: str, names: tuple[str, ...] | None) -> pl.LazyFrame:
        lf = scan(glob)
        schema = lf.collect_schema()
        return lf.select(total(n, schema[n]) for n in (names or schema.names()))

    layout = layout_of(files)
    every = columns == "all"
    if layout == "long":
        plans = [plan(files["rewards"], None if every else ("stage", "prompt", "cand", "reward"))]
        if columns != "keys":
            names = None if every else ("stage", "prompt", "cand", "logprob")
            plans.insert(0, plan(files["tokens"], names))
    else:
        names = ("stage", "prompt") + (("cand", "reward") if layout == "nested" else ("rewards",))
        if columns != "keys":
            names += ("logprobs",)
        plans = [plan(files[layout], None if every else names)]

    def query() -> Result:
        for lf in plans:
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
    FROM {rewards} GROUP BY stage, prompt
)
SELECT t.stage, -sum(t.logprob::DOUBLE) / count(*) AS loss, count(*) AS tokens
FROM {tokens} AS t
SEMI JOIN best AS b ON t.stage = b.stage AND t.prompt = b.prompt AND t.cand = b.cand
GROUP BY t.stage ORDER BY t.stage
"""
_DUCKDB_NESTED = """
WITH rows AS (
    SELECT stage, prompt, cand, reward,
           list_sum(logprobs::DOUBLE[]) AS lp, len(logprobs) AS n
    FROM {nested}
), best AS (
    SELECT stage, arg_max(lp, (reward, -cand)) AS lp, arg_max(n, (reward, -cand)) AS n
    FROM rows GROUP BY stage, prompt
)
SELECT stage, -sum(lp) / sum(n) AS loss, sum(n) AS tokens
FROM best GROUP BY stage ORDER BY stage
"""
# wide rows: the first largest reward is the best (ties to the smallest cand, the
# list index); its list of log-probs is taken by position, no group-by per prompt
_DUCKDB_WIDE = """
WITH best AS (
    SELECT stage, logprobs[list_position(rewards, list_max(rewards))] AS lp FROM {wide}
)
SELECT stage, -sum(list_sum(lp::DOUBLE[])) / sum(len(lp)) AS loss, sum(len(lp)) AS tokens
FROM best GROUP BY stage ORDER BY stage
"""


def duckdb_query(sql: str, convert: Callable[[list[Any]], Result] = _rows) -> Query:
    """Run ``sql`` on a fresh in-memory connection per call, opened untimed."""
    import duckdb as ddb

    pending: list[Any] = [ddb.connect()]

    def query() -> Result:
        con = pending.pop()
        try:
            rows = con.execute(sql).fetchall()
        finally:
            con.close()
        pending.append(ddb.connect())  # the next call's connection, outside its timing
        return convert(rows)

    return query


def duckdb(files: dict[str, str], layout: str) -> Query:
    """DuckDB's best SQL; a fresh in-memory connection per call, opened untimed."""
    sql = {"long": _DUCKDB_LONG, "nested": _DUCKDB_NESTED, "wide": _DUCKDB_WIDE}[layout_of(files)]
    return duckdb_query(sql.format(**{k: duck_read(v) for k, v in files.items()}))


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
    layout = layout_of(files)
    if layout == "wide":  # the first largest reward's list, by position
        lp = pl.col("logprobs").list.get(pl.col("rewards").list.arg_max()).alias("lp")
        plan = (
            scan(files["wide"])
            .select("stage", lp)
            .group_by("stage")
            .agg(
                (-pl.col("lp").cast(pl.List(pl.Float64)).list.sum()).sum().alias("nll"),
                pl.col("lp").list.len().sum().alias("tokens"),
            )
        )
    elif layout == "nested":
        log = scan(files["nested"])
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
        best = scan(files["rewards"]).group_by("stage", "prompt").agg(best_of)
        plan = (
            scan(files["tokens"])
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
        if "tokens" in files:
            out = stage_losses(files["tokens"], rewards=files["rewards"])
        else:
            out = stage_losses(next(iter(files.values())))
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
