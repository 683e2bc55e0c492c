"""The engine's compiled loops (numba), imported only when a token pass runs.

Polars decodes the token rows and computes each row's position; the loop here
does what Polars cannot do in one pass: a gather from a small table (the row's
candidate slot) fused with a scatter-add into per-slot sums. String prompt ids
reach it as two 64-bit hashes (Polars hashes strings at about the cost of
reading them), which the loop turns into the prompt's code with a small
open-addressing table. Everything around it (reading, positions, the slots, the
checks) stays columnar.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
import numpy.typing as npt

__all__ = ["best_of_groups", "groups_of", "hash_table", "scatter", "touch"]


@numba.njit(nogil=True, cache=True)
def hash_table(
    first: npt.NDArray[np.uint64], second: npt.NDArray[np.uint64]
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64], npt.NDArray[np.int64]]:
    """An open-addressing table of ``(first[i], second[i]) -> i`` (load at most
    1/2); its code array is empty when two entries share both hashes."""
    size = 2
    while size < 2 * first.shape[0]:
        size *= 2
    mask = np.uint64(size - 1)
    keys1 = np.zeros(size, dtype=np.uint64)
    keys2 = np.zeros(size, dtype=np.uint64)
    codes = np.full(size, -1, dtype=np.int64)
    for i in range(first.shape[0]):
        at = first[i] & mask
        while codes[at] >= 0:
            if keys1[at] == first[i] and keys2[at] == second[i]:
                return keys1, keys2, np.zeros(0, dtype=np.int64)
            at = (at + np.uint64(1)) & mask
        keys1[at], keys2[at], codes[at] = first[i], second[i], i
    return keys1, keys2, codes


@numba.njit(nogil=True, cache=True)
def scatter(  # noqa: PLR0917 - a compiled kernel takes its arrays positionally
    index: npt.NDArray[Any],
    first: npt.NDArray[np.uint64],
    second: npt.NDArray[np.uint64],
    prompts: tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64], npt.NDArray[np.int64]],
    stride: int,
    logprob: npt.NDArray[Any],
    valid: npt.NDArray[np.bool_],
    table: npt.NDArray[np.int32],
    nll: npt.NDArray[np.float64],
    tokens: npt.NDArray[np.int64],
    lp_max: npt.NDArray[np.float64],
    lp_nulls: npt.NDArray[np.int64],
) -> None:  # pragma: no cover - compiled; its callers are tested
    """Add each row to the sums of its slot ``table[position]`` (rows whose slot
    is negative are skipped): the NLL (float64, in row order), the row count,
    the largest log-prob and the null count.

    ``position`` is ``index[i]``; with hashes (``first`` not empty) it is
    ``index[i] + code * stride``, the code of the row's prompt from ``prompts``
    (:func:`hash_table`), and a prompt not in it, or an ``index[i]`` that is
    already "outside" (the last position of ``table``), is outside. ``valid`` is
    empty when no log-prob is null, else one flag per row.
    """
    masked = valid.shape[0] > 0
    hashed = first.shape[0] > 0
    keys1, keys2, codes = prompts
    mask = np.uint64(max(keys1.shape[0], 1) - 1)
    outside = table.shape[0] - 1
    for i in range(index.shape[0]):
        at = index[i]
        if hashed and at != outside:
            probe = first[i] & mask
            code = -1
            while codes[probe] >= 0:
                if keys1[probe] == first[i] and keys2[probe] == second[i]:
                    code = codes[probe]
                    break
                probe = (probe + np.uint64(1)) & mask
            at = outside if code < 0 else at + code * stride
        slot = table[at]
        if slot < 0:
            continue
        tokens[slot] += 1
        if masked and not valid[i]:
            lp_nulls[slot] += 1
            continue
        value = np.float64(logprob[i])
        nll[slot] -= value
        if value > lp_max[slot]:  # noqa: PLR1730 - NaN never replaces the maximum
            lp_max[slot] = value


@numba.njit(nogil=True, cache=True)
def best_of_groups(  # noqa: PLR0917 - a compiled kernel takes its arrays positionally
    group: npt.NDArray[Any],
    cand: npt.NDArray[Any],
    reward: npt.NDArray[np.float64],
    first: npt.NDArray[np.int64],
    best: npt.NDArray[np.float64],
    ties: npt.NDArray[np.int64],
    counts: npt.NDArray[np.int64],
    sums: npt.NDArray[np.float64],
) -> None:  # pragma: no cover - compiled; its callers are tested
    """Best-of-K over candidates in any order, into arrays of one entry per group
    (a ``(stage, prompt)``; ``counts`` and ``sums`` start at 0): the candidate
    with the largest (finite) reward, ties to the smallest ``cand``, with its own
    reward (-0.0 stays -0.0); the number of candidates sharing the best reward,
    the number of candidates and the reward sum."""
    for i in range(group.shape[0]):
        g, value = group[i], reward[i]
        counts[g] += 1
        sums[g] += value
        if counts[g] == 1 or value > best[g]:
            best[g], first[g], ties[g] = value, cand[i], 1
        elif value == best[g]:
            ties[g] += 1
            if cand[i] < first[g]:
                best[g], first[g] = value, cand[i]


def groups_of(size: int) -> tuple[npt.NDArray[Any], ...]:
    """The output arrays of :func:`best_of_groups` for ``size`` groups."""
    return (
        np.zeros(size, dtype=np.int64),
        np.zeros(size),
        np.zeros(size, dtype=np.int64),
        np.zeros(size, dtype=np.int64),
        np.zeros(size),
    )


def touch() -> None:
    """Load the loops' machine code from numba's cache (the first load of a
    process initialises LLVM: ~0.3 s), on empty arrays of the common types."""
    empty = np.zeros(0, dtype=np.uint64)
    codes = np.zeros(0, dtype=np.int64)
    best_of_groups(codes, codes, np.zeros(0), *groups_of(0))
    for index, values in ((np.int32, np.float32), (np.int64, np.float64)):
        scatter(
            np.zeros(0, dtype=index),
            empty,
            empty,
            (empty, empty, codes),
            0,
            np.zeros(0, dtype=values),
            np.zeros(0, dtype=np.bool_),
            np.zeros(1, dtype=np.int32),
            np.zeros(1),
            np.zeros(1, dtype=np.int64),
            np.zeros(1),
            np.zeros(1, dtype=np.int64),
        )
