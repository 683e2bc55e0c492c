"""The kernels of ``validate``: every problem of a log, counted and located.

Like the loss kernels they run on one partition and return small partials that
add up: :func:`check_candidates` on whole prompts (whole stages for the global
ranking), :func:`token_part` on any piece of the long layout's token rows,
:func:`combine_runs`, :func:`finish_long` and :func:`empty_stages` once, on the
combined partials. Each finding keeps its count, how many places hold it and its
first ``limit`` locations in ``stage, prompt, cand`` order.

Every local Parquet file is decoded once, by pyarrow with page checksums verified
(:class:`StrictParquet`, a Polars source): the strict read that names a corrupt
file and the checks of its rows are one pass, in memory bounded by a record batch
and the per-response partials.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import accumulate
from typing import Any

import polars as pl

from raft_polars._engine.checks import bad_logprob, bad_reward
from raft_polars._engine.rank import select
from raft_polars._engine.read import ID_COLUMNS, StageLog, canonical_ids
from raft_polars._engine.sources import _UPCAST, Piece, Resolved
from raft_polars.selection import Selection

__all__ = [
    "CandidatePart",
    "Checked",
    "Findings",
    "Responses",
    "StrictParquet",
    "TokenPart",
    "check_candidates",
    "combine_runs",
    "empty_stages",
    "finish_long",
    "nested_columns",
    "strict_findings",
    "strict_paths",
    "strict_read",
    "strictly",
    "summarize",
    "token_part",
    "token_runs",
]

_IDS = list(ID_COLUMNS)
_ORDER = [*_IDS, "token"]


@dataclass
class Findings:
    """Problems found so far: ``kind -> (count, places, first locations)``."""

    limit: int
    found: dict[str, tuple[int, int, pl.DataFrame]] = field(default_factory=dict)

    def add(self, kind: str, count: int, where: pl.DataFrame) -> None:
        """Record ``count`` problems of ``kind``; ``where`` holds their places."""
        if count <= 0:
            return
        sort = [c for c in _ORDER if c in where.columns] or where.columns[:1]
        first = where.sort(sort, nulls_last=True).head(self.limit)
        self.merge_one(kind, count, where.height, first)

    def merge_one(self, kind: str, count: int, places: int, first: pl.DataFrame) -> None:
        if kind in self.found:
            old_count, old_places, old_first = self.found[kind]
            both = pl.concat([old_first, first], how="diagonal_relaxed")
            sort = [c for c in _ORDER if c in both.columns] or both.columns[:1]
            first = both.sort(sort, nulls_last=True).head(self.limit)
            count, places = count + old_count, places + old_places
        self.found[kind] = (count, places, first)

    def merge(self, others: Iterable[Findings]) -> Findings:
        for other in others:
            for kind, (count, places, first) in other.found.items():
                self.merge_one(kind, count, places, first)
        return self


def _bad(value: pl.Expr) -> pl.Expr:
    return bad_logprob(value.cast(pl.Float64))


def _bad_reward() -> pl.Expr:
    return bad_reward(pl.col("reward"))


def nested_columns(rows: pl.LazyFrame, *, has_logprobs: bool = True) -> pl.LazyFrame:
    """Nested layout: one row per candidate with its token statistics (none for a
    rewards-only log)."""
    if not has_logprobs:
        return rows.select(
            *_IDS,
            "reward",
            pl.lit(0, pl.Int64).alias("tokens"),
            pl.lit(False).alias("null_list"),
            pl.lit(0, pl.Int64).alias("bad_lp"),
            pl.lit(None, pl.Int64).alias("first_bad"),
            pl.lit(None, pl.Float64).alias("first_bad_value"),
        )
    lp = pl.col("logprobs")
    flags = lp.list.eval(_bad(pl.element()))
    first = flags.list.arg_max()
    return rows.select(
        *_IDS,
        "reward",
        lp.list.len().fill_null(0).cast(pl.Int64).alias("tokens"),
        lp.is_null().alias("null_list"),
        flags.list.sum().fill_null(0).cast(pl.Int64).alias("bad_lp"),
        first.alias("first_bad"),
        lp.list.get(first, null_on_oob=True).cast(pl.Float64).alias("first_bad_value"),
    )


@dataclass
class CandidatePart:
    """What :func:`check_candidates` returns for one partition.

    ``stage_tokens``: per stage, the selected responses and their tokens (nested
    layout; the long layout counts tokens in the token rows). ``known``: the
    candidate ids present (long layout, to find token rows without a reward).
    """

    findings: Findings
    chosen: pl.DataFrame
    stages: pl.Series
    prompts: int
    candidates: int
    tokens: int
    stage_tokens: pl.DataFrame | None
    known: pl.DataFrame | None


def check_candidates(
    cands: pl.DataFrame, selection: Selection, limit: int, *, nested: bool
) -> CandidatePart:
    """Null ids, duplicate candidates, bad rewards (and, nested, the log-probs).

    The selection ranks the candidates whose ids and reward are sound (one row
    per ``(stage, prompt, cand)``, the largest reward when duplicated).
    """
    found = Findings(limit)
    null_id = pl.any_horizontal(pl.col(c).is_null() for c in _IDS)
    nulls = cands.filter(null_id)
    found.add("null_id", nulls.height, nulls.select(_IDS))
    ids = _per_candidate(cands)
    dups = ids.filter(pl.col("rows") > 1).select(*_IDS, "rows")
    found.add("duplicate_candidate", dups.height, dups)
    bad = cands.filter(_bad_reward()).select(*_IDS, "reward")
    found.add("bad_reward", bad.height, bad)
    sound = ids.lazy().filter(pl.col("reward").is_not_null()).select(*_IDS, "reward")
    chosen = select(sound, selection).select(_IDS).collect()
    prompts = _distinct(cands.drop_nulls(["stage", "prompt"]), ("stage", "prompt"))
    stages = cands["stage"].drop_nulls().unique()
    stage_tokens = known = None
    tokens = 0
    if nested:  # the few responses with a null list or a bad log-prob, then the selected
        marked = _with_selected(
            cands.filter(pl.col("null_list") | (pl.col("bad_lp") > 0)), chosen
        ).collect()
        null_lists = marked.filter(pl.col("null_list"))
        found.add("null_logprobs", null_lists.height, null_lists.select(*_IDS, "selected"))
        _logprob_checks(found, marked)
        selected = (
            cands.filter(~_bad_reward())
            .join(chosen, on=_IDS, how="semi", maintain_order="left")
            .unique(_IDS, keep="first", maintain_order=True)
        )
        stage_tokens = _stage_tokens(selected)
        tokens = int(cands["tokens"].sum())
    else:
        known = ids.select(_IDS)
    return CandidatePart(found, chosen, stages, prompts, cands.height, tokens, stage_tokens, known)


def _with_selected(frame: pl.DataFrame | pl.LazyFrame, chosen: pl.DataFrame) -> pl.LazyFrame:
    marks = chosen.lazy().with_columns(pl.lit(True).alias("selected"))
    return (
        frame.lazy()
        .join(marks, on=_IDS, how="left")
        .with_columns(pl.col("selected").fill_null(False))
    )


def _logprob_checks(found: Findings, per_response: pl.DataFrame) -> None:
    """``bad_logprob_*`` from per-response ``bad_lp`` counts and first locations."""
    for kind, mask in (
        ("bad_logprob_selected", pl.col("selected")),
        ("bad_logprob_unselected", ~pl.col("selected")),
    ):
        part = per_response.filter(mask & (pl.col("bad_lp") > 0))
        where = part.select(
            *_IDS,
            pl.col("first_bad").alias("token"),
            pl.col("first_bad_value").alias("logprob"),
            pl.col("bad_lp").alias("bad_tokens"),
        )
        found.add(kind, int(part["bad_lp"].sum()), where)


def _stage_tokens(selected: pl.DataFrame) -> pl.DataFrame:
    return selected.group_by("stage").agg(
        pl.len().cast(pl.Int64).alias("selected"), pl.col("tokens").sum().cast(pl.Int64)
    )


# --- long layout: the token rows ------------------------------------------------------------


def token_runs(tokens: pl.LazyFrame, *, has_position: bool) -> pl.LazyFrame:
    """Per response of a piece of token rows: its rows, runs and bad log-probs,
    and (with a ``token`` column) its position jumps and the first and last
    position of its runs.

    A *run* is a stretch of consecutive rows of one response; a *jump*, a row of
    a run whose position is not the one before plus one (or is null). Only the
    rows that start or end a run, or hold a bad log-prob or a jump, go to the
    aggregation (about two a response in a log written in order), so the pass
    costs little more than a read and streams in O(responses) memory. A
    response of one run without a jump holds the positions ``first_pos ..
    first_pos + rows - 1``, each once: the proof of order of :func:`combine_runs`.
    """
    ids = [pl.col(c) for c in _IDS]
    index = pl.col("_row")
    row = index.cast(pl.Int64)
    start, end, bad, jump = pl.col("_start"), pl.col("_end"), pl.col("_bad"), pl.col("_jump")
    marks = [
        (pl.any_horizontal(c.ne_missing(c.shift(1)) for c in ids) | (index == 0)).alias("_start"),
        bad_logprob(pl.col("logprob")).alias("_bad"),
    ]
    after = [start.shift(-1).fill_null(value=True).alias("_end")]  # the next row starts a run
    keep = start | end | bad
    aggs = [
        start.sum().cast(pl.Int64).alias("runs"),
        (pl.when(end).then(row).sum() - pl.when(start).then(row).sum() + start.sum())
        .cast(pl.Int64)
        .alias("rows"),
        bad.sum().cast(pl.Int64).alias("bad_lp"),
    ]
    if has_position:
        token = pl.col("token")
        after.append((~start & token.ne_missing(token.shift(1) + 1)).alias("_jump"))
        keep = keep | jump
        aggs += [
            jump.sum().cast(pl.Int64).alias("jumps"),
            token.min().cast(pl.Int64).alias("first_pos"),
            token.max().cast(pl.Int64).alias("last_pos"),
        ]
    return (
        tokens.with_row_index("_row")
        .with_columns(marks)
        .with_columns(after)
        .filter(keep)
        .group_by(_IDS)
        .agg(aggs)
    )


@dataclass
class TokenPart:
    """What :func:`token_part` returns for one piece of the token rows: the
    :func:`token_runs` aggregates and the files the strict read rejected."""

    runs: pl.DataFrame
    errors: dict[str, str]


def token_part(log: StageLog, piece: Piece | None = None) -> TokenPart:
    """The token-row kernel of the long layout: :func:`token_runs` over the rows
    of ``piece`` (all when None), each local Parquet file decoded once, strictly
    (:class:`StrictParquet`).

    Integer and text ids are compared in the source's own types (cheaper than
    the canonical Int64 on hundreds of millions of rows) and made canonical
    after the aggregation, one row per response.
    """
    reader = StrictParquet()
    strict = strictly(log, reader)
    rows = strict._scan(strict.main, piece)  # the rows of tokens(), before the casts
    kinds = rows.collect_schema()
    if all(kinds[c].is_integer() or kinds[c] == pl.String for c in _IDS):
        token = ["token"] if log.has_token else []
        query = token_runs(rows.select(*_IDS, "logprob", *token), has_position=log.has_token)
        query = query.with_columns(canonical_ids(kinds))
    else:
        query = token_runs(strict.tokens(piece), has_position=log.has_token)
    return TokenPart(strict.collect(query), reader.errors)


def _details(rows: pl.DataFrame, *, has_position: bool) -> pl.DataFrame:
    """What the runs do not prove, from the rows of a few responses: their first
    bad log-prob and, with positions, its position, the null, first, last, first
    duplicate and distinct positions."""
    lp = pl.col("logprob").cast(pl.Float64)
    bad = _bad(pl.col("logprob"))
    if not has_position:
        return rows.group_by(_IDS).agg(
            pl.lit(None, pl.Int64).alias("first_bad"),
            lp.filter(bad).first().alias("first_bad_value"),
        )
    token = pl.col("token").cast(pl.Int64)
    return rows.group_by(_IDS).agg(
        token.null_count().cast(pl.Int64).alias("null_pos"),
        token.min().alias("first_pos"),
        token.max().alias("last_pos"),
        token.filter(bad).min().alias("first_bad"),
        token.drop_nulls().n_unique().cast(pl.Int64).alias("distinct"),
        token.filter(token.is_duplicated()).min().alias("first_dup"),
        lp.filter(bad).sort_by(token.filter(bad)).first().alias("first_bad_value"),
    )


@dataclass
class Responses:
    """What :func:`combine_runs` returns: every response's token rows (``rows``:
    ids and ``rows``) and, for the few whose order the runs do not prove or that
    hold a bad log-prob, what their rows say (``flagged``: ``rows, bad_lp`` and,
    with positions, ``null_pos, first_pos, last_pos, first_bad, distinct,
    first_dup``, then ``first_bad_value``)."""

    rows: pl.DataFrame
    flagged: pl.DataFrame


def combine_runs(
    parts: Sequence[pl.DataFrame],
    fetch: Callable[[pl.DataFrame], pl.DataFrame],
    *,
    has_position: bool,
) -> Responses:
    """The :func:`token_runs` aggregates of every piece, as one row per response.

    A response is in order when each piece holds it as one run without a jump
    and these runs, sorted by their first position, start at 0 and each begins
    where the one before ended: it then holds the positions ``0 .. rows - 1``,
    each once. The other responses, and those with a bad log-prob, get what the
    runs do not prove from their rows (``fetch(keys)`` returns the token rows of
    those responses, :func:`_details`).
    """
    frames = [p for p in parts if p.height] or list(parts[:1])
    every = pl.concat(frames, how="vertical")
    flagged = pl.col("bad_lp") > 0
    if has_position:
        one_run = (pl.col("runs") == 1) & (pl.col("jumps") == 0) & pl.col("first_pos").is_not_null()
        every = every.with_columns(one_run.alias("_ordered"))
        if len(frames) > 1:  # a response may sit in several pieces: do its runs tile?
            every = _merged(every)
        else:
            every = every.with_columns(pl.col("_ordered") & (pl.col("first_pos") == 0))
        flagged = flagged | ~pl.col("_ordered")
    elif len(frames) > 1:
        every = every.group_by(_IDS).agg(pl.col("rows", "bad_lp").sum())
    need = every.filter(flagged).select(*_IDS, "rows", "bad_lp")
    if need.height:
        rows = fetch(need.select(_IDS))
    else:  # no row to look at: the columns only
        token = [pl.lit(None, pl.Int64).alias("token")] if has_position else []
        rows = need.select(*_IDS, pl.lit(None, pl.Float64).alias("logprob"), *token)
    need = need.join(
        _details(rows, has_position=has_position), on=_IDS, how="left", nulls_equal=True
    )
    return Responses(every.select(*_IDS, "rows"), need)


def _merged(every: pl.DataFrame) -> pl.DataFrame:
    """The runs of responses held by several pieces, added up; ``_ordered``: each
    piece holds one run without a jump and, by first position, they tile
    ``0 .. rows - 1``."""
    ids = [pl.col(c) for c in _IDS]
    ranked = every.sort([*_IDS, "first_pos"], nulls_last=True)
    same = pl.all_horizontal(c.eq_missing(c.shift(1)) for c in ids)
    follows = pl.when(same).then(pl.col("first_pos") == pl.col("last_pos").shift(1) + 1)
    tiles = follows.otherwise(pl.col("first_pos") == 0).fill_null(value=False)
    return (
        ranked.with_columns((pl.col("_ordered") & tiles).alias("_ordered"))
        .group_by(_IDS)
        .agg(
            pl.col("runs", "rows", "bad_lp", "jumps").sum(),
            pl.col("first_pos").min(),
            pl.col("last_pos").max(),
            pl.col("_ordered").all(),
        )
    )


def finish_long(
    found: Findings,
    known: pl.DataFrame,
    chosen: pl.DataFrame,
    responses: Responses,
    *,
    has_position: bool,
) -> pl.DataFrame:
    """The token-row checks of the long layout, from the combined per-response
    aggregates; returns the selected responses' token counts per stage."""
    rows, flagged = _keyed(responses.rows, known, chosen)
    orphans = rows[0].join(rows[1], on=flagged, how="anti").select(*_IDS, "rows")
    found.add("orphan_tokens", int(orphans["rows"].sum()), orphans)
    chosen_rows = rows[0].join(rows[2], on=flagged, how="semi")
    responses_of = responses.flagged
    marked = _with_selected(responses_of.filter(pl.col("bad_lp") > 0), chosen).collect()
    _logprob_checks(found, marked)
    if has_position:
        nulls = responses_of.filter(pl.col("null_pos") > 0)
        found.add(
            "null_token_position",
            int(nulls["null_pos"].sum()),
            nulls.select(*_IDS, pl.col("null_pos").alias("rows")),
        )
        extra = pl.col("rows") - pl.col("null_pos") - pl.col("distinct")
        dups = responses_of.filter(extra > 0).with_columns(extra.alias("extra"))
        where = dups.select(
            *_IDS, pl.col("first_dup").alias("token"), (pl.col("extra") + 1).alias("rows")
        )
        found.add("duplicate_token", int(dups["extra"].sum()), where)
        gap = (pl.col("distinct") > 0) & (
            (pl.col("first_pos") != 0) | (pl.col("last_pos") != pl.col("distinct") - 1)
        )
        gaps = responses_of.filter(gap).select(
            *_IDS, "first_pos", "last_pos", pl.col("distinct").alias("positions")
        )
        found.add("token_gap", gaps.height, gaps)
    selected = chosen.group_by("stage").agg(pl.len().cast(pl.Int64).alias("selected"))
    tokens = chosen_rows.group_by("stage").agg(pl.col("rows").sum().cast(pl.Int64).alias("tokens"))
    return selected.join(tokens, on="stage", how="left").with_columns(pl.col("tokens").fill_null(0))


@dataclass(frozen=True)
class _Box:
    """Integer ids packed into one Int64 (mixed radix over their ranges, in the
    order of ``names``, so that the key sorts as the ids do): the group-bys and
    joins of millions of candidates then work on one integer."""

    names: tuple[str, ...]
    bounds: tuple[tuple[int, int], ...]  # (lowest, span) of each id

    @classmethod
    def of(cls, *frames: pl.DataFrame, names: Sequence[str] = _IDS) -> _Box | None:
        """The box of the ids ``names`` of ``frames``; None when an id is not an
        integer or the box does not fit."""
        if not all(f.schema[c].is_integer() for f in frames for c in names):
            return None
        bounds: list[tuple[int, int]] = []
        for c in names:
            ends = [
                f.select(pl.col(c).min().alias("lo"), pl.col(c).max().alias("hi")) for f in frames
            ]
            lo, hi = (
                pl.concat(ends).cast(pl.Int64).select(pl.col("lo").min(), pl.col("hi").max()).row(0)
            )
            bounds.append((0, 1) if lo is None or hi is None else (lo, hi - lo + 1))
        size = 1
        for _, span in bounds:
            size *= span
        return cls(tuple(names), tuple(bounds)) if size < 1 << 62 else None

    def key(self) -> pl.Expr:
        """The key of a row's ids (null when an id is)."""
        key = pl.lit(0, pl.Int64)
        for c, (lo, span) in zip(self.names, self.bounds, strict=True):
            key = key * span + (pl.col(c).cast(pl.Int64) - lo)
        return key.alias("_key")

    def ids(self) -> list[pl.Expr]:
        """The ids of a ``_key`` (Int64)."""
        out, after = [], 1
        for c, (lo, span) in reversed(list(zip(self.names, self.bounds, strict=True))):
            out.append((pl.col("_key") // after % span + lo).alias(c))
            after *= span
        return out[::-1]


def _keyed(*frames: pl.DataFrame) -> tuple[list[pl.DataFrame], list[str]]:
    """The frames with their ids' ``_key`` (:class:`_Box`) and the columns to join
    them on: the key, or the ids themselves when they do not pack."""
    box = _Box.of(*frames)
    if box is None:
        return list(frames), _IDS
    return [f.with_columns(box.key()) for f in frames], ["_key"]


def _distinct(rows: pl.DataFrame, names: tuple[str, ...]) -> int:
    """How many distinct ``names`` the rows hold (no nulls among them)."""
    if not rows.height:
        return 0
    box = _Box.of(rows, names=names)
    if box is None:
        return rows.select(names).n_unique()
    key = rows.select(box.key())["_key"]
    if key.is_sorted():
        return int(key.ne(key.shift(1)).fill_null(value=True).sum())
    return key.n_unique()


def _per_candidate(cands: pl.DataFrame) -> pl.DataFrame:
    """One row per candidate id (rows with a null id left out): its ``rows`` and
    its largest sound ``reward`` (None when none is). Integer ids are grouped by
    their packed key, without a hash table when the rows come sorted by id."""
    sound = pl.when(~_bad_reward()).then(pl.col("reward")).alias("reward")
    rows = cands.filter(pl.all_horizontal(pl.col(c).is_not_null() for c in _IDS))
    aggs = [pl.len().alias("rows"), pl.col("reward").max()]
    box = _Box.of(rows)
    if box is None:
        return rows.lazy().select(*_IDS, sound).group_by(_IDS).agg(aggs).collect()
    keyed = rows.select(box.key(), sound)
    if keyed["_key"].is_sorted():
        keyed = keyed.with_columns(pl.col("_key").set_sorted())
    grouped = keyed.lazy().group_by("_key").agg(aggs)
    return grouped.select(*box.ids(), "rows", "reward").collect()


def empty_stages(found: Findings, stage_tokens: Sequence[pl.DataFrame]) -> None:
    """Stages whose selected responses hold no tokens at all."""
    frames = [s for s in stage_tokens if s.height]
    if not frames:
        return
    stages = (
        pl.concat(frames, how="vertical")
        .group_by("stage")
        .agg(pl.col("selected").sum(), pl.col("tokens").sum())
        .filter(pl.col("tokens") == 0)
        .select("stage", "selected")
    )
    found.add("empty_stage", stages.height, stages)


@dataclass
class Checked:
    """What the executors hand to the ``validate`` front end."""

    findings: Findings
    summary: dict[str, int]


def summarize(
    found: Findings, parts: Sequence[CandidatePart], tokens: int | None = None
) -> Checked:
    """The findings of every candidate partition and the log's sizes."""
    stages = pl.concat([p.stages for p in parts]).unique() if parts else pl.Series([])
    summary = {
        "stages": stages.len(),
        "prompts": sum(p.prompts for p in parts),
        "candidates": sum(p.candidates for p in parts),
        "tokens": sum(p.tokens for p in parts) if tokens is None else tokens,
    }
    return Checked(found.merge(p.findings for p in parts), summary)


# --- the strict read: pyarrow decodes every page, checksums verified -------------------------

# a unit of the strict read: about this many bytes of a file's columns (as stored;
# decoded they are about as large), row groups decoded together, record batches of
# at most that size within these rows; units decoded at once, ahead of the reader
_UNIT_BYTES = 8 << 20
_BATCH_ROWS = (1 << 10, 1 << 17)
_THREADS, _AHEAD = 2, 4


@dataclass(frozen=True)
class _Unit:
    """Row groups of one file that one thread decodes, the rows of them to keep
    (``skip``, ``take``) and the rows of a record batch."""

    path: str
    groups: tuple[int, ...]
    skip: int
    take: int
    size: int


def _units(path: str, rows: tuple[int, int] | None) -> list[_Unit]:
    """The units that hold the rows ``(offset, count)`` of a file (all when None)."""
    import pyarrow.parquet as pq

    meta = pq.read_metadata(path)
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    stored = [meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)]
    starts = list(accumulate(sizes, initial=0))
    offset, count = rows if rows is not None else (0, meta.num_rows)
    end = offset + count
    size = _UNIT_BYTES * max(meta.num_rows, 1) // max(sum(stored), 1)
    size = min(max(size, _BATCH_ROWS[0]), _BATCH_ROWS[1])
    units: list[_Unit] = []
    groups: list[int] = []
    for i in range(len(sizes)):
        if starts[i] < end and starts[i + 1] > offset:
            groups.append(i)
        last = i == len(sizes) - 1 or sum(stored[g] for g in groups) >= _UNIT_BYTES
        if groups and last:
            first, after = starts[groups[0]], starts[groups[-1] + 1]
            skip = max(offset - first, 0)
            units.append(_Unit(path, tuple(groups), skip, min(after, end) - first - skip, size))
            groups = []
    return units


def _decode(unit: _Unit) -> list[Any]:
    """The rows of a unit, every column, as pyarrow record batches: pyarrow decodes
    every page and verifies the page checksums where the writer stored them, and
    raises at the first bad page."""
    import pyarrow.parquet as pq

    with pq.ParquetFile(unit.path, page_checksum_verification=True) as handle:
        batches = handle.iter_batches(
            batch_size=unit.size, row_groups=unit.groups, use_threads=False
        )
        skip, take, kept = unit.skip, unit.take, []
        for batch in batches:
            cut = batch.slice(min(skip, batch.num_rows), take)
            skip, take = max(skip - batch.num_rows, 0), take - cut.num_rows
            if cut.num_rows:
                kept.append(cut)
        return kept


def _decoded(
    paths: Sequence[str], rows: tuple[int, int] | None
) -> Generator[tuple[str, Any], None, None]:
    """``(path, record batch)`` for the rows of each file in turn, strictly decoded
    (:func:`_decode`) by a few threads ahead of the reader; ``(path, error)`` where
    pyarrow rejects a file, and nothing more of that file."""
    from collections import deque
    from concurrent.futures import Future, ThreadPoolExecutor

    def planned() -> Iterator[tuple[str, _Unit | Exception]]:
        for path in paths:
            try:
                units: list[_Unit | Exception] = [*_units(path, rows)]
            except Exception as exc:  # any failure of the strict reader is the finding
                units = [exc]
            yield from ((path, unit) for unit in units)

    def result(work: Future[list[Any]] | Exception) -> list[Any] | Exception:
        if isinstance(work, Exception):
            return work
        try:
            return work.result()
        except Exception as exc:  # any failure of the strict reader is the finding
            return exc

    pool = ThreadPoolExecutor(_THREADS)
    window: deque[tuple[str, Future[list[Any]] | Exception]] = deque()
    failed: set[str] = set()
    try:
        plan = planned()
        while True:
            while len(window) < _AHEAD and (step := next(plan, None)) is not None:
                path, unit = step
                work = unit if isinstance(unit, Exception) else pool.submit(_decode, unit)
                window.append((path, work))
            if not window:
                return
            path, work = window.popleft()
            got = result(work)
            if path in failed:
                continue
            if isinstance(got, Exception):
                failed.add(path)
                yield path, got
            else:
                yield from ((path, batch) for batch in got)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        _release()


def _release() -> None:
    """Hand the memory pyarrow's pool keeps for reuse back to the system (once a
    read is done: after every file, it costs more than the read saves)."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def strict_read(path: str) -> str | None:
    """Decode every page of a Parquet file with pyarrow's reader, verifying the
    page checksums where the writer stored them: the first error, or None.

    The default path decodes with Polars alone; a corrupted page that Polars still
    decodes (to different values) is caught here, where a strict reader rejects
    it. Streams a few row groups at a time. :class:`StrictParquet` is the same
    read as a Polars source, for the passes that check the rows too.
    """
    for _, item in _decoded([path], None):
        if isinstance(item, Exception):
            return _error_text(item)
    return None


class StrictParquet:
    """Reads local Parquet files for ``validate``: pyarrow decodes every column
    (:func:`strict_read`), Polars gets the batches as a lazy source, so that the
    checks of the rows and the strict read are one decode.

    A file pyarrow rejects is recorded in :attr:`errors` (path -> first error) and
    read on by Polars from where pyarrow stopped, as the default path reads it.
    """

    def __init__(self) -> None:
        self.errors: dict[str, str] = {}

    def scan(
        self, paths: Sequence[str], schema: Mapping[str, pl.DataType], rows: tuple[int, int] | None
    ) -> pl.LazyFrame:
        """The rows of ``paths`` in order, with ``schema`` (``rows = (offset,
        count)`` of a single file, when given): one Polars source, whose next
        batch pyarrow decodes while Polars works on this one."""
        from polars.io.plugins import register_io_source

        types = dict(schema)
        files = list(paths)

        def source(
            columns: list[str] | None, where: pl.Expr | None, limit: int | None, _: int | None
        ) -> Iterator[pl.DataFrame]:
            frames = self._frames(files, types, rows, columns or list(types), limit)
            return frames if where is None else (f.filter(where) for f in frames)

        return register_io_source(source, schema=types)

    def _frames(
        self,
        paths: list[str],
        types: dict[str, pl.DataType],
        rows: tuple[int, int] | None,
        names: list[str],
        limit: int | None,
    ) -> Iterator[pl.DataFrame]:
        given = done = 0  # rows given in all, rows of the current file
        current = None
        decoded = _decoded(paths, rows)
        try:
            for path, item in decoded:
                if limit is not None and given >= limit:
                    return
                if path != current:
                    current, done = path, 0
                if isinstance(item, Exception):  # the file's finding; Polars reads on
                    self.errors.setdefault(path, _error_text(item))
                    frame = _rest(path, types, rows, names, done)
                else:
                    got = pl.from_arrow(item.select(names))
                    assert isinstance(got, pl.DataFrame)
                    frame = got.cast({n: types[n] for n in names if got.schema[n] != types[n]})
                frame = frame if limit is None else frame.head(limit - given)
                done += frame.height
                given += frame.height
                yield frame
        finally:
            decoded.close()


def _rest(
    path: str,
    types: dict[str, pl.DataType],
    rows: tuple[int, int] | None,
    names: list[str],
    done: int,
) -> pl.DataFrame:
    """Polars' read of the rows of a file (of ``rows``) after the first ``done``."""
    offset, count = rows if rows is not None else (0, None)
    left = None if count is None else count - done
    rest = pl.scan_parquet(
        path, schema=types, cast_options=_UPCAST, hive_partitioning=False, glob=False
    )
    return rest.slice(offset + done, left).select(names).collect()


def strictly(log: StageLog, reader: StrictParquet) -> StageLog:
    """``log`` with its local Parquet files read by ``reader``."""

    def strict(source: Resolved) -> Resolved:
        local = source.kind == "parquet" and not source.remote and source.frame is None
        return replace(source, strict=reader) if local else source

    rewards = None if log.rewards is None else strict(log.rewards)
    return replace(log, main=strict(log.main), rewards=rewards)


def strict_findings(found: Findings, errors: Iterable[tuple[str, str | None]]) -> None:
    """Record the files a strict reader rejected."""
    bad: dict[str, str] = {}
    for path, error in errors:  # a file read in several pieces: its first error
        if error is not None:
            bad.setdefault(path, error)
    found.add(
        "corrupt_file",
        len(bad),
        pl.DataFrame(
            {"file": list(bad), "error": list(bad.values())},
            schema={"file": pl.String, "error": pl.String},
        ),
    )


def strict_paths(log: StageLog, *, tokens: bool = True) -> list[str]:
    """The local Parquet files of a log, for :func:`strict_read` (without the
    long layout's token files when not ``tokens``)."""
    sources = [log.main] if tokens or log.layout == "nested" else []
    sources += [] if log.rewards is None else [log.rewards]
    return [
        path
        for source in sources
        if source.kind == "parquet" and not source.remote
        for path in source.paths
    ]
