"""The kernels of ``validate``: every problem of a log, counted and located.

Like the loss kernels they run on one partition and return small partials that
add up: :func:`check_candidates` on whole prompts (whole stages for the global
ranking), :func:`token_part` on any piece of the long layout's token rows,
:func:`combine_runs`, :func:`finish_long` and :func:`empty_stages` once, on the
combined partials. Each finding keeps its count, how many places hold it and its
first ``limit`` locations in ``stage, prompt, cand`` order.

The token rows (and a nested log) are decoded once, by pyarrow with page
checksums verified (:class:`StrictParquet`, a Polars source): the strict read
that names a corrupt file and the checks of its rows are one pass, in memory
bounded by a record batch and the per-response partials. The long layout's
reward files, O(candidates), are decoded twice (:func:`read_checked`): Polars
reads the rows, pyarrow checks the files (:func:`strict_read`).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Collection, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from itertools import accumulate
from threading import local
from typing import Any

import polars as pl

from raft_polars._engine import _stream
from raft_polars._engine.checks import bad_logprob, bad_reward
from raft_polars._engine.dense import NUMPY_INTS
from raft_polars._engine.rank import apply_min_reward, dense_summary, select
from raft_polars._engine.read import ID_COLUMNS, StageLog, canonical_ids, float_type
from raft_polars._engine.sources import Piece, Resolved, reading
from raft_polars._progress import Meter
from raft_polars.errors import RaftInputError
from raft_polars.selection import Selection

__all__ = [
    "CandidatePart",
    "Checked",
    "Findings",
    "Responses",
    "StrictParquet",
    "TokenPart",
    "check_candidates",
    "checked_rows",
    "combine_runs",
    "empty_stages",
    "finish_long",
    "json_id_files",
    "json_ids",
    "nested_columns",
    "read_checked",
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
    skipped: list[str] = field(default_factory=list)  # checks not made, and why

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
            self.skipped += [note for note in other.skipped if note not in self.skipped]
            for kind, (count, places, first) in other.found.items():
                self.merge_one(kind, count, places, first)
        return self


# the flag of wide rows that hold no candidates as written (:func:`checked_rows`)
_BROKEN = "broken_row"


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


def checked_rows(log: StageLog, piece: Piece | None = None) -> pl.LazyFrame:
    """The candidate rows of ``piece`` (all when None) that :func:`check_candidates`
    checks: ids and reward, with their token statistics when nested."""
    rows = log.candidates(piece, extras=False)
    if log.layout != "nested":
        return rows.select(*_IDS, "reward")
    checked = nested_columns(rows, has_logprobs=log.has_logprobs)
    if log.wide:  # a row per prompt whose lists do not hold its candidates (one empty,
        # null, or shorter than the rewards) is one candidate row with null ids and
        # null lists, reported as its null id alone, not as a null reward and list too
        broken = pl.col("cand").is_null()
        checked = checked.with_columns(
            (pl.col("null_list") & ~broken).alias("null_list"), broken.alias(_BROKEN)
        )
    return checked


def read_checked(log: StageLog, piece: Piece | None = None) -> pl.DataFrame:
    """:func:`checked_rows`, decoded by Polars: each executor's read of the long
    layout's candidate rows, whose files :func:`strict_read` checks apart (the
    frame Polars builds from pyarrow's batches held 2.6 times the memory of its
    own read: 345 against 134 MiB for 2.6 M candidates with text prompt ids, the
    largest part of ``validate``'s peak at 692 M token rows). Rows that Polars
    cannot decode (a page its decoder refuses or panics on) are read by the
    strict reader, which reads on past a bad page."""
    try:
        return log.collect(checked_rows(log, piece))
    except RaftInputError:
        if not strict_paths(log):  # no local Parquet file: nothing reads it otherwise
            raise
        return log.collect(checked_rows(strictly(log, StrictParquet()), piece))


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
    [coded], texts = _coded(cands)  # text ids as integers: no hash table of strings
    ids = _per_candidate(coded)
    dups = _texts(ids.filter(pl.col("rows") > 1).select(*_IDS, "rows"), texts)
    found.add("duplicate_candidate", dups.height, dups)
    broken = pl.col(_BROKEN) if _BROKEN in cands.columns else pl.lit(value=False)
    bad = cands.filter(_bad_reward() & ~broken).select(*_IDS, "reward")
    found.add("bad_reward", bad.height, bad)
    sound = ids.filter(pl.col("reward").is_not_null()).select(*_IDS, "reward")
    chosen = _chosen(sound, selection, texts)
    del sound
    prompts = _distinct(coded.drop_nulls(["stage", "prompt"]), ("stage", "prompt"))
    del coded
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
        known = _narrow(_texts(ids.select(_IDS), texts))  # held through the token pass
    trim()
    return CandidatePart(found, chosen, stages, prompts, cands.height, tokens, stage_tokens, known)


def _coded(*frames: pl.DataFrame) -> tuple[list[pl.DataFrame], dict[str, pl.Series]]:
    """The frames with their text ids as integer codes (the same code for the
    same text in every frame, numbered as the texts first appear, so that rows
    in order keep their codes in order), and the texts of each coded id, a
    code's text at its position (:func:`_texts`): group-bys, joins and order
    checks of millions of ids then take the integer ways (packed keys, merges,
    no grouping of sorted rows), where hash tables of strings held 500 MiB at
    2.6 M candidates."""
    out, texts = list(frames), {}
    for c in _IDS:
        if not all(f.schema[c] == pl.String for f in frames):  # text in every frame, or none
            continue
        seen = [f.get_column(c).drop_nulls().unique(maintain_order=True) for f in frames]
        values = pl.concat(seen).unique(maintain_order=True) if len(seen) > 1 else seen[0]
        kind = pl.Enum(values)
        out = [f.with_columns(pl.col(c).cast(kind).to_physical()) for f in out]
        texts[c] = values
    return out, texts


def _texts(frame: pl.DataFrame, texts: Mapping[str, pl.Series]) -> pl.DataFrame:
    """The coded ids of a frame (:func:`_coded`) as their texts again."""
    if not texts:
        return frame
    return frame.with_columns(v.gather(frame.get_column(c)).alias(c) for c, v in texts.items())


def _chosen(
    sound: pl.DataFrame, selection: Selection, texts: Mapping[str, pl.Series]
) -> pl.DataFrame:
    """The ids of the candidates ``selection`` takes from ``sound`` (one row per
    candidate, a finite reward each; text ids coded, ``texts`` from
    :func:`_coded`), as texts again: best-of-K by the rank step's compiled
    kernel where the ids fit a dense box (O(prompts) arrays, where Polars'
    group-by held 100 MiB more at 2.6 M candidates), the rank step's query
    otherwise. Best-of-K ranks within a prompt, on the codes; the other
    strategies rank the texts (the global ranking's ties go to the smallest
    prompt id, which codes in order of appearance do not keep)."""
    if not selection.is_best_of_k:
        return select(_texts(sound, texts).lazy(), selection).select(_IDS).collect()
    summary = dense_summary(sound)
    if summary is None:
        chosen = select(sound.lazy(), selection).collect()
    else:
        chosen = apply_min_reward(summary.select(*_IDS, "reward"), selection)
    return _texts(chosen.select(_IDS), texts)


def _narrow(ids: pl.DataFrame) -> pl.DataFrame:
    """Integer ids in the narrowest integer type that holds their values."""
    return pl.DataFrame(
        [s.shrink_dtype() if s.dtype.is_integer() else s for s in ids.iter_columns()]
    )


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


@dataclass
class Runs:
    """The runs of a piece of token rows (:func:`token_runs`). ``every``: ids,
    ``rows`` and ``clean`` (one run of the positions ``0 .. rows - 1`` without a
    bad log-prob, all that matters of most); ``other``: those that are not
    clean, with ``runs`` (added up per response: more than one), ``rows``,
    ``bad_lp`` and, with positions, ``jumps``, ``first_pos``, ``last_pos``."""

    every: pl.DataFrame
    other: pl.DataFrame


@dataclass
class _Cut:
    """The runs of some consecutive token rows, the last one perhaps going on in
    the rows after: the ids where each begins and their sums (``rows, bad_lp``
    and maybe ``jumps, first_pos, last_pos``: one array of them a sum)."""

    ids: pl.DataFrame
    sums: Any


@dataclass
class _Coded:
    """A batch of token rows whose dictionary-encoded text ids are their codes
    (``frame``), with the dictionary of each (``texts``: distinct values, none
    null): equal codes are equal text, so :func:`_cut` compares integers and
    decodes the ids of the runs alone, where decoding every row to text and
    comparing the texts was two thirds of ``validate``'s CPU time on string ids."""

    frame: pl.DataFrame
    texts: dict[str, pl.Series]

    @property
    def height(self) -> int:
        return self.frame.height

    def renamed(self, renames: Mapping[str, str]) -> _Coded:
        texts = {renames.get(c, c): v.alias(renames.get(c, c)) for c, v in self.texts.items()}
        return _Coded(self.frame.rename(renames), texts)


def _cut(frames: Sequence[pl.DataFrame | _Coded], *, has_position: bool) -> _Cut:
    """The runs of consecutive token rows (``frames``, in order): one compiled
    pass (:func:`_runs.cut`) that compares the ids row by row (Polars compares
    text or null ids) and adds up each run's rows, bad log-probs and, with
    positions, jumps, first and last position."""
    import numpy as np

    from raft_polars._engine import _runs

    state = np.zeros(_runs.STATE, dtype=np.int64)
    starts, done = _scratch(max((f.height for f in frames), default=0))
    width = 5 if has_position else 2
    no_flags, no_values = np.zeros(0, dtype=np.bool_), np.zeros(0, dtype=np.int64)
    ids: list[pl.DataFrame | tuple[Any, ...]] = []  # integer ids as arrays, made a frame once
    sums: list[Any] = []
    before: tuple[Any, ...] | None = None
    for item in frames:
        frame, texts = (item.frame, item.texts) if isinstance(item, _Coded) else (item, {})
        n = frame.height
        if not n:
            continue
        keys = [frame.get_column(c) for c in _IDS]
        stage = prompt = cand = no_values
        start = no_flags
        plain = all(k.dtype.is_integer() and not k.null_count() for k in keys)
        if plain:
            stage, prompt, cand = (k.to_numpy() for k in keys)
        else:  # text or null ids: Polars compares them
            changed = pl.any_horizontal(pl.col(c).ne_missing(pl.col(c).shift(1)) for c in _IDS)
            start = frame.select(changed).to_series().to_numpy()
        token, valid = no_values, no_flags
        if has_position:
            position = _loop_positions(frame.get_column("token"))
            if position.null_count():
                valid = position.is_not_null().to_numpy()
                position = position.fill_null(0)
            token = position.to_numpy()
        logprob = _loop_logprobs(frame.get_column("logprob"))
        first = _ids_at(keys, texts, 0)
        found, ended = _runs.cut(
            stage, prompt, cand, start, before is None or first != before, token, valid,
            logprob.to_numpy(), state, starts, done,
        )  # fmt: skip
        at = starts[:found]
        if plain and not texts:
            ids.append((stage[at], prompt[at], cand[at]))
        elif plain:
            ids.append(_texts(_id_frame((stage[at], prompt[at], cand[at])), texts))
        else:
            ids.append(_own_strings(_texts(frame.select(_IDS)[at], texts)))
        sums.append(done[:width, :ended].copy())
        before = _ids_at(keys, texts, n - 1)
    if state[_runs.OPEN]:
        sums.append(state[_runs.ROWS : _runs.ROWS + width].reshape(width, 1).copy())
    if not ids:
        return _Cut(pl.DataFrame(), np.zeros((width, 0), dtype=np.int64))
    if all(isinstance(part, tuple) for part in ids):
        frame = _id_frame(tuple(np.concatenate(arrays) for arrays in zip(*ids, strict=True)))
    else:
        frame = pl.concat([_id_frame(part) for part in ids], how="vertical")
    return _Cut(frame, np.concatenate(sums, axis=1))


def _loop_logprobs(logprob: pl.Series) -> pl.Series:
    """Log-probs as the compiled cut reads them: floats (other numbers, decimals
    and Float16 among them, as Float64, the type every sum is done in), null as
    NaN."""
    logprob = logprob.cast(float_type(logprob.dtype))
    return logprob.fill_null(float("nan")) if logprob.null_count() else logprob


def _loop_positions(position: pl.Series) -> pl.Series:
    """Token positions as the compiled cut reads them: as they are when numpy
    holds them as int64 values, else (UInt64, 128-bit) as Int64, a position
    beyond it null. A null counts as a jump, so that its response is never
    proven in order by its runs: its own rows are read again
    (:func:`_details`), in the column's type, and its positions reported
    exactly."""
    if position.dtype in NUMPY_INTS and position.dtype != pl.UInt64:
        return position
    return position.cast(pl.Int64, strict=False)


def _ids_at(keys: Sequence[pl.Series], texts: Mapping[str, pl.Series], row: int) -> tuple[Any, ...]:
    """The ids of one row of a batch, coded ones (:class:`_Coded`) decoded."""
    return tuple(texts[k.name][int(k[row])] if k.name in texts else k[row] for k in keys)


_SCRATCH = local()


def _scratch(rows: int) -> tuple[Any, Any]:
    """The thread's buffers for :func:`_runs.cut` of up to ``rows`` rows (the rows
    where runs begin; the sums of runs that end), kept from batch to batch: a
    fresh pair per batch cost the kernel zeroing 2 MiB pages that the loop then
    touched at six places (10 % of validate's CPU time on 512 Ki-row batches).
    Dropped by :func:`token_part` when it is done."""
    import numpy as np

    held: tuple[Any, Any] | None = getattr(_SCRATCH, "held", None)
    if held is None or held[0].shape[0] < rows:
        held = np.empty(rows, dtype=np.int64), np.empty((5, rows), dtype=np.int64)
        _SCRATCH.held = held
    return held


def _own_strings(ids: pl.DataFrame) -> pl.DataFrame:
    """The ids with their text copied: the text of rows taken from a batch is
    views of the batch's buffers, which would keep every batch's text alive
    (600 MiB for 150 K ids from 300 batches, 27 MiB copied)."""
    text = [c for c, kind in ids.schema.items() if kind == pl.String]
    return ids.with_columns(pl.concat_str(pl.col(c), pl.lit("")).alias(c) for c in text)


def _id_frame(part: pl.DataFrame | tuple[Any, ...]) -> pl.DataFrame:
    if isinstance(part, pl.DataFrame):
        return part
    return pl.DataFrame([pl.Series(c, a) for c, a in zip(_IDS, part, strict=True)])


def token_runs(cuts: Iterable[_Cut], *, has_position: bool) -> Runs:
    """The runs of a piece of token rows, from the :func:`_cut` of its rows in
    order: a run that goes on from one to the next is joined up.

    A *run* is a stretch of consecutive rows of one response; a *jump*, a row
    whose position is not the one before plus one (or is null). A run without a
    jump holds the positions ``first_pos .. last_pos``, each once: the proof of
    order of :func:`combine_runs`. Where runs are short (rows not grouped by
    response), those so far are added up per response (``runs`` counts them),
    so that the result stays O(responses).
    """
    names = ["rows", "bad_lp", "jumps", "first_pos", "last_pos"]
    runs = _Runs(names if has_position else names[:2])
    held: _Cut | None = None  # the last run so far, which may go on
    rows = 0  # since the C heap was last trimmed
    meter = Meter("token rows")
    for cut in cuts:
        if not cut.ids.height:
            continue
        sums = cut.sums
        count = int(sums[0].sum())
        meter.add(count)
        rows += count
        if rows >= _TRIM_ROWS:
            trim()
            rows = 0
        if held is not None and held.ids.row(0) == cut.ids.row(0):  # the run goes on
            sums = sums.copy()
            sums[:2, 0] += held.sums[:2, 0]
            if has_position:
                gap = sums[3, 0] != held.sums[4, 0] + 1
                sums[2, 0] += held.sums[2, 0] + gap
                sums[3, 0] = held.sums[3, 0]
        elif held is not None:
            runs.add(held.ids, held.sums)
        k = cut.ids.height - 1
        runs.add(cut.ids.head(k), sums[:, :k])
        held = _Cut(cut.ids.tail(1), sums[:, k:])
    if held is not None:
        runs.add(held.ids, held.sums)
    meter.done()
    return runs.frame()


class _Runs:
    """The runs found so far: the ids and rows of each and, for the few that are
    not clean, their ordinals and sums (a list of arrays a sum). Added up per
    response when they grow faster than the responses do."""

    def __init__(self, names: list[str]) -> None:
        self.names = ["runs", *names]  # the sums of a run that is not clean
        self.kept = 0  # runs held after the last adding up
        self._empty()

    def _empty(self) -> None:
        self.ids: list[pl.DataFrame] = []
        self.rows: list[Any] = []
        self.at: list[Any] = []  # ordinals of the runs that are not clean
        self.sums: list[list[Any]] = [[] for _ in self.names]
        self.count = 0

    def add(self, ids: pl.DataFrame, sums: Any, runs: Any = None) -> None:
        """Runs: their ids, their sums (``rows, bad_lp`` and maybe ``jumps,
        first_pos, last_pos``, a row of ``sums`` each) and how many runs each
        adds up (one when None)."""
        import numpy as np

        count = ids.height
        if not count:
            return
        runs = np.ones(count, dtype=np.int64) if runs is None else runs
        other = (runs != 1) | (sums[1] != 0)
        if len(sums) > 2:  # a jump, or not from position 0
            other |= (sums[2] != 0) | (sums[3] != 0)
        at = np.flatnonzero(other)
        self.ids.append(ids)
        self.rows.append(np.array(sums[0], dtype=np.int64))
        self.at.append(at + self.count)
        for held, values in zip(self.sums, [runs, *sums], strict=True):
            held.append(np.asarray(values, dtype=np.int64)[at])
        self.count += count
        if self.count - self.kept > max(4 * self.kept, _ADD_UP):
            self._add_up()

    def _add_up(self) -> None:
        if _repeated(self.frame().every) is None:  # a run a response so far: none to add up
            self.kept = self.count
            return
        counts = [n for n in self.names if n not in ("first_pos", "last_pos")]
        ends = [pl.col("first_pos").min(), pl.col("last_pos").max()][: len(self.names) - 3]
        added = _whole(self.frame(), self.names).group_by(_IDS).agg(pl.col(counts).sum(), *ends)
        self._empty()
        self.kept = added.height
        sums = added.select(self.names[1:]).to_numpy().T
        self.add(added.select(_IDS), sums, added["runs"].to_numpy())

    def frame(self) -> Runs:
        """Every run."""
        import numpy as np

        def joined(parts: list[Any]) -> Any:
            return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

        if not self.ids:
            kinds = dict.fromkeys(_IDS, pl.Int64)
            every = pl.DataFrame(schema={**kinds, "rows": pl.Int64, "clean": pl.Boolean})
            return Runs(
                every, pl.DataFrame(schema={**kinds, **dict.fromkeys(self.names, pl.Int64)})
            )
        ids = pl.concat(self.ids, how="vertical", rechunk=True)
        at = joined(self.at)
        clean = np.ones(self.count, dtype=np.bool_)
        clean[at] = False
        every = ids.with_columns(pl.Series("rows", joined(self.rows)), pl.Series("clean", clean))
        sums = [pl.Series(n, joined(h)) for n, h in zip(self.names, self.sums, strict=True)]
        return Runs(every, ids[at].hstack(sums))


def _whole(runs: Runs, names: Sequence[str]) -> pl.DataFrame:
    """Every run with the sums ``names``: the clean ones made from their rows."""
    made = {
        "runs": pl.lit(1, pl.Int64),
        "rows": pl.col("rows"),
        "bad_lp": pl.lit(0, pl.Int64),
        "jumps": pl.lit(0, pl.Int64),
        "first_pos": pl.lit(0, pl.Int64),
        "last_pos": pl.col("rows") - 1,
    }
    clean = runs.every.filter("clean").select(*_IDS, *(made[n].alias(n) for n in names))
    return pl.concat([clean, runs.other.select(*_IDS, *names)], how="vertical_relaxed")


# runs held before they are added up per response (then four times as many as after)
_ADD_UP = 1 << 20


@dataclass
class TokenPart:
    """What :func:`token_part` returns for one piece of the token rows: its runs
    (:func:`token_runs`) and the files the strict read rejected."""

    runs: Runs
    errors: dict[str, str]


def token_part(log: StageLog, piece: Piece | None = None) -> TokenPart:
    """The token-row kernel of the long layout: :func:`token_runs` over the rows
    of ``piece`` (all when None), each local Parquet file decoded once, strictly
    (:class:`StrictParquet`).

    Integer and text ids are compared in the source's own types (cheaper than
    the canonical Int64 on hundreds of millions of rows); text ids are made
    canonical after, one row per run, and integer ids keep their type (a
    response's runs held in its bytes, not Int64's: the keys of
    :func:`combine_runs` and :func:`finish_long` are made of any integers).
    Where the token rows are the files' own columns (renamed), the decoding
    threads cut them into runs too.
    """
    try:
        return _token_part(log, piece)
    finally:
        _SCRATCH.__dict__.pop("held", None)  # this thread's (the threads' that decode end)
        trim()  # the runs' parts, joined up


def _token_part(log: StageLog, piece: Piece | None) -> TokenPart:
    reader = StrictParquet()
    strict = strictly(log, reader)
    rows = strict._scan(strict.main, piece)  # the rows of tokens(), before the casts
    kinds = rows.collect_schema()
    position = log.has_token
    if all(kinds[c].is_integer() or kinds[c] == pl.String for c in _IDS):
        names = [*_IDS, "logprob", *(["token"] if position else [])]
        cuts = _token_cuts(strict, reader, piece, names)
        if cuts is None:
            cuts = (_cut([f], has_position=position) for f in strict.batches(rows.select(names)))
        runs = token_runs(cuts, has_position=position)
    else:
        batches = strict.batches(strict.tokens(piece))
        runs = token_runs(
            (_cut([f], has_position=position) for f in batches), has_position=position
        )
    # other ids made canonical (integers stay as they are); the ids of no run at all
    # have a default type, made the candidates' here too
    made = zip(_IDS, canonical_ids(kinds), strict=True)
    text = [cast for c, cast in made if not kinds[c].is_integer()]
    runs = Runs(*(f.with_columns(text) for f in (runs.every, runs.other)))
    return TokenPart(runs, reader.errors)


def _token_cuts(
    strict: StageLog, reader: StrictParquet, piece: Piece | None, names: list[str]
) -> Iterator[_Cut] | None:
    """The runs (:func:`_cut`) of the columns ``names`` of the token rows of a
    piece, in order, cut by the threads that decode them when they are the
    files' own columns, renamed: local Parquet files without a Hive key or a
    numbered stage. None otherwise (then Polars' query gives the rows)."""
    main = strict.main
    if main.strict is None or main.hive or main.summed or "stage" in strict.numbered:
        return None
    theirs = {canon: their for their, canon in strict.renames if their in dict(main.schema)}
    columns = [theirs.get(name, name) for name in names]
    renames = {c: n for c, n in zip(columns, names, strict=True) if c != n}
    paths = list(main.paths) if piece is None else [main.paths[i] for i in piece.files]
    position = "token" in names
    ids = {theirs.get(name, name) for name in ID_COLUMNS}

    def cut(frames: list[pl.DataFrame | _Coded]) -> _Cut:
        named = [f.renamed(renames) if isinstance(f, _Coded) else f.rename(renames) for f in frames]
        return _cut(named if renames else frames, has_position=position)

    def cuts() -> Iterator[_Cut]:
        with reading(paths, strict.token_origin):
            rows = None if piece is None else piece.rows
            # 128-bit ids as Int64, as the other passes read them (numpy has no such type)
            types = {
                n: pl.Int64() if n in ids and t in (pl.Int128, pl.UInt128) else t
                for n, t in dict(main.schema).items()
            }
            yield from reader.items(paths, types, rows, columns, cut, coded=True)

    return cuts()


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
    # positions as Int64, or in their own type where it holds more (UInt64 beyond
    # 2**63, 128-bit integers): a response's positions are compared exactly
    kind = rows.schema["token"]
    token = pl.col("token")
    if kind in NUMPY_INTS and kind != pl.UInt64:
        token = token.cast(pl.Int64)
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


def fetch_tokens(
    log: StageLog, piece: Piece | None, keys: pl.DataFrame, skip: Collection[str]
) -> pl.DataFrame:
    """The token rows of the responses ``keys`` (canonical ids) in ``piece`` (all
    of them when None), read by Polars, leaving out the files in ``skip``: those
    the strict read reported (a page of theirs that Polars cannot decode failed
    this read, and ``validate`` with it, instead of the report naming the file)."""
    files = tuple(range(len(log.main.paths))) if piece is None else piece.files
    kept = tuple(i for i in files if log.main.paths[i] not in skip)
    if files and not kept:  # nothing to read: the columns only
        return pl.DataFrame(schema=log.tokens(piece).collect_schema())
    if len(kept) < len(files):
        piece = replace(piece, files=kept) if piece is not None else Piece(kept)
    query = log.tokens(piece).join(keys.lazy(), on=_IDS, how="semi", nulls_equal=True)
    return log.collect(query)


def unread(errors: Iterable[tuple[str, str | None]]) -> set[str]:
    """The files of ``errors`` that a reader refused (not merely pyarrow's 128-bit limit)."""
    return {path for path, error in errors if error not in (None, WIDE)}


def combine_runs(
    parts: Sequence[Runs],
    fetch: Callable[[pl.DataFrame], pl.DataFrame],
    *,
    has_position: bool,
) -> Responses:
    """The :func:`token_runs` of every piece, as one row per response.

    A response is in order when its runs are without a jump and, sorted by their
    first position, start at 0 and each begins where the one before ended: it
    then holds the positions ``0 .. rows - 1``, each once (a clean run alone, most
    often). The other responses, and those with a bad log-prob, get what the
    runs do not prove from their rows (``fetch(keys)`` returns the token rows of
    those responses, :func:`_details`).
    """
    every = pl.concat([p.every for p in parts], how="vertical_relaxed")
    other = pl.concat([p.other for p in parts], how="vertical_relaxed")
    names = other.columns[len(_IDS) :]
    if has_position:  # one run of 0 .. rows - 1 (only a bad log-prob flags it)
        other = other.with_columns(
            ((pl.col("runs") == 1) & (pl.col("jumps") == 0) & (pl.col("first_pos") == 0)).alias(
                "_ordered"
            )
        )
    repeated = _repeated(every)  # responses of several runs: added up
    if repeated is not None:
        several = every.filter(repeated).select(_IDS).unique()
        held = Runs(
            every.filter(repeated), other.join(several, on=_IDS, how="semi", nulls_equal=True)
        )
        merged = _merged(_whole(held, names), has_position=has_position)
        every = pl.concat(
            [every.filter(~repeated).select(*_IDS, "rows"), merged.select(*_IDS, "rows")]
        )
        alone = other.join(several, on=_IDS, how="anti", nulls_equal=True)
        other = pl.concat([alone, merged.select(alone.columns)], how="vertical_relaxed")
    flagged = pl.col("bad_lp") > 0
    if has_position:
        flagged = flagged | ~pl.col("_ordered")
    need = other.filter(flagged).select(*_IDS, "rows", "bad_lp")
    need = need.with_columns(_wide(need))  # the canonical ids of the token rows
    if need.height:
        rows = fetch(need.select(_IDS))
    else:  # no row to look at: the columns only
        token = [pl.lit(None, pl.Int64).alias("token")] if has_position else []
        rows = need.select(*_IDS, pl.lit(None, pl.Float64).alias("logprob"), *token)
    need = need.join(
        _details(rows, has_position=has_position), on=_IDS, how="left", nulls_equal=True
    )
    return Responses(every.select(*_IDS, "rows"), need)


def _repeated(runs: pl.DataFrame) -> pl.Series | None:
    """Which runs belong to a response of several (or have a null id, added up
    with the runs of the same ids); None when none does. Integer ids by their
    packed key: without a hash table when the runs come sorted by id."""
    from raft_polars._engine import _runs

    [runs], _ = _coded(runs)
    box = _Box.of(runs)
    if box is None:
        nulls = runs.select(pl.any_horizontal(pl.col(c).is_null() for c in _IDS)).to_series()
        repeated = runs.select(pl.struct(_IDS).is_duplicated()).to_series() | nulls
    else:
        ids = [runs.get_column(c) for c in _IDS]
        if not any(i.null_count() for i in ids) and _runs.increasing_ids(
            *(i.to_numpy() for i in ids)
        ):
            return None  # in order, each once: no keys needed
        key = box.keys(runs)
        repeated = key.is_duplicated() | key.is_null()
    return repeated if repeated.any() else None


def _merged(runs: pl.DataFrame, *, has_position: bool) -> pl.DataFrame:
    """The runs of responses of several runs (in one piece or more), added up;
    with positions, ``_ordered``: each is without a jump and, by first position,
    they tile ``0 .. rows - 1``."""
    if not has_position:
        return runs.group_by(_IDS).agg(pl.col("runs", "rows", "bad_lp").sum())
    ids = [pl.col(c) for c in _IDS]
    ranked = runs.sort([*_IDS, "first_pos"], nulls_last=True)
    same = pl.all_horizontal(c.eq_missing(c.shift(1)) for c in ids)
    follows = pl.when(same).then(pl.col("first_pos") == pl.col("last_pos").shift(1) + 1)
    tiles = follows.otherwise(pl.col("first_pos") == 0).fill_null(value=False)
    whole = (pl.col("runs") == 1) & (pl.col("jumps") == 0) & tiles
    return (
        ranked.with_columns(whole.alias("_ordered"))
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
    if flagged == ["_key"]:
        orphans = rows[0].filter(~_within(rows[0]["_key"], rows[1]["_key"]))
        chosen_rows = rows[0].filter(_within(rows[0]["_key"], rows[2]["_key"]))
    else:
        orphans = rows[0].join(rows[1], on=flagged, how="anti")
        chosen_rows = rows[0].join(rows[2], on=flagged, how="semi")
    orphans = orphans.select(*_IDS, "rows")
    found.add("orphan_tokens", int(orphans["rows"].sum()), orphans)
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
    tokens = chosen_rows.group_by(pl.col("stage").cast(chosen.schema["stage"])).agg(
        pl.col("rows").sum().cast(pl.Int64).alias("tokens")
    )
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
                f.select(pl.col(c).min().alias("lo"), pl.col(c).max().alias("hi")).cast(pl.Int64)
                for f in frames
            ]
            lo, hi = pl.concat(ends).select(pl.col("lo").min(), pl.col("hi").max()).row(0)
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

    def keys(self, frame: pl.DataFrame) -> pl.Series:
        """The keys of a frame's rows (``_key``): packed by a compiled loop, an id
        at a time, where no id is null (no intermediate as long as the frame)."""
        import numpy as np

        from raft_polars._engine import _runs

        if any(frame.get_column(c).null_count() for c in self.names):
            return frame.select(self.key()).to_series()
        out = np.empty(frame.height, dtype=np.int64)
        for i, (c, (lo, span)) in enumerate(zip(self.names, self.bounds, strict=True)):
            _runs.pack(out, frame.get_column(c).to_numpy(), lo, span, i == 0)
        return pl.Series("_key", out)

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
    coded, _ = _coded(*frames)
    box = _Box.of(*coded)
    if box is None:  # integer ids in one type to join on
        return [f.with_columns(_wide(f)) for f in frames], _IDS
    return [f.with_columns(box.keys(c)) for f, c in zip(frames, coded, strict=True)], ["_key"]


def _within(keys: pl.Series, among: pl.Series) -> pl.Series:
    """Whether each key is one of ``among``: a merge where both come sorted (the
    keys of a log in order), without the hash table of a join on millions."""
    import numpy as np

    from raft_polars._engine import _runs

    if keys.null_count() or among.null_count() or not (keys.is_sorted() and among.is_sorted()):
        return keys.is_in(among.implode()).fill_null(value=False)  # a null id is one of none
    out = np.empty(keys.len(), dtype=np.bool_)
    _runs.member(keys.to_numpy(), among.to_numpy(), out)
    return pl.Series(keys.name, out)


def _wide(frame: pl.DataFrame) -> list[pl.Expr]:
    """Integer ids as Int64, the canonical type (they are held narrower)."""
    return [pl.col(c).cast(pl.Int64) for c in _IDS if frame.schema[c].is_integer()]


def _distinct(rows: pl.DataFrame, names: tuple[str, ...]) -> int:
    """How many distinct ``names`` the rows hold (no nulls among them)."""
    if not rows.height:
        return 0
    box = _Box.of(rows, names=names)
    if box is None:
        return rows.select(names).n_unique()
    from raft_polars._engine import _runs

    key = box.keys(rows)
    if key.is_sorted():
        return _runs.distinct_sorted(key.to_numpy())
    return key.n_unique()


def _per_candidate(cands: pl.DataFrame) -> pl.DataFrame:
    """One row per candidate id (rows with a null id left out): its ``rows`` and
    its largest sound ``reward`` (None when none is). Integer ids are grouped by
    their packed key, without a hash table when the rows come sorted by id."""
    sound = pl.when(~_bad_reward()).then(pl.col("reward")).alias("reward")
    rows = cands  # a filter that keeps every row copies them all
    if any(cands.get_column(c).null_count() for c in _IDS):
        rows = cands.filter(pl.all_horizontal(pl.col(c).is_not_null() for c in _IDS))
    aggs = [pl.len().alias("rows"), pl.col("reward").max()]
    box = _Box.of(rows)
    if box is None:
        return rows.lazy().select(*_IDS, sound).group_by(_IDS).agg(aggs).collect()
    from raft_polars._engine import _runs

    if _runs.increasing_ids(*(rows.get_column(c).to_numpy() for c in _IDS)):
        # one row a candidate, in order: nothing to group; Int64 ids, as box.ids() gives them
        return rows.select(*_IDS, pl.lit(1, pl.UInt32).alias("rows"), sound).with_columns(
            _wide(rows)
        )
    key = box.keys(rows)
    keyed = rows.select(sound).with_columns(key)
    if key.is_sorted():
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
    summary = {  # Python ints: numpy's (the loops run uncompiled) are no JSON
        "stages": int(stages.len()),
        "prompts": int(sum(p.prompts for p in parts)),
        "candidates": int(sum(p.candidates for p in parts)),
        "tokens": int(sum(p.tokens for p in parts) if tokens is None else tokens),
    }
    return Checked(found.merge(p.findings for p in parts), summary)


# --- the strict read: pyarrow decodes every page, checksums verified -------------------------

# a unit of the strict read: row groups one thread decodes together, up to about
# this many bytes of the file's columns as stored, or rows; record batches of at
# most the rows of that many bytes; units decoded ahead of the reader, up to that
# many bytes in all (two units at least, one a thread)
_UNIT_BYTES, _UNIT_ROWS = 4 << 20, 1 << 19
_POLARS_UNIT = 1 << 17  # rows a thread cuts at once from Polars' batches (cache, memory)
_BATCH_ROWS = (1 << 10, 1 << 19)
_THREADS, _AHEAD_BYTES = 2, 16 << 20


@dataclass(frozen=True)
class _Unit:
    """Row groups of one file that one thread decodes, the rows of them to keep
    (``skip``, ``take``), the rows of a record batch, the bytes stored and the
    file's footer (read once)."""

    path: str
    groups: tuple[int, ...]
    skip: int
    take: int
    size: int
    stored: int
    meta: Any


def _units(path: str, rows: tuple[int, int] | None) -> list[_Unit]:
    """The units that hold the rows ``(offset, count)`` of a file (all when None).
    Raises where pyarrow would abort the process on the footer's column chunks
    (:func:`pages.footer_fault`), as :func:`_coded_texts` reads them."""
    import pyarrow.parquet as pq

    from raft_polars._engine import pages

    meta = pq.read_metadata(path)
    try:
        fault = pages.footer_fault(path)
    except Exception:  # a footer the walk cannot read: pyarrow asked in a child
        fault = None if _chunks_readable(path) else "pyarrow cannot read its column chunks"
    if fault is not None:
        raise ValueError(fault)
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
        held = sum(stored[g] for g in groups), sum(sizes[g] for g in groups)
        if groups and (i == len(sizes) - 1 or held[0] >= _UNIT_BYTES or held[1] >= _UNIT_ROWS):
            first, after = starts[groups[0]], starts[groups[-1] + 1]
            skip = max(offset - first, 0)
            take = min(after, end) - first - skip
            units.append(_Unit(path, tuple(groups), skip, take, size, held[0], meta))
            groups = []
    return units


_CHUNKS = """
import sys
sys.path.insert(0, sys.argv[1])  # where this pyarrow is installed; nothing else is read
import pyarrow.parquet as pq
meta = pq.read_metadata(sys.argv[2])
for i in range(meta.num_row_groups):
    group = meta.row_group(i)
    for j in range(group.num_columns):
        group.column(j)
"""


def _chunks_readable(path: str) -> bool:
    """Whether pyarrow reads the column chunks of a file's footer without ending
    its process, in a child process: for a footer the page walk cannot read
    (:func:`pages.footer_agrees`), so cannot check. An exception there is
    raised in this process too, as an error of the file."""
    import pyarrow as pa

    return _isolated(_CHUNKS, pa, path).returncode >= 0


def _isolated(script: str, library: Any, *args: str) -> subprocess.CompletedProcess[str]:
    """``script`` run by this Python in a child process in isolated mode (no
    working directory, no user site, no environment on its import path), with
    the directory ``library`` is installed in as ``sys.argv[1]`` (the script
    puts it first on its path; nothing else is read), ``args`` after it: the
    finished process, its output as text."""
    import sys

    home = os.path.dirname(os.path.dirname(os.path.abspath(library.__file__)))
    return subprocess.run(
        [sys.executable, "-I", "-c", script, home, *args],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def _decode(unit: _Unit) -> list[Any]:
    """The rows of a unit, every column, as pyarrow record batches: pyarrow decodes
    every page and verifies the page checksums where the writer stored them, and
    raises at the first bad page. The file is mapped, as Polars maps it, not read
    into buffers (8 % less CPU time: the copies out of the page cache), and its row
    groups read whole (10 % less than record batches, whose buffers pyarrow grows
    and copies page by page).

    Dictionary-encoded text is read as dictionaries (:func:`_coded_texts`). A
    dictionary page that holds a value twice, which the format allows, defeats
    pyarrow's dictionary read: it keeps one copy and the page's indices, some
    then beyond it. Such a unit is read again with each string decoded."""
    coded = _coded_texts(unit)
    try:
        table = _read_unit(unit, coded)
    except ValueError:
        if not coded:
            raise
        table = _read_unit(unit, [])
    skip, take, kept = unit.skip, unit.take, []
    for batch in table.to_batches(max_chunksize=unit.size):
        cut = batch.slice(min(skip, batch.num_rows), take)
        skip, take = max(skip - batch.num_rows, 0), take - cut.num_rows
        if cut.num_rows:
            kept.append(cut)
    return kept


def _read_unit(unit: _Unit, coded: list[str]) -> Any:
    """The row groups of a unit as one table, the ``coded`` text columns read as
    dictionaries, every dictionary and text checked."""
    import pyarrow.parquet as pq

    with pq.ParquetFile(
        unit.path,
        metadata=unit.meta,
        page_checksum_verification=True,
        memory_map=True,
        read_dictionary=coded or None,
    ) as file:
        table = file.read_row_groups(list(unit.groups), use_threads=False)
    _valid_dictionaries(table)
    _valid_text(table)
    return table


def _coded_texts(unit: _Unit) -> list[str]:
    """The top-level text columns whose chunks in ``unit`` are dictionary-encoded:
    read as dictionaries, their text is checked once per distinct value, and
    decoded by a gather (for 16-byte ids, less than half the CPU time of pyarrow's
    decoding of each string, and of the check of each)."""
    schema = unit.meta.schema
    names = []
    for i in range(len(schema)):
        column = schema.column(i)
        if column.path != column.name or column.logical_type.type != "STRING":
            continue
        chunks = [unit.meta.row_group(g).column(i) for g in unit.groups]
        if chunks and all(
            {"PLAIN_DICTIONARY", "RLE_DICTIONARY"} & set(chunk.encodings) for chunk in chunks
        ):
            names.append(column.name)
    return names


def _valid_dictionaries(table: Any) -> None:
    """Raise where a dictionary-encoded column of ``table`` (read as a dictionary:
    :func:`_coded_texts`, or the file's own type) holds an index outside its
    dictionary or a value that is not UTF-8: each dictionary checked once. The
    columns stay dictionaries; :func:`_plain_batch` decodes them."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for spec, column in zip(table.schema, table.columns, strict=True):
        if not pa.types.is_dictionary(spec.type):
            continue
        for chunk in column.chunks:
            try:
                chunk.validate()
                chunk.dictionary.validate(full=True)
            except pa.ArrowInvalid as exc:
                msg = f"column {spec.name!r} holds text that is not UTF-8 ({exc})"
                raise ValueError(msg) from None
            # the indices' bounds from their smallest and largest (a SIMD kernel:
            # a sixth of the CPU time of pyarrow's full validation, which visits
            # each index)
            low, high = pc.min_max(chunk.indices).values()
            if low.is_valid and (low.as_py() < 0 or high.as_py() >= len(chunk.dictionary)):
                bad = low.as_py() if low.as_py() < 0 else high.as_py()
                size = len(chunk.dictionary)
                msg = f"column {spec.name!r} holds index {bad} of a dictionary of {size} values"
                raise ValueError(msg)


def _valid_text(table: Any) -> None:
    """Raise where a text column of ``table`` holds bytes that are not UTF-8:
    pyarrow's reader does not check them, Polars' does (the default path then
    refuses the file), and Polars given such text may crash."""
    import pyarrow as pa

    texts = (pa.string(), pa.large_string(), pa.string_view())
    for spec, column in zip(table.schema, table.columns, strict=True):
        kind = spec.type
        while pa.types.is_list(kind) or pa.types.is_large_list(kind):
            kind = kind.value_type
        if kind not in texts:
            continue
        try:
            column.validate(full=True)
        except pa.ArrowInvalid as exc:
            msg = f"column {spec.name!r} holds text that is not UTF-8 ({exc})"
            raise ValueError(msg) from None


def _decoded(
    paths: Sequence[str], rows: tuple[int, int] | None, then: Callable[[list[Any]], Any]
) -> Generator[tuple[str, Any], None, None]:
    """``(path, then(record batches))`` for the rows of each file in turn, unit by
    unit, strictly decoded (:func:`_decode`), and ``then`` applied, by a few
    threads ahead of the reader; ``(path, error)`` where pyarrow rejects a file,
    and nothing more of that file."""
    from collections import deque
    from concurrent.futures import Future, ThreadPoolExecutor

    def planned() -> Iterator[tuple[str, _Unit | Exception]]:
        for path in paths:
            try:
                units: list[_Unit | Exception] = [*_units(path, rows)]
            except Exception as exc:  # any failure of the strict reader is the finding
                units = [exc]
            yield from ((path, unit) for unit in units)

    def work(unit: _Unit) -> Any:
        try:
            batches = _decode(unit)
        except Exception as exc:  # any failure of the strict reader is the finding
            return exc
        return then(batches)

    pool = ThreadPoolExecutor(_THREADS)
    window: deque[tuple[str, Future[Any] | Exception, int]] = deque()
    failed: set[str] = set()
    ahead = 0  # bytes stored of the units in the window
    try:
        plan = planned()
        while True:
            while len(window) < _THREADS or ahead < _AHEAD_BYTES:
                step = next(plan, None)
                if step is None:
                    break
                path, unit = step
                if isinstance(unit, Exception):
                    window.append((path, unit, 0))
                else:
                    window.append((path, pool.submit(work, unit), unit.stored))
                    ahead += unit.stored
            if not window:
                return
            path, done, stored = window.popleft()
            ahead -= stored
            got = done if isinstance(done, Exception) else done.result()
            if path in failed:
                continue
            if isinstance(got, Exception):
                failed.add(path)
            yield path, got
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        _release()


_TRIM_ROWS = 1 << 24  # token rows between trims of the C heap (:func:`trim`)


def trim() -> None:
    """Hand the free memory of the C heap back to the system (glibc only; nothing
    elsewhere). numpy allocates with ``malloc``: small arrays that live for the
    whole pass (the runs' ids and sums, a batch at a time) among the batches'
    short-lived ones keep its heap's free pages from being returned; at 692 M
    token rows that was 50-75 MiB of the token pass's peak."""
    release = _malloc_trim()
    if release is not None:
        release(0)


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    import ctypes
    import ctypes.util

    try:
        release: Callable[[int], int] = ctypes.CDLL(
            ctypes.util.find_library("c") or "libc.so.6"
        ).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    return release


def _release() -> None:
    """Hand the memory pyarrow's pool keeps for reuse back to the system (once a
    read is done: after every file, it costs more than the read saves)."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError):
        return UNOPENED + first  # not what the file holds: :func:`strict_findings` tells
    return first


# how the text of a strict reader's error begins where it could not open the file
UNOPENED = "could not open it: "


def strict_read(path: str) -> str | None:
    """Decode every page of a Parquet file with pyarrow's reader, verifying the
    page checksums where the writer stored them: the first error, or None.

    The default path decodes with Polars alone; a corrupted page that Polars still
    decodes (to different values) is caught here, where a strict reader rejects
    it. Streams a few row groups at a time. :class:`StrictParquet` is the same
    read as a Polars source, for the passes that check the rows too. A file whose
    every page carries a checksum its bytes match (:func:`pages.verified`) needs
    no decode.
    """
    from raft_polars._engine import pages

    if pages.verified(path):
        return None
    for _, item in _decoded([path], None, len):
        if not isinstance(item, Exception):
            continue
        if pages.wide_integers(path):  # a file pyarrow refuses whole: Polars decodes it
            return _polars_decode(path) or WIDE
        return _error_text(item)
    return None


class StrictParquet:
    """Reads local Parquet files for ``validate``: pyarrow decodes every column
    (:func:`strict_read`), Polars gets the batches as a lazy source, so that the
    checks of the rows and the strict read are one decode.

    A file pyarrow rejects is recorded in :attr:`errors` (path -> first error) and
    read on by Polars from where pyarrow stopped, as the default path reads it.
    """

    def __init__(self, progress: str | None = None) -> None:
        self.errors: dict[str, str] = {}
        self.progress = progress  # what the rows read are, told as they are read

    def scan(
        self, paths: Sequence[str], schema: Mapping[str, pl.DataType], rows: tuple[int, int] | None
    ) -> pl.LazyFrame:
        """The rows of ``paths`` in order, with ``schema`` (``rows = (offset,
        count)`` of a single file, when given): one Polars source, whose next
        batch pyarrow decodes while Polars works on this one."""
        from polars.io.plugins import register_io_source

        types = dict(schema)
        files = list(paths)
        # made here: Polars' threads that pull the frames do not share the context
        meter = None if self.progress is None else Meter(self.progress, "read")

        def source(
            columns: list[str] | None, where: pl.Expr | None, limit: int | None, _: int | None
        ) -> Iterator[pl.DataFrame]:
            frames = self._frames(files, types, rows, columns or list(types), limit, meter=meter)
            return frames if where is None else (f.filter(where) for f in frames)

        return register_io_source(source, schema=types)

    def _frames(
        self,
        paths: list[str],
        types: dict[str, pl.DataType],
        rows: tuple[int, int] | None,
        names: list[str],
        limit: int | None,
        *,
        meter: Meter | None = None,
    ) -> Iterator[pl.DataFrame]:
        given = 0
        for frames in self.items(paths, types, rows, names, list):
            for frame in frames:
                if limit is not None and given >= limit:
                    return
                got = frame if limit is None else frame.head(limit - given)
                given += got.height
                if meter is not None:
                    meter.add(got.height)
                yield got

    def items(
        self,
        paths: list[str],
        types: dict[str, pl.DataType],
        rows: tuple[int, int] | None,
        names: list[str],
        then: Callable[[list[Any]], Any],
        *,
        coded: bool = False,
    ) -> Iterator[Any]:
        """``then`` of the columns ``names`` of the rows of ``paths`` (the rows
        ``(offset, count)`` of a single file, when given), one result a unit of
        the strict read, in order: applied in the threads that decode them, and
        to what Polars reads of a file pyarrow rejects. A file whose every page
        carries a checksum its bytes match (:func:`pages.verified`) needs no
        strict decode: Polars decodes it, ``then`` applied to a few batches at a
        time. ``coded``: the batches pyarrow decodes with dictionary-encoded
        text are given as their codes where they can be (:class:`_Coded`)."""
        for fast, group in _verified_groups(paths):
            if not fast:
                yield from self._decoded_items(group, types, rows, names, then, coded=coded)
                continue
            for path in group:  # every page proven by its checksum: Polars decodes
                yield from self._polars_items(path, types, rows, names, then)

    def _polars_items(
        self,
        path: str,
        types: dict[str, pl.DataType],
        rows: tuple[int, int] | None,
        names: list[str],
        then: Callable[[list[pl.DataFrame]], Any],
        *,
        strict: bool = True,
    ) -> Iterator[Any]:
        """:meth:`items` of a file whose pages are sound (or that the ``strict``
        reader cannot read): Polars decodes it. A footer the walk cannot check
        (no checksum covers it) may still keep Polars from decoding the file:
        before any row, the strict reader takes the file over; after, the file
        is reported and Polars reads on in a child process, as for a file
        pyarrow rejects."""
        from polars.exceptions import PanicException

        done = 0
        try:
            for result, count in _polars_units(path, types, rows, names, then):
                done += count
                yield result
        except (Exception, PanicException) as exc:
            if not done and strict:
                yield from self._decoded_items([path], types, rows, names, then)
                return
            if self.errors.get(path) == WIDE:  # neither reader reads it
                self.errors[path] = f"Polars' reader refuses it: {_error_text(exc)}"
            self.errors.setdefault(path, _error_text(exc))
            yield then([_rest(path, types, rows, names, done)])

    def _decoded_items(
        self,
        paths: list[str],
        types: dict[str, pl.DataType],
        rows: tuple[int, int] | None,
        names: list[str],
        then: Callable[[list[Any]], Any],
        *,
        coded: bool = False,
    ) -> Iterator[Any]:
        """:meth:`items` of files that pyarrow decodes strictly."""
        from raft_polars._engine import pages

        def frames(batches: list[Any]) -> tuple[Any, int]:
            got: list[pl.DataFrame | _Coded] = []
            for batch in batches:
                wanted, texts = _plain_batch(batch.select(names), types, coded=coded)
                frame = pl.from_arrow(wanted)
                assert isinstance(frame, pl.DataFrame)
                frame = _cast(frame, {**types, **{c: frame.schema[c] for c in texts}})
                got.append(_Coded(frame, texts) if texts else frame)
            return then(got), sum(b.num_rows for b in batches)

        done = 0  # rows of the current file
        current = None
        for path, item in _decoded(paths, rows, frames):
            if path != current:
                current, done = path, 0
            if not done and isinstance(item, Exception) and pages.wide_integers(path):
                self.errors.setdefault(path, WIDE)  # pyarrow refuses Polars' own type
                if not pages.suspect(path):  # else in a child, which polars_refusals judges
                    yield from self._polars_items(path, types, rows, names, then, strict=False)
                    continue
            if isinstance(item, Exception):  # the file's finding; Polars reads on
                self.errors.setdefault(path, _error_text(item))
                rest = _rest(path, types, rows, names, done)
                result, count = then([rest]), rest.height
            else:
                result, count = item
            done += count
            yield result


def _plain_batch(
    batch: Any, types: Mapping[str, pl.DataType], *, coded: bool
) -> tuple[Any, dict[str, pl.Series]]:
    """``batch`` with its dictionary-encoded text columns decoded (pyarrow's
    gather; Polars would make them categoricals, in a mapping that lives as long
    as the process), or, when ``coded``, as their codes where they can be, with
    the dictionary of each (:class:`_Coded`): where the dictionary holds
    distinct values and no null, the column no null, and ``types`` asks for
    text."""
    import pyarrow as pa
    import pyarrow.compute as pc

    texts: dict[str, pl.Series] = {}
    if not any(pa.types.is_dictionary(kind) for kind in batch.schema.types):
        return batch, texts
    columns = list(batch.columns)
    for at, (spec, column) in enumerate(zip(batch.schema, columns, strict=True)):
        kind = spec.type
        if not pa.types.is_dictionary(kind):
            continue
        values = column.dictionary
        if (
            coded
            and types.get(spec.name) == pl.String
            and (pa.types.is_string(kind.value_type) or pa.types.is_large_string(kind.value_type))
            and not column.null_count
            and not values.null_count
            and pc.count_distinct(values).as_py() == len(values)
        ):
            texts[spec.name] = pl.Series(spec.name, values, dtype=pl.String)
            columns[at] = column.indices
        else:
            columns[at] = column.cast(kind.value_type)
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names), texts


def _casts(frame: pl.DataFrame, types: Mapping[str, pl.DataType]) -> dict[str, pl.DataType]:
    """The columns of ``frame`` not of their type in ``types``, to that type."""
    return {n: types[n] for n, kind in frame.schema.items() if kind != types[n]}


def _cast(frame: pl.DataFrame, types: Mapping[str, pl.DataType]) -> pl.DataFrame:
    cast = _casts(frame, types)
    return frame.cast(cast) if cast else frame  # type: ignore[arg-type]


def _verified_groups(paths: Sequence[str]) -> Iterator[tuple[bool, list[str]]]:
    """``paths`` in order, in groups of consecutive files that the page walk
    (:func:`pages.verified`) vouches for, or not; the next file is walked
    while the current group is read."""
    from concurrent.futures import ThreadPoolExecutor

    from raft_polars._engine import pages

    if not paths:
        return
    with ThreadPoolExecutor(1) as pool:
        ahead = [pool.submit(pages.verified, path) for path in paths[:2]]
        group: list[str] = []
        kind = None
        for i, path in enumerate(paths):
            fast = ahead[i].result()
            if i + 2 < len(paths):
                ahead.append(pool.submit(pages.verified, paths[i + 2]))
            if group and fast != kind:
                yield bool(kind), group
                group = []
            kind = fast
            group.append(path)
        yield bool(kind), group


def _polars_units(
    path: str,
    types: dict[str, pl.DataType],
    rows: tuple[int, int] | None,
    names: list[str],
    then: Callable[[list[pl.DataFrame]], Any],
) -> Iterator[Any]:
    """``(then(frames), rows)`` of the columns ``names`` of a file's rows
    (``rows``: ``(offset, count)``), decoded by Polars, a few record batches at
    a time: ``then`` applied by two threads while Polars decodes the next
    batches, the results in order."""
    from collections import deque
    from concurrent.futures import Future, ThreadPoolExecutor

    scan = pl.scan_parquet(path, hive_partitioning=False, glob=False)
    if rows is not None:
        scan = scan.slice(rows[0], rows[1])
    pending: deque[tuple[Future[Any], int]] = deque()
    with ThreadPoolExecutor(_THREADS) as pool:
        held: list[pl.DataFrame] = []
        size = 0
        cast: dict[str, pl.DataType] | None = None  # the same for every batch of the scan
        for batch in _stream.batches(scan.select(names)):
            if cast is None:
                cast = _casts(batch, types)
            held.append(batch.cast(cast) if cast else batch)  # type: ignore[arg-type]
            size += batch.height
            if size >= _POLARS_UNIT:
                pending.append((pool.submit(then, held), size))
                held, size = [], 0
                if len(pending) > _THREADS:
                    done, count = pending.popleft()
                    yield done.result(), count
        if held:
            pending.append((pool.submit(then, held), size))
        while pending:
            done, count = pending.popleft()
            yield done.result(), count


_REST = """
import sys
import polars as pl
path, offset, left, out, *names = sys.argv[1:]
rows = pl.scan_parquet(path, hive_partitioning=False, glob=False)
rows = rows.slice(int(offset), None if left == "-" else int(left)).select(names)
rows.collect().write_ipc(out)
"""


def _rest(
    path: str,
    types: dict[str, pl.DataType],
    rows: tuple[int, int] | None,
    names: list[str],
    done: int,
) -> pl.DataFrame:
    """Polars' read of the rows of a file (of ``rows``) after the first ``done``,
    in a child process: some corrupted page headers make Polars abort its process
    (an allocation of an impossible size), which would end ``validate`` without a
    report. Rows that Polars cannot read either are left out (the file is
    reported already)."""
    import io
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from raft_polars._signals import temporary

    offset, count = rows if rows is not None else (0, None)
    left = "-" if count is None else str(count - done)
    wanted = {name: types[name] for name in names}
    with tempfile.TemporaryDirectory(prefix="raft-polars-") as tmp, temporary(tmp):
        out = Path(tmp) / "rest.arrow"
        child = subprocess.run(
            [sys.executable, "-c", _REST, path, str(offset + done), left, str(out), *names],
            capture_output=True, check=False,
        )  # fmt: skip
        if child.returncode != 0:
            return pl.DataFrame(schema=wanted)
        rest = pl.read_ipc(io.BytesIO(out.read_bytes()))  # not mapped: the file goes
    return rest.cast(wanted)  # type: ignore[arg-type]


_POLARS_READ = """
import sys
sys.path.insert(0, sys.argv[1])  # where this Polars is installed; nothing else is read
import polars as pl
try:  # sink_batches raises a panic of the streaming engine, collect_batches ends quietly
    scan = pl.scan_parquet(sys.argv[2], hive_partitioning=False, glob=False)
    scan = scan.select(sys.argv[3:]) if sys.argv[3:] else scan
    scan.sink_batches(lambda batch: None, engine="streaming")
except BaseException as exc:
    text = str(exc).strip()
    print("raft-polars refuses it:", text.splitlines()[0] if text else type(exc).__name__)
else:
    print("raft-polars read")
"""


def polars_refusal(path: str, columns: Sequence[str] = ()) -> str | None:
    """Polars' error on the ``columns`` (all when empty) of a Parquet file that
    pyarrow decoded without one, where the file's page headers are not what a
    writer writes (:func:`pages.suspect`): pyarrow skips some header faults
    that Polars refuses (a field of another type, a size the page's bytes
    contradict), and the default path would then raise where ``validate``
    found nothing. Decoded in a child process in isolated mode (no working
    directory, no user site, no environment on its import path), as some
    corrupted headers make Polars abort its process. None for a file whose
    headers are sound (the walk costs no decode), and where the child ended
    without a word for another reason than Polars (killed, say)."""
    from raft_polars._engine import pages

    return _polars_decode(path, columns) if pages.suspect(path) else None


def _polars_decode(path: str, columns: Sequence[str] = ()) -> str | None:
    """Polars' error on the ``columns`` (all when empty) of a Parquet file,
    decoded in a child process (:func:`polars_refusal`), or None."""
    import signal

    child = _isolated(_POLARS_READ, pl, path, *columns)
    said = [line for line in child.stdout.splitlines() if line.startswith("raft-polars ")]
    if said:
        word = said[-1].removeprefix("raft-polars ")
        return None if word == "read" else f"Polars' reader {word}"
    if child.returncode < 0 and -child.returncode != getattr(signal, "SIGKILL", None):
        number = -child.returncode  # Rust aborts on a failed allocation: SIGABRT
        name = signal.Signals(number).name if number in signal.valid_signals() else number
        return f"Polars' reader ended its process on it (signal {name})"
    if child.returncode > 0 and os.name == "nt" and "Traceback" not in child.stderr:
        return f"Polars' reader ended its process on it (exit status {child.returncode})"
    return None


def polars_refusals(
    log: StageLog, errors: Iterable[tuple[str, str | None]], run: Callable[..., list[Any]]
) -> list[tuple[str, str | None]]:
    """:func:`polars_refusal` of the columns the default path reads (ids, reward,
    log-probs, positions; every column where it names none of them, as a wide
    log's may) of each local Parquet file of ``log`` that the strict reads
    (``errors``) found nothing wrong in, by ``run(function, paths, columns)``
    (the executor's map). A column the answer never reads may hold what
    Polars cannot decode (an encoding it does not support) without harm."""
    bad = unread(errors)
    paths, columns = [], []
    for source, read in _answer_columns(log, "parquet", positions=True):
        names = [name for name, _ in read]
        for path in source.paths:
            if path not in bad and path not in paths:
                paths.append(path)
                columns.append(names)
    return list(zip(paths, run(polars_refusal, paths, columns), strict=True))


def _answer_columns(
    log: StageLog, kind: str, *, positions: bool
) -> Iterator[tuple[Resolved, list[tuple[str, pl.DataType]]]]:
    """Each local file source of ``log`` of ``kind`` with the columns of its
    files that the answer reads (their names as the files have them): the ids,
    reward and log-probs, and the token positions when ``positions``."""
    renames = dict(log.renames)
    read = {*ID_COLUMNS, "reward", "logprobs", "logprob", *(["token"] if positions else [])}
    for source in [log.main, *([] if log.rewards is None else [log.rewards])]:
        if source.kind != kind or source.remote or source.frame is not None:
            continue
        hive = dict(source.hive)
        yield (
            source,
            [
                (name, dtype)
                for name, dtype in source.schema
                if renames.get(name, name) in read and name not in hive
            ],
        )


def strictly(log: StageLog, reader: StrictParquet) -> StageLog:
    """``log`` with its local Parquet files read by ``reader``."""

    def strict(source: Resolved) -> Resolved:
        local = source.kind == "parquet" and not source.remote and source.frame is None
        return replace(source, strict=reader) if local else source

    rewards = None if log.rewards is None else strict(log.rewards)
    return replace(log, main=strict(log.main), rewards=rewards)


def _encrypted(path: str, error: str) -> bool:
    """Whether the strict read failed on a file for its encryption, told by the
    file's structure (not by words in a message, which may name a column): an
    encrypted footer (the file ends in ``PARE``), or an encrypted column chunk
    (:func:`pages.footer_fault`)."""
    from raft_polars._engine import pages

    if error == pages.ENCRYPTED:
        return True
    try:
        with open(path, "rb") as handle:
            handle.seek(-4, os.SEEK_END)
            return handle.read(4) == b"PARE"
    except OSError:
        return False


# the strict read's finding of a file of such columns: not a fault, Polars decodes it
WIDE = "pyarrow does not read 128-bit integers"


def strict_findings(found: Findings, errors: Iterable[tuple[str, str | None]]) -> None:
    """Record the files a strict reader rejected."""
    from raft_polars._engine import pages

    bad: dict[str, str] = {}
    wide: dict[str, None] = {}  # in order, once each
    for path, error in errors:  # a file read in several pieces: its first error
        if error == WIDE:
            wide[path] = None
        elif error is not None:
            bad.setdefault(path, error)
    for path in wide:  # not corrupt: Polars' own type, which Polars decoded
        if path not in bad:
            found.skipped.append(
                f"the strict read of {path!r}: its column(s) {pages.wide_integers(path)} are "
                "128-bit integers (Polars' Int128, UInt128), which pyarrow does not read; "
                "Polars alone decoded it"
            )
    for path, error in bad.items():
        if not os.path.exists(path):  # not corrupt: gone while it was read
            msg = (
                f"cannot read {path!r}: it was removed or renamed while validate read it "
                f"({error.removeprefix(UNOPENED)}); run validate again once the log is complete"
            )
            raise RaftInputError(msg)
        if error.startswith(UNOPENED):  # not corrupt: there, but not to the reader
            msg = (
                f"cannot read {path!r}: the strict read {error}, though it is there for "
                "this process (changed while validate read it, or, with a Dask cluster, "
                "not on the workers' file system: they read the log at the same paths)"
            )
            raise RaftInputError(msg)
        if _encrypted(path, error):  # not corrupt: unreadable by any entry point
            msg = (
                f"cannot read Parquet file {path!r}: it is encrypted with Parquet modular "
                f"encryption ({error}); raft-polars reads no encrypted file: write it "
                "without encryption"
            )
            raise RaftInputError(msg)
    found.add(
        "corrupt_file",
        len(bad),
        pl.DataFrame(
            {"file": list(bad), "error": list(bad.values())},
            schema={"file": pl.String, "error": pl.String},
        ),
    )


def json_id_files(log: StageLog) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    """The local JSON lines files of a log with the columns the answer reads
    (ids, reward, log-probs), each with how :func:`json_ids` reads it: ``"text"``
    (a text id), ``"number"`` or ``"numbers"`` (a list)."""
    renames = dict(log.renames)
    found = []
    for source, read in _answer_columns(log, "ndjson", positions=False):
        columns = []
        for name, dtype in read:
            if dtype == pl.String:
                columns.append((name, "text" if renames.get(name, name) in ID_COLUMNS else ""))
            elif dtype.is_numeric():
                columns.append((name, "number"))
            elif isinstance(dtype, pl.List) and dtype.inner.is_numeric():
                columns.append((name, "numbers"))
        kept = tuple((name, kind) for name, kind in columns if kind)
        if kept:
            found += [(path, kept) for path in source.paths]
    return found


def json_ids(path: str, columns: Sequence[tuple[str, str]]) -> str | None:
    """Whether a JSON lines file's ``columns`` (from :func:`json_id_files`) hold
    what Polars' reader makes of them unambiguously, as an error text, or None.
    Polars reads a column of numbers and strings as text, the number ``0`` and
    the string ``"0"`` as one id, where the writer may have meant two; and of a
    key given twice in a line it keeps the first value, where Python's ``json``
    keeps the last. Streams the file with pyarrow's reader, which is strict
    about both."""
    import pyarrow as pa
    import pyarrow.json as pj

    types = {"text": pa.string(), "number": pa.float64(), "numbers": pa.list_(pa.float64())}
    schema = pa.schema([(name, types[kind]) for name, kind in columns])
    options = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    try:
        with pj.open_json(path, parse_options=options) as reader:
            for _ in reader:
                pass
    except (pa.ArrowInvalid, OSError) as exc:
        twice = re.search(r"Column\(/([^)]*)\) was specified twice", str(exc))
        if twice is not None:
            return (
                f"a line gives the key {twice.group(1)} twice: Polars reads its first "
                "value, Python's json its last"
            )
        if "surrogate pair in string is invalid" in str(exc):
            return (
                "a text holds an escaped lone surrogate (such as \\ud83d, half of a "
                "character): Polars reads it as NUL, so the text read and exported is "
                "not the one written"
            )
        changed = re.search(r"Column\(/([^)]*)\) changed from string to (\w+)", str(exc))
        if changed is None:  # not what this check asks; the Polars read has the say
            return None
        name, other = changed.groups()
        return (
            f"column {name} holds JSON {other}s beside strings: they are read as text, "
            'the number 0 and the string "0" as one id'
        )
    return None


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
