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
``duplicate_token``         long layout: token rows repeating a position of their response
``token_gap``               long layout: responses whose positions are not ``0..n-1``
==========================  ===========================================================

Which responses are "selected" follows the selection options (best-of-K by
default), ranked over the candidates whose ids and rewards are sound. Every query is
columnar (group-bys and joins on the streaming engine); the locations of a problem
are the first few in ``stage, prompt, cand`` order.

Examples
--------
>>> import polars as pl
>>> from raft_polars.validation import validate
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
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from raft_polars._engine.read import Layout, Preset, read_log
from raft_polars._engine.sources import Source
from raft_polars._executors import Engine, executor
from raft_polars._export import json_value
from raft_polars.errors import RaftInputError
from raft_polars.selection import BadRewards, Selection, Strategy, is_whole

__all__ = ["PROBLEM_KINDS", "Problem", "ValidationReport", "validate"]

#: Every problem kind :func:`validate` reports, with what its count counts.
PROBLEM_KINDS: dict[str, str] = {
    "corrupt_file": "file(s) that a strict reader rejects (Parquet: bad page checksums, "
    "malformed pages; JSON lines: an id column of numbers and strings, a key given twice "
    "in a line, an escaped lone surrogate)",
    "null_id": "candidate row(s) with a null stage, prompt or cand (a row per prompt: its "
    "rewards list empty, null or not as long as its other lists)",
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
    "duplicate_token": "token row(s) repeating a position already in their response",
    "token_gap": "response(s) whose token positions are not 0..n-1",
}

_IDS = ("stage", "prompt", "cand")


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
        if self.locations and self.places > len(self.locations):  # limit=0: counts only
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
    preset: Preset | None = None,
    storage_options: Mapping[str, str] | None = None,
    strategy: Strategy = "best",
    n: int = 1,
    fraction: float | None = None,
    min_reward: float | None = None,
    bad_rewards: BadRewards = "error",
    limit: int = 5,
    engine: Engine = "polars",
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
        How many locations to keep per problem kind: 0 keeps none (the counts
        only), a number beyond any log's size keeps them all.
    engine
        ``"polars"`` (default), ``"dask"`` or a :class:`raft_polars.dask.DaskEngine`,
        as in :func:`raft_polars.stage_losses`.

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
    selection = Selection(
        strategy=strategy, n=n, fraction=fraction, min_reward=min_reward, bad_rewards=bad_rewards
    )
    if not is_whole(limit) or limit < 0:
        msg = f"option limit={limit!r}: must be a whole number >= 0 (locations per problem)"
        raise RaftInputError(msg)
    limit = min(int(limit), sys.maxsize)  # more than any frame holds: every location
    run = executor(engine)
    log = read_log(
        source, rewards=rewards, columns=columns, preset=preset, storage_options=storage_options
    )
    checked = run.validate(log, selection, limit)
    order = list(PROBLEM_KINDS)
    problems = tuple(
        Problem(kind, count, PROBLEM_KINDS[kind], tuple(first.to_dicts()), places)
        for kind, (count, places, first) in sorted(
            checked.findings.found.items(), key=lambda item: order.index(item[0])
        )
    )
    skipped = tuple(checked.findings.skipped)
    if log.layout == "long" and not log.has_token:
        skipped += ("token positions (duplicates, gaps): the token rows have no 'token' column",)
    origin = log.origin if log.layout == "nested" else f"{log.token_origin} with {log.origin}"
    return ValidationReport(origin, log.layout, checked.summary, problems, skipped)


# --- presentation ----------------------------------------------------------------


def _format_location(loc: Mapping[str, Any]) -> str:
    names = {"cand": "candidate"}
    ids = [f"{names.get(k, k)} {_text(loc[k])}" for k in (*_IDS, "token") if k in loc]
    rest = [f"{k} {_text(v)}" for k, v in loc.items() if k not in (*_IDS, "token")]
    return ": ".join(part for part in (", ".join(ids), ", ".join(rest)) if part)


def _text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    return repr(value) if isinstance(value, str) else str(value)
