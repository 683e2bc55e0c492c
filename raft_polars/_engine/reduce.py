"""Step 3 of RAFT: reduce the selected responses to per-stage SFT losses.

The loss of a stage is the pooled token mean of the negative log-likelihood over
every token of every selected response (HF Transformers / TRL SFT reduction):
``-sum(logprob) / count(tokens)``, accumulated in float64. ``reduction="sequence"``
gives the mean of per-response mean NLLs instead (responses with no tokens are
left out of that mean); it is never the default.

The kernels here run on one partition of a log (or on all of it) and return
per-stage sums (:data:`~raft_polars._engine.rank.STAGE_SUMS`) and problem
records; :func:`finish` adds up the sums of every partition and computes the
output columns.

- :func:`nested_sums`: nested layout, the selected rows' lists;
- :func:`token_sums`: long layout, one pass over the token rows, each row's
  status (no reward row / not selected / selected) from a 1-byte table gathered
  at its dense box position, or from a hash join;
- :func:`selected_rows`: the selected batch with its payload.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from raft_polars._engine.checks import Problem, bad_logprob, first_row, raise_first
from raft_polars._engine.dense import NUMPY_INTS
from raft_polars._engine.rank import STAGE_SUMS, Keys, stage_frame
from raft_polars._engine.read import (
    ID_COLUMNS,
    StageLog,
    canonical_ids,
    file_pieces,
    float_type,
    side_by_side,
)
from raft_polars._engine.sources import Piece
from raft_polars._engine.sums import group_sums
from raft_polars.selection import Reduction

__all__ = [
    "LOSS_COLUMNS",
    "Reduced",
    "finish",
    "list_lengths",
    "nested_sums",
    "response_stats",
    "selected_candidates",
    "selected_rows",
    "stage_columns",
    "token_counts",
    "token_sums",
]

LOSS_COLUMNS = (
    "stage", "loss", "prompts", "candidates", "selected", "tokens",
    "reward_best_mean", "reward_mean", "reward_lift", "ties", "below_min",
)  # fmt: skip
_IDS = list(ID_COLUMNS)


@dataclass
class Reduced:
    """What a reduce kernel returns for one partition.

    Attributes
    ----------
    stages
        Per-stage ``nll``, ``tokens`` (and ``seq_sum``, ``seq_n``) sums.
    responses
        Long layout, per-response sums (a response may span partitions):
        ``stage, prompt, cand, nll, tokens`` of the selected responses, or None.
    problems
        Orphan token rows, null or bad log-probs of selected responses.
    counts
        ``stage, prompt, cand, tokens`` of every candidate (when asked for).
    """

    stages: pl.DataFrame
    responses: pl.DataFrame | None
    problems: list[Problem]
    counts: pl.DataFrame | None = None


def response_stats(log: StageLog, rows: pl.LazyFrame) -> pl.DataFrame:
    """``stage, prompt, cand`` of the nested ``rows`` and each list's NLL sum
    (float64, added in order), token count, largest log-prob (-inf for an empty
    list) and null count, all null for a null list: a compiled loop over each
    batch's values, in one pass (log-probs other than floats as Float64)."""
    lists = pl.col("logprobs")
    inner = rows.collect_schema()["logprobs"].inner  # type: ignore[attr-defined]
    kind = float_type(inner)
    query = rows.select(*_IDS, lists if kind == inner else lists.cast(pl.List(kind)))
    parts = [_list_stats(batch) for batch in log.batches(query)]
    if not parts:
        empty = {"nll": pl.Float64, "tokens": pl.Int64, "lp_max": pl.Float64, "lp_nulls": pl.Int64}
        return log.collect(rows.select(_IDS).head(0)).with_columns(
            pl.Series(name, [], dtype) for name, dtype in empty.items()
        )
    return pl.concat(parts, how="vertical")


def _list_stats(batch: pl.DataFrame) -> pl.DataFrame:
    """:func:`response_stats` of one batch."""
    import pyarrow as pa

    from raft_polars._engine import _compiled

    lists = batch["logprobs"]
    arrow = lists.to_arrow()
    chunks = arrow.chunks if isinstance(arrow, pa.ChunkedArray) else [arrow]
    n = batch.height
    nll, top, nulls = np.empty(n), np.empty(n), np.empty(n, dtype=np.int64)
    at = 0
    for chunk in chunks:  # offsets into the chunk's values (a slice's too)
        values = chunk.values
        valid = _compiled.NO_MASK
        if values.null_count:
            valid = values.is_valid().to_numpy(zero_copy_only=False)
        end = at + len(chunk)
        _compiled.list_sums(
            chunk.offsets.to_numpy().astype(np.int64, copy=False),
            values.to_numpy(zero_copy_only=False),
            valid,
            nll[at:end],
            top[at:end],
            nulls[at:end],
        )
        at = end
    stats = {
        "nll": pl.lit(pl.Series(nll)),
        "tokens": pl.col("logprobs").list.len().cast(pl.Int64),
        "lp_max": pl.lit(pl.Series(top)),
        "lp_nulls": pl.lit(pl.Series(nulls)),
    }
    there = pl.col("logprobs").is_not_null()  # a null list: all of them null
    return batch.select(*_IDS, *(pl.when(there).then(v).alias(k) for k, v in stats.items()))


def _flagged(stats: pl.DataFrame | pl.LazyFrame) -> pl.Expr:
    """Groups whose log-probs need a look: a null list, a null log-prob, a sum
    that is not finite, a log-prob above 0."""
    return (
        pl.col("tokens").is_null()
        | (pl.col("lp_nulls") > 0)
        | ~pl.col("nll").is_finite()
        | (pl.col("lp_max") > 0)
    ).fill_null(value=True)


def _response_sums(responses: pl.DataFrame) -> pl.DataFrame:
    """Per-stage sums of per-response ``nll`` and ``tokens``."""
    has_tokens = pl.col("tokens") > 0
    sums = {
        "nll": pl.col("nll"),
        "tokens": pl.col("tokens"),
        "seq_sum": pl.when(has_tokens).then(pl.col("nll") / pl.col("tokens")),
        "seq_n": has_tokens,
    }
    return group_sums(responses, ["stage"], sums, order=_IDS)


# --- the selected rows -----------------------------------------------------------------


def selected_candidates(
    rows: pl.LazyFrame, chosen: pl.DataFrame, keys: Keys | None = None
) -> pl.LazyFrame:
    """The candidate ``rows`` that ``chosen`` holds, in their order, still lazy.

    With ``keys`` (the same rows' keys, in a dense box), a filter on a gathered
    1-byte flag, with no bounds checks (every row lies inside the box); a join on
    canonical ids otherwise.
    """
    box = None if keys is None else keys.box
    if keys is None or box is None:
        schema = rows.collect_schema()
        on = chosen.select(pl.col(c).cast(schema[c]) for c in _IDS)
        return rows.join(on.lazy(), on=_IDS, how="semi")
    table = np.zeros(box.size + 1, dtype=np.uint8)
    table[keys.index(box, chosen)] = 1
    frame, flag = keys.lookup(rows, box, table, checked=False)
    return frame.filter(flag == 1).select(rows.collect_schema().names())


def selected_rows(
    log: StageLog,
    chosen: pl.DataFrame,
    *,
    piece: Piece | None = None,
    keys: Keys | None = None,
    counts: pl.DataFrame | None = None,
) -> pl.LazyFrame:
    """The selected batch of one partition, lazy: ``stage, prompt, cand, reward,
    tokens`` and the extra columns, sorted by ``stage, prompt, cand``.

    Nested rows count their tokens from ``logprobs``; reward rows (long layout)
    take them from ``counts`` (``stage, prompt, cand, tokens``, from
    :func:`token_counts`).
    """
    rows = selected_candidates(log.candidates(piece), chosen, keys)
    if not log.has_logprobs:
        rows = rows.with_columns(pl.lit(None, pl.Int64).alias("tokens"))
    elif log.layout == "nested":
        rows = rows.with_columns(pl.col("logprobs").list.len().cast(pl.Int64).alias("tokens"))
    else:
        assert counts is not None
        rows = rows.join(counts.lazy(), on=_IDS, how="left").with_columns(
            pl.col("tokens").fill_null(0)
        )
    return rows.select(*_IDS, "reward", "tokens", *log.extras).sort(_IDS)


# --- nested layout ---------------------------------------------------------------------


def nested_sums(
    log: StageLog,
    chosen: pl.DataFrame,
    *,
    piece: Piece | None = None,
    keys: Keys | None = None,
    every: bool = False,
) -> Reduced:
    """The reduce kernel of the nested layout: decode only the selected rows'
    lists, sum per stage, and find bad log-probs of selected responses.

    ``every``: decode every row's list, and give every candidate's token count
    (``counts``) from the same pass (the statistics need them: a second pass
    over the lists for their lengths cost as much as this one)."""

    def stats_of(part: Piece | None) -> pl.DataFrame:
        candidates = log.candidates(part, extras=False)
        return response_stats(
            log, candidates if every else selected_candidates(candidates, chosen, keys)
        )

    # every row's statistics: one pass (two side by side held 230 MiB more at 692 M)
    parts = side_by_side([piece] if every else file_pieces(log, piece), stats_of)
    responses = parts[0] if len(parts) == 1 else pl.concat(parts, how="vertical")
    counts = None
    if every:
        counts = responses.select(*_IDS, "tokens")  # null: a null list, length unknown
        on = chosen.select(pl.col(c).cast(responses.schema[c]) for c in _IDS)
        responses = responses.join(on, on=_IDS, how="semi", maintain_order="left")
    problems: list[Problem] = []
    flagged = responses.filter(_flagged(responses))
    if flagged.height:
        rows = selected_candidates(log.candidates(piece, extras=False), chosen, keys)
        problems = _nested_problems(log, rows, flagged)
    return Reduced(stage_frame(_response_sums(responses)), None, problems, counts)


def _nested_problems(log: StageLog, rows: pl.LazyFrame, flagged: pl.DataFrame) -> list[Problem]:
    nulls = flagged.filter(pl.col("tokens").is_null()).sort(_IDS)
    row = first_row(nulls)
    if row is not None:
        where = {k: row[k] for k in _IDS}
        return [Problem("null_logprobs", nulls.height, where)]
    tokens = (
        rows.join(flagged.lazy().select(_IDS), on=_IDS, how="semi")
        .select(*_IDS, "logprobs")
        .with_columns(pl.int_ranges(pl.col("logprobs").list.len()).alias("token"))
        .explode(["logprobs", "token"])
        .rename({"logprobs": "logprob"})
    )
    bad = tokens.filter(bad_logprob(pl.col("logprob")))
    row = first_row(log.collect(bad.sort([*_IDS, "token"]).head(1)))
    if row is None:  # every log-prob is sound: the sum overflowed, as the loss may
        return []
    return [Problem("bad_logprob", flagged.height, row)]


# --- long layout: one pass over the token rows -------------------------------------------


@dataclass
class _Located:
    """The token rows and how to find each row's position: ``size`` positions,
    then one for "no candidate". ``ids``: the columns of ``rows`` whose parts
    make the position (:class:`_compiled.Ids`: ``lows``, ``spans``); a None
    part is 0, or, for string prompt ids, the code of the row's ``prompt``
    among the candidates' prompts (``categories``). ``positions``: the
    positions of candidates; ``exact``: the rows and each one's position as a
    Polars expression, for messages."""

    rows: pl.LazyFrame
    ids: tuple[str | None, str | None, str | None]
    lows: tuple[int, int, int]
    spans: tuple[int, int, int]
    size: int
    positions: Callable[[pl.DataFrame], npt.NDArray[np.signedinteger[Any]]]
    candidates: npt.NDArray[np.signedinteger[Any]]  # the positions of every key
    exact: Callable[[], tuple[pl.LazyFrame, pl.Expr]]
    categories: pl.Series | None = None


def _locate(log: StageLog, keys: Keys, piece: Piece | None) -> _Located:
    """How to find each token row's position: in the dense box of the keys (from
    the raw ids, or with the prompt's codes), or, when they do not fit one, the
    candidate's row in the keys from a hash join on canonical ids. The compiled
    loop computes the positions from the ids and checks each part against the
    box, so an id that a corrupted page holds against its footer is outside."""
    box = keys.box
    tokens = log.tokens(piece, raw=True)
    if box is not None:
        where = functools.partial(keys.index, box)
        every = box.index(keys.frame)

        def exact() -> tuple[pl.LazyFrame, pl.Expr]:  # for messages: every id checked
            return keys.position(tokens, box, checked=True)

        codes = keys.codes
        schema = tokens.collect_schema()
        if codes is None:
            ids: tuple[str | None, str | None, str | None] = ID_COLUMNS
            return _Located(tokens, ids, box.lows, box.spans, box.size, where, every, exact)
        if codes.categories.dtype == schema["prompt"] == pl.String:
            # string prompts: their codes are found in the compiled loop
            ids = ("stage", None, "cand")
            return _Located(
                tokens, ids, box.lows, box.spans, box.size, where, every, exact, codes.categories
            )
        rows, code = keys.with_codes(tokens)
        ids = ("stage", code, "cand")
        return _Located(rows, ids, box.lows, box.spans, box.size, where, every, exact)
    known = keys.canonical().select(_IDS).with_row_index("_index")
    rows = tokens.with_columns(canonical_ids(tokens.collect_schema())).join(
        known.lazy(), on=_IDS, how="left"
    )

    def positions(frame: pl.DataFrame) -> npt.NDArray[np.signedinteger[Any]]:
        found = frame.select(_IDS).join(known, on=_IDS, how="left", maintain_order="left")
        return found["_index"].cast(pl.Int64).to_numpy()

    index = pl.col("_index").cast(pl.Int64).fill_null(known.height)
    every = np.arange(known.height, dtype=np.int64)
    return _Located(
        rows,
        ("_index", None, None),
        (0, 0, 0),
        (known.height, 1, 1),
        known.height,
        positions,
        every,
        lambda: (rows, index),
    )


def _token_files(log: StageLog, piece: Piece | None) -> list[str]:
    """The token files a piece (or the whole log) reads."""
    paths = log.main.paths
    return [str(p) for p in paths] if piece is None else [str(paths[i]) for i in piece.files]


# numpy holds them and Int64 holds their values: the loop widens them itself
_LOOP_INTS = NUMPY_INTS - {pl.UInt64}


def _loop_id(name: str, dtype: pl.DataType, alias: str) -> pl.Expr:
    """Column ``name`` as the compiled loop reads ids: as it is, or (UInt64,
    128-bit ids from merged file schemas) as Int64, a value beyond it null (no
    candidate has it)."""
    column = pl.col(name)
    if dtype not in _LOOP_INTS:
        column = column.cast(pl.Int64, strict=False)
    return column.alias(alias)


def _scatter(
    log: StageLog,
    located: _Located,
    table: npt.NDArray[np.int32],
    slots: int,
    piece: Piece | None,
) -> dict[str, npt.NDArray[Any]]:
    """Per-slot ``nll, tokens, lp_max, lp_nulls`` of the token rows, in one pass:
    Polars decodes the rows batch by batch; the compiled loop finds each row's
    position from its ids and adds it into the slot ``table[position]``."""
    from raft_polars._engine import _compiled

    sums: dict[str, npt.NDArray[Any]] = {
        "nll": np.zeros(slots),
        "tokens": np.zeros(slots, dtype=np.int64),
        "lp_max": np.full(slots, -np.inf),
        "lp_nulls": np.zeros(slots, dtype=np.int64),
    }
    schema = located.rows.collect_schema()
    dtype = schema["logprob"]
    lp = pl.col("logprob")
    parts = [f"_id{axis}" if name else None for axis, name in enumerate(located.ids)]
    columns = [
        _loop_id(name, schema[name], alias)
        for name, alias in zip(located.ids, parts, strict=True)
        if name is not None and alias is not None
    ]
    columns.append(lp if float_type(dtype) == dtype else lp.cast(float_type(dtype)))
    names, lookup = _compiled.NO_STRINGS, _compiled.NO_LOOKUP
    if located.categories is not None:
        names = _compiled.strings(located.categories)
        lookup = _compiled.name_table(names)
        columns.append(pl.col("prompt").alias("_prompt"))
    lows, spans, strings = located.lows, located.spans, located.categories is not None
    batches = log.batches(located.rows.select(columns), _token_files(log, piece))
    with contextlib.closing(batches):  # ended even by an error: the read-ahead setting goes
        for batch in batches:
            stage, prompt, cand = (None if a is None else _compiled.column(batch[a]) for a in parts)
            assert stage is not None  # the stage's column, or the candidates' index
            ids = _compiled.ids_of(stage, prompt, cand, lows, spans)
            logprob, valid = _compiled.column(batch["logprob"])
            valid = _compiled.NO_MASK if valid is None else valid
            rows = _compiled.strings(batch["_prompt"]) if strings else _compiled.NO_STRINGS
            _compiled.scatter(ids, rows, names, lookup, logprob, valid, table, *sums.values())
    return sums


def token_sums(
    log: StageLog,
    keys: Keys,
    chosen: pl.DataFrame,
    *,
    piece: Piece | None = None,
    per_response: bool = False,
    checks: bool = True,
    every: bool = False,
) -> Reduced:
    """The reduce kernel of the long layout: one pass over the token rows.

    Each row finds its candidate's slot from a table at its position; the rows
    of unselected candidates have none and are skipped, orphan rows (no reward
    row) share slot 0 and are counted in the same pass. ``keys`` are the
    candidate keys covering the partition's token rows, ``chosen`` the selected
    ones (canonical ids). ``per_response``: also return per-response sums (for
    ``"sequence"``); ``checks=False``: leave out the search for the first bad
    log-prob (orphan rows are always reported); ``every``: count the tokens of every candidate too
    (``Reduced.counts``, in the same pass; the statistics of ``stage_stats``
    need them).
    """
    located = _locate(log, keys, piece)
    tracked = keys.canonical().select(_IDS) if every else chosen.select(_IDS)
    table = np.zeros(located.size + 1, dtype=np.int32)  # slot 0: no candidate
    table[located.candidates] = -1  # a candidate not tracked: its rows are skipped
    table[located.positions(tracked)] = np.arange(1, tracked.height + 1, dtype=np.int32)
    sums = _scatter(log, located, table, tracked.height + 1, piece)
    stats = tracked.with_columns(pl.Series(name, values[1:]) for name, values in sums.items())
    counted = sums["tokens"][1:] > 0
    if every:  # the chosen among every candidate, by their slots (no join on millions)
        slots = table[located.positions(chosen)]
        picked = np.zeros(tracked.height, dtype=np.bool_)
        picked[slots[slots > 0] - 1] = True
        selected = stats.filter(pl.Series(picked & counted))
    if not counted.all():  # else no copy of millions of rows to drop none
        stats = stats.filter(pl.Series(counted))
    if not every:
        selected = stats
    problems: list[Problem] = []
    orphans = int(sums["tokens"][0])
    if orphans:  # an input error for every entry point (the search runs only then)
        rows, index = located.exact()
        orphan = pl.lit(pl.Series("orphan", table == 0)).gather(index)
        first = log.collect(
            rows.filter(orphan)
            .select(pl.col(c).cast(chosen.schema[c], strict=False) for c in _IDS)
            .sort(_IDS, nulls_last=True)
            .head(1)
        )  # ids beyond the canonical types show as null
        problems.append(Problem("orphan_tokens", orphans, first.row(0, named=True)))
    if checks and selected.filter(_flagged(selected)).height:
        problems.extend(_token_problems(log, keys, chosen, piece))
    counts = stats.select(*_IDS, "tokens") if every else None
    if per_response:
        responses = selected.select(*_IDS, "nll", "tokens")
        return Reduced(stage_frame(responses.head(0).select("stage")), responses, problems, counts)
    totals = group_sums(selected, ["stage"], {c: pl.col(c) for c in ("nll", "tokens")}, order=_IDS)
    return Reduced(stage_frame(totals), None, problems, counts)


def _token_problems(
    log: StageLog, keys: Keys, chosen: pl.DataFrame, piece: Piece | None
) -> list[Problem]:
    """The first bad log-prob among the selected token rows (a second pass, only
    when the first one flagged some)."""
    tokens = log.tokens(piece)
    picked = tokens.join(chosen.lazy().select(_IDS), on=_IDS, how="semi")
    bad = picked.filter(bad_logprob(pl.col("logprob")))
    order = [*_IDS, "token"] if log.has_token else _IDS
    found = log.collect(bad.sort(order).head(1))
    row = first_row(found)
    if row is None:  # every log-prob is sound: the sum overflowed, as the loss may
        return []
    count = log.collect(bad.select(pl.len())).item()
    return [Problem("bad_logprob", int(count), {**row, "token": row.get("token")})]


def token_counts(
    log: StageLog, keys: Keys, chosen: pl.DataFrame, *, piece: Piece | None = None
) -> tuple[pl.DataFrame, list[Problem]]:
    """Long layout: ``stage, prompt, cand, tokens`` of the selected responses in
    a partition's token rows (the per-response token pass, without the search
    for bad log-probs), and the problems found (orphan token rows)."""
    reduced = token_sums(log, keys, chosen, piece=piece, per_response=True, checks=False)
    assert reduced.responses is not None
    return reduced.responses.select(*_IDS, "tokens"), reduced.problems


# --- combine the partitions -----------------------------------------------------------------


def stage_columns(sums: dict[str, pl.Expr], reduction: Reduction) -> list[pl.Expr]:
    """The output columns of ``stage_losses`` from per-stage sums."""
    selected = sums["selected"] > 0
    if reduction == "token":
        loss = sums["nll"] / sums["tokens"]
    else:
        loss = sums["seq_sum"] / sums["seq_n"]
    best_mean = sums["reward_best_sum"] / sums["selected"]
    # a stage whose every candidate was skipped (bad_rewards="skip") has no mean
    reward_mean = pl.when(sums["candidates"] > 0).then(sums["reward_sum"] / sums["candidates"])
    return [
        pl.when(selected).then(loss).cast(pl.Float64).alias("loss"),
        *(
            sums[name].cast(pl.Int64).alias(name)
            for name in ("prompts", "candidates", "selected", "tokens")
        ),
        pl.when(selected).then(best_mean).cast(pl.Float64).alias("reward_best_mean"),
        reward_mean.cast(pl.Float64).alias("reward_mean"),
        pl.when(selected).then(best_mean - reward_mean).cast(pl.Float64).alias("reward_lift"),
        *(sums[name].cast(pl.Int64).alias(name) for name in ("ties", "below_min")),
    ]


def finish(
    log: StageLog,
    stages: Sequence[pl.DataFrame],
    responses: Sequence[pl.DataFrame | None],
    problems: Sequence[Problem],
    reduction: Reduction,
    *,
    skipped: bool = False,
) -> pl.DataFrame:
    """The per-stage table from every partition's sums (``skipped``: with the
    ``skipped`` and ``skipped_prompts`` counts of ``bad_rewards="skip"``) (a rewards-only log, one
    without log-probs, has no loss and no token count: both are null).

    ``responses`` (long layout, per-response sums) are added up per response
    first: a response may span partitions. Raises the first of ``problems`` and
    of the stages whose selected responses hold no tokens.
    """
    raise_first(problems, origin=log.origin, token_origin=log.token_origin)
    parts = list(stages)
    found = [r for r in responses if r is not None]
    if found:
        per_response = group_sums(  # partial sums in partition order
            pl.concat(found, how="vertical_relaxed"),
            _IDS,
            {c: pl.col(c) for c in ("nll", "tokens")},
        )
        parts.append(stage_frame(_response_sums(per_response)))
    every = pl.concat([stage_frame(p) for p in parts], how="vertical")
    total = group_sums(every, ["stage"], {name: pl.col(name) for name in STAGE_SUMS})
    columns = {name: pl.col(name) for name in STAGE_SUMS}
    counts = [pl.col(c).cast(pl.Int64) for c in ("skipped", "skipped_prompts")] if skipped else []
    table = total.select("stage", *stage_columns(columns, reduction), *counts).sort("stage")
    if not log.has_logprobs:
        return table.with_columns(
            pl.lit(None, pl.Float64).alias("loss"), pl.lit(None, pl.Int64).alias("tokens")
        )
    empty = table.filter((pl.col("selected") > 0) & (pl.col("tokens") == 0))
    row = first_row(empty)
    if row is not None:
        stage_problem = Problem("no_tokens", empty.height, row)
        raise_first([stage_problem], origin=log.origin, token_origin=log.token_origin)
    return table


def list_lengths(log: StageLog, piece: Piece | None = None) -> pl.DataFrame | None:
    """Nested layout: ``stage, prompt, cand, tokens`` of every candidate (a pass
    over the lists' lengths; null for a null list); None for a rewards-only log."""
    if not log.has_logprobs:
        return None
    rows = log.candidates(piece, extras=False)
    lengths = pl.col("logprobs").list.len().cast(pl.Int64).alias("tokens")
    return log.collect(rows.select(*_IDS, lengths))
