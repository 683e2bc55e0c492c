"""Full-pass validation of a stage log: every problem, counted and located.

The default path (:func:`~raft_polars.stage_losses`, :func:`~raft_polars.select_best`)
stops at the first bad input it meets and reads each token once. :func:`validate`
instead reads the whole log, does not stop, and reports every kind of problem of
SEMANTICS.md plus the checks that need a full extra pass over the tokens:

==========================  ===========================================================
kind                        what is counted
==========================  ===========================================================
``null_id``                 candidate rows with a null ``stage``, ``prompt`` or ``cand``
``duplicate_candidate``     ``(stage, prompt, cand)`` with more than one candidate row
``bad_reward``              rewards that are null, NaN or infinite
``null_logprobs``           nested layout: responses whose ``logprobs`` list is null
``bad_logprob_selected``    log-probs (null, NaN, infinite or > 0) of selected responses
``bad_logprob_unselected``  the same in responses that were not selected
``empty_stage``             stages whose selected responses hold no tokens at all
``orphan_tokens``           long layout: token rows whose candidate has no reward row
``null_token_position``     long layout: token rows with a null ``token`` position
``duplicate_token``         long layout: a ``token`` position repeated in a response
``token_gap``               long layout: responses whose positions are not ``0..n-1``
==========================  ===========================================================

Which responses are "selected" follows the selection options (best-of-K by
default), ranked over the candidates whose ids and rewards are sound. Every query is
columnar (group-bys and joins on the streaming engine); the locations of a problem
are the first few in ``stage, prompt, cand`` order.

Examples
--------
>>> import polars as pl
>>> from raft_polars.validate import validate
>>> log = pl.DataFrame({"stage": [0, 0, 0], "prompt": [1, 1, 2], "cand": [0, 1, 0],
...                     "reward": [0.5, float("nan"), 0.1],
...                     "logprobs": [[-1.0, -0.5], [0.3], [-2.0]]})
>>> report = validate(log)
>>> report.ok, [(p.kind, p.count) for p in report.problems]
(False, [('bad_reward', 1), ('bad_logprob_unselected', 1)])
>>> print(report.format())  # doctest: +NORMALIZE_WHITESPACE
the source DataFrame: nested layout, 1 stage(s), 2 prompt(s), 3 candidate row(s), 4 token(s)
2 kind(s) of problem found:
  bad_reward: 1 reward(s) that are null, NaN or infinite
    stage 0, prompt 1, candidate 1: reward nan
  bad_logprob_unselected: 1 log-prob(s) (null, NaN, infinite or > 0) of responses
    that were not selected
    stage 0, prompt 1, candidate 1, token 0: logprob 0.3, bad_tokens 1
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from raft_polars._engine.checks import bad_logprob, bad_reward
from raft_polars._engine.rank import select
from raft_polars._engine.read import ID_COLUMNS, Layout, StageLog, collect, read_log
from raft_polars._engine.sources import Source
from raft_polars._export import json_value
from raft_polars.selection import Selection, Strategy

__all__ = ["PROBLEM_KINDS", "Problem", "ValidationReport", "validate"]

#: Every problem kind :func:`validate` reports, with what its count counts.
PROBLEM_KINDS: dict[str, str] = {
    "null_id": "candidate row(s) with a null stage, prompt or cand",
    "duplicate_candidate": "(stage, prompt, cand) with more than one candidate row",
    "bad_reward": "reward(s) that are null, NaN or infinite",
    "null_logprobs": "response(s) whose logprobs list is null",
    "bad_logprob_selected": "log-prob(s) (null, NaN, infinite or > 0) of selected responses",
    "bad_logprob_unselected": (
        "log-prob(s) (null, NaN, infinite or > 0) of responses that were not selected"
    ),
    "empty_stage": "stage(s) whose selected responses hold no tokens at all",
    "orphan_tokens": "token row(s) whose candidate has no reward row",
    "null_token_position": "token row(s) with a null token position",
    "duplicate_token": "token position(s) that occur more than once in a response",
    "token_gap": "response(s) whose token positions are not 0..n-1",
}

_IDS = list(ID_COLUMNS)


@dataclass(frozen=True)
class Problem:
    """One kind of problem found in a stage log.

    Attributes
    ----------
    kind
        One of :data:`PROBLEM_KINDS`.
    count
        How many were found (the unit is in ``description``).
    description
        What is counted, e.g. ``"reward(s) that are null, NaN or infinite"``.
    locations
        The first few, in ``stage, prompt, cand`` order: dicts with the ids and
        what was found there (``reward``, ``token``, ``logprob``, ``rows``, ...).
    places
        How many locations there are in all (a location, e.g. a response, may
        hold several of the problems counted).
    """

    kind: str
    count: int
    description: str
    locations: tuple[dict[str, Any], ...]
    places: int

    def format(self) -> str:
        """The problem as indented text: a headline, then one line per location."""
        lines = [f"  {self.kind}: {self.count} {self.description}"]
        lines += [f"    {_format_location(loc)}" for loc in self.locations]
        if self.places > len(self.locations):
            lines.append(f"    ... and {self.places - len(self.locations)} more")
        return "\n".join(lines)


@dataclass(frozen=True)
class ValidationReport:
    """What :func:`validate` found.

    Attributes
    ----------
    origin
        The source, as named in messages.
    layout
        ``"nested"`` or ``"long"``.
    summary
        Sizes of the log: ``stages``, ``prompts``, ``candidates`` (rows),
        ``tokens``.
    problems
        One :class:`Problem` per kind found, in the order of
        :data:`PROBLEM_KINDS`; empty when the log is sound.
    skipped
        Checks that could not run, with the reason (e.g. no ``token`` column).
    """

    origin: str
    layout: Layout
    summary: dict[str, int]
    problems: tuple[Problem, ...]
    skipped: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def format(self) -> str:
        """The report as human-readable text."""
        s = self.summary
        lines = [
            f"{self.origin}: {self.layout} layout, {s['stages']} stage(s), "
            f"{s['prompts']} prompt(s), {s['candidates']} candidate row(s), "
            f"{s['tokens']} token(s)"
        ]
        lines += [f"skipped: {reason}" for reason in self.skipped]
        if self.ok:
            lines.append("no problems found")
        else:
            lines.append(f"{len(self.problems)} kind(s) of problem found:")
            lines += [p.format() for p in self.problems]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain, strictly JSON-serialisable data.

        Non-finite floats found in the log become the strings ``"nan"``,
        ``"inf"`` and ``"-inf"``.
        """
        return {
            "origin": self.origin,
            "layout": self.layout,
            "ok": self.ok,
            "summary": dict(self.summary),
            "skipped": list(self.skipped),
            "problems": [
                {
                    "kind": p.kind,
                    "count": p.count,
                    "description": p.description,
                    "places": p.places,
                    "locations": [
                        {k: json_value(v) for k, v in loc.items()} for loc in p.locations
                    ],
                }
                for p in self.problems
            ],
        }


def validate(
    source: Source,
    *,
    rewards: Source | None = None,
    columns: Mapping[str, str] | None = None,
    strategy: Strategy = "best",
    n: int = 1,
    fraction: float | None = None,
    min_reward: float | None = None,
    limit: int = 5,
) -> ValidationReport:
    """Check a whole stage log and report every problem found, without stopping.

    Parameters
    ----------
    source, rewards, columns
        The stage log, as in :func:`raft_polars.stage_losses`.
    strategy, n, fraction, min_reward
        The selection, which decides which responses count as selected; the
        default is best-of-K per prompt.
    limit
        How many locations to keep per problem kind.

    Returns
    -------
    ValidationReport
        ``report.ok`` is True when nothing was found.

    Raises
    ------
    RaftInputError
        The log cannot be read as a stage log at all: a file is missing or
        unreadable, a column is missing or of the wrong type, an option is invalid.

    Examples
    --------
    >>> import polars as pl
    >>> tokens = pl.DataFrame({"stage": [0, 0, 0, 0], "prompt": [0, 0, 0, 9],
    ...                        "cand": [0, 0, 1, 0], "token": [0, 0, 3, 0],
    ...                        "logprob": [-1.0, -1.0, -0.5, -0.1]})
    >>> rewards = pl.DataFrame({"stage": [0, 0], "prompt": [0, 0], "cand": [0, 1],
    ...                         "reward": [1.0, 0.0]})
    >>> report = validate(tokens, rewards=rewards)
    >>> {p.kind: p.count for p in report.problems}
    {'orphan_tokens': 1, 'duplicate_token': 1, 'token_gap': 1}
    >>> report.problems[1].locations
    ({'stage': 0, 'prompt': 0, 'cand': 0, 'token': 0, 'rows': 2},)
    """
    selection = Selection(strategy=strategy, n=n, fraction=fraction, min_reward=min_reward)
    limit = max(int(limit), 0)
    log = read_log(source, rewards=rewards, columns=columns)
    if log.layout == "nested":
        cands = collect(log, _nested_candidates(log))
        responses = cands.select(*_IDS, "tokens", "null_list", "bad_lp")
    else:
        cands = collect(log, log.candidates(extras=False).select(*_IDS, "reward"))
        responses = None
    problems: list[Problem] = []
    found = _Found(problems, limit)
    chosen = _candidate_checks(found, cands, selection)
    skipped: list[str] = []
    if log.layout == "nested":
        assert responses is not None
        _nested_token_checks(found, cands, chosen)
        token_total = int(cands["tokens"].sum())
    else:
        token_total = _long_token_checks(found, log, cands, chosen, skipped)
    summary = {
        "stages": cands["stage"].drop_nulls().n_unique(),
        "prompts": cands.drop_nulls(["stage", "prompt"]).select(["stage", "prompt"]).n_unique()
        if cands.height
        else 0,
        "candidates": cands.height,
        "tokens": token_total,
    }
    order = list(PROBLEM_KINDS)
    problems.sort(key=lambda p: order.index(p.kind))
    origin = log.origin if log.layout == "nested" else f"{log.token_origin} with {log.origin}"
    return ValidationReport(origin, log.layout, summary, tuple(problems), tuple(skipped))


# --- the checks ------------------------------------------------------------------


@dataclass
class _Found:
    problems: list[Problem]
    limit: int

    def add(self, kind: str, count: int, where: pl.DataFrame) -> None:
        """Record ``count`` problems of ``kind``; ``where`` holds their locations."""
        if count <= 0:
            return
        sort = [c for c in (*_IDS, "token") if c in where.columns]
        rows = where.sort(sort, nulls_last=True).head(self.limit).to_dicts() if sort else []
        self.problems.append(Problem(kind, count, PROBLEM_KINDS[kind], tuple(rows), where.height))


def _bad(value: pl.Expr) -> pl.Expr:
    return bad_logprob(value.cast(pl.Float64))


def _bad_reward() -> pl.Expr:
    return bad_reward(pl.col("reward"))


def _nested_candidates(log: StageLog) -> pl.LazyFrame:
    """One row per candidate with its token statistics (a single pass)."""
    lp = pl.col("logprobs")
    flags = lp.list.eval(_bad(pl.element()))
    first = flags.list.arg_max()
    return log.candidates(extras=False).select(
        *_IDS,
        "reward",
        lp.list.len().fill_null(0).cast(pl.Int64).alias("tokens"),
        lp.is_null().alias("null_list"),
        flags.list.sum().fill_null(0).cast(pl.Int64).alias("bad_lp"),
        first.alias("first_bad"),
        lp.list.get(first, null_on_oob=True).cast(pl.Float64).alias("first_bad_value"),
    )


def _candidate_checks(found: _Found, cands: pl.DataFrame, selection: Selection) -> pl.DataFrame:
    """Null ids, duplicate candidates, bad rewards; returns the selected keys.

    The selection ranks the candidates whose ids and reward are sound (one row per
    ``(stage, prompt, cand)``, the largest reward when duplicated).
    """
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
    return select(sound, selection).select(_IDS).collect()


def _with_selected(frame: pl.DataFrame | pl.LazyFrame, chosen: pl.DataFrame) -> pl.LazyFrame:
    marks = chosen.lazy().with_columns(pl.lit(True).alias("selected"))
    return (
        frame.lazy()
        .join(marks, on=_IDS, how="left")
        .with_columns(pl.col("selected").fill_null(False))
    )


def _logprob_checks(found: _Found, per_response: pl.DataFrame) -> None:
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


def _empty_stages(found: _Found, chosen_tokens: pl.DataFrame) -> None:
    """Stages whose selected responses (``stage, tokens`` rows) hold no tokens."""
    stages = (
        chosen_tokens.group_by("stage")
        .agg(pl.len().alias("selected"), pl.col("tokens").sum())
        .filter(pl.col("tokens") == 0)
        .select("stage", "selected")
    )
    found.add("empty_stage", stages.height, stages)


def _nested_token_checks(found: _Found, cands: pl.DataFrame, chosen: pl.DataFrame) -> None:
    marked = _with_selected(
        cands.filter(~_bad_reward()).unique(_IDS, keep="first"), chosen
    ).collect()
    marked_all = _with_selected(cands, chosen).collect()
    null_lists = marked_all.filter(pl.col("null_list"))
    found.add("null_logprobs", null_lists.height, null_lists.select(*_IDS, "selected"))
    _logprob_checks(found, marked_all)
    _empty_stages(found, marked.filter(pl.col("selected")).select("stage", "tokens"))


def _long_token_checks(
    found: _Found, log: StageLog, cands: pl.DataFrame, chosen: pl.DataFrame, skipped: list[str]
) -> int:
    """All token-row checks of the long layout, from one group-by per response."""
    has_position = log.has_token
    lp = pl.col("logprob")
    bad = _bad(lp)
    aggs = [
        pl.len().cast(pl.Int64).alias("rows"),
        bad.sum().cast(pl.Int64).alias("bad_lp"),
    ]
    if has_position:
        token = pl.col("token").cast(pl.Int64)
        present = token.drop_nulls()
        aggs += [
            token.null_count().cast(pl.Int64).alias("null_pos"),
            present.n_unique().cast(pl.Int64).alias("distinct"),
            token.min().alias("first_pos"),
            token.max().alias("last_pos"),
            token.filter(bad).min().alias("first_bad"),
            lp.cast(pl.Float64)
            .filter(bad)
            .sort_by(token.filter(bad))
            .first()
            .alias("first_bad_value"),
            token.filter(token.is_duplicated()).min().alias("first_dup"),
        ]
    else:
        skipped.append("token positions (duplicates, gaps): the token rows have no 'token' column")
        aggs += [
            pl.lit(None, pl.Int64).alias("first_bad"),
            lp.cast(pl.Float64).filter(bad).first().alias("first_bad_value"),
        ]
    per_response = collect(log, log.tokens().group_by(_IDS).agg(aggs))

    known = cands.filter(pl.all_horizontal(pl.col(c).is_not_null() for c in _IDS))
    orphans = per_response.join(known.select(_IDS).unique(), on=_IDS, how="anti")
    found.add("orphan_tokens", int(orphans["rows"].sum()), orphans.select(*_IDS, "rows"))

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
    _empty_stages(found, chosen_tokens.select("stage", "tokens"))
    return int(per_response["rows"].sum())


# --- presentation ----------------------------------------------------------------


def _format_location(loc: Mapping[str, Any]) -> str:
    names = {"cand": "candidate"}
    ids = [f"{names.get(k, k)} {loc[k]!r}" for k in (*_IDS, "token") if k in loc]
    rest = [f"{k} {_text(v)}" for k, v in loc.items() if k not in (*_IDS, "token")]
    return ", ".join(ids) + (": " + ", ".join(rest) if rest else "")


def _text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    return repr(value) if isinstance(value, str) else str(value)
