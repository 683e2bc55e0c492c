"""The Dask executor: the same kernels, as tasks over partitions of the log.

What runs where:

1. **Plan** (client, Parquet footers only): each source is cut into
   :class:`Shard` s, a file or a range of one file's row groups (about
   :data:`SHARD_BYTES` each), with the ``(stage, prompt)`` bounds of their rows
   from the row-group statistics. A shard whose bounds overlap no other holds
   whole prompts (whole stages, for the global ranking): it is *isolated*.
2. **Rank** (:func:`~raft_polars._engine.rank.rank_keys`, the in-process
   kernel): when every candidate shard is isolated, one task per shard ranks its
   own keys; otherwise each shard's keys (``stage, prompt, cand, reward``: never
   log-probs) are split by a hash of ``(stage, prompt)`` (of ``stage`` for the
   global ranking) and each bucket is ranked whole by one task. The results
   stay on the workers; only per-stage sums and problem records come back.
3. **Reduce** (:func:`~raft_polars._engine.reduce.nested_sums` /
   :func:`~raft_polars._engine.reduce.token_sums`, the in-process kernels): one
   task per data shard, given the rank results whose bounds overlap it, returns
   per-stage sums (per-response sums for ``reduction="sequence"`` in the long
   layout, where a response may span shards) and problem records.
4. **Combine** (client): :func:`~raft_polars._engine.reduce.finish`, as in
   process.

Moved between tasks: candidate keys (about 24 bytes a candidate) and per-stage
or per-response sums; never token rows.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any

import polars as pl

from raft_polars._engine import validate as vk
from raft_polars._engine.checks import Problem, merge, naming, raise_first
from raft_polars._engine.rank import Ranked, index_keys, rank_keys
from raft_polars._engine.read import ID_COLUMNS, StageLog
from raft_polars._engine.reduce import (
    Reduced,
    finish,
    list_lengths,
    nested_sums,
    selected_rows,
    token_sums,
)
from raft_polars._engine.sources import Piece, Resolved
from raft_polars._engine.stats import best_of_n_sums, prompt_rows, stats_parts, unknown_selected
from raft_polars._progress import Clock, active, report
from raft_polars.selection import Reduction, Selection

if TYPE_CHECKING:
    from raft_polars.dask import DaskEngine

__all__ = ["SHARD_BYTES", "DaskExecutor", "Shard", "mark_isolated", "plan"]

# uncompressed bytes per shard when a file is split by row groups
SHARD_BYTES = 256 << 20
_SEED = 0x5AF7  # bucket hash seed: the same in every process of one polars version
_IDS = list(ID_COLUMNS)
Bound = tuple[Any, ...]
Reader = Callable[[StageLog, Piece], pl.LazyFrame]


@dataclass(frozen=True)
class Shard:
    """One unit of map work and the lexicographic bounds of its ids.

    ``lo`` / ``hi`` bound its ``(stage, prompt)`` keys, or are None when the
    statistics do not give them; ``isolated``: no other shard's bounds overlap.
    """

    piece: Piece
    lo: Bound | None = None
    hi: Bound | None = None
    isolated: bool = False

    def covers(self, other: Shard) -> bool:
        """Whether the two shards' bounds may share a key."""
        if self.lo is None or self.hi is None or other.lo is None or other.hi is None:
            return True
        width = min(len(self.lo), len(other.lo))  # bounds on stage alone, or on both
        try:
            return bool(self.lo[:width] <= other.hi[:width] and other.lo[:width] <= self.hi[:width])
        except TypeError:
            return True


# --- plan: metadata only ------------------------------------------------------------------


def plan(
    source: Resolved, names: Sequence[str], *, parts: int = 2, shard_bytes: int | None = None
) -> list[Shard]:
    """The shards of a source, with bounds on the columns ``names`` (the
    source's own names of ``stage`` and ``prompt``)."""
    if source.frame is not None:
        return _plan_frame(source, names, parts)
    import pyarrow.parquet as pq

    if source.kind != "parquet" or source.remote:  # no footers: no bounds
        return _grouped([Shard(Piece((i,))) for i in range(len(source.files))], parts)
    limit = SHARD_BYTES if shard_bytes is None else shard_bytes
    hive = dict(source.hive)
    shards: list[Shard] = []
    sizes: list[int] = []  # the uncompressed bytes of each shard
    from raft_polars._engine.pages import footer_readable

    for index, data in enumerate(source.files):
        try:  # pyarrow would abort on column chunks footer_readable refuses
            meta = pq.read_metadata(data.path) if footer_readable(data.path) else None
        except Exception:  # a footer pyarrow cannot read; Polars may, as in-process
            meta = None
        if meta is None:  # the whole file, its reader says what is wrong with it
            shards.append(Shard(Piece((index,))))
            sizes.append(limit)  # alone
            continue
        groups: list[list[int]] = [[]]
        size = 0
        for rg in range(meta.num_row_groups):
            if groups[-1] and size >= limit:
                groups.append([])
                size = 0
            groups[-1].append(rg)
            size += meta.row_group(rg).total_byte_size
        offset = 0
        fixed = dict(data.partitions)
        for group in groups:
            blocks = [meta.row_group(rg) for rg in group]
            rows = sum(block.num_rows for block in blocks)
            ranges = [_range(blocks, name, fixed, hive) for name in names]
            lo = hi = None
            if rows and all(r is not None for r in ranges):
                lo = tuple(r[0] for r in ranges)  # type: ignore[index]
                hi = tuple(r[1] for r in ranges)  # type: ignore[index]
            whole = len(groups) == 1
            piece = Piece((index,), None if whole else (offset, rows))
            shards.append(Shard(piece, lo, hi))
            sizes.append(sum(block.total_byte_size for block in blocks))
            offset += rows
    budget = max(1, min(limit, sum(sizes) // max(1, parts)))
    return mark_isolated(_joined(shards, sizes, budget))


def _joined(shards: list[Shard], sizes: list[int], budget: int) -> list[Shard]:
    """Consecutive whole-file shards joined into one while they hold fewer than
    ``budget`` bytes in all: a log of thousands of small files is a few tasks,
    not a task (and a copy of every task's arguments) per file. The bounds of a
    joined shard span its files'."""
    out: list[Shard] = []
    held: list[Shard] = []
    size = 0

    def close() -> None:
        if held:
            out.append(_spanning(held))
            held.clear()

    for shard, bytes_ in zip(shards, sizes, strict=True):
        if shard.piece.rows is not None or bytes_ >= budget:
            close()
            out.append(shard)
            size = 0
            continue
        if held and size + bytes_ > budget:
            close()
            size = 0
        held.append(shard)
        size += bytes_
    close()
    return out


def _spanning(shards: list[Shard]) -> Shard:
    """One shard of the files of ``shards``, its bounds spanning theirs: the least
    of their lower bounds and the greatest of their upper ones, in the order
    ``(stage, prompt)`` pairs sort (None when one has none, or when their ids do
    not compare)."""
    if len(shards) == 1:
        return shards[0]
    files = tuple(i for s in shards for i in s.piece.files)
    los, his = [s.lo for s in shards], [s.hi for s in shards]
    lo = hi = None
    if all(b is not None for b in (*los, *his)):
        try:
            lo, hi = min(los), max(his)  # type: ignore[type-var]
        except TypeError:  # ids of different kinds in different files
            lo = hi = None
    return Shard(Piece(files), lo, hi)


def _grouped(shards: list[Shard], parts: int) -> list[Shard]:
    """Shards without sizes or bounds (JSON lines, object stores), consecutive
    ones joined into about ``4 * parts`` shards at most."""
    per = max(1, -(-len(shards) // (4 * max(1, parts))))
    return [_spanning(shards[i : i + per]) for i in range(0, len(shards), per)]


def _range(  # noqa: PLR0911 - each way a statistic can fail to bound
    blocks: Sequence[Any], name: str, fixed: dict[str, str | None], hive: dict[str, pl.DataType]
) -> tuple[Any, Any] | None:
    """(min, max) of a column over row groups, from a Hive value or the statistics."""
    if name in hive:
        value = pl.Series([fixed.get(name)], dtype=pl.String).cast(hive[name], strict=False)[0]
        return None if value is None else (value, value)
    found = []
    for block in blocks:
        if not block.num_rows:
            continue
        where = [i for i in range(block.num_columns) if block.column(i).path_in_schema == name]
        if not where:
            return None
        stats = block.column(where[0]).statistics
        if stats is None or not stats.has_min_max:
            return None
        try:
            found.append((stats.min, stats.max))
        except (UnicodeDecodeError, ValueError):  # text statistics that are not UTF-8:
            return None  # no bounds (the read says what is wrong with the file)
    if not found:
        return None
    try:
        return min(f[0] for f in found), max(f[1] for f in found)
    except TypeError:
        return None


def _plan_frame(source: Resolved, names: Sequence[str], parts: int) -> list[Shard]:
    assert source.frame is not None
    frame = source.frame.collect()
    # text ids bounded as their text, in the order the ranked keys sort them (an
    # Enum's min and max follow its categories' order)
    frame = frame.with_columns(
        pl.col(n).cast(pl.String)
        for n in names
        if isinstance(frame.schema[n], pl.Categorical | pl.Enum)
    )
    size = max(1, -(-frame.height // max(1, parts)))
    shards = []
    for offset in range(0, max(frame.height, 1), size):
        part = frame.slice(offset, size)
        bounds = part.select(
            *(pl.col(n).min().alias(f"lo{i}") for i, n in enumerate(names)),
            *(pl.col(n).max().alias(f"hi{i}") for i, n in enumerate(names)),
        ).row(0)
        lo, hi = bounds[: len(names)], bounds[len(names) :]
        known = part.height and None not in bounds
        shards.append(
            Shard(Piece((), (offset, size)), lo if known else None, hi if known else None)
        )
    return mark_isolated(shards)


def mark_isolated(shards: Sequence[Shard]) -> list[Shard]:
    """Flag the shards whose key bounds overlap no other shard's.

    A shard with unknown bounds might overlap any other, and then no shard is
    isolated.

    Examples
    --------
    >>> s = [Shard(Piece((0,)), (0, 0), (0, 9)), Shard(Piece((1,)), (1, 0), (1, 9)),
    ...      Shard(Piece((2,)), (1, 5), (2, 0))]
    >>> [x.isolated for x in mark_isolated(s)]
    [True, False, False]
    """
    if any(s.lo is None or s.hi is None for s in shards):
        return list(shards)
    if len(shards) == 1:
        return [replace(shards[0], isolated=True)]
    try:
        order = sorted(range(len(shards)), key=lambda i: (shards[i].lo, shards[i].hi))
    except TypeError:  # ids of different kinds in different files
        return list(shards)
    alone = [True] * len(shards)
    reach: Any = None  # the largest hi so far
    reach_at = -1
    for i in order:
        shard = shards[i]
        if reach is not None and shard.lo <= reach:
            alone[i] = False
            alone[reach_at] = False
        if reach is None or shard.hi > reach:
            reach, reach_at = shard.hi, i
    return [replace(s, isolated=flag) for s, flag in zip(shards, alone, strict=True)]


def _slice(frame: pl.DataFrame, lo: Bound | None, hi: Bound | None) -> pl.DataFrame:
    """The rows of ``frame`` whose ``(stage, prompt)`` lie between the bounds."""
    if lo is None or hi is None:
        return frame
    if len(lo) == 1:
        return frame.filter(pl.col("stage").is_between(lo[0], hi[0]))
    stage, prompt = pl.col("stage"), pl.col("prompt")
    above = (stage > lo[0]) | ((stage == lo[0]) & (prompt >= lo[1]))
    below = (stage < hi[0]) | ((stage == hi[0]) & (prompt <= hi[1]))
    return frame.filter(above & below)


# --- tasks (module-level functions, so that workers import them by name) -----------------


def _read_keys(log: StageLog, piece: Piece) -> pl.LazyFrame:
    """The ranking keys of a piece (ids in the source's types)."""
    return log.keys(piece)


def _read_checked(log: StageLog, piece: Piece) -> pl.LazyFrame:
    return vk.read_checked(log, piece).lazy()


def _check(frame: pl.DataFrame, selection: Selection, limit: int, nested: bool) -> vk.CandidatePart:
    return vk.check_candidates(frame, selection, limit, nested=nested)


def _seen(rows: pl.DataFrame) -> tuple[Bound, Bound] | None:
    """The least and the greatest ``(stage, prompt)`` of the rows read, in the
    order the pairs sort (None without rows): the bounds the plan claims,
    measured."""
    if rows.height == 0:
        return None
    stage = rows.get_column("stage")
    low, high = stage.min(), stage.max()
    first = rows.filter(pl.col("stage").eq_missing(low)).get_column("prompt").min()
    last = rows.filter(pl.col("stage").eq_missing(high)).get_column("prompt").max()
    return (low, first), (high, last)


def _within(shard: Shard, seen: tuple[Bound, Bound] | None) -> bool:
    """Whether the rows a shard holds lie inside the bounds its plan claims, in
    the order ``(stage, prompt)`` pairs sort, as the isolation and the cuts
    (:func:`_slice`) read them."""
    if seen is None or shard.lo is None or shard.hi is None:
        return True
    width = len(shard.lo)
    try:
        return bool(shard.lo <= seen[0][:width] and seen[1][:width] <= shard.hi)
    except TypeError:  # null ids, or ids of another kind than the statistics
        return False


def _t_part(
    log: StageLog, piece: Piece, read: Reader, kernel: Callable[..., Any], *args: Any
) -> tuple[Any, tuple[Bound, Bound] | None]:
    """A kernel on the rows of one isolated piece, and the bounds of those rows."""
    rows = log.collect(read(log, piece))
    return kernel(rows, *args), _seen(rows)


def _t_split(
    log: StageLog, piece: Piece, read: Reader, group: tuple[str, ...], buckets: int
) -> list[Any]:
    """A piece's rows in ``buckets`` parts, by a hash of the ``group`` ids, then
    the bounds of those rows."""
    rows = log.collect(read(log, piece))
    index = (pl.struct(list(group)).hash(seed=_SEED) % buckets).alias("_bucket")
    parts = rows.with_columns(index).partition_by("_bucket", as_dict=True, include_key=False)
    return [*(parts.get((b,), rows.head(0)) for b in range(buckets)), _seen(rows)]


def _t_bucket(pieces: list[pl.DataFrame], kernel: Callable[..., Any], *args: Any) -> Any:
    """A kernel on one bucket: whole prompts (whole stages) from every piece."""
    return kernel(pl.concat(pieces, how="vertical"), *args)


def _t_prompt_rows(log: StageLog, piece: Piece) -> pl.DataFrame:
    """Rows per ``(stage, prompt)`` of a piece (ids as the source has them)."""
    rows = log.renamed(log.main, piece)
    return log.collect(
        rows.group_by(["stage", "prompt"]).agg(pl.len().cast(pl.Int64).alias("_rows"))
    )


def _t_token_part(log: StageLog, piece: Piece) -> vk.TokenPart:
    return vk.token_part(log, piece)


def _t_fetch_tokens(
    log: StageLog, piece: Piece, keys: pl.DataFrame, skip: set[str]
) -> pl.DataFrame:
    return vk.fetch_tokens(log, piece, keys, skip)


def _t_each(function: Callable[..., Any], calls: list[tuple[Any, ...]]) -> list[Any]:
    return [function(*args) for args in calls]


def _t_named(kernel: Callable[..., Any], origin: str, *args: Any) -> Any:
    """``kernel(*args)``, its input errors naming ``origin`` (:func:`naming`)."""
    with naming(origin):
        return kernel(*args)


def _t_small(ranked: Ranked) -> tuple[pl.DataFrame, list[Problem]]:
    return ranked.stages, ranked.problems


@dataclass(frozen=True)
class _Cut:
    """The part of one rank result that a data shard needs: the selected keys
    (and, for the token pass, every candidate key) within the shard's bounds."""

    chosen: pl.DataFrame
    keys: pl.DataFrame | None


def _t_cut(
    ranked: Ranked, lo: Bound | None, hi: Bound | None, with_keys: bool, empty: bool = False
) -> _Cut:
    """Cut where the rank result lives, so that only the slice moves (``empty``:
    no rows, the types only)."""

    def cut(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.head(0) if empty else _slice(frame, lo, hi)

    keys = cut(ranked.token_keys.canonical()) if with_keys else None
    return _Cut(cut(ranked.chosen), keys)


def _chosen_of(cuts: Sequence[_Cut]) -> pl.DataFrame:
    return pl.concat([c.chosen for c in cuts], how="vertical")


def _keys_of(cuts: Sequence[_Cut]) -> pl.DataFrame:
    return pl.concat([c.keys for c in cuts if c.keys is not None], how="vertical")


def _t_nested(log: StageLog, shard: Shard, *cuts: _Cut, every: bool = False) -> Reduced:
    return nested_sums(log, _chosen_of(cuts), piece=shard.piece, every=every)


def _t_tokens(
    log: StageLog,
    shard: Shard,
    *cuts: _Cut,
    per_response: bool = False,
    checks: bool = True,
    every: bool = False,
) -> Reduced:
    keys = index_keys(_keys_of(cuts), summarize=False)
    chosen = _chosen_of(cuts)
    return token_sums(
        log, keys, chosen, piece=shard.piece, per_response=per_response, checks=checks,
        every=every,
    )  # fmt: skip


def _t_lengths(log: StageLog, shard: Shard) -> pl.DataFrame | None:
    return list_lengths(log, shard.piece)


def _t_keys_chosen(ranked: Ranked) -> tuple[pl.DataFrame, pl.DataFrame]:
    return ranked.keys.canonical(), ranked.chosen


def _t_best_of_n(ranked: Ranked) -> pl.DataFrame:
    return best_of_n_sums(ranked.keys.frame)  # ids as read: grouped, not shown


def _t_rows(log: StageLog, shard: Shard, counts: pl.DataFrame | None, *cuts: _Cut) -> pl.DataFrame:
    chosen = _chosen_of(cuts)
    if counts is not None:
        counts = _slice(counts, shard.lo, shard.hi)
    return log.collect(selected_rows(log, chosen, piece=shard.piece, counts=counts))


# --- the executor -------------------------------------------------------------------------


class DaskExecutor:
    """Runs the kernels as tasks on a ``distributed`` client."""

    def __init__(self, engine: DaskEngine | None) -> None:
        self.engine = engine

    @contextmanager
    def _job(self, log: StageLog) -> Iterator[_Job]:
        """A job for ``log`` on the engine's client (its paths as the workers
        find them: :func:`_anchored`)."""
        from raft_polars.dask import DaskEngine

        engine = self.engine if self.engine is not None else DaskEngine()
        with engine.client() as client:
            yield _Job(client, log)

    def losses(self, log: StageLog, selection: Selection, reduction: Reduction) -> pl.DataFrame:
        with self._job(log) as job:
            log = job.plain
            ranks = job.rank(selection)
            reduced: list[Reduced] = []
            if not log.has_logprobs:
                pass  # rewards only: nothing to reduce
            elif log.layout == "nested":
                reduced = job.gather(
                    [
                        job.submit(_t_nested, job.log, s, *job.covering(ranks, s))
                        for s in job.cand_shards
                    ]
                )
            else:
                reduced = job.tokens(ranks, per_response=reduction == "sequence")
            stages = job.stages
        return finish(
            log,
            [*stages, *(r.stages for r in reduced)],
            [r.responses for r in reduced],
            merge(r.problems for r in reduced),
            reduction,
            skipped=_skips(selection),
        )

    def validate(self, log: StageLog, selection: Selection, limit: int) -> vk.Checked:
        nested = log.layout == "nested"
        with self._job(log) as job:
            log = job.plain
            futures = job.partitions(
                selection.group, _read_checked, _check, selection, limit, nested
            )
            parts: list[vk.CandidatePart] = job.gather([f for f, _, _ in futures])
            found = vk.Findings(limit)
            paths = vk.strict_paths(log, tokens=False)  # the token pass reads its own strictly
            read = job.each(vk.strict_read, [(p,) for p in paths])
            errors = list(zip(paths, read, strict=True))
            texts = vk.json_id_files(log)
            mixed = job.each(vk.json_ids, texts)
            errors += zip([p for p, _ in texts], mixed, strict=True)

            def run(function: Callable[..., Any], *items: list[Any]) -> list[Any]:
                return job.each(function, list(zip(*items, strict=True)))

            if nested:
                vk.strict_findings(found, [*errors, *vk.polars_refusals(log, errors, run)])
                if log.has_logprobs:
                    vk.empty_stages(
                        found, [p.stage_tokens for p in parts if p.stage_tokens is not None]
                    )
                return vk.summarize(found, parts)
            shards = job.token_shards()
            tokens: list[vk.TokenPart] = job.gather(
                [job.submit(_t_token_part, job.log, s.piece) for s in shards]
            )
            errors += [e for t in tokens for e in t.errors.items()]
            errors += vk.polars_refusals(log, errors, run)
            vk.strict_findings(found, errors)
            skip = vk.unread(errors)

            def fetch(keys: pl.DataFrame) -> pl.DataFrame:
                wanted = job.client.scatter(keys, broadcast=True, hash=False)
                rows = job.gather(
                    [job.submit(_t_fetch_tokens, job.log, s.piece, wanted, skip) for s in shards]
                )
                frame: pl.DataFrame = pl.concat(rows, how="vertical")
                return frame

            runs = [t.runs for t in tokens]
            per_response = vk.combine_runs(runs, fetch, has_position=log.has_token)
        known = pl.concat([p.known for p in parts if p.known is not None], how="vertical_relaxed")
        chosen = pl.concat([p.chosen for p in parts], how="vertical")
        stage_tokens = vk.finish_long(
            found, known, chosen, per_response, has_position=log.has_token
        )
        vk.empty_stages(found, [stage_tokens])
        return vk.summarize(found, parts, tokens=int(per_response.rows["rows"].sum()))

    def _stats_parts(
        self,
        job: _Job,
        ranks: list[tuple[Any, Any, Any]],
        every_reduce: bool,
        reduction: Reduction,
    ) -> tuple[list[Reduced], pl.DataFrame, pl.DataFrame, pl.DataFrame | None]:
        """The reduce results (when asked), the candidate keys, the selection and
        every candidate's token count, gathered."""
        log = job.plain
        reduced: list[Reduced] = []
        counts: list[pl.DataFrame | None] = []
        if not log.has_logprobs:
            pass  # rewards only: no token counts
        elif log.layout == "nested":
            if every_reduce:  # the token counts from the same pass
                reduced = job.gather(
                    [
                        job.submit(_t_nested, job.log, s, *job.covering(ranks, s), every=True)
                        for s in job.cand_shards
                    ]
                )
                counts = [r.counts for r in reduced]
            else:
                counts = job.gather([job.submit(_t_lengths, job.log, s) for s in job.cand_shards])
        else:
            reduced = job.tokens(
                ranks, per_response=reduction == "sequence", checks=every_reduce, every=True
            )
            counts = [r.counts for r in reduced]
        pairs = job.gather([job.submit(_t_keys_chosen, r) for r, _, _ in ranks])
        keys = pl.concat([k for k, _ in pairs], how="vertical")
        chosen = pl.concat([c for _, c in pairs], how="vertical")
        found = [c for c in counts if c is not None]
        return reduced, keys, chosen, pl.concat(found, how="vertical") if found else None

    def stats(
        self, log: StageLog, selection: Selection, reduction: Reduction
    ) -> tuple[pl.DataFrame, list[pl.DataFrame]]:
        with self._job(log) as job:
            log = job.plain
            ranks = job.rank(selection)
            reduced, keys, chosen, counts = self._stats_parts(job, ranks, True, reduction)
            stages = job.stages
        table = finish(
            log, [*stages, *(r.stages for r in reduced)], [r.responses for r in reduced],
            merge(r.problems for r in reduced), reduction, skipped=_skips(selection),
        )  # fmt: skip
        return table, stats_parts(keys, chosen, counts)

    def prompts(self, log: StageLog, selection: Selection) -> pl.DataFrame:
        with self._job(log) as job:
            log = job.plain
            ranks = job.rank(selection)
            reduced, keys, chosen, counts = self._stats_parts(job, ranks, False, "token")
        problems = [*merge(r.problems for r in reduced), *unknown_selected(chosen, counts)]
        raise_first(problems, origin=log.origin, token_origin=log.token_origin)
        return prompt_rows(keys, chosen, counts)

    def best_of_n(self, log: StageLog, selection: Selection) -> list[pl.DataFrame]:
        with self._job(log) as job:
            log = job.plain
            ranks = job.rank(selection)
            parts: list[pl.DataFrame] = job.gather(
                [job.submit(_t_best_of_n, r) for r, _, _ in ranks]
            )
        return parts

    def selected(self, log: StageLog, selection: Selection) -> pl.LazyFrame:
        with self._job(log) as job:
            log = job.plain
            ranks = job.rank(selection)
            counts = None
            if log.layout == "long":
                parts = job.tokens(ranks, per_response=True, checks=False)
                raise_first(
                    merge(p.problems for p in parts),
                    origin=log.origin,
                    token_origin=log.token_origin,
                )
                found = [p.responses for p in parts if p.responses is not None]
                counts = pl.concat(found, how="vertical").group_by(_IDS).agg(pl.col("tokens").sum())
                counts = job.client.scatter(counts, broadcast=True, hash=False)
            rows = job.gather(
                [
                    job.submit(_t_rows, job.log, s, counts, *job.covering(ranks, s))
                    for s in job.cand_shards
                ]
            )
        frame: pl.DataFrame = pl.concat(rows, how="vertical")
        return frame.sort(_IDS).lazy()


class _Job:
    """The tasks of one call, on one client."""

    def __init__(self, client: Any, log: StageLog) -> None:
        self.client = client
        log = _anchored(log, client)
        self.workers = max(1, len(client.scheduler_info()["workers"]))
        self.stages: list[pl.DataFrame] = []
        raw = {canon: theirs for theirs, canon in log.renames}
        self.names = {c: raw.get(c, c) for c in ("stage", "prompt")}
        self.plain = log
        if log.main.frame is not None or (
            log.rewards is not None and log.rewards.frame is not None
        ):
            # in-memory sources: collected once here, sent to each worker once
            log = replace(
                log,
                main=_collected(log.main),
                rewards=None if log.rewards is None else _collected(log.rewards),
            )
            self.plain = log
        # the log is sent to each worker once, not with every task (its files'
        # paths and schema, for thousands of files, in thousands of tasks)
        self.log: Any = client.scatter(log, broadcast=True, hash=False)
        self.cand_shards = plan(
            self.plain.cand_source, list(self.names.values()), parts=2 * self.workers
        )
        if "cand" in log.numbered and not log.wide and len(self.cand_shards) > 1:
            self.cand_shards = self._numbered(self.cand_shards)

    def _numbered(self, shards: list[Shard]) -> list[Shard]:
        """Shards of a log without candidate ids, each with the number of rows
        every prompt has in the shards before it: the ids continue across shards
        in file order, then row order, as in process."""
        counts = self.gather([self.submit(_t_prompt_rows, self.log, s.piece) for s in shards])
        out = []
        seen = counts[0].head(0).rename({"_rows": "_offset"})
        for shard, count in zip(shards, counts, strict=True):
            piece = replace(shard.piece, offsets=seen)
            out.append(replace(shard, piece=piece))
            seen = (
                pl.concat([seen, count.rename({"_rows": "_offset"})], how="vertical")
                .group_by(["stage", "prompt"])
                .agg(pl.col("_offset").sum())
            )
        return out

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self.client.submit(fn, *args, pure=False, **kwargs)

    def each(self, function: Callable[..., Any], calls: Sequence[tuple[Any, ...]]) -> list[Any]:
        """``[function(*args) for args in calls]``, in runs of consecutive calls of
        about ``4 x workers`` tasks (a task a file was a task each of thousands)."""
        per = max(1, -(-len(calls) // (4 * self.workers)))
        runs = [list(calls[i : i + per]) for i in range(0, len(calls), per)]
        done = self.gather([self.submit(_t_each, function, run) for run in runs])
        return [result for results in done for result in results]

    def gather(self, futures: Sequence[Any]) -> list[Any]:
        """The results of ``futures``; with a progress receiver, the count of
        finished tasks as they finish."""
        if active() and len(futures) > 1:
            from distributed import as_completed

            clock = Clock()
            finished = as_completed(list(futures))  # type: ignore[no-untyped-call]
            for done, _ in enumerate(finished, start=1):
                report(f"{done}/{len(futures)} tasks done ({clock.elapsed():.1f} s)")
        return list(self.client.gather(list(futures)))

    def token_shards(self) -> list[Shard]:
        return plan(self.plain.main, list(self.names.values()), parts=2 * self.workers)

    def rank(self, selection: Selection) -> list[tuple[Any, Bound | None, Bound | None]]:
        """Rank futures with the bounds of the keys they hold; raises the first
        candidate problem."""
        # the ranking's own errors name the source, as in process; a file's, the file
        ranking = partial(_t_named, rank_keys, self.plain.origin)
        ranks = self.partitions(selection.group, _read_keys, ranking, selection)
        small = self.gather([self.submit(_t_small, r) for r, _, _ in ranks])
        raise_first(
            merge(p for _, p in small),
            origin=self.plain.origin,
            token_origin=self.plain.token_origin,
        )
        self.stages = [s for s, _ in small]
        return ranks

    def partitions(
        self,
        group: tuple[str, ...],
        read: Reader,
        kernel: Callable[..., Any],
        *args: Any,
        retry: bool = True,
    ) -> list[tuple[Any, Bound | None, Bound | None]]:
        """``kernel(rows, *args)`` on partitions of the candidate rows that hold
        whole ``group`` s (prompts, or stages): the isolated shards as they are,
        else the buckets of a hash shuffle. Futures, with the bounds of their ids;
        the shards' bounds are checked against the rows read (``retry``: run
        again when the isolation rested on bounds the rows break)."""
        width = len(group)

        def cut(bound: Bound | None) -> Bound | None:
            return None if bound is None else bound[:width]

        shards = self.cand_shards
        if width == 1:  # the global ranking needs whole stages
            shards = mark_isolated([replace(s, lo=cut(s.lo), hi=cut(s.hi)) for s in shards])
        out: list[tuple[Any, Bound | None, Bound | None]] = []
        if all(s.isolated for s in shards):
            pairs = [self.submit(_t_part, self.log, s.piece, read, kernel, *args) for s in shards]
            seen = [self.submit(operator.getitem, p, 1) for p in pairs]
            for pair, shard in zip(pairs, shards, strict=True):
                out.append((self.submit(operator.getitem, pair, 0), shard.lo, shard.hi))
        else:
            buckets = max(1, min(len(shards), 2 * self.workers))
            maps = [self.submit(_t_split, self.log, s.piece, read, group, buckets) for s in shards]
            seen = [self.submit(operator.getitem, m, buckets) for m in maps]
            for b in range(buckets):
                pieces = [self.submit(operator.getitem, m, b) for m in maps]
                out.append((self.submit(_t_bucket, pieces, kernel, *args), None, None))
        # the bounds come from footer statistics; a damaged page (or a writer's bug)
        # can hold ids outside them, which the isolation and the cuts would lose:
        # measured bounds replace claimed ones, and isolated shards run again
        measured: list[tuple[Bound, Bound] | None] = self.client.gather(seen)
        if all(_within(s, m) for s, m in zip(self.cand_shards, measured, strict=True)):
            return out
        self.cand_shards = mark_isolated(
            [
                s if m is None else replace(s, lo=m[0], hi=m[1])
                for s, m in zip(self.cand_shards, measured, strict=True)
            ]
        )
        if not all(s.isolated for s in shards) or not retry:
            return out
        return self.partitions(group, read, kernel, *args, retry=False)

    def tokens(
        self, ranks: Sequence[tuple[Any, Bound | None, Bound | None]], **options: Any
    ) -> list[Reduced]:
        """The token pass (``_t_tokens`` with ``options``) over the token shards,
        each given the keys within its bounds. The bounds come from footer
        statistics: a shard whose rows find no key (orphans, or ids outside what
        its footer claims) runs again with every key, so that it answers as the
        in-process pass does."""
        shards = self.token_shards()

        def submit(shard: Shard, scope: Shard) -> Any:
            cuts = self.covering(ranks, scope, keys=True)
            return self.submit(_t_tokens, self.log, shard, *cuts, **options)

        reduced: list[Reduced] = self.gather([submit(s, s) for s in shards])
        again = [
            i
            for i, (shard, part) in enumerate(zip(shards, reduced, strict=True))
            if shard.lo is not None and any(p.kind == "orphan_tokens" for p in part.problems)
        ]
        if again:
            unbounded = [submit(shards[i], replace(shards[i], lo=None, hi=None)) for i in again]
            for i, part in zip(again, self.gather(unbounded), strict=True):
                reduced[i] = part
        return reduced

    def covering(
        self,
        ranks: Sequence[tuple[Any, Bound | None, Bound | None]],
        shard: Shard,
        *,
        keys: bool = False,
    ) -> list[Any]:
        """The parts of the rank results that may hold keys of ``shard`` (cut to
        its bounds where they live), as task arguments; at least one, so that a
        shard none covers still gets empty frames of the right types."""
        found = [
            self.submit(_t_cut, r, shard.lo, shard.hi, keys)
            for r, lo, hi in ranks
            if Shard(shard.piece, lo, hi).covers(shard)
        ]
        if not found and ranks:
            found = [self.submit(_t_cut, ranks[0][0], None, None, keys, True)]
        return found


def _anchored(log: StageLog, client: Any) -> StageLog:
    """``log`` with its local files named from the root where a worker works in
    another directory than this process (a cluster started elsewhere): it reads
    them from its own. Where every worker works here (a local cluster), the
    paths stay as given, and so do the messages that name them."""
    try:
        theirs = set(client.run(os.getcwd).values())
    except Exception:  # no answer: anchored, which is right anywhere
        theirs = set()
    if theirs == {os.getcwd()}:
        return log
    rewards = None if log.rewards is None else _absolute(log.rewards)
    return replace(log, main=_absolute(log.main), rewards=rewards)


def _absolute(source: Resolved) -> Resolved:
    if source.remote or all(os.path.isabs(f.path) for f in source.files):
        return source
    here = os.getcwd()  # joined, not normalized: "link/.." stays the OS's to resolve
    files = tuple(replace(f, path=os.path.join(here, f.path)) for f in source.files)
    return replace(source, files=files)


def _collected(source: Resolved) -> Resolved:
    if source.frame is None:
        return source
    return replace(source, frame=source.frame.collect().lazy())


def cpu_threads(workers: int) -> str:
    """Threads for Polars inside each of ``workers`` local worker processes."""
    return str(max(1, (os.cpu_count() or 1) // max(1, workers)))


def _skips(selection: Selection) -> bool:
    """Whether the table shows the counts of skipped bad rewards."""
    return selection.bad_rewards == "skip"
