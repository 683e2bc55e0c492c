"""The default-path checks of the semantics, as problem records.

A kernel never raises for bad data: it returns :class:`Problem` records, each a
kind, how many were found and the first one found (its location and value).
Executors add up the records of every partition (:func:`merge`) and
:func:`raise_first` raises one error, in a fixed order of kinds, with the
message of that kind: the same message whichever executor ran the kernels.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from raft_polars.errors import RaftInputError

__all__ = ["KINDS", "Problem", "bad_logprob", "bad_reward", "merge", "naming", "raise_first"]

# the order in which problems are raised: candidate rows first, then token rows
KINDS = (
    "null_id",
    "duplicate",
    "bad_reward",
    "orphan_tokens",
    "null_logprobs",
    "bad_logprob",
    "no_tokens",
)
_LOCATION = ("stage", "prompt", "cand", "token")


def bad_logprob(lp: pl.Expr) -> pl.Expr:
    """A log-prob that is null, NaN, infinite or > 0 (not a log-probability)."""
    # two comparisons (NaN compares above every number in Polars): about five
    # times cheaper than four tests on hundreds of millions of rows
    return ~((lp <= 0.0) & (lp > float("-inf"))).fill_null(value=False)


def bad_reward(reward: pl.Expr) -> pl.Expr:
    """A reward that is null, NaN or infinite."""
    return reward.is_null() | reward.is_nan() | reward.is_infinite()


@dataclass(frozen=True)
class Problem:
    """Problems of one kind found in one partition.

    Attributes
    ----------
    kind
        One of :data:`KINDS`.
    count
        How many (rows, prompts or stages, as the kind counts them).
    first
        The first one found: its location (``stage``, ``prompt``, ``cand``,
        ``token``, as far as they apply) and the values the message shows.
    extra
        Further counts added up across partitions (``prompts`` with duplicates).
    """

    kind: str
    count: int
    first: Mapping[str, Any]
    extra: Mapping[str, int] = field(default_factory=dict)

    def order(self) -> tuple[tuple[bool, Any], ...]:
        """The sort key of :attr:`first`: location order, nulls last."""
        return tuple((self.first.get(k) is None, self.first.get(k)) for k in _LOCATION)


def first_row(frame: pl.DataFrame) -> dict[str, Any] | None:
    """The first row of ``frame`` as a dict, or None when it is empty."""
    return frame.row(0, named=True) if frame.height else None


def merge(parts: Iterable[Sequence[Problem]]) -> list[Problem]:
    """The problems of every partition, one record per kind: counts added, the
    first by location order."""
    by_kind: dict[str, list[Problem]] = {}
    for problems in parts:
        for problem in problems:
            by_kind.setdefault(problem.kind, []).append(problem)
    out = []
    for kind, found in by_kind.items():
        try:
            first = min(found, key=Problem.order)
        except TypeError:  # ids of different kinds cannot be ordered
            first = found[0]
        extra: dict[str, int] = {}
        for problem in found:
            for name, value in problem.extra.items():
                extra[name] = extra.get(name, 0) + value
        out.append(Problem(kind, sum(p.count for p in found), first.first, extra))
    return out


def _where(row: Mapping[str, Any]) -> str:
    parts = [f"{name} {row[name]!r}" for name in ("stage", "prompt", "cand") if name in row]
    return ", ".join(parts).replace("cand ", "candidate ")


_MESSAGES = {
    "null_id": "{origin}: a candidate row has a null id (stage, prompt or cand; or, in "
    "rows of one prompt each, a rewards list that is empty, null or not as long as the "
    "row's other lists): near stage {stage!r}, prompt {prompt!r}",
    "duplicate": "{origin}: duplicate candidate: stage {stage!r}, prompt {prompt!r}, "
    "candidate {cand!r} has {rows} reward rows (and {count} prompt(s) in all have duplicates)",
    "bad_reward": "{origin}: reward must be a finite number, found {reward!r} at {where} "
    "({count} bad reward(s) in all)",
    "orphan_tokens": "{token_origin}: {count} token row(s) have no reward row in {origin}; "
    "first at {where}",
    "null_logprobs": "{origin}: logprobs is null for the selected response at {where}",
    "bad_logprob": "{token_origin}: log-prob of a selected response must be finite and <= 0, "
    "found {logprob!r} at {where}, token {token!r}",
    "no_tokens": "{token_origin}: stage {stage!r}: the {selected} selected response(s) hold "
    "no tokens at all, so the stage has no loss",
}


class _Null:
    """A null value in a message: written ``null``, as the reports write it (a
    Python ``None`` means nothing to a user of JSON or Parquet)."""

    def __repr__(self) -> str:
        return "null"

    __str__ = __repr__


_NULL = _Null()


def message(problem: Problem, *, origin: str, token_origin: str) -> str:
    """The message of a problem; ``origin`` names the candidate rows,
    ``token_origin`` the log-probs."""
    first = {name: _NULL if value is None else value for name, value in problem.first.items()}
    fields = {"token": _NULL, **first}
    return _MESSAGES[problem.kind].format(
        **fields, origin=origin, token_origin=token_origin, count=problem.count,
        where=_where(first),
    )  # fmt: skip


def raise_first(problems: Iterable[Problem], *, origin: str, token_origin: str) -> None:
    """Raise :class:`RaftInputError` for the first problem in :data:`KINDS` order."""
    found = {p.kind: p for p in problems}
    for kind in KINDS:
        if kind in found:
            msg = message(found[kind], origin=origin, token_origin=token_origin)
            raise RaftInputError(msg)


@contextlib.contextmanager
def naming(origin: str) -> Iterator[None]:
    """Input errors raised inside name ``origin``: the kernels know no source
    (an id beyond Int64 is found by the rank kernel's cast)."""
    try:
        yield
    except RaftInputError as exc:
        if origin in str(exc):
            raise
        raise RaftInputError(f"{origin}: {exc}") from exc


_CAST = re.compile(r"conversion from `(\w+)` to `i64` failed in column '([^']*)'")


def beyond_int64(detail: str) -> str | None:
    """Polars' failed cast of an id to Int64, worded without its counts and values
    (those of one partition on Dask, of the whole log in process): the column and
    its type, the same on every engine; None where ``detail`` is no such failure."""
    found = _CAST.search(detail)
    if found is None:
        return None
    kind = {"u64": "UInt64", "i128": "Int128", "u128": "UInt128"}.get(found[1], found[1])
    return f"column {found[2]!r} holds {kind} values outside {-(2**63)} .. {2**63 - 1}"
