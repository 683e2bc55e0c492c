"""The other operations (issue 13 item 5), each with its read floor and DuckDB peer.

``run.py --ops NAME,...`` times, for each writer case, ``raft_polars.<op>`` against
the read floor of the columns the op needs and against the nearest DuckDB query,
each in a fresh process like the ``stage_losses`` cases (``worker.py``). Every
builder has the shape of ``queries``: ``build(files) -> query``, where ``query()``
returns ``{key: (value, ...)}``; run.py checks that raft_polars and DuckDB agree,
floats to 4 decimals, counts exactly.

- ``read``: the canonical frames of ``raft_polars.read_log`` (candidate rows, and
  the token rows of the long layout; wide rows exploded into candidates) with a
  trivial aggregate: what reading a log costs the engine before any ranking.
  DuckDB reads the same rows (wide rows unnested) with the same aggregate.
- ``stage_stats``: ``raft_polars.stage_stats``. DuckDB: the same per-stage
  statistics (loss, counts, reward mean and std, best-reward mean and std, ties,
  zero-variance prompts, win rate, lengths, longest share, the mean Spearman rho
  of reward and length per prompt) from per-candidate lengths and log-prob sums,
  window functions and two group-bys.
- ``best_of_n``: ``raft_polars.best_of_n``. DuckDB: every candidate's rank in its
  prompt, joined with ``n = 1 .. K``, the closed-form weights ``C(i-1, n-1) /
  C(K, n)`` (and ``C(K-i, n-1) / C(K, n)``) from ``lgamma``, averaged per stage.
  Reads the candidate rows only; its floor too.
- ``validate``: ``raft_polars.validate`` (the full pass; Parquet files are also
  decoded by pyarrow's strict reader). DuckDB: one scan of every column checking
  null ids, duplicate candidates, bad rewards, bad log-probs, null log-prob lists,
  orphan token rows, null, repeated and missing token positions, and the log's
  counts. Positions are screened per response by count, min, max, sum and sum of
  squares (those of ``0 .. n-1``); a response that fails the screen has its
  distinct positions counted from its rows (``count(DISTINCT token)``; counting
  them for every response took 10x longer). The floor reads every column.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import queries
from queries import Query, Result, duck_candidates, duck_read, duckdb_query

# the floor's columns for each op: those the op reads
FLOOR_COLUMNS = {"read": "losses", "stage_stats": "losses", "best_of_n": "keys", "validate": "all"}


def _source(files: dict[str, str]) -> dict[str, str]:
    """raft_polars' arguments for the files: ``source`` (and ``rewards``)."""
    if "tokens" in files:
        return {"source": files["tokens"], "rewards": files["rewards"]}
    return {"source": next(iter(files.values()))}


def _floor(op: str) -> Callable[[dict[str, str], str], Query]:
    def build(files: dict[str, str], layout: str) -> Query:
        return queries.floor(files, layout, columns=FLOOR_COLUMNS[op])

    return build


# --- read ------------------------------------------------------------------------------


def read_raft(files: dict[str, str], layout: str) -> Query:
    """``read_log`` and its canonical frames, summed: candidates, mean reward,
    tokens and mean log-prob."""
    import polars as pl

    from raft_polars import read_log

    def query() -> Result:
        log = read_log(**_source(files))
        cands = log.candidates(extras=False)
        if "tokens" in files:
            tok = log.tokens().select(
                pl.len().alias("tokens"), pl.col("logprob").cast(pl.Float64).mean().alias("lp")
            )
            head = cands.select(pl.len(), pl.col("reward").mean()).collect(engine="streaming")
            tail = tok.collect(engine="streaming")
        else:
            lists = pl.col("logprobs").cast(pl.List(pl.Float64))
            both = cands.select(
                pl.len(),
                pl.col("reward").mean(),
                lists.list.len().sum().alias("tokens"),
                (lists.list.sum().sum() / lists.list.len().sum()).alias("lp"),
            ).collect(engine="streaming")
            head, tail = both.select(both.columns[:2]), both.select(both.columns[2:])
        (n, reward), (tokens, lp) = head.row(0), tail.row(0)
        return {"candidates": (n, reward), "tokens": (tokens, lp)}

    return query


def read_duckdb(files: dict[str, str], layout: str) -> Query:
    cands = duck_candidates(files)
    if "tokens" in files:
        sql = f"""
        SELECT c.n, c.reward, t.tokens, t.lp FROM
            (SELECT count(*) AS n, avg(reward) AS reward FROM ({cands})) AS c,
            (SELECT count(*) AS tokens, avg(logprob::DOUBLE) AS lp
             FROM {duck_read(files["tokens"])}) AS t
        """
    else:
        sql = f"""
        SELECT count(*), avg(reward), sum(len(logprobs)),
               sum(list_sum(logprobs::DOUBLE[])) / sum(len(logprobs))
        FROM ({cands})
        """

    def convert(rows: list[Any]) -> Result:
        n, reward, tokens, lp = rows[0]
        return {"candidates": (int(n), reward), "tokens": (int(tokens), lp)}

    return duckdb_query(sql, convert)


# --- stage_stats -------------------------------------------------------------------------

STATS_COLUMNS = (
    "loss", "tokens", "prompts", "candidates", "reward_mean", "reward_std",
    "reward_best_mean", "reward_best_std", "ties", "zero_variance", "win_rate",
    "length_mean", "length_selected_mean", "longest_share", "length_reward_corr",
)  # fmt: skip


def stats_raft(files: dict[str, str], layout: str) -> Query:
    from raft_polars import stage_stats

    def query() -> Result:
        out = stage_stats(**_source(files)).select("stage", *STATS_COLUMNS)
        return {int(row[0]): tuple(row[1:]) for row in out.iter_rows()}

    return query


def stats_duckdb(files: dict[str, str], layout: str) -> Query:
    if "tokens" in files:  # a response's length and log-prob sum from its token rows
        cands = f"""
        WITH lengths AS (
            SELECT stage, prompt, cand, count(*) AS n, sum(logprob::DOUBLE) AS lp
            FROM {duck_read(files["tokens"])} GROUP BY ALL
        )
        SELECT r.stage, r.prompt, r.cand, r.reward::DOUBLE AS reward,
               coalesce(l.n, 0) AS n, coalesce(l.lp, 0) AS lp
        FROM ({duck_candidates(files)}) AS r LEFT JOIN lengths AS l USING (stage, prompt, cand)
        """
    else:
        cands = f"""
        SELECT stage, prompt, cand, reward::DOUBLE AS reward,
               len(logprobs) AS n, list_sum(logprobs::DOUBLE[]) AS lp
        FROM ({duck_candidates(files)})
        """
    # average ranks (ties share the mean of their ranks) for Spearman's rho
    sql = f"""
    WITH c AS ({cands}),
    ranked AS (
        SELECT *,
            max(reward) OVER p AS top,
            rank() OVER (p ORDER BY reward)
                + (count(*) OVER (PARTITION BY stage, prompt, reward) - 1) / 2 AS rank_r,
            rank() OVER (p ORDER BY n)
                + (count(*) OVER (PARTITION BY stage, prompt, n) - 1) / 2 AS rank_n
        FROM c WINDOW p AS (PARTITION BY stage, prompt)
    ),
    per_prompt AS (
        SELECT stage, prompt, count(*) AS k, max(reward) AS best, min(reward) AS worst,
            arg_max(n, (reward, -cand)) AS n_best, arg_max(lp, (reward, -cand)) AS lp_best,
            count(*) FILTER (WHERE reward = top) AS n_top,
            count(*) FILTER (WHERE reward < top) AS n_lower,
            max(n) AS n_max, min(n) AS n_min, sum(n) AS n_sum,
            sum(reward) AS r_sum, sum(reward * reward) AS r_sq, corr(rank_r, rank_n) AS rho
        FROM ranked GROUP BY stage, prompt
    )
    SELECT stage,
        -sum(lp_best) / sum(n_best), sum(n_best), count(*), sum(k),
        sum(r_sum) / sum(k), sqrt(greatest(sum(r_sq) / sum(k) - pow(sum(r_sum) / sum(k), 2), 0)),
        avg(best), stddev_pop(best),
        count(*) FILTER (WHERE n_top > 1),
        count(*) FILTER (WHERE k >= 2 AND best = worst),
        avg((n_lower + 0.5 * (n_top - 1)) / (k - 1)) FILTER (WHERE k >= 2),
        sum(n_sum) / sum(k), avg(n_best),
        avg((n_best = n_max)::DOUBLE) FILTER (WHERE k >= 2),
        avg(rho) FILTER (WHERE k >= 3 AND best > worst AND n_max > n_min)
    FROM per_prompt GROUP BY stage ORDER BY stage
    """

    def convert(rows: list[Any]) -> Result:
        return {int(row[0]): tuple(row[1:]) for row in rows}

    return duckdb_query(sql, convert)


# --- best_of_n ---------------------------------------------------------------------------


def best_raft(files: dict[str, str], layout: str) -> Query:
    from raft_polars import best_of_n

    def query() -> Result:
        out = best_of_n(**_source(files))
        cols = ("stage", "n", "prompts", "expected_best", "expected_worst")
        return {f"{s}/{n}": rest for s, n, *rest in out.select(cols).iter_rows()}

    return query


def best_duckdb(files: dict[str, str], layout: str) -> Query:
    sql = f"""
    WITH c AS ({duck_candidates(files, logprobs=False)}),
    ranked AS (
        SELECT stage, prompt, reward::DOUBLE AS reward,
            row_number() OVER (PARTITION BY stage, prompt ORDER BY reward) AS i,
            count(*) OVER (PARTITION BY stage, prompt) AS k
        FROM c
    ),
    sizes AS (SELECT range AS n FROM range(1, (SELECT max(k) FROM ranked) + 1)),
    per_prompt AS (
        SELECT stage, prompt, n,
            sum(reward * exp(lgamma(i) - lgamma(n) - lgamma(i - n + 1)
                             - lgamma(k + 1) + lgamma(n + 1) + lgamma(k - n + 1)))
                FILTER (WHERE i >= n) AS best,
            sum(reward * exp(lgamma(k - i + 1) - lgamma(n) - lgamma(k - i - n + 2)
                             - lgamma(k + 1) + lgamma(n + 1) + lgamma(k - n + 1)))
                FILTER (WHERE k - i >= n - 1) AS worst
        FROM ranked JOIN sizes ON n <= k GROUP BY stage, prompt, n
    )
    SELECT stage, n, count(*), avg(best), avg(worst)
    FROM per_prompt GROUP BY stage, n ORDER BY stage, n
    """

    def convert(rows: list[Any]) -> Result:
        return {f"{s}/{n}": (int(p), b, w) for s, n, p, b, w in rows}

    return duckdb_query(sql, convert)


# --- validate ----------------------------------------------------------------------------

# what both sides report: the log's counts, then each problem kind's count
# (bad_logprob is the selected and unselected kinds together)
SUMMARY = ("stages", "prompts", "candidates", "tokens")
KINDS = (
    "null_id", "duplicate_candidate", "bad_reward", "null_logprobs", "bad_logprob",
    "orphan_tokens", "null_token_position", "duplicate_token", "token_gap",
)  # fmt: skip


def validate_raft(files: dict[str, str], layout: str) -> Query:
    from raft_polars import validate

    def query() -> Result:
        report = validate(**_source(files))
        counts = dict.fromkeys(KINDS, 0)
        for problem in report.problems:
            kind = problem.kind
            if kind.startswith("bad_logprob"):
                kind = "bad_logprob"
            counts[kind] = counts.get(kind, 0) + problem.count
        summary = tuple(report.summary.get(name) for name in SUMMARY)
        return {"summary": summary, "problems": tuple(counts[k] for k in KINDS)}

    return query


_BAD_LOGPROB = "{x} IS NULL OR NOT isfinite({x}) OR {x} > 0"


def validate_duckdb(files: dict[str, str], layout: str) -> Query:
    cands = duck_candidates(files)
    checks = """
        count(DISTINCT stage) AS stages, count(*) AS candidates,
        count(DISTINCT (stage, prompt)) FILTER (WHERE stage IS NOT NULL
            AND prompt IS NOT NULL AND cand IS NOT NULL) AS prompts,
        count(*) FILTER (WHERE stage IS NULL OR prompt IS NULL OR cand IS NULL) AS null_id,
        count(*) FILTER (WHERE reward IS NULL OR NOT isfinite(reward)) AS bad_reward
    """
    dup = """
        SELECT count(*) AS duplicate_candidate
        FROM (SELECT 1 FROM c GROUP BY stage, prompt, cand HAVING count(*) > 1)
    """
    if "tokens" in files:
        bad = _BAD_LOGPROB.format(x="logprob")
        sql = f"""
        WITH c AS ({cands}),
        responses AS (
            SELECT stage, prompt, cand, count(*) AS n, count(token) AS n_pos,
                min(token) AS lo, max(token) AS hi, sum(token::HUGEINT) AS s1,
                sum(token::HUGEINT * token) AS s2, count(*) FILTER (WHERE {bad}) AS bad
            FROM {duck_read(files["tokens"])} GROUP BY ALL
        ),
        -- positions 0..m-1 have these power sums; only the other responses get
        -- their distinct positions counted from their rows
        flagged AS (
            SELECT stage, prompt, cand FROM responses
            WHERE NOT (lo = 0 AND hi = n_pos - 1 AND s1 = n_pos * (n_pos - 1) / 2
                       AND s2 = (n_pos - 1) * n_pos * (2 * n_pos - 1) / 6)
        ),
        recount AS (
            SELECT stage, prompt, cand, count(DISTINCT token) AS n_distinct
            FROM {duck_read(files["tokens"])} SEMI JOIN flagged USING (stage, prompt, cand)
            GROUP BY ALL
        ),
        per_response AS (
            SELECT r.*, coalesce(rc.n_distinct, r.n_pos) AS n_distinct
            FROM responses AS r LEFT JOIN recount AS rc USING (stage, prompt, cand)
        ),
        cand_checks AS (SELECT {checks} FROM c),
        dup AS ({dup}),
        token_checks AS (
            SELECT sum(n) AS tokens, sum(n - n_pos) AS null_pos,
                sum(n_pos - n_distinct) AS dup_pos,
                count(*) FILTER (WHERE lo <> 0 OR hi <> n_distinct - 1) AS gaps,
                sum(bad) AS bad
            FROM per_response
        ),
        orphans AS (
            SELECT coalesce(sum(n), 0) AS orphans
            FROM responses ANTI JOIN c USING (stage, prompt, cand)
        )
        SELECT stages, prompts, candidates, tokens,
            null_id, duplicate_candidate, bad_reward, 0, bad, orphans, null_pos, dup_pos, gaps
        FROM cand_checks, dup, token_checks, orphans
        """
    else:
        bad = _BAD_LOGPROB.format(x="x")
        sql = f"""
        WITH c AS ({cands}),
        cand_checks AS (
            SELECT {checks},
                count(*) FILTER (WHERE logprobs IS NULL) AS null_logprobs,
                sum(len(logprobs)) AS tokens,
                sum(len(list_filter(logprobs, lambda x: {bad}))) AS bad
            FROM c
        ),
        dup AS ({dup})
        SELECT stages, prompts, candidates, tokens,
            null_id, duplicate_candidate, bad_reward, null_logprobs, bad, 0, 0, 0, 0
        FROM cand_checks, dup
        """

    def convert(rows: list[Any]) -> Result:
        values = tuple(int(v) for v in rows[0])
        return {"summary": values[:4], "problems": values[4:]}

    return duckdb_query(sql, convert)


_BUILDERS = {
    "read": (read_raft, read_duckdb),
    "stage_stats": (stats_raft, stats_duckdb),
    "best_of_n": (best_raft, best_duckdb),
    "validate": (validate_raft, validate_duckdb),
}
OPS: dict[str, dict[str, Callable[[dict[str, str], str], Query]]] = {
    op: {"floor": _floor(op), "raft_polars": ours, "duckdb": theirs}
    for op, (ours, theirs) in _BUILDERS.items()
}
