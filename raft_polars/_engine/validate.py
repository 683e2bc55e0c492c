"""The kernels of ``validate``: every problem of a log, counted and located.

Like the loss kernels they run on one partition and return small partials that
add up: :func:`check_candidates` on whole prompts (whole stages for the global
ranking), :func:`token_aggregates` on any piece of the long layout's token rows,
:func:`finish_long` and :func:`empty_stages` once, on the combined partials. Each
finding keeps its count, how many places hold it and its first ``limit``
locations in ``stage, prompt, cand`` order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import polars as pl

from raft_polars._engine.checks import bad_logprob, bad_reward
from raft_polars._engine.rank import select
from raft_polars._engine.read import ID_COLUMNS, StageLog
from raft_polars.selection import Selection

__all__ = [
    "CandidatePart",
    "Checked",
    "Findings",
    "check_candidates",
    "combine_aggregates",
    "empty_stages",
    "finish_long",
    "nested_columns",
    "strict_findings",
    "strict_paths",
    "strict_read",
    "summarize",
    "token_aggregates",
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


def token_aggregates(tokens: pl.LazyFrame, *, has_position: bool) -> pl.LazyFrame:
    """Per response: rows, bad log-probs, and (with a ``token`` column) null
    positions, the first and last position and the first bad one: aggregations
    that stream in O(responses) memory. Positions ``0 .. n-1`` of ``n`` rows hold
    neither a duplicate nor a gap (a duplicate among n values in [0, n-1] leaves a
    gap); only the other responses are looked at row by row, later."""
    lp = pl.col("logprob")
    bad = _bad(lp)
    aggs = [pl.len().cast(pl.Int64).alias("rows"), bad.sum().cast(pl.Int64).alias("bad_lp")]
    if has_position:
        token = pl.col("token").cast(pl.Int64)
        aggs += [
            token.null_count().cast(pl.Int64).alias("null_pos"),
            token.min().alias("first_pos"),
            token.max().alias("last_pos"),
            pl.when(bad).then(token).min().alias("first_bad"),
        ]
    return tokens.group_by(_IDS).agg(aggs)


def _details(rows: pl.DataFrame, *, has_position: bool) -> pl.DataFrame:
    """The first bad value and the first duplicate position of a few responses."""
    lp = pl.col("logprob").cast(pl.Float64)
    bad = _bad(pl.col("logprob"))
    if not has_position:
        return rows.group_by(_IDS).agg(lp.filter(bad).first().alias("first_bad_value"))
    token = pl.col("token").cast(pl.Int64)
    return rows.group_by(_IDS).agg(
        lp.filter(bad).sort_by(token.filter(bad)).first().alias("first_bad_value"),
        token.filter(token.is_duplicated()).min().alias("first_dup"),
        token.drop_nulls().n_unique().cast(pl.Int64).alias("distinct"),
    )


def combine_aggregates(
    parts: Sequence[pl.DataFrame],
    fetch: Callable[[pl.DataFrame], pl.DataFrame],
    *,
    has_position: bool,
) -> pl.DataFrame:
    """Per-response aggregates of every piece, as one row per response.

    A response whose rows sit in more than one piece is aggregated again from
    its rows (``fetch(keys)`` returns the token rows of those responses), so that
    distinct and duplicate positions stay exact. The responses with a bad
    log-prob or a duplicate position get their details from their rows too.
    """
    frames = [p for p in parts if p.height] or list(parts[:1])
    every = pl.concat(frames, how="vertical")
    pieces = every.group_by(_IDS).agg(pl.len().alias("_pieces"))
    split = pieces.filter(pl.col("_pieces") > 1).select(_IDS)
    whole = every.join(split, on=_IDS, how="anti", nulls_equal=True)
    if split.height:
        again = token_aggregates(fetch(split).lazy(), has_position=has_position).collect()
        whole = pl.concat([whole, again], how="vertical")
    flagged = pl.col("bad_lp") > 0
    if has_position:
        present = pl.col("rows") - pl.col("null_pos")
        in_order = (pl.col("first_pos") == 0) & (pl.col("last_pos") == present - 1)
        flagged = flagged | ~in_order.fill_null(value=False)
        # responses in order: every position once; the others get theirs counted below
        whole = whole.with_columns(present.alias("distinct"))
    need = whole.filter(flagged).select(_IDS)
    detail = _details(fetch(need), has_position=has_position) if need.height else None
    if detail is None:
        extra = [pl.lit(None, pl.Float64).alias("first_bad_value")]
        if has_position:
            extra.append(pl.lit(None, pl.Int64).alias("first_dup"))
        return whole.with_columns(extra)
    out = whole.join(detail, on=_IDS, how="left", nulls_equal=True)
    if has_position:  # the flagged responses' distinct positions, counted from their rows
        counted = pl.coalesce("distinct_right", "distinct").alias("distinct")
        out = out.with_columns(counted).drop("distinct_right")
    return out


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


def strict_read(path: str) -> str | None:
    """Decode every page of a Parquet file with pyarrow's reader, verifying the
    page checksums where the writer stored them: the first error, or None.

    The default path decodes with Polars alone; a corrupted page that Polars still
    decodes (to different values) is caught here, where a strict reader rejects
    it. Streams row group by row group.
    """
    import pyarrow.parquet as pq

    try:
        with pq.ParquetFile(path, page_checksum_verification=True) as handle:
            for _ in handle.iter_batches(batch_size=1 << 16):
                pass
    except Exception as exc:  # any failure of the strict reader is the finding
        text = str(exc).strip()
        return text.splitlines()[0] if text else type(exc).__name__
    return None


def strict_findings(found: Findings, errors: Iterable[tuple[str, str | None]]) -> None:
    """Record the files a strict reader rejected."""
    bad = [(path, error) for path, error in errors if error is not None]
    found.add(
        "corrupt_file",
        len(bad),
        pl.DataFrame(
            {"file": [p for p, _ in bad], "error": [e for _, e in bad]},
            schema={"file": pl.String, "error": pl.String},
        ),
    )


def strict_paths(log: StageLog) -> list[str]:
    """The local Parquet files of a log, for :func:`strict_read`."""
    sources = [log.main] + ([] if log.rewards is None else [log.rewards])
    return [
        path
        for source in sources
        if source.kind == "parquet" and not source.remote
        for path in source.paths
    ]
