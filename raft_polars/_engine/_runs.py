"""The compiled loops of ``validate`` (numba), imported only when it runs: the cut of
the token rows into runs, and the packed keys of ids (:func:`pack`, :func:`increasing_ids`).

Polars hands over the token rows batch by batch, in order; the loop cuts them into
*runs* (stretches of consecutive rows of one response) and adds up each run's rows,
bad log-probs and position jumps, with its first and last position: one pass over
a few arrays, where the same in Polars expressions (shifts, a row index, a filter
and a group-by of the runs' first and last rows) costs several times more. Which
runs prove their response in order, and everything else, stays columnar
(:mod:`raft_polars._engine.validate`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from raft_polars._engine._jit import njit

__all__ = [
    "OPEN", "STATE", "cut", "distinct_sorted", "increasing_ids", "member", "pack",
]  # fmt: skip

# the state carried from batch to batch: whether a run is open, then its sums
OPEN, ROWS, BAD, JUMPS, FIRST, LAST = range(6)
STATE = 6


@njit()
def cut(  # noqa: PLR0917 - a compiled kernel takes its arrays positionally
    stage: npt.NDArray[Any],
    prompt: npt.NDArray[Any],
    cand: npt.NDArray[Any],
    start: npt.NDArray[np.bool_],
    first_starts: bool,
    token: npt.NDArray[Any],
    valid: npt.NDArray[np.bool_],
    logprob: npt.NDArray[Any],
    state: npt.NDArray[np.int64],
    starts: npt.NDArray[np.int64],
    done: npt.NDArray[np.int64],
) -> tuple[int, int]:  # pragma: no cover - compiled; its callers are tested
    """Cut one batch into runs.

    A row begins a run when its ids differ from the row before: ``stage, prompt,
    cand`` compared here, or, when they are empty, ``start`` says so (Polars
    compares ids that are text or null); the batch's first row begins one when
    ``first_starts`` (the caller compares it with the last row of the batch
    before). ``token`` holds the positions (empty: the rows have none), ``valid``
    which are not null (empty: none is); ``logprob`` is null as NaN.

    ``state`` carries the open run from batch to batch (:data:`OPEN` ... ); the
    rows where runs begin go to ``starts`` and the sums of the runs that end in
    this batch to the columns of ``done`` (rows of it: rows, bad log-probs,
    jumps, first and last position): their counts are returned. A jump is a row
    whose position is not the one before plus one, or a null position (the first
    row of a run too).
    """
    n = logprob.shape[0]
    compare = stage.shape[0] > 0
    positions = token.shape[0] > 0
    checked = valid.shape[0] > 0
    opened = state[OPEN] == 1
    rows, bad, jumps, first, last = state[ROWS], state[BAD], state[JUMPS], state[FIRST], state[LAST]
    found = 0
    ended = 0
    for i in range(n):
        if i == 0:
            new = first_starts or not opened
        elif compare:
            new = stage[i] != stage[i - 1] or prompt[i] != prompt[i - 1] or cand[i] != cand[i - 1]
        else:
            new = start[i]
        if new:
            if opened:
                done[0, ended] = rows
                done[1, ended] = bad
                done[2, ended] = jumps
                done[3, ended] = first
                done[4, ended] = last
                ended += 1
            opened = True
            rows = bad = jumps = 0
            starts[found] = i
            found += 1
        value = logprob[i]
        if not (value <= 0.0 and value > -np.inf):
            bad += 1
        if positions:
            position = np.int64(token[i])
            if checked and not valid[i]:
                jumps += 1
                position = np.int64(0)
            elif rows > 0 and position != last + 1:
                jumps += 1
            if rows == 0:
                first = position
            last = position
        rows += 1
    state[OPEN] = 1 if opened else 0
    state[ROWS], state[BAD], state[JUMPS], state[FIRST], state[LAST] = rows, bad, jumps, first, last
    return found, ended


@njit()
def pack(
    out: npt.NDArray[np.int64], ids: npt.NDArray[Any], low: int, span: int, first: bool
) -> None:  # pragma: no cover - compiled
    """One id into the keys of a mixed radix (:class:`raft_polars._engine.validate._Box`):
    ``out = out * span + (ids - low)``, or ``ids - low`` for the ``first`` id; in
    place, without the intermediates of the same in expressions."""
    for i in range(out.shape[0]):
        value = np.int64(ids[i]) - low
        out[i] = value if first else out[i] * span + value


@njit()
def member(
    keys: npt.NDArray[np.int64], among: npt.NDArray[np.int64], out: npt.NDArray[np.bool_]
) -> None:  # pragma: no cover - compiled
    """``out[i]``: whether ``keys[i]`` is one of ``among``; both sorted (a merge,
    without the hash table of a join)."""
    j = 0
    for i in range(keys.shape[0]):
        while j < among.shape[0] and among[j] < keys[i]:
            j += 1
        out[i] = j < among.shape[0] and among[j] == keys[i]


@njit()
def distinct_sorted(keys: npt.NDArray[np.int64]) -> int:  # pragma: no cover - compiled
    """How many distinct keys a sorted array holds."""
    count = 1 if keys.shape[0] else 0
    for i in range(1, keys.shape[0]):
        count += keys[i] != keys[i - 1]
    return count


@njit()
def increasing_ids(
    stage: npt.NDArray[Any], prompt: npt.NDArray[Any], cand: npt.NDArray[Any]
) -> bool:  # pragma: no cover - compiled
    """Whether each row's ids come after the row before's, in ``stage, prompt,
    cand`` order: whether their packed keys increase, without the keys."""
    for i in range(1, stage.shape[0]):
        if stage[i] != stage[i - 1]:
            if stage[i] < stage[i - 1]:
                return False
        elif prompt[i] != prompt[i - 1]:
            if prompt[i] < prompt[i - 1]:
                return False
        elif cand[i] <= cand[i - 1]:
            return False
    return True
