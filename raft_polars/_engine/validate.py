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

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
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
    dups = (
        cands.filter(~null_id).group_by(_IDS).agg(pl.len().alias("rows")).filter(pl.col("rows") > 1)
    )
    found.add("duplicate_candidate", dups.height, dups)
    bad = cands.filter(_bad_reward()).select(*_IDS, "reward")
    found.add("bad_reward", bad.height, bad)
    sound = (
        cands.lazy().filter(~null_id & ~_bad_reward()).group_by(_IDS).agg(pl.col("reward").max())
    )
    chosen = select(sound, selection).select(_IDS).collect()
    prompts = (
        cands.drop_nulls(["stage", "prompt"]).select(["stage", "prompt"]).n_unique()
        if cands.height
        else 0
    )
    stages = cands["stage"].drop_nulls().unique()
    stage_tokens = known = None
    tokens = 0
    if nested:
        marked = _with_selected(cands, chosen).collect()
        null_lists = marked.filter(pl.col("null_list"))
        found.add("null_logprobs", null_lists.height, null_lists.select(*_IDS, "selected"))
        _logprob_checks(found, marked)
        sound_rows = _with_selected(
            cands.filter(~_bad_reward()).unique(_IDS, keep="first"), chosen
        ).collect()
        stage_tokens = _stage_tokens(sound_rows.filter(pl.col("selected")))
        tokens = int(cands["tokens"].sum())
    else:
        known = cands.filter(~null_id).select(_IDS).unique()
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
    bad log-prob and, with positions, its position, the null, first, last,
    first duplicate and distinct positions."""
    lp = pl.col("logprob").cast(pl.Float64)
    bad = _bad(pl.col("logprob"))
    if not has_position:
        return rows.group_by(_IDS).agg(lp.filter(bad).first().alias("first_bad_value"))
    token = pl.col("token").cast(pl.Int64)
    return rows.group_by(_IDS).agg(
        lp.filter(bad).sort_by(token.filter(bad)).first().alias("first_bad_value"),
        token.filter(bad).min().alias("first_bad"),
        token.null_count().cast(pl.Int64).alias("null_pos"),
        token.min().alias("first_pos"),
        token.max().alias("last_pos"),
        token.filter(token.is_duplicated()).min().alias("first_dup"),
        token.drop_nulls().n_unique().cast(pl.Int64).alias("distinct"),
    )


def combine_runs(
    parts: Sequence[pl.DataFrame],
    fetch: Callable[[pl.DataFrame], pl.DataFrame],
    *,
    has_position: bool,
) -> pl.DataFrame:
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
        every = every.with_columns(  # responses in order: every position once
            pl.lit(0, pl.Int64).alias("null_pos"),
            pl.lit(None, pl.Int64).alias("first_bad"),
            pl.col("rows").alias("distinct"),
            pl.lit(None, pl.Int64).alias("first_dup"),
        )
    elif len(frames) > 1:
        every = every.group_by(_IDS).agg(pl.col("rows", "bad_lp").sum())
    whole = every.with_columns(pl.lit(None, pl.Float64).alias("first_bad_value"))
    need = whole.filter(flagged).select(_IDS)
    if need.height:
        detail = _details(fetch(need), has_position=has_position)
        whole = whole.join(detail, on=_IDS, how="left", nulls_equal=True, suffix="_rows")
        found = [c for c in detail.columns if c not in _IDS]
        whole = whole.with_columns(
            pl.when(flagged).then(pl.col(f"{c}_rows")).otherwise(pl.col(c)).alias(c) for c in found
        )
    keep = ["rows", "bad_lp"]
    if has_position:
        keep += ["null_pos", "first_pos", "last_pos", "first_bad", "distinct", "first_dup"]
    return whole.select(*_IDS, *keep, "first_bad_value")


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
    per_response: pl.DataFrame,
    *,
    has_position: bool,
) -> pl.DataFrame:
    """The token-row checks of the long layout, from the combined per-response
    aggregates; returns the selected responses' token counts per stage."""
    orphans = per_response.join(known, on=_IDS, how="anti")
    found.add("orphan_tokens", int(orphans["rows"].sum()), orphans.select(*_IDS, "rows"))
    if not has_position:
        per_response = per_response.with_columns(pl.lit(None, pl.Int64).alias("first_bad"))
    marked = _with_selected(per_response, chosen).collect()
    _logprob_checks(found, marked)
    if has_position:
        nulls = per_response.filter(pl.col("null_pos") > 0)
        found.add(
            "null_token_position",
            int(nulls["null_pos"].sum()),
            nulls.select(*_IDS, pl.col("null_pos").alias("rows")),
        )
        extra = pl.col("rows") - pl.col("null_pos") - pl.col("distinct")
        dups = per_response.filter(extra > 0).with_columns(extra.alias("extra"))
        where = dups.select(
            *_IDS, pl.col("first_dup").alias("token"), (pl.col("extra") + 1).alias("rows")
        )
        found.add("duplicate_token", int(dups["extra"].sum()), where)
        gap = (pl.col("distinct") > 0) & (
            (pl.col("first_pos") != 0) | (pl.col("last_pos") != pl.col("distinct") - 1)
        )
        gaps = per_response.filter(gap).select(
            *_IDS, "first_pos", "last_pos", pl.col("distinct").alias("positions")
        )
        found.add("token_gap", gaps.height, gaps)
    chosen_tokens = chosen.join(
        per_response.select(*_IDS, pl.col("rows").alias("tokens")), on=_IDS, how="left"
    ).with_columns(pl.col("tokens").fill_null(0))
    return _stage_tokens(chosen_tokens)


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

# rows per record batch of the strict read: memory bounded by a batch, not a file
_BATCH_ROWS = 1 << 17


def _row_groups(meta: Any, rows: tuple[int, int] | None) -> tuple[list[int], int, int | None]:
    """The row groups that hold the rows ``(offset, count)`` of a file (all when
    None), the rows to skip in the first of them and the rows to keep."""
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    if rows is None:
        return list(range(len(sizes))), 0, None
    offset, count = rows
    starts = list(accumulate(sizes, initial=0))
    end = offset + count
    groups = [i for i, n in enumerate(sizes) if starts[i] < end and starts[i] + n > offset]
    return groups, offset - starts[groups[0]] if groups else 0, count


def _strict_batches(path: str, rows: tuple[int, int] | None = None) -> Iterator[Any]:
    """The rows ``(offset, count)`` of a Parquet file (all when None), every column,
    as pyarrow record batches: pyarrow decodes every page and verifies the page
    checksums where the writer stored them, and raises at the first bad page."""
    import pyarrow.parquet as pq

    with pq.ParquetFile(path, page_checksum_verification=True) as handle:
        groups, skip, count = _row_groups(handle.metadata, rows)
        if not groups:
            return
        for decoded in handle.iter_batches(batch_size=_BATCH_ROWS, row_groups=groups):
            batch = decoded.slice(min(skip, decoded.num_rows))
            skip = max(0, skip - decoded.num_rows)
            if count is not None:
                batch, count = batch.slice(0, count), max(0, count - batch.num_rows)
            if batch.num_rows:
                yield batch
            if count == 0:
                return


def _ahead(items: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """``items`` made up to ``depth`` ahead in a thread of their own, so that
    pyarrow decodes the next batch (without the GIL) while Polars works on this
    one; an error of ``items`` is raised where it occurs in the sequence."""
    import queue
    import threading

    made: queue.Queue[tuple[bool, Any]] = queue.Queue(depth)
    stop = threading.Event()

    def put(entry: tuple[bool, Any]) -> bool:
        while not stop.is_set():
            try:
                made.put(entry, timeout=0.05)
            except queue.Full:
                continue
            return True
        return False

    def make() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
            put((False, None))
        except Exception as exc:  # raised to the reader, in its place
            put((False, exc))

    thread = threading.Thread(target=make, daemon=True)
    thread.start()
    try:
        while True:
            more, item = made.get()
            if not more:
                if item is not None:
                    raise item
                return
            yield item
    finally:
        stop.set()
        thread.join()


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def strict_read(path: str) -> str | None:
    """Decode every page of a Parquet file with pyarrow's reader, verifying the
    page checksums where the writer stored them: the first error, or None.

    The default path decodes with Polars alone; a corrupted page that Polars still
    decodes (to different values) is caught here, where a strict reader rejects
    it. Streams record batch by record batch. :class:`StrictParquet` is the same
    read as a Polars source, for the passes that check the rows too.
    """
    try:
        for _ in _strict_batches(path):
            pass
    except Exception as exc:  # any failure of the strict reader is the finding
        return _error_text(exc)
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
        self, path: str, schema: Mapping[str, pl.DataType], rows: tuple[int, int] | None
    ) -> pl.LazyFrame:
        """The rows ``(offset, count)`` of one file (all when None) with ``schema``."""
        from polars.io.plugins import register_io_source

        types = dict(schema)

        def source(
            columns: list[str] | None, where: pl.Expr | None, limit: int | None, _: int | None
        ) -> Iterator[pl.DataFrame]:
            frames = self._frames(path, types, rows, columns or list(types), limit)
            return frames if where is None else (f.filter(where) for f in frames)

        return register_io_source(source, schema=types)

    def _frames(
        self,
        path: str,
        types: dict[str, pl.DataType],
        rows: tuple[int, int] | None,
        names: list[str],
        limit: int | None,
    ) -> Iterator[pl.DataFrame]:
        done = 0
        batches = _ahead(_strict_batches(path, rows))
        while limit is None or done < limit:
            try:
                batch = next(batches, None)
            except Exception as exc:  # any failure of the strict reader is the finding
                self.errors.setdefault(path, _error_text(exc))
                break
            if batch is None:
                return
            frame = pl.from_arrow(batch.select(names))
            assert isinstance(frame, pl.DataFrame)
            frame = frame.cast({n: types[n] for n in names if frame.schema[n] != types[n]})
            frame = frame if limit is None else frame.head(limit - done)
            done += frame.height
            yield frame
        else:
            return
        offset, count = rows if rows is not None else (0, None)
        left = None if count is None else count - done
        if limit is not None:
            left = limit - done if left is None else min(left, limit - done)
        rest = pl.scan_parquet(
            path, schema=types, cast_options=_UPCAST, hive_partitioning=False, glob=False
        )
        yield rest.slice(offset + done, left).select(names).collect()


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
