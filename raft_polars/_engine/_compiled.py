"""The engine's one compiled loop (numba), imported only when a token pass runs.

Polars decodes the token rows and computes each row's position; this loop does
what Polars cannot do in one pass: a gather from a small table (the row's
candidate slot) fused with a scatter-add into per-slot sums. Everything around
it (reading, positions, the slots, the checks) stays columnar.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
import numpy.typing as npt

__all__ = ["scatter"]


@numba.njit(nogil=True, cache=True)
def scatter(  # noqa: PLR0917 - a compiled kernel takes its arrays positionally
    index: npt.NDArray[Any],
    logprob: npt.NDArray[Any],
    valid: npt.NDArray[np.bool_],
    table: npt.NDArray[np.int32],
    nll: npt.NDArray[np.float64],
    tokens: npt.NDArray[np.int64],
    lp_max: npt.NDArray[np.float64],
    lp_nulls: npt.NDArray[np.int64],
) -> None:  # pragma: no cover - compiled; its callers are tested
    """Add each row to the sums of its slot ``table[index[i]]`` (rows whose slot
    is negative are skipped): the NLL (float64, in row order), the row count,
    the largest log-prob and the null count. ``valid`` is empty when no
    log-prob is null, else one flag per row."""
    masked = valid.shape[0] > 0
    for i in range(index.shape[0]):
        slot = table[index[i]]
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
