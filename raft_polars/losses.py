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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias

import numpy as np
import numpy.typing as npt
import polars as pl

from raft_polars import _checks
from raft_polars._dense import Box, PromptCodes, box_of, footers_within, gather, prompt_codes
from raft_polars.errors import RaftInputError
from raft_polars.logs import ID_COLUMNS, Source, StageLog, canonical_ids, collect, read_log
from raft_polars.ranking import (
    Selection,
    Strategy,
    apply_min_reward,
    dense_summary,
    prompt_summary,
    rank,
)

__all__ = [
    "LOSS_COLUMNS",
    "RESPONSE_STATS",
    "Keys",
    "Reduction",
    "below_min",
    "candidate_sums",
    "check_reduction",
    "losses_from_log",
    "losses_from_responses",
    "rank_keys",
    "read_keys",
    "response_stats",
    "response_sums",
    "select_best",
    "selected_candidates",
    "selected_from_log",
    "stage_columns",
    "stage_losses",
]

Reduction: TypeAlias = Literal["token", "sequence"]

LOSS_COLUMNS = (
    "stage", "loss", "prompts", "candidates", "selected", "tokens",
    "reward_best_mean", "reward_mean", "reward_lift", "ties", "below_min",
)
_STATUS_ORPHAN, _STATUS_OTHER, _STATUS_SELECTED = 0, 1, 2
_INT64_MAX = 2**63 - 1


def _code_name(schema: pl.Schema) -> str:
    """A name for the prompt's codes (see :class:`raft_polars._dense.PromptCodes`)
    that no column of ``schema`` has."""
    name = "_raft_prompt_code"
    while name in schema or f"{name}_right" in schema:
        name += "_"
    return name


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
    keys = read_keys(log)
    if keys.summary is None and log.layout == "nested" and selection.is_best_of_k:
        del keys
        return _nested_one_pass(log, selection, reduction)
    summary, ranked = rank_keys(log, keys, selection)
    chosen = apply_min_reward(ranked, selection)
    assert isinstance(chosen, pl.DataFrame)
    below = below_min(ranked, chosen)
    if log.layout == "nested":
        # the second pass decodes and reduces only the selected responses' lists
        rows = selected_candidates(log, keys, chosen)
        del keys, ranked  # the summary and the 1-byte flag table live through the pass
        responses = collect(log, rows.select(*ID_COLUMNS, "reward", *response_stats("logprobs")))
        return losses_from_responses(log, summary, responses, below, reduction)
    per_response = reduction == "sequence"
    rows = _token_rows(log, keys, chosen, ID_COLUMNS if per_response else ["stage"])
    del keys, ranked  # only the summary and the status table live through the token pass
    token_stats = _long_token_stats(log, rows, chosen, per_response=per_response)
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


def _nested_one_pass(log: StageLog, selection: Selection, reduction: Reduction) -> pl.DataFrame:
    """Best-of-K over a nested log whose ids do not fit a dense box (sparse 64-bit
    prompt ids, say): one streaming pass, the per-row log-prob statistics riding
    along the per-prompt group-by."""
    stats = log.candidates.select(*ID_COLUMNS, "reward", *response_stats("logprobs"))
    summary = collect(log, prompt_summary(stats, carry=RESPONSE_STATS))
    _checks.candidates(log, summary)
    ranked = summary.select(*ID_COLUMNS, "reward", *RESPONSE_STATS)
    chosen = apply_min_reward(ranked, selection)
    below = below_min(ranked, chosen)
    if below is None:  # the summary holds the one selected response of each prompt
        return losses_from_responses(log, summary, None, None, reduction)
    return losses_from_responses(log, summary, chosen, below, reduction)


@dataclass
class Keys:
    """The candidate keys ``stage, prompt, cand, reward`` as read for ranking.

    Attributes
    ----------
    frame
        On the integer fast path: the ids in the source's own integer types, or
        the prompt ids as ``codes``; canonical ids otherwise.
    codes
        The codes of prompt ids (strings, or integers too sparse for a box), or
        None.
    summary
        :func:`~raft_polars.ranking.dense_summary` of the keys (canonical ids), or
        None when they do not fit a dense box.
    """

    frame: pl.DataFrame
    codes: PromptCodes | None
    summary: pl.DataFrame | None

    @property
    def box(self) -> Box | None:
        return None if self.summary is None else box_of(self.frame)

    def index(self, box: Box, chosen: pl.DataFrame) -> npt.NDArray[np.int64]:
        """Positions in ``box`` of the (canonical) ``chosen`` candidates."""
        return box.index(chosen if self.codes is None else self.codes.encode(chosen))

    def lookup(
        self, frame: pl.LazyFrame, box: Box, table: npt.NDArray[np.uint8], *, checked: bool
    ) -> tuple[pl.LazyFrame, pl.Expr]:
        """``frame`` and the expression of each row's entry of ``table`` at its box
        position. With prompt codes, ``frame`` gets them as one more column (under
        a name none of its columns has), which the caller drops."""
        if self.codes is None:
            return frame, gather(table, box, frame.collect_schema(), checked=checked)
        code = _code_name(frame.collect_schema())
        frame = self.codes.attach(frame, code)
        names = ("stage", code, "cand")
        return frame, gather(table, box, frame.collect_schema(), checked=checked, names=names)


def read_keys(log: StageLog) -> Keys:
    """Read the candidate keys, with a numpy summary when the ids fit a dense box
    (string prompt ids and sparse integer ones as codes)."""
    frame = collect(log, log.keys)
    for name in ID_COLUMNS:
        if frame.schema[name] == pl.UInt64 and (frame[name].max() or 0) > _INT64_MAX:  # type: ignore[operator]
            # ids are Int64: report it as every other path does, from the cast
            collect(log, frame.lazy().select(canonical_ids(frame.schema)))
    if frame.schema["prompt"] != pl.String:
        summary = dense_summary(frame)
        if summary is not None:
            return Keys(frame, None, summary)
    codes = prompt_codes(frame)
    if codes is None:
        return Keys(frame, None, None)
    coded = codes.encode(frame)
    summary = dense_summary(coded)
    if summary is None:
        return Keys(frame, None, None)
    return Keys(coded, codes, codes.decode(summary))


def rank_keys(
    log: StageLog, keys: Keys, selection: Selection
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Check and rank the candidate keys.

    Returns the per-prompt summary (:func:`~raft_polars.ranking.prompt_summary`)
    and the ranked candidates (before ``min_reward``), both with canonical ids.
    """
    def canonical() -> pl.LazyFrame:
        frame = keys.frame if keys.codes is None else keys.codes.decode(keys.frame)
        # through collect: ids that do not fit Int64 are reported, not raised raw
        return collect(log, frame.lazy().select(*canonical_ids(frame.schema), "reward")).lazy()

    summary = keys.summary
    if summary is None:  # the general path
        summary = prompt_summary(canonical()).collect(engine="in-memory")
    _checks.candidates(log, summary)
    if selection.is_best_of_k:  # the summary holds each prompt's best candidate
        ranked = summary.select(*ID_COLUMNS, "reward")
    else:
        ranked = rank(canonical(), selection).collect(engine="in-memory")
    return summary, ranked


def selected_candidates(log: StageLog, keys: Keys, chosen: pl.DataFrame) -> pl.LazyFrame:
    """The candidate rows of ``chosen``, in the order of the log, still lazy.

    With ids in a dense box, a filter on a gathered 1-byte flag (the keys are the
    candidate rows themselves, so every row lies inside the box and needs no
    bounds checks); a join otherwise.
    """
    box = keys.box
    if box is None:
        return log.candidates.join(chosen.lazy().select(ID_COLUMNS), on=list(ID_COLUMNS))
    table = np.zeros(box.size + 1, dtype=np.uint8)
    table[keys.index(box, chosen)] = 1
    frame, flag = keys.lookup(log.candidates, box, table, checked=False)
    return frame.filter(flag == 1).select(log.candidates.collect_schema().names())


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
    keys = read_keys(log)
    _, ranked = rank_keys(log, keys, selection)
    chosen = apply_min_reward(ranked, selection)
    rows = selected_candidates(log, keys, chosen)
    on = list(ID_COLUMNS)
    if log.layout == "nested":
        rows = rows.with_columns(pl.col("logprobs").list.len().cast(pl.Int64).alias("tokens"))
    else:
        assert log.tokens is not None
        counts = log.tokens.join(chosen.lazy().select(on), on=on, how="semi").group_by(on).agg(
            pl.len().cast(pl.Int64).alias("tokens")
        )
        rows = rows.join(counts, on=on, how="left").with_columns(pl.col("tokens").fill_null(0))
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


def _token_rows(
    log: StageLog, keys: Keys, chosen: pl.DataFrame, group: Sequence[str]
) -> pl.LazyFrame:
    """The token rows as ``*group, status, logprob``, still lazy. The status is 0
    (the row's candidate has no reward), 1 (not selected) or 2 (selected).

    From a dense 1-byte table gathered at each row's box position when the ids fit
    a box (on the raw token ids, or on the prompt's codes), else from a hash join
    with a status table on canonical ids.
    """
    assert log.tokens is not None
    assert log.raw_tokens is not None
    box = keys.box
    if box is not None:
        table = np.zeros(box.size + 1, dtype=np.uint8)  # the last entry: outside the box
        table[box.index(keys.frame)] = _STATUS_OTHER
        table[keys.index(box, chosen)] = _STATUS_SELECTED
        # raw ids the footers prove inside the box need no bounds checks per row
        # (prompt codes always do: a prompt without a reward row has a null code)
        checked = keys.codes is not None or not footers_within(
            log.token_files, log.token_ids, box)
        tokens, status = keys.lookup(log.raw_tokens, box, table, checked=checked)
        return tokens.select(*group, status.alias("status"), "logprob")
    statuses = keys.frame.select(canonical_ids(keys.frame.schema)).with_columns(
        pl.lit(_STATUS_OTHER, pl.UInt8).alias("status")
    ).update(
        chosen.select(ID_COLUMNS).with_columns(pl.lit(_STATUS_SELECTED, pl.UInt8).alias("status")),
        on=list(ID_COLUMNS),
    )
    return log.tokens.join(statuses.lazy(), on=list(ID_COLUMNS), how="left").select(
        *group, pl.col("status").fill_null(_STATUS_ORPHAN), "logprob")


def _long_token_stats(
    log: StageLog, rows: pl.LazyFrame, chosen: pl.DataFrame, *, per_response: bool
) -> pl.DataFrame:
    """Sum the selected token rows per stage (or per response) in one pass.

    ``rows`` come from :func:`_token_rows`; rows of status 1 are dropped before the
    group-by, so the pass costs about one read of the token columns.
    """
    group = ["stage", "prompt", "cand"] if per_response else ["stage"]
    kept = rows.filter(pl.col("status") != _STATUS_OTHER)
    lp = pl.col("logprob")
    stats = collect(
        log,
        kept.group_by([*group, "status"]).agg(
            (-lp.cast(pl.Float64).sum()).alias("nll"),
            pl.len().cast(pl.Int64).alias("tokens"),
            lp.max().cast(pl.Float64).alias("lp_max"),
            lp.null_count().cast(pl.Int64).alias("lp_nulls"),
        ),
    ).cast(  # the raw ids back to canonical; an orphan's id beyond Int64 becomes null
        {name: chosen.schema[name] for name in group}, strict=False)
    _checks.orphan_tokens(log, stats.filter(pl.col("status") == _STATUS_ORPHAN))
    selected = stats.filter(pl.col("status") == _STATUS_SELECTED).drop("status")
    _checks.selected_logprobs(log, selected, chosen)
    return selected
