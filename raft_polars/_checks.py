"""The default-path checks of SEMANTICS.md, raised with their location.

Each check reads the small per-prompt or per-stage tables the engine already
computed; only when something is wrong does it run one more (small) query to name
the first offending stage, prompt, candidate or token.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from raft_polars.errors import RaftInputError
from raft_polars.logs import ID_COLUMNS, StageLog, collect

_ORDER = list(ID_COLUMNS)


def _where(row: dict[str, object]) -> str:
    parts = [f"{name} {row[name]!r}" for name in ("stage", "prompt", "cand") if name in row]
    return ", ".join(parts).replace("cand ", "candidate ")


def candidates(log: StageLog, summary: pl.DataFrame) -> None:
    """Null ids, duplicate candidates and non-finite rewards in the candidate rows."""
    if not (
        summary["stage"].has_nulls()
        or summary["prompt"].has_nulls()
        or summary["null_cands"].to_numpy().any()
        or (summary["candidates"].to_numpy() != summary["cand_unique"].to_numpy()).any()
        or summary["bad_rewards"].to_numpy().any()
    ):
        return
    null_ids = summary.filter(
        pl.col("stage").is_null() | pl.col("prompt").is_null() | (pl.col("null_cands") > 0)
    )
    if null_ids.height:
        row = null_ids.row(0, named=True)
        msg = (f"{log.origin}: a candidate row has a null id (stage, prompt or cand): "
               f"near stage {row['stage']!r}, prompt {row['prompt']!r}")
        raise RaftInputError(msg)
    dup = summary.filter(pl.col("candidates") != pl.col("cand_unique")).sort(_ORDER[:2])
    if dup.height:
        row = dup.row(0, named=True)
        found = collect(
            log,
            log.candidates.filter(stage=row["stage"], prompt=row["prompt"])
            .group_by("cand").len().filter(pl.col("len") > 1).sort("cand").head(1),
        ).row(0, named=True)
        msg = (f"{log.origin}: duplicate candidate: stage {row['stage']!r}, prompt "
               f"{row['prompt']!r}, candidate {found['cand']!r} has {found['len']} reward "
               f"rows (and {dup.height} prompt(s) in all have duplicates)")
        raise RaftInputError(msg)
    bad = summary.filter(pl.col("bad_rewards") > 0)
    if bad.height:
        total = int(bad["bad_rewards"].sum())
        reward = pl.col("reward")
        row = collect(
            log,
            log.candidates.select(*ID_COLUMNS, "reward")
            .filter(bad_reward(reward))
            .sort(_ORDER).head(1),
        ).row(0, named=True)
        msg = (f"{log.origin}: reward must be a finite number, found {row['reward']!r} at "
               f"{_where(row)} ({total} bad reward(s) in all)")
        raise RaftInputError(msg)


def bad_logprob(lp: pl.Expr) -> pl.Expr:
    """A log-prob that is null, NaN, infinite or > 0 (not a log-probability)."""
    return lp.is_null() | lp.is_nan() | lp.is_infinite() | (lp > 0)


def bad_reward(reward: pl.Expr) -> pl.Expr:
    """A reward that is null, NaN or infinite."""
    return reward.is_null() | reward.is_nan() | reward.is_infinite()


def selected_logprobs(log: StageLog, stats: pl.DataFrame, chosen: pl.DataFrame) -> None:
    """Log-probs of selected responses must be finite, not null and <= 0.

    ``stats`` holds ``nll, tokens, lp_max, lp_nulls`` per selected response (or per
    stage, long layout); ``chosen`` the selected ``stage, prompt, cand``.
    """
    nll = stats["nll"].to_numpy()
    if not (
        stats["tokens"].has_nulls()
        or stats["lp_nulls"].to_numpy().any()
        or not np.isfinite(nll).all()
        or (stats["lp_max"].fill_null(0.0).to_numpy() > 0).any()
    ):
        return
    bad = stats.filter(
        pl.col("tokens").is_null()
        | (pl.col("lp_nulls") > 0)
        | pl.col("nll").is_nan()
        | pl.col("nll").is_infinite()
        | (pl.col("lp_max") > 0)
    )
    if not bad.height:
        return
    keys = chosen.select(ID_COLUMNS).lazy()
    if log.layout == "nested":
        lists = log.candidates.join(keys, on=_ORDER).select(*ID_COLUMNS, "logprobs")
        null_list = collect(log, lists.filter(pl.col("logprobs").is_null()).sort(_ORDER).head(1))
        if null_list.height:
            row = null_list.row(0, named=True)
            msg = f"{log.origin}: logprobs is null for the selected response at {_where(row)}"
            raise RaftInputError(msg)
        tokens = lists.with_columns(
            pl.int_ranges(pl.col("logprobs").list.len()).alias("token")
        ).explode(["logprobs", "token"]).rename({"logprobs": "logprob"})
    else:
        assert log.tokens is not None
        tokens = log.tokens.join(keys, on=_ORDER, how="semi")
        if "token" not in tokens.collect_schema():
            tokens = tokens.with_columns(pl.lit(None, pl.Int64).alias("token"))
    first = collect(
        log,
        tokens.filter(bad_logprob(pl.col("logprob"))).sort([*_ORDER, "token"]).head(1),
    )
    if not first.height:  # every log-prob is sound: the sum overflowed, as the loss may
        return
    row = first.row(0, named=True)
    msg = (f"{log.token_origin}: log-prob of a selected response must be finite and <= 0, "
           f"found {row['logprob']!r} at {_where(row)}, token {row['token']!r}")
    raise RaftInputError(msg)


def stage_tokens(log: StageLog, per_stage: pl.DataFrame) -> None:
    """A stage whose selected responses hold no tokens at all has no loss."""
    if not ((per_stage["selected"].to_numpy() > 0) & (per_stage["tokens"].to_numpy() == 0)).any():
        return
    empty = per_stage.filter((pl.col("selected") > 0) & (pl.col("tokens") == 0)).sort("stage")
    if empty.height:
        row = empty.row(0, named=True)
        msg = (f"{log.token_origin}: stage {row['stage']!r}: the {row['selected']} selected "
               "response(s) hold no tokens at all, so the stage has no loss")
        raise RaftInputError(msg)


def orphan_tokens(log: StageLog, orphans: pl.DataFrame) -> None:
    """Long layout: every token row needs a reward row for its candidate."""
    if not orphans.height:
        return
    assert log.tokens is not None
    total = int(orphans["tokens"].sum())
    row = collect(
        log,
        log.tokens.join(log.candidates.select(ID_COLUMNS), on=_ORDER, how="anti", nulls_equal=True)
        .sort(_ORDER, nulls_last=True).head(1),
    ).row(0, named=True)
    msg = (f"{log.token_origin}: {total} token row(s) have no reward row in {log.origin}; "
           f"first at {_where(row)}")
    raise RaftInputError(msg)
