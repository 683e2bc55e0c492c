"""Step 1 of RAFT: read stage logs into one canonical frame.

:func:`read_log` checks the sources' columns once (names, types, the
``columns=`` mapping) and returns a :class:`StageLog`: the resolved sources and
how their columns become the canonical frames. The frames themselves are lazy
and come from :meth:`StageLog.candidates`, :meth:`StageLog.keys` and
:meth:`StageLog.tokens`, for the whole log or for one :class:`Piece` of it, so
that every executor reads the same canonical frames.

- nested layout: one row per candidate, ``stage, prompt, cand, reward,
  logprobs`` (a list of token log-probs) and extra columns;
- long layout: token rows ``stage, prompt, cand, logprob`` (``token``
  optional) and a rewards table ``stage, prompt, cand, reward`` (and extras).

Canonical types: ``stage`` and ``cand`` Int64, ``prompt`` Int64 or String,
``reward`` Float64, ``logprobs`` a List. The ranking keys keep the source's own
integer types (narrow ids make the dense box cheaper).

Examples
--------
>>> import polars as pl
>>> from raft_polars import read_log
>>> df = pl.DataFrame({"stage": [0, 0], "prompt": ["a", "a"], "cand": [0, 1],
...                    "reward": [0.2, 0.4], "logprobs": [[-2.0, -1.8], [-1.5, -1.6]]})
>>> log = read_log(df)
>>> log.layout, log.extras
('nested', ())
"""

from __future__ import annotations

import itertools
import os
import re
import threading
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Literal, TypeAlias, TypeVar

import polars as pl

from raft_polars._engine import _stream
from raft_polars._engine.sources import (
    READ_ERRORS,
    Piece,
    Resolved,
    Source,
    file_schema,
    hive_not_integer,
    hive_values,
    lone_surrogates,
    reading,
    resolve,
    summed_reward,
)
from raft_polars.errors import RaftInputError, RaftPolarsError

__all__ = [
    "CANDIDATE_COLUMNS",
    "CANONICAL_COLUMNS",
    "ID_COLUMNS",
    "Layout",
    "StageLog",
    "canonical_ids",
    "float_type",
    "read_log",
]

Layout: TypeAlias = Literal["nested", "long"]
Preset: TypeAlias = Literal["verl", "trl", "openrlhf", "rlhflow"]
P = TypeVar("P")
T = TypeVar("T")

#: Ready-made ``columns=`` for the dumps of common pipelines (names that a log
#: does not have are left out); ``"trl"`` also sums its reward columns.
PRESETS: dict[str, dict[str, str]] = {
    # verl rollout dumps, {step}.jsonl: input, output, score, step
    "verl": {"prompt": "input", "reward": "score", "stage": "step"},
    # TRL completions_{step:05d}.parquet: step, prompt, completion, one column per
    # reward function (and advantage): the reward is their sum
    "trl": {"stage": "step"},
    # OpenRLHF: input, output, reward
    "openrlhf": {"prompt": "input"},
    # RLHFlow: one row per prompt, prompt, responses, rewards (the wide layout)
    "rlhflow": {},
}
_TRL_NOT_REWARDS = ("step", "advantage", "prompt", "completion")

ID_COLUMNS = ("stage", "prompt", "cand")
CANDIDATE_COLUMNS = (*ID_COLUMNS, "reward")
# every name columns= may map
CANONICAL_COLUMNS = (*CANDIDATE_COLUMNS, "logprobs", "token", "logprob")
NESTED_COLUMNS = (*CANDIDATE_COLUMNS, "logprobs")  # the canonical columns of candidate rows
_REWARD = pl.col("reward").cast(pl.Float64)


@dataclass(frozen=True)
class StageLog:
    """A stage log: its resolved sources and how they become canonical frames.

    Attributes
    ----------
    layout
        ``"nested"`` (candidate rows hold a ``logprobs`` list) or ``"long"``
        (token rows in ``main``, candidate rows in ``rewards``).
    main
        The nested rows, or the long layout's token rows.
    rewards
        The long layout's candidate rows, or None.
    renames
        The source's column names to canonical ones (from ``columns=``).
    extras
        Candidate-level columns beyond the canonical ones (text, ids).
    prompt_type
        The canonical prompt id type, Int64 or String.
    has_token
        The token rows have a ``token`` position column.
    has_logprobs
        False for a rewards-only log (nested or wide rows without log-probs):
        nothing to reduce to a loss.
    wide
        Wide rows (one per prompt): the list columns that hold one value per
        candidate, exploded into candidate rows (``reward`` first).
    numbered
        The ids the rows do not carry: ``"stage"`` (one stage, 0), ``"cand"``
        (candidates numbered from 0 within their ``(stage, prompt)`` in order of
        appearance: file order, then row order).
    """

    layout: Layout
    main: Resolved
    rewards: Resolved | None
    renames: tuple[tuple[str, str], ...]
    extras: tuple[str, ...]
    prompt_type: pl.DataType
    has_token: bool = False
    has_logprobs: bool = True
    wide: tuple[str, ...] = ()
    numbered: tuple[str, ...] = ()

    @property
    def cand_source(self) -> Resolved:
        """The source of the candidate rows."""
        return self.main if self.rewards is None else self.rewards

    @property
    def origin(self) -> str:
        """The candidate rows' name, for messages."""
        return self.cand_source.origin

    @property
    def token_origin(self) -> str:
        """The log-probs' name, for messages."""
        return self.main.origin

    @property
    def read_origin(self) -> str:
        """What a query over the log may read, for messages: the token rows
        and the rewards, when they are two sources."""
        if self.rewards is None:
            return self.origin
        return f"{self.token_origin} or {self.origin}"

    @property
    def paths(self) -> tuple[str, ...]:
        return self.main.paths + (() if self.rewards is None else self.rewards.paths)

    def renamed(self, source: Resolved, piece: Piece | None = None) -> pl.LazyFrame:
        """The rows of ``source`` (one of the log's) under canonical names, with
        the stage of a log without one and text prompt ids as String: a
        Categorical or an Enum prompt is compared, sorted and bounded as its text
        (an Enum's own order is the order of its categories, not the text's), as
        every executor's ranking, joins and shard bounds take them."""
        lf = source.scan(piece)
        renames = {theirs: canon for theirs, canon in self.renames if theirs in dict(source.schema)}
        lf = lf.rename(renames) if renames else lf
        if "stage" in self.numbered:
            lf = lf.with_columns(pl.lit(0, pl.Int64).alias("stage"))
        schema = lf.collect_schema()
        if isinstance(schema.get("prompt"), pl.Categorical | pl.Enum):
            lf = lf.with_columns(pl.col("prompt").cast(pl.String))
        # 128-bit ids as Int64 (numpy has no such integers); one beyond fails the
        # read as "the ids must fit a 64-bit signed integer"
        wide_ints = [n for n in ID_COLUMNS if schema.get(n) in (pl.Int128, pl.UInt128)]
        return lf.with_columns(pl.col(wide_ints).cast(pl.Int64)) if wide_ints else lf

    def _scan(self, source: Resolved, piece: Piece | None) -> pl.LazyFrame:
        lf = self.renamed(source, piece)
        if source is not self.cand_source:
            return lf
        if self.wide:
            lf = _fixed_as_lists(lf, self.wide)
            count = pl.col("reward").list.len()
            schema = lf.collect_schema()
            others = [name for name in self.wide if name != "reward"]
            # a row whose rewards list is null, or whose other lists are not as long
            # (a truncated dump), is one candidate row with null ids: the null-id
            # error (or validate's report) names its prompt
            broken = pl.any_horizontal(
                count.is_null(), *(pl.col(name).list.len() != count for name in others)
            ).fill_null(value=False)
            lf = lf.with_columns(
                pl.when(broken)
                .then(None)
                .otherwise(pl.int_ranges(count).cast(pl.List(pl.Int64)))
                .alias("cand"),
                *(
                    # a candidate-level list that a row lacks (null) is null for each of
                    # the row's candidates, as a key a candidate row lacks is
                    pl.when(broken)
                    .then(None)
                    .otherwise(
                        pl.col(name).fill_null(
                            pl.lit(None, _element(schema[name])).repeat_by(count)
                        )
                    )
                    .alias(name)
                    for name in self.wide
                ),
            ).explode(["cand", *self.wide], empty_as_null=True)  # no candidates: null ids
        elif "cand" in self.numbered:
            position = pl.int_range(pl.len(), dtype=pl.Int64).over(["stage", "prompt"])
            if piece is not None and piece.offsets is not None:
                offsets = piece.offsets.lazy()
                lf = lf.join(offsets, on=["stage", "prompt"], how="left", maintain_order="left")
                position = position + pl.col("_offset").fill_null(0)
            lf = lf.with_columns(position.alias("cand"))
        return lf

    def keys(self, piece: Piece | None = None) -> pl.LazyFrame:
        """``stage, prompt, cand, reward`` of the candidate rows: ids in the
        source's own types, the reward as Float64."""
        return self._scan(self.cand_source, piece).select(*ID_COLUMNS, _REWARD)

    def candidates(self, piece: Piece | None = None, *, extras: bool = True) -> pl.LazyFrame:
        """Canonical candidate rows: ``stage, prompt, cand, reward``, ``logprobs``
        (nested layout), then the extra columns."""
        lf = self._scan(self.cand_source, piece)
        schema = lf.collect_schema()
        nested = self.layout == "nested" and self.has_logprobs
        lists = [_as_list("logprobs", schema["logprobs"], pl.Float64())] if nested else []
        return lf.select(*canonical_ids(schema), _REWARD, *lists, *(self.extras if extras else ()))

    def tokens(self, piece: Piece | None = None, *, raw: bool = False) -> pl.LazyFrame:
        """Long layout: token rows ``stage, prompt, cand, logprob`` (and ``token``
        when present and not ``raw``); ``raw`` keeps the source's id types."""
        assert self.layout == "long"
        lf = self._scan(self.main, piece)
        if raw:
            return lf.select(*ID_COLUMNS, "logprob")
        token = ["token"] if self.has_token else []
        return lf.select(*canonical_ids(lf.collect_schema()), "logprob", *token)

    def collect(self, query: pl.LazyFrame) -> pl.DataFrame:
        """Run ``query`` on the streaming engine; report unreadable input clearly."""
        with reading(self.paths, self.read_origin):
            return query.collect(engine="streaming")

    def batches(
        self, query: pl.LazyFrame, files: Sequence[str] = ()
    ) -> Generator[pl.DataFrame, None, None]:
        """Run ``query`` on the streaming engine batch by batch (bounded memory);
        report unreadable input clearly. ``files``: the Parquet files it reads,
        whose row groups bound how far ahead Polars decodes
        (:func:`bounded_read_ahead`)."""
        row = row_bytes(query.collect_schema()) if files else 0
        with reading(self.paths, self.read_origin), bounded_read_ahead(files, row):
            yield from _stream.batches(query)


_READ_AHEAD = "POLARS_ROW_GROUP_PREFETCH_SIZE"
_READ_AHEAD_ROWS = 2 << 20  # rows of row groups decoded ahead of the consumer, at most
_POLARS_READ_AHEAD = 8  # row groups Polars decodes ahead on its own (2 cores: 9)
_NARROW_ROW = 16  # bytes of a decoded token row of narrow ids (the 2 Mi rows' width)
_TEXT_BYTES = 32  # a decoded string: its 16-byte view and (beyond 12 bytes) its data


def row_bytes(schema: Mapping[str, pl.DataType]) -> int:
    """About how many bytes a decoded row of ``schema`` takes in memory."""
    total = 0
    for dtype in schema.values():
        width = next((w for kind, w in _WIDTHS if dtype == kind), None)
        total += width if width is not None else 8 if dtype.is_numeric() else _TEXT_BYTES
    return total


_WIDTHS = (
    (pl.Int8, 1), (pl.UInt8, 1), (pl.Boolean, 1), (pl.Int16, 2), (pl.UInt16, 2),
    (pl.Int32, 4), (pl.UInt32, 4), (pl.Float32, 4), (pl.Decimal, 16), (pl.Int128, 16),
)  # fmt: skip


@contextmanager
def bounded_read_ahead(files: Sequence[str], row: int = _NARROW_ROW) -> Iterator[None]:
    """Bound Polars' read-ahead over ``files`` to about 2 Mi rows of narrow ids
    (32 MiB of decoded rows of ``row`` bytes) while the block runs.

    Polars decodes about 9 row groups ahead of whoever takes its batches; of
    1 Mi-row groups (pyarrow's default) that held 600 MiB more than the token
    pass needs (1.1 GiB at 692 M token rows, 490-570 MiB with 2 ahead, in the
    same time). Polars reads the bound from the environment as each file's reader
    starts, so it is set for the whole block (for the process: another Polars
    query running at the same time gets it too), from the row groups of the
    first file; not when the user set it, nor for row groups small enough,
    nor for files that are not local."""
    first = files[0] if files else None
    rows = None
    with _AHEAD_LOCK:
        theirs = _READ_AHEAD in os.environ and not _AHEAD_SET
    if first is not None and not theirs and os.path.isfile(first):
        from raft_polars._engine.pages import largest_row_group

        rows = largest_row_group(first)
    budget = _READ_AHEAD_ROWS * _NARROW_ROW
    ahead = max(1, budget // (rows * max(row, _NARROW_ROW))) if rows else _POLARS_READ_AHEAD
    if ahead >= _POLARS_READ_AHEAD:
        yield
        return
    with _AHEAD_LOCK:  # passes side by side (side_by_side): the last one out unsets it
        _AHEAD_SET.append(ahead)
        os.environ[_READ_AHEAD] = str(min(_AHEAD_SET))
    try:
        yield
    finally:
        with _AHEAD_LOCK:
            _AHEAD_SET.remove(ahead)
            if _AHEAD_SET:
                os.environ[_READ_AHEAD] = str(min(_AHEAD_SET))
            else:
                os.environ.pop(_READ_AHEAD, None)


_AHEAD_LOCK = threading.Lock()
_AHEAD_SET: list[int] = []  # the bounds of the blocks running now, set by this module


def file_pieces(log: StageLog, piece: Piece | None) -> list[Piece | None]:
    """``piece`` (or the whole candidate source of ``log``) as pieces of whole
    files of about equal bytes, one for each Polars thread a file's row groups
    leave idle, to be read :func:`side_by_side`; else ``[piece]``.

    Polars decodes the list column of a row group on one thread, and the row
    groups of one file side by side but the files one after another: nested
    rows in files of one row group each (as DuckDB and Polars write files
    smaller than their row groups) were read on one core, 8.0 s where DuckDB
    took 4.5 s at 692 M log-probs. Only local Parquet files that Polars reads,
    whole; not numbered candidates, whose ids depend on every row read before
    them (a piece numbered its own from 0: the loss of other candidates)."""
    source = log.cand_source
    whole = source.frame is None and not source.remote and source.kind == "parquet"
    if not whole or source.strict is not None or "cand" in log.numbered:
        return [piece]
    if piece is not None and (piece.rows is not None or piece.offsets is not None):
        return [piece]
    chosen = tuple(range(len(source.files))) if piece is None else piece.files
    threads = pl.thread_pool_size()
    if len(chosen) < 2 or threads < 2:
        return [piece]
    from raft_polars._engine.pages import row_groups

    groups = row_groups(source.files[chosen[0]].path)
    if not groups or len(groups) >= threads:
        return [piece]
    count = min(len(chosen), -(-threads // len(groups)))
    try:
        sizes = [os.path.getsize(source.files[i].path) for i in chosen]
    except OSError:  # gone: the read names it
        return [piece]
    ends = list(itertools.accumulate(sizes))  # piece k ends where 1/count of the bytes is
    cuts = [0]
    for k in range(1, count):
        end = next(i + 1 for i, at in enumerate(ends) if at * count >= ends[-1] * k)
        cuts.append(min(max(end, cuts[-1] + 1), len(chosen) - (count - k)))
    cuts.append(len(chosen))
    return [Piece(chosen[lo:hi]) for lo, hi in itertools.pairwise(cuts)]


def side_by_side(pieces: Sequence[P], run: Callable[[P], T]) -> list[T]:
    """``run`` on each piece, in threads of their own when there are several
    (Polars' work in them runs on its own threads, the compiled loops without
    the GIL), their results in order; an error is raised once all have ended."""
    if len(pieces) == 1:
        return [run(pieces[0])]
    import contextvars
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(pieces), thread_name_prefix="raft-polars-piece") as pool:
        futures = [pool.submit(contextvars.copy_context().run, run, p) for p in pieces]
        return [future.result() for future in futures]


def _check_threads() -> None:
    """Raise where ``POLARS_MAX_THREADS`` is 0: Polars starts, and its reader then
    fails on the first file (``Worker threads cannot be set to 0``), which read
    as a fault of the file; or where ``NUMBA_NUM_THREADS`` is a whole number
    below 1, which numba refuses at its import (in the thread that loads the
    compiled loops ahead, where the error was lost, and the loops then missing)."""
    value = os.environ.get("POLARS_MAX_THREADS", "").strip()
    if re.fullmatch(r"\+?0+", value):  # ASCII zeros: what Polars parses as 0
        msg = (
            f"the environment sets POLARS_MAX_THREADS={value!r}: Polars' reader needs at "
            "least 1 thread; unset it, or set it to the number of threads to use"
        )
        raise RaftPolarsError(msg)
    value = os.environ.get("NUMBA_NUM_THREADS", "")
    try:
        below = int(value) < 1  # as numba reads it; what int() refuses, numba ignores
    except ValueError:
        below = False
    if below:
        msg = (
            f"the environment sets NUMBA_NUM_THREADS={value!r}: numba, which runs the "
            "compiled loops, needs at least 1 thread; unset it, or set it to the number "
            "of threads to use"
        )
        raise RaftPolarsError(msg)


def read_log(
    source: Source,
    *,
    rewards: Source | None = None,
    columns: Mapping[str, str] | None = None,
    preset: Preset | None = None,
    storage_options: Mapping[str, str] | None = None,
) -> StageLog:
    """Read a stage log, in either layout, into a canonical :class:`StageLog`.

    Parameters
    ----------
    source
        A Parquet path, a glob, a directory (Hive partitions such as
        ``stage=3/part-0.parquet`` included), a list of paths, a polars
        ``DataFrame`` / ``LazyFrame`` or a ``pyarrow.Table``. Without ``rewards``
        it is in the nested layout (one row per candidate with a ``logprobs``
        list); with ``rewards`` it holds the token rows of the long layout.
    rewards
        Long layout: the candidate rows ``stage, prompt, cand, reward``, as any
        of the source kinds above.
    columns
        Maps canonical names to the user's own, e.g.
        ``{"prompt": "prompt_id", "logprobs": "token_logprobs"}``. A column that
        already has a canonical name another column is mapped onto is kept, moved
        aside: ``prompt`` to ``prompt_text`` (text), others to ``<name>_original``.
    preset
        ``"verl"``, ``"trl"``, ``"openrlhf"`` or ``"rlhflow"``: the column names of
        that pipeline's dumps (:data:`PRESETS`), under ``columns=``.
    storage_options
        For object store paths (``s3://``, ``gs://``, ``az://``, ``hf://``): passed
        to Polars' cloud readers (else the usual environment variables apply).

    Returns
    -------
    StageLog

    Raises
    ------
    RaftInputError
        A file is missing or unreadable, a column is missing or of the wrong type.
    RaftPolarsError
        ``POLARS_MAX_THREADS`` is 0.
    """
    _check_threads()
    given = _check_mapping(columns)
    _check_storage_options(storage_options)
    main = resolve(source, "source", storage_options)
    cands = None if rewards is None else resolve(rewards, "rewards", storage_options)
    mapping = given
    if preset is not None:
        if not isinstance(preset, str) or preset not in PRESETS:
            msg = f"preset must be one of {sorted(PRESETS)}, got {preset!r}"
            raise RaftInputError(msg)
        # the preset's names the log has, in either table of the long layout
        present = {n for frame in (main, cands) if frame is not None for n, _ in frame.schema}
        mapping = {**{k: v for k, v in PRESETS[preset].items() if v in present}, **given}
        scored = main if cands is None else cands  # the candidate rows
        schema = dict(scored.schema)
        if preset == "trl" and "reward" not in mapping and "reward" not in schema:
            # not a reward function: TRL's own columns, the canonical ones (a
            # log's own cand, or stage moved aside by stage=step) and the
            # columns mapped onto them (ids, log-probs)
            used = {*_TRL_NOT_REWARDS, *CANONICAL_COLUMNS, *mapping.values()}
            summed = tuple(n for n, t in schema.items() if t.is_numeric() and n not in used)
            if not summed:
                msg = f"{scored.origin}: preset 'trl' found no reward columns in {list(schema)}"
                raise RaftInputError(msg)
            if cands is None:
                main = _summed_reward(main, summed)
            else:
                cands = _summed_reward(cands, summed)
    main_schema = dict(main.schema)
    if cands is None:
        return _candidate_rows(main, mapping)
    cand_schema = dict(cands.schema)
    # what columns= names must exist; a preset's names are taken where they are
    _check_mapped(given, (*ID_COLUMNS, "token", "logprob"), main_schema, main.origin)
    _check_mapped(given, CANDIDATE_COLUMNS, cand_schema, cands.origin)
    cschema = _renamed(cand_schema, mapping, cands.origin)
    tschema = _renamed(main_schema, mapping, main.origin)
    numbered: tuple[str, ...] = ()
    if "stage" not in cschema and "stage" not in tschema:  # one stage, 0
        numbered = ("stage",)
        cschema["stage"] = tschema["stage"] = pl.Int64()
    _require(cschema, CANDIDATE_COLUMNS, cands.origin)
    # the rewards' own "token", "logprob" or "logprobs" columns are payload
    cand_columns = {k: v for k, v in cschema.items() if k in CANDIDATE_COLUMNS}
    _check_types(cand_columns, cands, _renames(mapping, cand_schema), nested=False)
    _require(tschema, (*ID_COLUMNS, "logprob"), main.origin)
    _check_types(tschema, main, _renames(mapping, main_schema), nested=False)
    for name in ID_COLUMNS:
        if _id_kind(cschema[name]) != _id_kind(tschema[name]):
            msg = (
                f"column {name!r} has type {tschema[name]} in the token rows "
                f"({main.origin}) but {cschema[name]} in the rewards ({cands.origin}); "
                "ids must be of the same kind in both"
            )
            raise RaftInputError(msg)
    extras = tuple(c for c in cschema if c not in CANDIDATE_COLUMNS)  # theirs, any name
    renames = tuple(sorted(set(_renames(mapping, main_schema) + _renames(mapping, cand_schema))))
    return _no_lone_surrogates(
        StageLog(
            "long",
            main,
            cands,
            renames,
            extras,
            _prompt_type(cschema),
            has_token="token" in tschema,
            numbered=numbered,
        )
    )


def _no_lone_surrogates(log: StageLog) -> StageLog:
    """``log``, whose text ids Polars reads as written: an escaped lone surrogate
    in a local JSON lines file's text id column (Polars reads a high one as NUL,
    so that different ids would read as one) is an error naming the file, the
    line and the column. Only files with such a column are scanned."""
    renames = dict(log.renames)
    for source in (log.main, log.rewards):
        if source is None or source.kind != "ndjson" or source.remote:
            continue
        texts = {
            column: renames.get(column, column)
            for column, dtype in source.schema
            if renames.get(column, column) in ID_COLUMNS and dtype == pl.String
        }
        for path in source.paths if texts else ():
            for column, _, line in lone_surrogates(path):
                if column in texts:
                    msg = (
                        f"cannot read JSON lines file {path!r}: line {line}: the "
                        f"{texts[column]} id (column {column!r}) holds an escaped lone "
                        "surrogate (such as \\ud83d, half of a character): Polars reads it "
                        "as NUL, so that different ids would read as one; replace it "
                        "(with \\ufffd, say)"
                    )
                    raise RaftInputError(msg)
    return log


def _summed_reward(source: Resolved, columns: tuple[str, ...]) -> Resolved:
    """``source`` with a ``reward`` column, the sum of ``columns`` (TRL logs one
    column per reward function), read as the source is."""
    frame = source.frame
    if frame is None:
        from raft_polars._engine.sources import summing

        return summing(source, columns)
    added = frame.with_columns(summed_reward(columns))
    return replace(source, frame=added, schema=(*source.schema, ("reward", pl.Float64())))


def _candidate_rows(main: Resolved, mapping: dict[str, str]) -> StageLog:
    """A log of candidate rows (nested), or of prompt rows with a list of rewards
    (wide), with or without log-probs, stage and candidate ids."""
    raw_schema = dict(main.schema)
    # the names of the long layout's token rows are not these rows': a "token" or
    # "logprob" column here is payload, as a mapping onto them is not applied
    listed = mapping.get("logprob", "logprob")
    mapping = {canon: theirs for canon, theirs in mapping.items() if canon in NESTED_COLUMNS}
    _check_mapped(mapping, NESTED_COLUMNS, raw_schema, main.origin)
    renames = _renames(mapping, raw_schema)
    schema = _renamed(raw_schema, mapping, main.origin)
    if (
        "reward" not in mapping
        and "cand" not in schema  # candidate rows: a rewards list is theirs (components)
        and isinstance(schema.get("rewards"), pl.List | pl.Array)
        and "reward" in schema
        and not isinstance(schema["reward"], pl.List | pl.Array)
    ):
        msg = (
            f"{main.origin} has a column 'reward' (one value a row) and 'rewards' (a list "
            "a row): say which holds the candidates' rewards, columns={'reward': 'rewards'} "
            "for one row per prompt (CLI --column reward=rewards), or "
            "columns={'reward': 'reward'} for one row per candidate"
        )
        raise RaftInputError(msg)
    if "cand" not in schema and "reward" not in schema and schema.get("rewards") == pl.Null:
        schema["rewards"] = pl.List(pl.Null)  # JSON lines' type of a key null in every row
    if "reward" not in schema and isinstance(schema.get("rewards"), pl.List | pl.Array):
        renames += (("rewards", "reward"),)  # the wide layout's usual name
        schema = {("reward" if k == "rewards" else k): v for k, v in schema.items()}
    wide: tuple[str, ...] = ()
    rows = isinstance(schema.get("reward"), pl.List | pl.Array) and "cand" not in schema
    if rows:  # one row per prompt
        wide = _wide_columns(main, renames, schema)
        lists = schema.get("logprobs")
        if lists is not None and _element(lists).is_numeric():
            msg = (
                f"{main.origin}: column 'logprobs' must hold a list of numbers for each "
                f"candidate (a list of lists: one row a prompt, its rewards a list), found "
                f"{lists}: a list of numbers a row"
            )
            raise RaftInputError(msg)
        schema = {k: _element(v) if k in wide else v for k, v in schema.items()}  # fmt: skip
        schema["cand"] = pl.Int64()
    numbered = tuple(name for name in ("stage", "cand") if name not in schema)
    if "prompt" in schema and "reward" in schema:
        for name in numbered:
            schema[name] = pl.Int64()
    _require(schema, CANDIDATE_COLUMNS, main.origin, hint_long="logprob")
    has_logprobs = "logprobs" in schema
    found = raw_schema.get(listed)
    if rows and found is not None:  # a prompt's row: a list per candidate
        # is each one's log-probs; a list of another length is the prompt's payload
        found = _element(found) if listed in wide else None
    if not has_logprobs and isinstance(found, pl.List | pl.Array):
        msg = (
            f"{main.origin} (candidate rows: no rewards= given) has no 'logprobs' column "
            f"but a list column {listed!r}: name it, columns={{'logprobs': {listed!r}}} "
            f"(CLI --column logprobs={listed})"
        )
        raise RaftInputError(msg)
    _check_types(
        {k: v for k, v in schema.items() if k in NESTED_COLUMNS}, main, renames, nested=has_logprobs
    )
    extras = tuple(c for c in schema if c not in NESTED_COLUMNS)
    return _no_lone_surrogates(StageLog(
        "nested", main, None, renames, extras, _prompt_type(schema),
        has_logprobs=has_logprobs, wide=wide, numbered=numbered,
    ))  # fmt: skip


def _check_storage_options(options: object) -> None:
    """``storage_options=``: None, or a mapping of option names to strings (as
    Polars' cloud readers take them)."""
    if options is None:
        return
    if not isinstance(options, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in options.items()
    ):
        msg = (
            "storage_options= must map option names to strings, like "
            f"{{'aws_endpoint_url': 'http://127.0.0.1:5055'}}; got {options!r}"
        )
        raise RaftInputError(msg)


def _element(dtype: pl.DataType) -> pl.DataType:
    """The element type of a list column (or of a fixed-size one)."""
    inner = dtype.inner if isinstance(dtype, pl.List | pl.Array) else dtype
    return inner() if isinstance(inner, type) else inner


def _fixed_as_lists(lf: pl.LazyFrame, names: Sequence[str]) -> pl.LazyFrame:
    """``lf`` with its columns among ``names`` as lists (:func:`_as_list`): wide
    rows of Arrow's ``fixed_size_list`` or Polars' ``Array``, as a writer of K
    candidates a prompt may store them, and columns of nulls only."""
    schema = lf.collect_schema()
    return lf.with_columns(_as_list(n, schema[n], pl.Null()) for n in names if n in schema)


# wide list columns that hold one value per candidate whatever their lengths say
_PER_CANDIDATE = ("logprobs", "responses", "completions", "generations", "outputs")


def _wide_columns(
    main: Resolved, renames: tuple[tuple[str, str], ...], schema: dict[str, pl.DataType]
) -> tuple[str, ...]:
    """The list columns of wide rows that hold one value per candidate: ``reward``,
    ``logprobs`` (a list of lists) and every other list column but the ids
    (``stage``, ``prompt``: the row's own) as long as the rewards in most (nine in
    ten) of the first rows (read here, 1,000 at most), or named as such
    (``responses`` ...). A row whose list is shorter (a truncated dump) then fails
    the read, where it made the column prompt-level for every row, each exported
    response the whole list."""
    lists = [  # a row's ids are the row's: a list there is a wrong type, not K ids
        n
        for n, t in schema.items()
        if isinstance(t, pl.List | pl.Array) and n not in ("reward", "stage", "prompt")
    ]
    if not lists:
        return ("reward",)
    sample = _fixed_as_lists(main.scan().rename(dict(renames)).head(1000), ["reward", *lists])
    try:
        lengths = sample.select(
            *((pl.col(n).list.len() == pl.col("reward").list.len()).mean().alias(n) for n in lists)
        ).collect()
    except READ_ERRORS:
        return ("reward", *(n for n in lists if n == "logprobs"))
    share = {n: lengths[n][0] for n in lists}  # None: no row holds both lists
    return (
        "reward",
        *(n for n in lists if n in _PER_CANDIDATE or share[n] is None or share[n] >= 0.9),
    )


def _prompt_type(schema: Mapping[str, pl.DataType]) -> pl.DataType:
    return pl.Int64() if schema["prompt"].is_integer() else pl.String()


def _as_list(name: str, dtype: pl.DataType, nulls: pl.DataType) -> pl.Expr:
    """Column ``name`` of type ``dtype`` as a List: a fixed-size Array cast to the
    list of its elements, a column of nulls only (typed Null, or a list of Null
    by JSON inference) to a list of ``nulls``, any other column as it is."""
    column = pl.col(name)
    if dtype == pl.Null or (isinstance(dtype, pl.List | pl.Array) and dtype.inner == pl.Null):
        return column.cast(pl.List(nulls))
    if isinstance(dtype, pl.Array):
        return column.cast(pl.List(_element(dtype)))
    return column


def float_type(dtype: pl.DataType) -> pl.DataType:
    """The type the compiled loops read numbers of ``dtype`` as (log-probs):
    Float32 and Float64 as they are, any other numeric type (integers,
    decimals, Float16, which numba does not read) widened to Float64, as every
    sum is done in float64."""
    return dtype if dtype in (pl.Float32, pl.Float64) else pl.Float64()


def canonical_ids(schema: Mapping[str, pl.DataType]) -> list[pl.Expr]:
    """Ids as Int64 (stage, cand, integer prompts) or String (other prompts), so
    that the token rows and the rewards always join."""
    return [
        pl.col("stage").cast(pl.Int64),
        pl.col("prompt").cast(_prompt_type(schema)),
        pl.col("cand").cast(pl.Int64),
    ]


def _check_mapping(columns: Mapping[str, str] | None) -> dict[str, str]:
    if columns is not None and not isinstance(columns, Mapping):
        msg = (
            f"columns= must map canonical names to yours, like {{'prompt': 'prompt_id'}}; "
            f"got {type(columns).__name__}"
        )
        raise RaftInputError(msg)
    mapping = dict(columns or {})
    targets = list(mapping.values())
    named = [t for t in targets if not isinstance(t, str)]
    if named:
        msg = f"columns= must map canonical names to column names (strings), got {named[0]!r}"
        raise RaftInputError(msg)
    repeated = sorted({t for t in targets if targets.count(t) > 1})
    if repeated:
        msg = f"columns= must map each canonical name to a different column name, got {mapping}"
        raise RaftInputError(msg)
    unknown = sorted(set(mapping) - set(CANONICAL_COLUMNS))
    if unknown:
        msg = (
            f"columns= maps unknown canonical names {unknown}; "
            f"canonical names are {list(CANONICAL_COLUMNS)}"
        )
        raise RaftInputError(msg)
    return mapping


def _check_mapped(
    mapping: dict[str, str], used: Sequence[str], present: Mapping[str, object], origin: str
) -> None:
    """Every name ``columns=`` maps a ``used`` canonical name to must exist: a typo
    must not go unnoticed (``token`` is optional, so it may be absent)."""
    absent = sorted(
        theirs
        for canon, theirs in mapping.items()
        if canon in used and canon != "token" and theirs not in present
    )
    if absent:
        msg = (
            f"columns= maps to {absent}, not found in {origin}; columns present: {sorted(present)}"
        )
        raise RaftInputError(msg)


def _renames(mapping: dict[str, str], schema: Mapping[str, object]) -> tuple[tuple[str, str], ...]:
    """The source's names to canonical ones, and the columns already called by a
    canonical name that another column is mapped onto, moved aside: a text column
    to ``<name>_text`` (``prompt`` beside ``prompt_id``: the prompt text), any
    other to ``<name>_original`` (a trailing ``_`` more while the name is taken)."""
    renames = [
        (theirs, canon)
        for canon, theirs in sorted(mapping.items())
        if theirs in schema and theirs != canon
    ]
    moved = {theirs for theirs, _ in renames}
    taken = set(schema) | {canon for _, canon in renames}
    for _, canon in list(renames):
        if canon in schema and canon not in moved:
            aside = f"{canon}_text" if schema[canon] == pl.String else f"{canon}_original"
            while aside in taken:
                aside += "_"
            taken.add(aside)
            renames.append((canon, aside))
    return tuple(renames)


def _renamed(
    schema: dict[str, pl.DataType], mapping: dict[str, str], origin: str
) -> dict[str, pl.DataType]:
    renames = dict(_renames(mapping, schema))
    return {renames.get(name, name): dtype for name, dtype in schema.items()}


def _require(
    schema: Mapping[str, pl.DataType],
    names: Sequence[str],
    origin: str,
    hint_long: str | None = None,
) -> None:
    missing = [c for c in names if c not in schema]
    if missing:
        msg = f"{origin}: missing column(s) {missing}; columns present: {list(schema)}"
        if hint_long is not None and hint_long in schema:
            msg += (
                "; this looks like token rows of the long layout: pass the "
                "rewards table with rewards="
            )
        else:
            msg += "; map your own names with columns={'canonical': 'yours'}"
        raise RaftInputError(msg)


def _id_kind(dtype: pl.DataType) -> str:
    return "integer" if dtype.is_integer() else "string"


def _check_types(
    schema: Mapping[str, pl.DataType],
    source: Resolved,
    renames: Sequence[tuple[str, str]],
    *,
    nested: bool,
) -> None:
    """Each canonical column of ``schema`` (``source``'s, renamed by ``renames``)
    of its kind; the error names the part whose type is not, when the source's
    parts differ (their types merged: an integer prompt in one, a float in
    another)."""
    theirs = {canon: their for their, canon in renames}

    def check(name: str, expected: str, ok: Callable[[pl.DataType], bool]) -> None:
        if name not in schema or ok(schema[name]):
            return
        found = f"{schema[name]}"
        parts = _parts_of_type(source, theirs.get(name, name), ok)
        if parts:
            found = f"{parts[0][1]} in {parts[0][0]!r}"
            if len(parts) > 1:
                others = ", ".join(f"{kind} in {path!r}" for path, kind in parts[1:4])
                more = f", and {len(parts) - 4} more" if len(parts) > 4 else ""
                found += f" (also {others}{more}; {len(parts)} of {len(source.files)} parts)"
        elif theirs.get(name, name) in dict(source.hive):
            found = _hive_text(source, theirs.get(name, name)) or found
        their = theirs.get(name, name)  # the log's own name first
        label = repr(name) if their == name else f"{their!r} (read as {name!r})"
        hint = ""
        listed = isinstance(schema[name], pl.List | pl.Array)
        if name == "reward" and listed and theirs.get("cand", "cand") in dict(source.schema):
            hint = (
                "; a row with a 'cand' column is one candidate (for one row a prompt, "
                "its rewards a list, leave 'cand' out: the list positions are the ids)"
            )
        raise RaftInputError(
            f"{source.origin}: column {label} must be {expected}, found {found}{hint}"
        )

    # a column of nulls only (typed Null by JSON lines' inference: every rewards list
    # of wide rows empty) passes: the checks of the values name its first row
    def text(dtype: pl.DataType) -> bool:
        return dtype.is_integer() or isinstance(
            dtype, pl.String | pl.Categorical | pl.Enum | pl.Null
        )

    def numbers(dtype: pl.DataType) -> bool:
        if isinstance(dtype, pl.List | pl.Array):
            return dtype.inner.is_numeric() or dtype.inner == pl.Null
        return dtype == pl.Null

    for name in ("stage", "cand", "token"):
        check(name, "an integer", lambda dtype: dtype.is_integer() or dtype == pl.Null)
    check("prompt", "an integer or a string", text)
    for name in ("reward", "logprob"):
        check(name, "numeric", lambda dtype: dtype.is_numeric() or dtype == pl.Null)
    if nested:
        check("logprobs", "a list of numbers", numbers)


def _hive_text(source: Resolved, key: str) -> str | None:
    """Which Hive directory made the key ``key`` text: the first whose value is
    not a 64-bit integer (a key is read as integers when every value is one)."""
    values = hive_values(source.files, key)
    text = hive_not_integer(values)
    if not text.any():
        return None
    at = int(text.arg_true()[0])
    return (
        f"text: the directory '{key}={values[at]}' of {source.files[at].path!r} is not a "
        f"64-bit integer (a Hive key is read as integers when every directory's value is one)"
    )


def _parts_of_type(
    source: Resolved, column: str, ok: Callable[[pl.DataType], bool]
) -> list[tuple[str, pl.DataType]]:
    """The local parts of ``source`` whose own ``column`` fails ``ok``, and their
    types, in order: none for one part, a frame or an object store (their types
    are the ones given), or when a part's schema cannot be read."""
    if source.frame is not None or source.remote or len(source.files) < 2:
        return []
    found = []
    for part in source.files:
        try:
            kind = file_schema(part.path).get(column)
        except RaftInputError:
            return []
        if kind is not None and kind != pl.Null and not ok(kind):  # all-null: any type
            found.append((part.path, kind))
    return found
    for part in source.files:
        try:
            kind = file_schema(part.path).get(column)
        except RaftInputError:
            return None
        if kind is not None and kind != pl.Null and not ok(kind):  # all-null: any type
            return part.path, kind
    return None
