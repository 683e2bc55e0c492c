"""Step 3 of RAFT: reduce the selected responses to per-stage SFT losses.

The loss of a stage is the pooled token mean of the negative log-likelihood over
every token of every selected response (HF Transformers / TRL SFT reduction):
``-sum(logprob) / count(tokens)``, accumulated in float64. ``reduction="sequence"``
gives the mean of per-response mean NLLs instead (responses with no tokens are
left out of that mean); it is never the default.

:func:`stage_losses` and :func:`select_best` are the frame API; they read the log
(:mod:`raft_polars.logs`), rank it (:mod:`raft_polars.ranking`) and reduce it here.

Examples
--------
>>> import polars as pl
>>> from raft_polars import stage_losses
>>> log = pl.DataFrame({
...     "stage": [0, 0, 1, 1], "prompt": [0, 0, 0, 0], "cand": [0, 1, 0, 1],
...     "reward": [0.2, 0.4, 0.75, 0.7],
...     "logprobs": [[-2.0, -1.8], [-1.5, -1.6], [-0.6, -0.5], [-0.7, -0.8]],
... })
>>> stage_losses(log).select("stage", "loss", "tokens").rows()
[(0, 1.55, 2), (1, 0.55, 2)]
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Literal, TypeAlias

import numpy as np
import numpy.typing as npt
import polars as pl

from raft_polars import _checks
from raft_polars.errors import RaftInputError
from raft_polars.logs import ID_COLUMNS, Source, StageLog, collect, read_log
from raft_polars.ranking import (
    Selection,
    Strategy,
    apply_min_reward,
    prompt_summary,
    rank,
    select,
)

__all__ = [
    "LOSS_COLUMNS",
    "RESPONSE_STATS",
    "Reduction",
    "below_min",
    "candidate_sums",
    "check_reduction",
    "losses_from_log",
    "losses_from_responses",
    "response_stats",
    "response_sums",
    "select_best",
    "selected_from_log",
    "stage_columns",
    "stage_losses",
]

Reduction: TypeAlias = Literal["token", "sequence"]

LOSS_COLUMNS = (
    "stage", "loss", "prompts", "candidates", "selected", "tokens",
    "reward_best_mean", "reward_mean", "reward_lift", "ties", "below_min",
)
# the largest dense (stage, prompt, cand) lookup table of the integer fast path
_MAX_DENSE_KEYS = 1 << 26
_STATUS_ORPHAN, _STATUS_OTHER, _STATUS_SELECTED = 0, 1, 2


def stage_losses(
    source: Source,
    *,
    rewards: Source | None = None,
    columns: Mapping[str, str] | None = None,
    reduction: Reduction = "token",
    strategy: Strategy = "best",
    n: int = 1,
    fraction: float | None = None,
    min_reward: float | None = None,
) -> pl.DataFrame:
    """Per-stage SFT loss and statistics of a stage log.

    Parameters
    ----------
    source
        The stage log: Parquet path, glob, directory, list of paths, polars
        ``DataFrame`` / ``LazyFrame`` or ``pyarrow.Table``; nested layout, or the
        token rows of the long layout when ``rewards`` is given.
    rewards
        The candidate rows (``stage, prompt, cand, reward``) of the long layout.
    columns
        Canonical name to the source's own name, e.g. ``{"prompt": "prompt_id"}``.
    reduction
        ``"token"`` (pooled token mean, the default) or ``"sequence"``.
    strategy, n, fraction, min_reward
        The selection, see :class:`raft_polars.ranking.Selection`; the default is
        best-of-K per prompt.

    Returns
    -------
    polars.DataFrame
        One row per stage, sorted by stage: ``stage``, ``loss`` (float64, not
        rounded; null where ``min_reward`` left nothing selected), ``prompts``,
        ``candidates``, ``selected`` (responses), ``tokens`` (in the selected
        responses), ``reward_best_mean`` (mean selected reward), ``reward_mean``
        (mean over all candidates), ``reward_lift`` (their difference), ``ties``
        (prompts whose best reward is shared) and ``below_min`` (prompts left with
        nothing selected by ``min_reward``).

    Raises
    ------
    RaftInputError
        For every bad input listed in SEMANTICS.md, naming where and what.

    Examples
    --------
    >>> import polars as pl
    >>> tokens = pl.DataFrame({"stage": [0, 0, 0], "prompt": ["p", "p", "p"],
    ...                        "cand": [0, 0, 1], "token": [0, 1, 0],
    ...                        "logprob": [-1.0, -2.0, -0.5]})
    >>> rewards = pl.DataFrame({"stage": [0, 0], "prompt": ["p", "p"],
    ...                         "cand": [0, 1], "reward": [1.0, 0.0]})
    >>> stage_losses(tokens, rewards=rewards)["loss"].to_list()
    [1.5]
    """
    selection = Selection(strategy=strategy, n=n, fraction=fraction, min_reward=min_reward)
    check_reduction(reduction)
    log = read_log(source, rewards=rewards, columns=columns)
    return losses_from_log(log, selection, reduction=reduction)


def check_reduction(reduction: object) -> None:
    """Raise :class:`RaftInputError` unless ``reduction`` is ``"token"`` or ``"sequence"``."""
    if reduction not in ("token", "sequence"):
        msg = f"reduction must be 'token' or 'sequence', got {reduction!r}"
        raise RaftInputError(msg)


def select_best(
    source: Source,
    *,
    rewards: Source | None = None,
    columns: Mapping[str, str] | None = None,
    strategy: Strategy = "best",
    n: int = 1,
    fraction: float | None = None,
    min_reward: float | None = None,
) -> pl.LazyFrame:
    """The selected batch, ready to export for fine-tuning.

    The ranking (on the small candidate table) runs now, with its checks; the
    returned frame is lazy and reads the payload when collected or sunk.

    Parameters
    ----------
    source, rewards, columns, strategy, n, fraction, min_reward
        As in :func:`stage_losses`.

    Returns
    -------
    polars.LazyFrame
        One row per selected response (with best-of-K, one per ``(stage,
        prompt)``), sorted by ``stage, prompt, cand``: ``stage``, ``prompt``,
        ``cand``, ``reward``, ``tokens`` and every extra candidate-level column
        (of the nested rows, or of the rewards table in the long layout).

    Examples
    --------
    >>> import polars as pl
    >>> log = pl.DataFrame({"stage": [0, 0], "prompt": [7, 7], "cand": [0, 1],
    ...                     "reward": [0.1, 0.3], "logprobs": [[-1.0], [-0.5, -0.2]],
    ...                     "response": ["meh", "good"]})
    >>> select_best(log).collect().rows()
    [(0, 7, 1, 0.3, 2, 'good')]
    """
    selection = Selection(strategy=strategy, n=n, fraction=fraction, min_reward=min_reward)
    return selected_from_log(read_log(source, rewards=rewards, columns=columns), selection)


def losses_from_log(
    log: StageLog, selection: Selection, *, reduction: Reduction = "token"
) -> pl.DataFrame:
    """:func:`stage_losses` on an already read :class:`~raft_polars.logs.StageLog`."""
    on = list(ID_COLUMNS)
    keys: pl.DataFrame | None = None
    if log.layout == "nested" and selection.is_best_of_k:
        # one pass: per-row log-prob statistics ride along the best-of-K group-by
        stats = log.candidates.select(*ID_COLUMNS, "reward", *response_stats("logprobs"))
        summary = collect(log, prompt_summary(stats, carry=RESPONSE_STATS))
        _checks.candidates(log, summary)
        ranked = summary.select(*ID_COLUMNS, "reward", *RESPONSE_STATS)
    else:
        keys = collect(log, log.candidates.select(*ID_COLUMNS, "reward"))
        summary = prompt_summary(keys.lazy()).collect(engine="in-memory")
        _checks.candidates(log, summary)
        ranked = rank(keys.lazy(), selection).collect(engine="in-memory")
    chosen = apply_min_reward(ranked, selection)
    assert isinstance(chosen, pl.DataFrame)
    below = below_min(ranked, chosen)
    if log.layout == "nested" and below is None and "nll" in summary.columns:
        return losses_from_responses(log, summary, None, None, reduction)
    if log.layout == "nested":
        responses = chosen if "nll" in chosen.columns else collect(
            log,
            log.candidates.join(chosen.lazy().select(on), on=on)
            .select(*ID_COLUMNS, "reward", *response_stats("logprobs")),
        )
        return losses_from_responses(log, summary, responses, below, reduction)
    assert keys is not None
    per_response = reduction == "sequence"
    token_stats = _long_token_stats(log, keys, chosen, per_response=per_response)
    if per_response:
        responses = chosen.join(token_stats, on=on, how="left").with_columns(
            pl.col("tokens").fill_null(0), pl.col("nll").fill_null(0.0)
        )
        return _reduce(log, summary, _per_stage(responses), below, reduction)
    per_stage = (
        chosen.lazy().group_by("stage")
        .agg(pl.len().alias("selected"), pl.col("reward").sum().alias("reward_best_sum"))
        .join(token_stats.lazy(), on="stage", how="left")
        .with_columns(
            pl.col("tokens").fill_null(0), pl.col("nll").fill_null(0.0),
            pl.lit(None, pl.Float64).alias("seq_sum"), pl.lit(0).alias("seq_n"),
        )
    )
    return _reduce(log, summary, per_stage, below, reduction)


def losses_from_responses(
    log: StageLog,
    summary: pl.DataFrame,
    responses: pl.DataFrame | None,
    below: pl.LazyFrame | None,
    reduction: Reduction,
) -> pl.DataFrame:
    """Check and reduce the selected responses of a nested log to per-stage losses.

    ``summary`` comes from :func:`~raft_polars.ranking.prompt_summary`,
    ``responses`` holds one row per selected response with the columns of
    :func:`response_stats` (None: ``summary`` itself holds them, one selected
    response per prompt), ``below`` the ``below_min`` count per stage.
    """
    stats = summary if responses is None else responses
    _checks.selected_logprobs(log, stats, stats)
    return _reduce(log, summary, None if responses is None else _per_stage(responses), below,
                   reduction)


def selected_from_log(log: StageLog, selection: Selection) -> pl.LazyFrame:
    """:func:`select_best` on an already read :class:`~raft_polars.logs.StageLog`."""
    if "tokens" in log.extras:
        msg = (f"{log.origin}: the extra column 'tokens' clashes with the token count that "
               "the selected batch adds; rename or drop it first")
        raise RaftInputError(msg)
    keys = collect(log, log.candidates.select(*ID_COLUMNS, "reward"))
    _checks.candidates(log, prompt_summary(keys.lazy()).collect(engine="in-memory"))
    chosen = select(keys.lazy(), selection).collect(engine="in-memory").lazy().select(ID_COLUMNS)
    on = list(ID_COLUMNS)
    if log.layout == "nested":
        rows = log.candidates.join(chosen, on=on).with_columns(
            pl.col("logprobs").list.len().cast(pl.Int64).alias("tokens")
        )
    else:
        assert log.tokens is not None
        counts = log.tokens.join(chosen, on=on, how="semi").group_by(on).agg(
            pl.len().cast(pl.Int64).alias("tokens")
        )
        rows = log.candidates.join(chosen, on=on).join(counts, on=on, how="left").with_columns(
            pl.col("tokens").fill_null(0)
        )
    return rows.select(*ID_COLUMNS, "reward", "tokens", *log.extras).sort(on)


# --- reduction -------------------------------------------------------------------

RESPONSE_STATS = ("nll", "tokens", "lp_max", "lp_nulls")


@functools.cache
def response_stats(column: str) -> tuple[pl.Expr, ...]:
    """Per-response NLL sum (float64), token count, largest log-prob, null count."""
    lp = pl.col(column)
    return (
        (-lp.cast(pl.List(pl.Float64)).list.sum()).alias("nll"),
        lp.list.len().cast(pl.Int64).alias("tokens"),
        lp.list.max().cast(pl.Float64).alias("lp_max"),
        lp.list.count_matches(None).cast(pl.Int64).alias("lp_nulls"),
    )


def response_sums() -> dict[str, pl.Expr]:
    """Per-stage sums over selected responses, as aggregations."""
    has_tokens = pl.col("tokens") > 0
    return {
        "selected": pl.len(),
        "reward_best_sum": pl.col("reward").sum(),
        "nll": pl.col("nll").sum(),
        "tokens": pl.col("tokens").sum(),
        "seq_sum": (pl.col("nll") / pl.col("tokens")).filter(has_tokens).sum(),
        "seq_n": has_tokens.sum(),
    }


def candidate_sums() -> dict[str, pl.Expr]:
    """Per-stage sums over the per-prompt summary, as aggregations."""
    return {
        "prompts": pl.len(),
        "candidates": pl.col("candidates").sum(),
        "reward_sum": pl.col("reward_sum").sum(),
        "ties": (pl.col("ties") > 1).sum(),
    }


@functools.cache
def _fused_stage_columns(reduction: Reduction) -> tuple[pl.Expr, ...]:
    """:func:`stage_columns` as aggregations of the per-prompt summary (built once)."""
    sums = {**candidate_sums(), **response_sums(), "below_min": pl.lit(0)}
    return tuple(stage_columns(sums, reduction))


def stage_columns(sums: dict[str, pl.Expr], reduction: Reduction) -> list[pl.Expr]:
    """The output columns of :func:`stage_losses` from per-stage sums."""
    selected = sums["selected"] > 0
    if reduction == "token":
        loss = sums["nll"] / sums["tokens"]
    else:
        loss = sums["seq_sum"] / sums["seq_n"]
    best_mean = sums["reward_best_sum"] / sums["selected"]
    reward_mean = sums["reward_sum"] / sums["candidates"]
    return [
        pl.when(selected).then(loss).cast(pl.Float64).alias("loss"),
        *(sums[name].cast(pl.Int64).alias(name)
          for name in ("prompts", "candidates", "selected", "tokens")),
        pl.when(selected).then(best_mean).cast(pl.Float64).alias("reward_best_mean"),
        reward_mean.cast(pl.Float64).alias("reward_mean"),
        pl.when(selected).then(best_mean - reward_mean).cast(pl.Float64).alias("reward_lift"),
        *(sums[name].cast(pl.Int64).alias(name) for name in ("ties", "below_min")),
    ]


def _per_stage(responses: pl.DataFrame | pl.LazyFrame) -> pl.LazyFrame:
    """Per-stage sums over the selected responses (``nll``, ``tokens`` each)."""
    return responses.lazy().group_by("stage").agg(
        expr.alias(name) for name, expr in response_sums().items()
    )


def below_min(ranked: pl.DataFrame, chosen: pl.DataFrame) -> pl.LazyFrame | None:
    """Per stage, the prompts that ``min_reward`` left with nothing selected.

    None when nothing was dropped (``chosen`` is ``ranked``).
    """
    if chosen is ranked or chosen.height == ranked.height:
        return None

    def prompts(frame: pl.DataFrame, name: str) -> pl.LazyFrame:
        return frame.lazy().group_by("stage").agg(pl.col("prompt").n_unique().alias(name))

    return prompts(ranked, "before").join(prompts(chosen, "after"), on="stage", how="left").select(
        "stage", (pl.col("before") - pl.col("after").fill_null(0)).alias("below_min")
    )


def _reduce(
    log: StageLog,
    summary: pl.DataFrame,
    per_stage: pl.LazyFrame | None,
    below: pl.LazyFrame | None,
    reduction: Reduction,
) -> pl.DataFrame:
    """Join the per-stage token sums with the candidate statistics of every stage.

    ``per_stage`` None: ``summary`` also holds the one selected response of each
    prompt. One small lazy query, collected once.
    """
    if per_stage is None and below is None:
        # one group-by computes every column
        query = summary.lazy().group_by("stage").agg(_fused_stage_columns(reduction))
    else:
        out = summary.lazy().group_by("stage").agg(
            expr.alias(name) for name, expr in candidate_sums().items()
        )
        assert per_stage is not None  # below_min comes with per-response rows
        out = out.join(per_stage, on="stage", how="left")
        if below is None:
            out = out.with_columns(pl.lit(0).alias("below_min"))
        else:
            out = out.join(below, on="stage", how="left")
        out = out.with_columns(pl.col("selected", "tokens", "seq_n", "below_min").fill_null(0))
        columns = {name: pl.col(name) for name in out.collect_schema()}
        query = out.select("stage", *stage_columns(columns, reduction))
    # a few rows per stage: the in-memory engine has less overhead than streaming
    table = query.sort("stage").collect(engine="in-memory")
    _checks.stage_tokens(log, table)
    return table


# --- long layout: one pass over the token rows ------------------------------------


def _long_token_stats(
    log: StageLog, keys: pl.DataFrame, chosen: pl.DataFrame, *, per_response: bool
) -> pl.DataFrame:
    """Sum the selected token rows per stage (or per response) in one pass.

    Each token row gets a status, 0 (its candidate has no reward), 1 (not
    selected) or 2 (selected), from a dense lookup table when the ids are small
    integers, from a hash join otherwise; rows of status 1 are dropped before the
    group-by, so the pass costs about one read of the token columns.
    """
    assert log.tokens is not None
    raw = log.tokens if log.raw_tokens is None else log.raw_tokens
    status = _dense_status(keys, chosen, raw.collect_schema())
    if status is None:
        table = keys.select(ID_COLUMNS).with_columns(
            pl.lit(_STATUS_OTHER, pl.UInt8).alias("status")
        ).update(
            chosen.select(ID_COLUMNS).with_columns(
                pl.lit(_STATUS_SELECTED, pl.UInt8).alias("status")
            ),
            on=list(ID_COLUMNS),
        )
        tokens = log.tokens.join(table.lazy(), on=list(ID_COLUMNS), how="left").with_columns(
            pl.col("status").fill_null(_STATUS_ORPHAN)
        )
        kept = tokens.filter(pl.col("status") != _STATUS_OTHER)
    else:
        kept = raw.with_columns(status).filter(pl.col("status") != _STATUS_OTHER)
    group = ["stage", "prompt", "cand"] if per_response else ["stage"]
    lp = pl.col("logprob")
    stats = collect(
        log,
        kept.group_by([*group, "status"]).agg(
            (-lp.cast(pl.Float64).sum()).alias("nll"),
            pl.len().cast(pl.Int64).alias("tokens"),
            lp.max().cast(pl.Float64).alias("lp_max"),
            lp.null_count().cast(pl.Int64).alias("lp_nulls"),
        ),
    ).cast({name: keys.schema[name] for name in group})  # the raw ids back to canonical
    _checks.orphan_tokens(log, stats.filter(pl.col("status") == _STATUS_ORPHAN))
    selected = stats.filter(pl.col("status") == _STATUS_SELECTED).drop("status")
    _checks.selected_logprobs(log, selected, chosen)
    return selected


def _dense_status(
    keys: pl.DataFrame, chosen: pl.DataFrame, token_schema: pl.Schema
) -> pl.Expr | None:
    """The status expression of the integer fast path, or None when ids do not fit.

    The key of a token row is its position in the dense ``stage x prompt x cand``
    box of the candidate ids, computed in the token columns' own integer type where
    the box's bounds fit it (Int32 arithmetic is cheaper than Int64 on hundreds of
    millions of rows); a row outside the box, or with a null id, maps to a last
    entry that means "no reward".
    """
    if not all(keys.schema[c].is_integer() for c in ID_COLUMNS) or keys.height == 0:
        return None
    bounds = keys.select(
        *(pl.col(c).min().alias(f"{c}_min") for c in ID_COLUMNS),
        *(pl.col(c).max().alias(f"{c}_max") for c in ID_COLUMNS),
    ).row(0, named=True)
    lows = [int(bounds[f"{c}_min"]) for c in ID_COLUMNS]
    highs = [int(bounds[f"{c}_max"]) for c in ID_COLUMNS]
    spans = [high - low + 1 for low, high in zip(lows, highs, strict=True)]
    size = spans[0] * spans[1] * spans[2]
    if size > _MAX_DENSE_KEYS:
        return None

    def index(frame: pl.DataFrame) -> npt.NDArray[np.int64]:
        cols = [frame[c].to_numpy().astype(np.int64) - low
                for c, low in zip(ID_COLUMNS, lows, strict=True)]
        flat: npt.NDArray[np.int64] = (cols[0] * spans[1] + cols[1]) * spans[2] + cols[2]
        return flat

    table = np.zeros(size + 1, dtype=np.uint8)  # the last entry: out of range
    table[index(keys)] = _STATUS_OTHER
    table[index(chosen)] = _STATUS_SELECTED
    parts = []
    for name, low, high in zip(ID_COLUMNS, lows, highs, strict=True):
        dtype = token_schema[name]
        if dtype == pl.Int32 and low >= -(2**31) and high < 2**31:
            # x - low wraps only when |x - low| >= 2**31: never into [0, span)
            parts.append(pl.col(name) - pl.lit(low, pl.Int32))
        else:
            parts.append(pl.col(name).cast(pl.Int64, strict=False) - pl.lit(low, pl.Int64))
    # one unsigned comparison checks both 0 <= part and part < span
    inside = pl.all_horizontal(
        *(part.reinterpret(signed=False) < span for part, span in zip(parts, spans, strict=True))
    )
    flat = (parts[0] * spans[1] + parts[1]) * spans[2] + parts[2]  # < size where inside
    key = pl.when(inside).then(flat).otherwise(size)  # null ids: outside too
    return pl.lit(pl.Series("status", table)).gather(key).alias("status")
