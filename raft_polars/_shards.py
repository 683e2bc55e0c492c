"""Engine-free map and reduce of the distributed path, one shard at a time.

Plain functions over Arrow tables and Polars frames, with no scheduler in sight:
:mod:`raft_polars.dask` wires them into tasks, the tests call them directly.
Every ranking, check and reduction expression comes from the single-machine
engine (:mod:`raft_polars.ranking`, :mod:`raft_polars.losses`,
:mod:`raft_polars._checks`), so both paths give the same answers and the same
error messages.

The pieces, in the order data flows through them:

- **plan** (:func:`plan_files`, :func:`mark_isolated`): Parquet metadata only. A
  shard is a file or a range of its row groups, with the lexicographic bounds of
  its ``(stage, prompt)`` keys taken from the row-group statistics. A shard whose
  bounds overlap no other shard holds whole prompts: it is *isolated* and is
  reduced to per-stage sums in its own task.
- **read** (:func:`read_shard`): the projected columns of one shard, renamed and
  cast to the canonical frame of :mod:`raft_polars.logs`.
- **map** (:func:`candidate_partial`): candidate rows to one row per
  ``(stage, prompt)``: the shard's best candidate (tie rule of SEMANTICS.md), its
  NLL sum and token count, the count of candidates sharing the shard's best
  reward, a bit mask of the candidate ids (duplicates across shards) and the
  per-stage additive sums. O(prompts) out, never O(tokens).
- **shuffle** (:func:`split_buckets`): partials bucketed by a hash of
  ``(stage, prompt)``, so one reduce task sees every piece of a prompt.
- **reduce** (:func:`combine`, :func:`finalize`): the global best per prompt, the
  per-stage sums of the selected responses, the selected keys.
- **long layout** (:func:`selection_masks`, :func:`token_partial`): the selection
  as two bit masks per prompt (candidates that exist, candidates selected), sent
  to every token task, which sums the selected tokens per stage and counts orphan
  and bad tokens.
- **client** (:func:`finish`, :func:`raise_candidate_issues`, ...): add the
  per-stage tables and raise the first problem with its location, through the
  engine's own checks.

Examples
--------
>>> import polars as pl
>>> from raft_polars._shards import candidate_partial, combine, finalize, finish
>>> a = pl.DataFrame({"stage": [0, 0], "prompt": [1, 1], "cand": [0, 2],
...                   "reward": [0.5, 0.9], "logprobs": [[-1.0], [-2.0, -4.0]]})
>>> b = pl.DataFrame({"stage": [0], "prompt": [1], "cand": [1],
...                   "reward": [0.9], "logprobs": [[-0.5]]})
>>> parts = [candidate_partial(x, responses=True) for x in (a, b)]
>>> final = finalize(combine([p.prompts for p in parts]), responses=True)
>>> final.chosen.rows()  # the tie at 0.9 goes to the smaller candidate id
[(0, 1, 1, 0.9)]
>>> table = finish([final.stages, *(p.stages for p in parts)], log=None)
>>> table.select("stage", "loss", "candidates", "ties").rows()
[(0, 0.5, 3, 1)]
"""

from __future__ import annotations

import glob as _glob
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeAlias

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from raft_polars import _checks, _dense
from raft_polars._dense import Box, box_of, gather
from raft_polars.errors import RaftInputError
from raft_polars.logs import ID_COLUMNS, StageLog
from raft_polars.losses import (
    RESPONSE_STATS,
    Reduction,
    candidate_sums,
    response_stats,
    response_sums,
    stage_columns,
)
from raft_polars.ranking import ORDER_BY, ORDER_DESCENDING, summary_aggregations

__all__ = [
    "Final",
    "Issues",
    "Partial",
    "ReadSpec",
    "Shard",
    "TokenPartial",
    "bounds_of",
    "candidate_partial",
    "combine",
    "combine_responses",
    "empty_stages",
    "finalize",
    "finish",
    "finish_frame",
    "first_bad_tokens",
    "keys_masks",
    "mark_isolated",
    "merge_issues",
    "plan_files",
    "raise_candidate_issues",
    "raise_orphans",
    "raise_selected_logprobs",
    "read_shard",
    "reading",
    "scan_shard",
    "selected_response_sums",
    "selected_rows",
    "selection_masks",
    "shrink",
    "slice_keys",
    "split_buckets",
    "stage_part_from_keys",
    "token_partial",
    "widen",
]

Kind: TypeAlias = Literal["nested", "rewards", "tokens"]
Bound: TypeAlias = tuple[Any, Any]
# kind of problem -> (how many in all, the first offending rows of each task)
Issues: TypeAlias = dict[str, tuple[int, pl.DataFrame]]

_PROMPT = ["stage", "prompt"]
_IDS = list(ID_COLUMNS)
_SEED = 0x5AF7  # bucket hash seed: the same in every process of one polars version
# uncompressed bytes per shard when a file is split by row groups
SHARD_BYTES = 256 << 20
_STATUS_ORPHAN, _STATUS_OTHER, _STATUS_SELECTED = 0, 1, 2
# per-stage sums that the client adds up (SUMS) and their types
STAGE_SUMS: dict[str, pl.DataType] = {
    "prompts": pl.Int64(), "candidates": pl.Int64(), "reward_sum": pl.Float64(),
    "ties": pl.Int64(), "selected": pl.Int64(), "reward_best_sum": pl.Float64(),
    "nll": pl.Float64(), "tokens": pl.Int64(), "seq_sum": pl.Float64(),
    "seq_n": pl.Int64(), "below_min": pl.Int64(),
}


# --- plan: metadata only ------------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    """One unit of map work: a Parquet file, or a range of its row groups.

    Attributes
    ----------
    index
        Position in the plan (names the output part of ``write_selected``).
    path
        The Parquet file.
    row_groups
        Row groups to read, or None for the whole file.
    offset
        The first row of those row groups in the file.
    partitions
        Hive ``key=value`` pairs of the path (values as written, None for the
        default partition), for columns that live in the path, not the file.
    lo, hi
        Lexicographic bounds of the shard's ``(stage, prompt)`` keys, or None when
        the statistics do not give them.
    rows
        Rows in the shard.
    column_bytes
        Compressed bytes of each column in the shard (what a read costs).
    isolated
        No other shard's bounds overlap: every prompt of the shard is whole here.
    """

    index: int
    path: str
    row_groups: tuple[int, ...] | None = None
    offset: int = 0
    partitions: tuple[tuple[str, str | None], ...] = ()
    lo: Bound | None = None
    hi: Bound | None = None
    rows: int = 0
    column_bytes: tuple[tuple[str, int], ...] = ()
    isolated: bool = False

    def bytes_read(self, columns: Sequence[str]) -> int:
        """Compressed bytes of ``columns`` in this shard."""
        sizes = dict(self.column_bytes)
        return sum(sizes.get(name, 0) for name in columns)


@dataclass(frozen=True)
class ReadSpec:
    """How to turn a shard's raw columns into the canonical frame.

    Attributes
    ----------
    kind
        ``"nested"`` rows, ``"rewards"`` rows or ``"tokens"`` rows.
    mapping
        Canonical name to the file's own name (``columns=`` of ``read_log``).
    schema
        The raw schema of the whole source (file columns and hive columns).
    prompt_type
        ``Int64`` or ``String``: the canonical type of the prompt id.
    extras
        Extra candidate-level columns, read only when asked for.
    origin
        The source's name for messages.
    """

    kind: Kind
    mapping: tuple[tuple[str, str], ...]
    schema: tuple[tuple[str, pl.DataType], ...]
    prompt_type: pl.DataType
    extras: tuple[str, ...] = ()
    origin: str = "the source"

    def raw(self, name: str) -> str:
        """The file's name of canonical column ``name``."""
        return dict(self.mapping).get(name, name)

    def has(self, name: str) -> bool:
        """Whether the source has canonical column ``name``."""
        return self.raw(name) in dict(self.schema)

    def columns(self, *, extras: bool = False, token: bool = False) -> list[str]:
        """The canonical columns a read returns."""
        base = {"nested": [*_IDS, "reward", "logprobs"], "rewards": [*_IDS, "reward"],
                "tokens": [*_IDS, "logprob"]}[self.kind]
        if token and self.kind == "tokens" and self.has("token"):
            base.append("token")
        return base + (list(self.extras) if extras else [])


def resolve_files(source: str | Path | Sequence[str | Path]) -> list[tuple[Path, Path | None]]:
    """The Parquet files of a path source, each with the directory it was found
    under (for hive partitions), in the order :func:`raft_polars.read_log` reads them.
    """
    paths = [source] if isinstance(source, str | Path) else list(source)
    out: list[tuple[Path, Path | None]] = []
    for raw in paths:
        text = str(raw)
        if Path(text).is_dir():
            root = Path(text)
            out.extend((p, root) for p in sorted(root.rglob("*.parquet")) if p.is_file())
        elif any(ch in text for ch in "*?["):
            out.extend((Path(p), None) for p in sorted(_glob.glob(text, recursive=True)))
        else:
            out.append((Path(text), None))
    return out


def _partitions(path: Path, root: Path | None) -> tuple[tuple[str, str | None], ...]:
    if root is None:
        return ()
    pairs = []
    for part in path.relative_to(root).parts[:-1]:
        if "=" in part:
            key, value = part.split("=", 1)
            text = urllib.parse.unquote(value)
            pairs.append((key, None if text == "__HIVE_DEFAULT_PARTITION__" else text))
    return tuple(pairs)


def _stat(stats: Any) -> tuple[Any, Any] | None:
    if stats is None or not stats.has_min_max:
        return None
    return stats.min, stats.max


def plan_files(
    files: Sequence[tuple[Path, Path | None]],
    spec: ReadSpec,
    *,
    shard_bytes: int | None = None,
) -> list[Shard]:
    """Shards of the files: whole files, big ones split into row-group ranges of
    about ``shard_bytes`` uncompressed bytes, with ``(stage, prompt)`` bounds.

    Raises
    ------
    RaftInputError
        A file whose footer cannot be read, with the same message as the
        single-machine engine.
    """
    schema = dict(spec.schema)
    stage, prompt = spec.raw("stage"), spec.raw("prompt")
    limit = SHARD_BYTES if shard_bytes is None else shard_bytes
    shards: list[Shard] = []
    for path, root in files:
        try:
            meta = pq.read_metadata(path)
        except Exception as bad:  # any failure to read the footer names the culprit
            msg = f"cannot read Parquet file {str(path)!r}: {bad}"
            raise RaftInputError(msg) from bad
        partitions = tuple((k, v) for k, v in _partitions(path, root) if k in schema)
        fixed = dict(partitions)
        groups: list[list[int]] = [[]]
        size = 0
        for rg in range(meta.num_row_groups):
            if groups[-1] and size >= limit:
                groups.append([])
                size = 0
            groups[-1].append(rg)
            size += meta.row_group(rg).total_byte_size
        whole = len(groups) == 1
        offset = 0
        for group in groups:
            blocks = [meta.row_group(rg) for rg in group]
            col_bytes: dict[str, int] = {}
            stats: dict[str, list[tuple[Any, Any] | None]] = {stage: [], prompt: []}
            for block in blocks:
                for i in range(block.num_columns):
                    column = block.column(i)
                    top = column.path_in_schema.split(".", 1)[0]
                    col_bytes[top] = col_bytes.get(top, 0) + column.total_compressed_size
                    if top in stats and block.num_rows:
                        stats[top].append(_stat(column.statistics))
            ranges = {name: _range(stats[name], fixed, schema, name) for name in (stage, prompt)}
            rows = sum(block.num_rows for block in blocks)
            lo = hi = None
            s_range, p_range = ranges[stage], ranges[prompt]
            if s_range is not None and p_range is not None and rows:
                lo, hi = (s_range[0], p_range[0]), (s_range[1], p_range[1])
            shards.append(Shard(
                index=len(shards), path=str(path),
                row_groups=None if whole else tuple(group), offset=offset,
                partitions=partitions, lo=lo, hi=hi, rows=rows,
                column_bytes=tuple(sorted(col_bytes.items())),
            ))
            offset += rows
    return shards


def _range(
    stats: list[tuple[Any, Any] | None], fixed: dict[str, str | None],
    schema: dict[str, pl.DataType], name: str,
) -> tuple[Any, Any] | None:
    """(min, max) of a column over row groups, from a hive value or the statistics."""
    if name in fixed:
        value = _typed(fixed[name], schema[name])
        return None if value is None else (value, value)
    if not stats or any(s is None for s in stats):
        return None
    try:
        return min(s[0] for s in stats if s), max(s[1] for s in stats if s)
    except TypeError:
        return None


def _typed(value: str | None, dtype: pl.DataType) -> Any:
    return pl.Series([value], dtype=pl.String).cast(dtype, strict=False)[0]


def bounds_of(frame: pl.DataFrame) -> tuple[Bound, Bound] | None:
    """Lexicographic ``(stage, prompt)`` bounds of a canonical frame's rows.

    ``((min stage, min prompt), (max stage, max prompt))``: every key of the frame
    lies between them in lexicographic order. None for an empty frame.
    """
    if frame.height == 0:
        return None
    row = frame.select(
        pl.col("stage").min().alias("s0"), pl.col("prompt").min().alias("p0"),
        pl.col("stage").max().alias("s1"), pl.col("prompt").max().alias("p1"),
    ).row(0)
    if any(value is None for value in row):
        return None
    return (row[0], row[1]), (row[2], row[3])


def mark_isolated(shards: Sequence[Shard]) -> list[Shard]:
    """Flag the shards whose key bounds overlap no other shard's.

    A shard's keys lie between its lexicographic bounds ``lo`` and ``hi``, so two
    shards can share a prompt only if their intervals overlap; a shard with
    unknown bounds might overlap any other, and then no shard is isolated.

    Examples
    --------
    >>> s = [Shard(0, "a", lo=(0, 0), hi=(0, 9)), Shard(1, "b", lo=(1, 0), hi=(1, 9)),
    ...      Shard(2, "c", lo=(1, 5), hi=(2, 0))]
    >>> [x.isolated for x in mark_isolated(s)]
    [True, False, False]
    """
    if any(s.lo is None or s.hi is None for s in shards) or len(shards) < 2:
        return [replace(s, isolated=len(shards) == 1 and s.lo is not None) for s in shards]
    try:
        order = sorted(range(len(shards)), key=lambda i: (shards[i].lo, shards[i].hi))
    except TypeError:  # prompt ids of different kinds in different files
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


# --- read ---------------------------------------------------------------------------


def scan_shard(
    shard: Shard, spec: ReadSpec, *, extras: bool = False, token: bool = False
) -> pl.LazyFrame:
    """One shard's projected columns as a lazy canonical frame (read when
    collected; wrap the collection in :func:`reading` to name the file on failure).
    """
    wanted = spec.columns(extras=extras, token=token)
    raw = [spec.raw(name) if name in (*_IDS, "reward", "logprobs", "logprob", "token") else name
           for name in wanted]
    fixed = dict(shard.partitions)
    schema = dict(spec.schema)
    in_file = [name for name in raw if name not in fixed]
    with reading(shard):
        scan = pl.scan_parquet(shard.path, hive_partitioning=False).select(in_file)
        if shard.row_groups is not None:  # the row groups' rows (slices prune row groups)
            scan = scan.slice(shard.offset, shard.rows)
        scan = scan.with_columns(
            pl.lit(fixed[name], pl.String).cast(schema[name]).alias(name)
            for name in raw if name in fixed
        )
        renamed = scan.rename({spec.raw(c): c for c in wanted if spec.raw(c) != c})
        return canonical(renamed, spec, wanted)


def read_shard(
    shard: Shard, spec: ReadSpec, *, extras: bool = False, token: bool = False
) -> pl.DataFrame:
    """One shard's projected columns, read into the canonical frame.

    Raises
    ------
    RaftInputError
        The file cannot be read, or its columns cannot be cast to the source's
        types (naming the file).
    """
    with reading(shard):
        return scan_shard(shard, spec, extras=extras, token=token).collect(engine="streaming")


@contextmanager
def reading(shard: Shard) -> Iterator[None]:
    """Turn a failure to read or cast the shard's data into a RaftInputError that
    names the file."""
    try:
        yield
    except (OSError, pl.exceptions.PolarsError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        msg = f"cannot read Parquet file {shard.path!r}: {detail}"
        raise RaftInputError(msg) from exc


def canonical(frame: pl.LazyFrame, spec: ReadSpec, wanted: Sequence[str]) -> pl.LazyFrame:
    """Cast a frame with canonical names to the canonical types (ids Int64 or
    String, reward Float64, ``logprobs`` a List), keeping ``wanted`` columns."""
    schema = frame.collect_schema()
    exprs: list[pl.Expr] = []
    for name in wanted:
        if name in ("stage", "cand", "token"):
            exprs.append(pl.col(name).cast(pl.Int64))
        elif name == "prompt":
            exprs.append(pl.col(name).cast(spec.prompt_type))
        elif name == "reward":
            exprs.append(pl.col(name).cast(pl.Float64))
        elif name == "logprobs" and isinstance(dtype := schema[name], pl.Array):
            exprs.append(pl.col(name).cast(pl.List(dtype.inner)))
        else:
            exprs.append(pl.col(name))
    return frame.select(exprs)


# --- map: candidate rows to one row per prompt ----------------------------------------

_POW2 = pl.Series("bit", np.left_shift(np.uint64(1), np.arange(64, dtype=np.uint64)),
                  dtype=pl.UInt64)


def _bit(cand: pl.Expr) -> pl.Expr:
    """``1 << cand`` as UInt64 for ``0 <= cand < 64``, null otherwise."""
    inside = (cand >= 0) & (cand < 64)
    return pl.when(inside).then(pl.lit(_POW2).gather(cand.clip(0, 63)))


def _wide(cand: pl.Expr) -> pl.Expr:
    """Candidate ids outside the bit mask (below 0 or above 63)."""
    return cand.filter((cand < 0) | (cand >= 64))


@dataclass(frozen=True)
class Partial:
    """What a map task returns for its shard.

    Attributes
    ----------
    prompts
        One row per ``(stage, prompt)``: ``cand``, ``reward`` of the shard's best
        candidate (and its ``nll``, ``tokens``, ``bad_lp`` with responses),
        ``candidates``, ``ties`` (candidates sharing the shard's best reward),
        ``cand_mask`` (bit ``c`` set for candidate ``c < 64``) and ``wide`` (other
        candidate ids) when any.
    stages
        Per-stage additive sums: ``candidates``, ``reward_sum``.
    issues
        Null ids and bad rewards: their count and the shard's first one.
    """

    prompts: pl.DataFrame
    stages: pl.DataFrame
    issues: Issues = field(default_factory=dict)


def candidate_partial(cands: pl.DataFrame | pl.LazyFrame, *, responses: bool) -> Partial:
    """Map: a shard's candidate rows to one row per ``(stage, prompt)``.

    Parameters
    ----------
    cands
        Canonical candidate rows: ``stage, prompt, cand, reward`` and, with
        ``responses``, ``logprobs``; lazy frames are scanned once.
    responses
        Also carry the best candidate's NLL sum, token count and a flag for a
        bad log-prob (null, NaN, infinite or > 0), as the engine's one-pass
        best-of-K path does.
    """
    carry = RESPONSE_STATS if responses else ()
    frame = cands.lazy().select(*_IDS, "reward", *(response_stats("logprobs") if responses else ()))
    cand = pl.col("cand")
    summary = frame.group_by(_PROMPT).agg(
        *summary_aggregations(tuple(carry)),
        _bit(cand).bitwise_or().fill_null(0).alias("cand_mask"),
        _wide(cand).alias("wide"),
    ).collect(engine="streaming")
    wide = bool(summary.select(pl.col("wide").list.len().sum()).item())
    issues: Issues = {}
    nulls = summary.filter(
        pl.col("stage").is_null() | pl.col("prompt").is_null() | (pl.col("null_cands") > 0)
    )
    if nulls.height:
        issues["null_ids"] = (nulls.height, nulls.select(_PROMPT).head(1))
    bad_rewards = int(summary["bad_rewards"].sum())
    if bad_rewards:  # a second pass, only to name the first bad reward
        reward = pl.col("reward")
        first = (cands.lazy().select(*_IDS, "reward")
                 .filter(reward.is_null() | reward.is_nan() | reward.is_infinite())
                 .sort(_IDS).head(1).collect(engine="streaming"))
        issues["bad_rewards"] = (bad_rewards, first)
    stages = summary.group_by("stage").agg(
        pl.col("candidates").sum().cast(pl.Int64),
        pl.col("reward_sum").sum(),
    )
    keep: list[pl.Expr] = [pl.col(_IDS), pl.col("reward")]
    if responses:
        lp_max, lp_nulls, nll = pl.col("lp_max"), pl.col("lp_nulls"), pl.col("nll")
        bad_lp = (pl.col("tokens").is_null() | (lp_nulls > 0) | ~nll.is_finite()
                  | (lp_max > 0)).fill_null(value=False)
        keep += [nll, pl.col("tokens"), bad_lp.alias("bad_lp")]
    keep += [pl.col("candidates").cast(pl.UInt32), pl.col("ties").cast(pl.UInt32),
             pl.col("cand_mask"), *([pl.col("wide")] if wide else [])]
    return Partial(summary.select(keep), stages, issues)


def split_buckets(prompts: pl.DataFrame, buckets: int) -> list[pl.DataFrame]:
    """Shuffle: ``buckets`` frames, by a hash of ``(stage, prompt)``.

    The hash has a fixed seed, so every process of one polars version sends a
    prompt to the same bucket.
    """
    index = (pl.struct(_PROMPT).hash(seed=_SEED) % buckets).alias("_bucket")
    small = shrink(prompts)
    parts = small.with_columns(index).partition_by("_bucket", as_dict=True,
                                                   include_key=False)
    empty = small.head(0)
    return [parts.get((b,), empty) for b in range(buckets)]


_NARROW = ((pl.Int8(), -(1 << 7), 1 << 7), (pl.Int16(), -(1 << 15), 1 << 15),
           (pl.Int32(), -(1 << 31), 1 << 31))
_UNARROW = ((pl.UInt8(), 1 << 8), (pl.UInt16(), 1 << 16), (pl.UInt32(), 1 << 32))


def shrink(frame: pl.DataFrame) -> pl.DataFrame:
    """Integer columns cast to the narrowest type that holds their values, so the
    pieces sent between tasks are small; :func:`widen` casts them back."""
    exprs = []
    for name, dtype in frame.schema.items():
        if not dtype.is_integer() or frame.height == 0:
            continue
        low, high = frame[name].min(), frame[name].max()
        if not isinstance(low, int) or not isinstance(high, int):
            continue
        fit: pl.DataType | None
        if dtype.is_unsigned_integer():
            fit = next((t for t, top in _UNARROW if high < top), None)
        else:
            fit = next((t for t, bottom, top in _NARROW if bottom <= low and high < top), None)
        if fit is not None and fit != dtype:
            exprs.append(pl.col(name).cast(fit))
    return frame.with_columns(exprs) if exprs else frame


def widen(frame: pl.DataFrame) -> pl.DataFrame:
    """Ids and token counts back to Int64 after :func:`shrink`."""
    return frame.with_columns(
        pl.col(name).cast(pl.Int64) for name in ("stage", "prompt", "cand", "tokens")
        if name in frame.columns and frame.schema[name].is_integer()
    )


# --- reduce: the global best per prompt ----------------------------------------------


def combine(parts: Sequence[pl.DataFrame]) -> pl.DataFrame:
    """Reduce: the pieces of each prompt (from several shards) to one summary row.

    The global best is the best of the shards' bests, with the same tie rule;
    ``ties`` adds the counts of the shards whose best reward is the global one;
    ``cand_unique`` counts distinct candidate ids across every piece, so a
    candidate present in two shards is a duplicate.
    """
    frame = widen(pl.concat([p for p in parts if p.width], how="diagonal_relaxed"))
    carry = [c for c in ("nll", "tokens", "bad_lp") if c in frame.columns]
    wide = "wide" in frame.columns
    reward = pl.col("reward")
    mask = pl.col("cand_mask").bitwise_or()
    unique = mask.bitwise_count_ones().cast(pl.Int64)
    aggs = [
        pl.col("cand", "reward", *carry).sort_by(ORDER_BY, descending=ORDER_DESCENDING).first(),
        pl.col("candidates").sum().cast(pl.Int64),
        pl.col("ties").filter(reward == reward.max()).sum().cast(pl.Int64),
        mask.alias("cand_mask"),
    ]
    if wide:
        flat = pl.col("wide").list.explode(keep_nulls=False, empty_as_null=False).drop_nulls()
        unique = unique + flat.n_unique().cast(pl.Int64)
        aggs.append(flat.unique().alias("wide"))
    return frame.lazy().group_by(_PROMPT).agg(*aggs, unique.alias("cand_unique")).collect(
        engine="in-memory"
    )


@dataclass(frozen=True)
class Final:
    """What a reduce task (or the map task of an isolated shard) returns.

    Attributes
    ----------
    stages
        Per-stage sums (columns of :data:`STAGE_SUMS`).
    chosen
        The selected ``stage, prompt, cand, reward`` (None when not asked for).
    masks
        The selection as bit masks for the token tasks (long layout), or None.
    issues
        Duplicates and bad selected log-probs: counts and first rows.
    """

    stages: pl.DataFrame
    chosen: pl.DataFrame | None = None
    masks: pl.DataFrame | None = None
    issues: Issues = field(default_factory=dict)


def finalize(
    summary: pl.DataFrame,
    *,
    min_reward: float | None = None,
    responses: bool = False,
    keep_chosen: bool = True,
    masks: bool = False,
) -> Final:
    """Reduce: per-stage sums of the best-of-K selection of whole prompts.

    ``summary`` comes from :func:`combine`. ``prompts`` count here, once per
    prompt; ``candidates`` and ``reward_sum`` come from the map tasks.
    """
    issues: Issues = {}
    dup = summary.filter(pl.col("candidates") != pl.col("cand_unique"))
    if dup.height:
        issues["duplicates"] = (dup.height, dup.select(_PROMPT).sort(_PROMPT).head(1))
    chosen = summary if min_reward is None else summary.filter(pl.col("reward") >= min_reward)
    cands = summary.group_by("stage").agg(
        pl.len().alias("prompts"), (pl.col("ties") > 1).sum().alias("ties"),
    )
    sums = response_sums()
    names = list(sums) if responses else ["selected", "reward_best_sum"]
    picked = chosen.group_by("stage").agg(sums[name].alias(name) for name in names)
    stages = cands.join(picked, on="stage", how="left").with_columns(
        (pl.col("prompts") - pl.col("selected").fill_null(0)).alias("below_min")
    )
    if responses:
        bad = chosen.filter(pl.col("bad_lp"))
        if bad.height:
            first = bad.select(_IDS).sort(_IDS).head(1)
            nulls = bad.filter(pl.col("tokens").is_null()).select(_IDS).sort(_IDS).head(1)
            issues["bad_logprobs"] = (bad.height, pl.concat([nulls, first]))
    table = selection_masks(summary, chosen) if masks else None
    picked_rows = chosen.select(*_IDS, "reward") if keep_chosen else None
    return Final(_stage_frame(stages), picked_rows, table, issues)


def _stage_frame(frame: pl.DataFrame) -> pl.DataFrame:
    """Per-stage sums with every column of :data:`STAGE_SUMS` (absent ones null)."""
    return frame.select(
        pl.col("stage"),
        *(pl.col(name).cast(dtype) if name in frame.columns else pl.lit(None, dtype).alias(name)
          for name, dtype in STAGE_SUMS.items()),
    )


def finish_frame(frame: pl.DataFrame) -> pl.DataFrame:
    """A task's per-stage sums with every column of :data:`STAGE_SUMS`."""
    return _stage_frame(frame)


def empty_stages() -> pl.DataFrame:
    """A per-stage table with no rows."""
    return pl.DataFrame(schema={"stage": pl.Int64, **STAGE_SUMS})


def stage_part_from_keys(
    summary: pl.DataFrame, chosen: pl.DataFrame, below: pl.LazyFrame | None
) -> pl.DataFrame:
    """Per-stage sums of the candidate side when the client ranked the keys itself
    (``summary`` from :func:`raft_polars.ranking.prompt_summary`)."""
    cands = summary.group_by("stage").agg(
        expr.alias(name) for name, expr in candidate_sums().items()
    )
    picked = chosen.group_by("stage").agg(
        pl.len().alias("selected"), pl.col("reward").sum().alias("reward_best_sum")
    )
    out = cands.join(picked, on="stage", how="left")
    if below is not None:
        out = out.join(below.collect(), on="stage", how="left")
    return _stage_frame(out)


def combine_responses(parts: Sequence[pl.DataFrame]) -> pl.DataFrame:
    """Reduce (``reduction="sequence"``, long layout): per-response NLL and token
    sums from pieces of one response in several token shards, to per-stage
    ``seq_sum`` and ``seq_n``."""
    frame = widen(pl.concat([p for p in parts if p.width], how="vertical_relaxed"))
    per_response = frame.group_by(_IDS).agg(pl.col("nll").sum(), pl.col("tokens").sum())
    has_tokens = pl.col("tokens") > 0
    return _stage_frame(per_response.group_by("stage").agg(
        (pl.col("nll") / pl.col("tokens")).filter(has_tokens).sum().alias("seq_sum"),
        has_tokens.sum().alias("seq_n"),
    ))


def merge_issues(many: Sequence[Issues]) -> Issues:
    """Add up the counts and keep every task's first rows."""
    out: dict[str, tuple[int, list[pl.DataFrame]]] = {}
    for issues in many:
        for kind, (count, rows) in issues.items():
            total, frames = out.get(kind, (0, []))
            out[kind] = (total + count, [*frames, rows])
    return {kind: (count, pl.concat(frames, how="vertical_relaxed"))
            for kind, (count, frames) in out.items()}


# --- the long layout: selection masks and token sums ---------------------------------


def _mask_type(largest: int) -> pl.DataType:
    for dtype, bits in ((pl.UInt8(), 8), (pl.UInt16(), 16), (pl.UInt32(), 32)):
        if largest < bits:
            return dtype
    return pl.UInt64()


def selection_masks(summary: pl.DataFrame, chosen: pl.DataFrame) -> pl.DataFrame:
    """The selection of whole prompts as two bit masks per ``(stage, prompt)``.

    ``exists`` has bit ``c`` set for each candidate ``c`` that has a reward row,
    ``chosen`` for each selected one; candidate ids outside ``[0, 64)`` are listed
    in ``wide`` / ``wide_chosen``. The masks use the narrowest unsigned type, so
    the table sent to every token task costs a few bytes per prompt.
    """
    picked = chosen.group_by(_PROMPT).agg(
        _bit(pl.col("cand")).bitwise_or().fill_null(0).alias("chosen"),
        *([_wide(pl.col("cand")).alias("wide_chosen")] if "wide" in summary.columns else []),
    )
    table = summary.select(
        *_PROMPT, pl.col("cand_mask").alias("exists"),
        *([pl.col("wide")] if "wide" in summary.columns else []),
    ).join(picked, on=_PROMPT, how="left").with_columns(pl.col("chosen").fill_null(0))
    largest = int(table.select(pl.col("exists").max()).item() or 0)
    dtype = _mask_type(largest.bit_length() - 1 if largest else 0)
    ids = [pl.col(c).cast(pl.Int32) if table.schema[c] == pl.Int64 and _fits32(table[c])
           else pl.col(c) for c in _PROMPT]
    return table.with_columns(*ids, pl.col("exists", "chosen").cast(dtype))


def _fits32(series: pl.Series) -> bool:
    if series.len() == 0:
        return True
    low, high = series.min(), series.max()
    if not isinstance(low, int) or not isinstance(high, int):
        return True
    return low >= -(1 << 31) and high < (1 << 31)


def keys_masks(keys: pl.DataFrame, chosen: pl.DataFrame) -> pl.DataFrame:
    """:func:`selection_masks` from the candidate keys and the selected keys
    (strategies ranked on the client)."""
    cand = pl.col("cand")
    wide = bool(keys.height) and bool(keys.select(((cand < 0) | (cand >= 64)).any()).item())
    summary = keys.group_by(_PROMPT).agg(
        _bit(cand).bitwise_or().fill_null(0).alias("cand_mask"),
        *([_wide(cand).alias("wide")] if wide else []),
    )
    return selection_masks(summary, chosen)


def slice_keys(table: pl.DataFrame, lo: Bound | None, hi: Bound | None) -> pl.DataFrame:
    """The rows of a ``(stage, prompt)`` keyed table between lexicographic bounds."""
    if lo is None or hi is None:
        return table
    stage, prompt = pl.col("stage"), pl.col("prompt")
    above = (stage > lo[0]) | ((stage == lo[0]) & (prompt >= lo[1]))
    below = (stage < hi[0]) | ((stage == hi[0]) & (prompt <= hi[1]))
    return table.filter(above & below)


def _dense_status(masks: pl.DataFrame, schema: pl.Schema) -> pl.Expr | None:
    """The status of each token row from a dense lookup table over the masks'
    ``(stage, prompt, cand)`` range (integer ids), or None when it does not fit."""
    if ("wide" in masks.columns or masks.height == 0
            or not (masks.schema["stage"].is_integer() and masks.schema["prompt"].is_integer())):
        return None
    bits = max(1, int(masks["exists"].max()).bit_length())  # type: ignore[arg-type]
    box = box_of(masks.select("stage", "prompt", pl.lit(0).alias("cand")))
    if box is None:
        return None
    box = Box(box.lows, (box.spans[0], box.spans[1], bits))
    if box.size > _dense.MAX_BOX:
        return None
    exists = masks["exists"].to_numpy().astype(np.uint64)
    chosen = masks["chosen"].to_numpy().astype(np.uint64)
    table = np.full(box.size + 1, _STATUS_ORPHAN, dtype=np.uint8)  # the last: outside
    base = box.index(masks, axes=2) * bits
    for b in range(bits):  # a loop over candidate ids (< 64), not over rows
        bit = np.uint64(1 << b)
        table[base + b] = np.where((chosen & bit) != 0, _STATUS_SELECTED,
                                   np.where((exists & bit) != 0, _STATUS_OTHER, _STATUS_ORPHAN))
    return gather(table, box, schema)


def _status(tokens: pl.LazyFrame, masks: pl.DataFrame) -> pl.LazyFrame:
    """Each token row's status: 0 orphan (no reward row), 1 other, 2 selected."""
    names = tokens.collect_schema().names()
    dense = _dense_status(masks, tokens.collect_schema())
    if dense is not None:
        return tokens.with_columns(dense.alias("status"))
    table = masks.lazy().with_columns(
        pl.col("stage").cast(pl.Int64), pl.col("prompt").cast(tokens.collect_schema()["prompt"]),
        pl.col("exists", "chosen").cast(pl.UInt64),
    )
    cand = pl.col("cand")
    bit = _bit(cand)
    joined = tokens.join(table, on=_PROMPT, how="left")
    selected = (pl.col("chosen") & bit) != 0
    exists = (pl.col("exists") & bit) != 0
    if "wide" in masks.columns:
        selected = selected.fill_null(pl.col("wide_chosen").list.contains(cand))
        exists = exists.fill_null(pl.col("wide").list.contains(cand))
    status = (pl.when(selected).then(_STATUS_SELECTED)
              .when(exists).then(_STATUS_OTHER)
              .otherwise(_STATUS_ORPHAN).cast(pl.UInt8))
    return joined.select(*names, status.alias("status"))


@dataclass(frozen=True)
class TokenPartial:
    """What a token task returns.

    Attributes
    ----------
    stages
        Per-stage ``nll`` and ``tokens`` of the selected responses.
    responses
        ``reduction="sequence"``: per selected response ``nll`` and ``tokens``
        (a response may be split across shards), else None.
    issues
        Orphan token rows and bad selected log-probs: counts (first rows are
        added by :func:`first_bad_tokens` when a count is not zero).
    """

    stages: pl.DataFrame
    responses: pl.DataFrame | None
    issues: Issues


def token_partial(
    tokens: pl.DataFrame | pl.LazyFrame, masks: pl.DataFrame, *, per_response: bool = False
) -> TokenPartial:
    """Map (long layout): sum a token shard's selected rows per stage.

    Parameters
    ----------
    tokens
        Canonical token rows ``stage, prompt, cand, logprob``.
    masks
        The selection, from :func:`selection_masks` (the rows covering this shard
        are enough).
    per_response
        Also return per-response sums (for ``reduction="sequence"``).
    """
    lp = pl.col("logprob")
    kept = _status(tokens.lazy(), masks).filter(pl.col("status") != _STATUS_OTHER)
    group = [*_IDS, "status"] if per_response else ["stage", "status"]
    stats = kept.group_by(group).agg(
        (-lp.cast(pl.Float64).sum()).alias("nll"),
        pl.len().cast(pl.Int64).alias("tokens"),
        lp.max().cast(pl.Float64).alias("lp_max"),
        lp.null_count().cast(pl.Int64).alias("lp_nulls"),
    ).collect(engine="streaming")
    issues: Issues = {}
    orphans = stats.filter(pl.col("status") == _STATUS_ORPHAN)
    if orphans.height:
        issues["orphans"] = (int(orphans["tokens"].sum()), pl.DataFrame())
    selected = stats.filter(pl.col("status") == _STATUS_SELECTED)
    # flagged as the engine flags a stage: NaN or infinite sum, a null, a value > 0
    bad = selected.filter((~pl.col("nll").is_finite() | (pl.col("lp_nulls") > 0)
                           | (pl.col("lp_max") > 0)).fill_null(value=False))
    if bad.height:
        issues["bad_tokens"] = (bad.height, pl.DataFrame())
    stages = _stage_frame(selected.group_by("stage").agg(pl.col("nll").sum(),
                                                         pl.col("tokens").sum()))
    responses = selected.select(*_IDS, "nll", "tokens") if per_response else None
    return TokenPartial(stages, responses, issues)


def first_bad_tokens(
    tokens: pl.DataFrame | pl.LazyFrame, masks: pl.DataFrame, issues: Issues
) -> Issues:
    """The shard's first orphan token row and first bad selected token row (a
    second pass over the shard, only when :func:`token_partial` counted some)."""
    out = dict(issues)
    status = _status(tokens.lazy(), masks)
    if "orphans" in issues:
        first = status.filter(pl.col("status") == _STATUS_ORPHAN).select(_IDS).sort(
            _IDS, nulls_last=True).head(1).collect(engine="in-memory")
        out["orphans"] = (issues["orphans"][0], first)
    if "bad_tokens" in issues:
        order = [*_IDS, "token"] if "token" in tokens.collect_schema() else _IDS
        first = (status.filter((pl.col("status") == _STATUS_SELECTED)
                               & _checks.bad_logprob(pl.col("logprob")))
                 .sort(order).head(1).drop("status").collect(engine="in-memory"))
        out["bad_tokens"] = (issues["bad_tokens"][0], first)
    return out


def selected_response_sums(cands: pl.DataFrame | pl.LazyFrame, chosen: pl.DataFrame) -> Final:
    """Map (nested layout, selection ranked on the client): per-stage NLL and
    token sums of the shard's selected rows, and the first bad ones."""
    keys = _cast_keys(chosen, cands)
    rows = cands.lazy().join(keys.lazy(), on=_IDS).select(
        *_IDS, "reward", *response_stats("logprobs")
    ).collect(engine="streaming")
    lp_max, lp_nulls, nll = pl.col("lp_max"), pl.col("lp_nulls"), pl.col("nll")
    bad = rows.filter((pl.col("tokens").is_null() | (lp_nulls > 0) | ~nll.is_finite()
                       | (lp_max > 0)).fill_null(value=False))
    issues: Issues = {}
    if bad.height:
        first = bad.select(_IDS).sort(_IDS).head(1)
        nulls = bad.filter(pl.col("tokens").is_null()).select(_IDS).sort(_IDS).head(1)
        issues["bad_logprobs"] = (bad.height, pl.concat([nulls, first]))
    sums = response_sums()
    stages = rows.group_by("stage").agg(
        sums[name].alias(name) for name in ("nll", "tokens", "seq_sum", "seq_n")
    )
    return Final(_stage_frame(stages), None, None, issues)


def _cast_keys(keys: pl.DataFrame, like: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """``stage, prompt, cand`` of ``keys`` with the types of ``like``."""
    schema = like.collect_schema()
    return keys.select(pl.col(c).cast(schema[c]) for c in _IDS)


# --- selected rows (select_best, write_selected) --------------------------------------


def selected_rows(
    cands: pl.DataFrame | pl.LazyFrame, chosen: pl.DataFrame, extras: Sequence[str],
    counts: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """The selected rows of a candidate shard, with the columns of
    :func:`raft_polars.select_best`, sorted by ``stage, prompt, cand``.

    Nested rows count their tokens from ``logprobs``; reward rows (long layout)
    take them from ``counts`` (``stage, prompt, cand, tokens``).
    """
    rows = cands.lazy().join(_cast_keys(chosen, cands).lazy(), on=_IDS)
    if counts is None:
        rows = rows.with_columns(pl.col("logprobs").list.len().cast(pl.Int64).alias("tokens"))
    else:
        rows = rows.join(counts.lazy(), on=_IDS, how="left").with_columns(
            pl.col("tokens").fill_null(0)
        )
    return rows.select(*_IDS, "reward", "tokens", *extras).sort(_IDS).collect(engine="streaming")


# --- client: add the per-stage tables, raise the first problem ------------------------


def finish(
    parts: Sequence[pl.DataFrame], *, log: StageLog | None, reduction: Reduction = "token"
) -> pl.DataFrame:
    """Add the per-stage tables of every task and compute the output columns with
    the engine's own expressions; raise for a stage with no selected tokens."""
    frames = [p for p in parts if p.height]
    total = pl.concat([empty_stages(), *(_stage_frame(p) for p in frames)],
                      how="vertical_relaxed").group_by("stage").agg(
        pl.col(name).sum() for name in STAGE_SUMS
    )
    columns = {name: pl.col(name) for name in STAGE_SUMS}
    table = total.select("stage", *stage_columns(columns, reduction)).sort("stage")
    if log is not None:
        _checks.stage_tokens(log, table)
    return table


def _tiny_log(log: StageLog, candidates: pl.DataFrame, tokens: pl.DataFrame | None) -> StageLog:
    """A StageLog over a few fetched rows, with the real log's names for messages."""
    return StageLog(log.layout, candidates.lazy(), None if tokens is None else tokens.lazy(),
                    log.extras, log.origin, log.token_origin, log.files)


def raise_candidate_issues(
    log: StageLog, issues: Issues, fetch_prompt: Callable[[Any, Any], pl.DataFrame]
) -> None:
    """Raise the first of null ids, duplicate candidates, bad rewards, as
    :func:`raft_polars._checks.candidates` does on the single machine.

    ``fetch_prompt(stage, prompt)`` returns the candidate rows of one prompt from
    every shard (only called to name a duplicate).
    """
    prompt_type = log.candidates.collect_schema()["prompt"]

    def summary(stage: Any, prompt: Any, rows: int, **values: int) -> pl.DataFrame:
        base = {"candidates": 1, "cand_unique": 1, "null_cands": 0, "bad_rewards": 0, **values}
        return pl.select(
            pl.repeat(stage, rows, dtype=pl.Int64).alias("stage"),
            pl.repeat(prompt, rows, dtype=prompt_type).alias("prompt"),
            *(pl.repeat(v, rows, dtype=pl.Int64).alias(k) for k, v in base.items()),
        )

    empty = pl.DataFrame(schema={"stage": pl.Int64, "prompt": prompt_type, "cand": pl.Int64,
                                 "reward": pl.Float64})
    if "null_ids" in issues:
        row = issues["null_ids"][1].row(0, named=True)
        _checks.candidates(_tiny_log(log, empty, None),
                           summary(row["stage"], row["prompt"], 1, null_cands=1))
    if "duplicates" in issues:
        count, rows = issues["duplicates"]
        stage, prompt = rows.sort(_PROMPT).row(0)
        found = fetch_prompt(stage, prompt)
        _checks.candidates(_tiny_log(log, found, None),
                           summary(stage, prompt, count, candidates=2))
    if "bad_rewards" in issues:
        count, rows = issues["bad_rewards"]
        _checks.candidates(_tiny_log(log, rows, None),
                           summary(0, rows["prompt"][0], 1, bad_rewards=count))


def _fake_stats() -> pl.DataFrame:
    return pl.DataFrame({"nll": [0.0], "tokens": [None], "lp_max": [0.0], "lp_nulls": [0]},
                        schema={"nll": pl.Float64, "tokens": pl.Int64, "lp_max": pl.Float64,
                                "lp_nulls": pl.Int64})


def raise_selected_logprobs(
    log: StageLog, issues: Issues,
    fetch_responses: Callable[[pl.DataFrame], pl.DataFrame] | None = None,
) -> None:
    """Raise for a bad log-prob in a selected response, as
    :func:`raft_polars._checks.selected_logprobs` does on the single machine.

    Nested layout: ``fetch_responses(keys)`` returns the rows (with ``logprobs``)
    of the few flagged responses. Long layout: the first bad token rows of every
    task are in ``issues``.
    """
    if log.layout == "nested" and "bad_logprobs" in issues:
        keys = issues["bad_logprobs"][1].unique()
        assert fetch_responses is not None
        rows = fetch_responses(keys)
        _checks.selected_logprobs(_tiny_log(log, rows, None), _fake_stats(), keys)
    if log.layout == "long" and "bad_tokens" in issues:
        rows = issues["bad_tokens"][1]
        empty = rows.select(_IDS).head(0)
        _checks.selected_logprobs(_tiny_log(log, empty, rows), _fake_stats(), rows.select(_IDS))


def raise_orphans(log: StageLog, issues: Issues) -> None:
    """Raise for token rows with no reward row, as
    :func:`raft_polars._checks.orphan_tokens` does."""
    if "orphans" not in issues:
        return
    count, rows = issues["orphans"]
    _checks.orphan_tokens(_tiny_log(log, rows.head(0), rows), pl.DataFrame({"tokens": [count]}))


def merge_mapping(columns: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    """``columns=`` as a hashable, picklable tuple."""
    return tuple(sorted((columns or {}).items()))
