"""Step 2 of RAFT: rank the candidates of each prompt and select the batch.

The default is the seed's best-of-K: per ``(stage, prompt)`` the candidate with the
largest reward, ties to the smallest candidate id. Other strategies:

- ``top_n``: the ``n`` best candidates of each prompt (same order and tie rule);
- ``global``: the RAFT paper's global ranking, the top ``fraction`` of all
  candidates of a stage by reward, across prompts (ties to the smallest candidate
  id, then the smallest prompt id); ``ceil(fraction * candidates)`` are kept;
- ``min_reward`` (with any strategy): selected candidates whose reward is below the
  threshold are dropped, so a prompt whose selection falls below it contributes
  nothing; such prompts are counted.

Everything here works on the small candidate-level key frame
``stage, prompt, cand, reward``, never on tokens.

Examples
--------
>>> import polars as pl
>>> from raft_polars.ranking import Selection, select
>>> keys = pl.LazyFrame({"stage": [0, 0, 0, 0], "prompt": [1, 1, 2, 2],
...                      "cand": [0, 1, 0, 1], "reward": [0.5, 0.5, 0.1, 0.9]})
>>> select(keys, Selection()).sort("prompt").collect().rows()
[(0, 1, 0, 0.5), (0, 2, 1, 0.9)]
>>> select(keys, Selection(strategy="global", fraction=0.5)).sort("prompt").collect().rows()
[(0, 1, 0, 0.5), (0, 2, 1, 0.9)]
>>> select(keys, Selection(min_reward=0.6)).collect().rows()
[(0, 2, 1, 0.9)]
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias, TypeVar

import numpy as np
import polars as pl

from raft_polars._checks import bad_reward
from raft_polars._dense import box_of
from raft_polars.errors import RaftInputError
from raft_polars.logs import ID_COLUMNS

__all__ = [
    "ORDER_BY",
    "ORDER_DESCENDING",
    "Selection",
    "Strategy",
    "apply_min_reward",
    "dense_summary",
    "prompt_summary",
    "rank",
    "select",
    "summary_aggregations",
]

Strategy: TypeAlias = Literal["best", "top_n", "global"]
FrameT = TypeVar("FrameT", pl.DataFrame, pl.LazyFrame)
_PROMPT = ["stage", "prompt"]
_CEIL_TOLERANCE = 1e-9
# best first: the largest reward, then the smallest candidate id
ORDER_BY = ["reward", "cand"]
ORDER_DESCENDING = [True, False]


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


@dataclass(frozen=True)
class Selection:
    """How the batch is selected from the ranked candidates.

    Parameters
    ----------
    strategy
        ``"best"`` (best-of-K, the default), ``"top_n"`` or ``"global"``.
    n
        Candidates kept per prompt with ``"top_n"``.
    fraction
        Share of a stage's candidates kept with ``"global"``, in ``(0, 1]``.
    min_reward
        Drop selected candidates whose reward is below this.
    """

    strategy: Strategy = "best"
    n: int = 1
    fraction: float | None = None
    min_reward: float | None = None

    def __post_init__(self) -> None:
        if self.strategy not in ("best", "top_n", "global"):
            msg = f"strategy must be 'best', 'top_n' or 'global', got {self.strategy!r}"
            raise RaftInputError(msg)
        for name in ("fraction", "min_reward"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, numbers.Real)
            ):
                msg = f"{name} must be a number, got {value!r}"
                raise RaftInputError(msg)
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            msg = f"n must be a whole number >= 1, got {self.n!r}"
            raise RaftInputError(msg)
        if self.strategy == "global":
            if self.fraction is None or not 0.0 < self.fraction <= 1.0:
                msg = f"strategy='global' needs 0 < fraction <= 1, got {self.fraction!r}"
                raise RaftInputError(msg)
        elif self.fraction is not None:
            msg = f"fraction applies to strategy='global' only, not {self.strategy!r}"
            raise RaftInputError(msg)
        if self.strategy != "top_n" and self.n != 1:
            msg = f"n applies to strategy='top_n' only, not {self.strategy!r}"
            raise RaftInputError(msg)
        if self.min_reward is not None and not _finite(self.min_reward):
            msg = f"min_reward must be a finite number, got {self.min_reward!r}"
            raise RaftInputError(msg)

    @property
    def is_best_of_k(self) -> bool:
        """Plain best-of-K with no threshold: one selected candidate per prompt."""
        return self.strategy == "best" or (self.strategy == "top_n" and self.n == 1)


def prompt_summary(candidates: pl.LazyFrame, *, carry: Sequence[str] = ()) -> pl.LazyFrame:
    """One row per ``(stage, prompt)``: candidate counts, reward statistics, the
    best candidate (``cand``, ``reward``) and the ``carry`` columns of that row.

    Columns: ``stage, prompt, cand, reward, *carry, candidates, cand_unique,
    reward_sum, ties, bad_rewards``. ``ties`` is the number of candidates that
    share the best reward; ``bad_rewards`` counts null, NaN and infinite rewards;
    ``null_cands`` counts null candidate ids.
    """
    return candidates.group_by(_PROMPT).agg(summary_aggregations(tuple(carry)))


@functools.cache
def summary_aggregations(carry: tuple[str, ...]) -> tuple[pl.Expr, ...]:
    reward = pl.col("reward")
    return (
        pl.col("cand", "reward", *carry).sort_by(ORDER_BY, descending=ORDER_DESCENDING).first(),
        pl.len().alias("candidates"),
        pl.col("cand").n_unique().alias("cand_unique"),
        pl.col("cand").null_count().alias("null_cands"),
        reward.sum().alias("reward_sum"),
        (reward == reward.max()).sum().alias("ties"),
        bad_reward(reward).sum().alias("bad_rewards"),
    )


def dense_summary(keys: pl.DataFrame) -> pl.DataFrame | None:
    """:func:`prompt_summary` with numpy, for integer ids that fit a dense box.

    Returns the same columns (Int64 ids, sorted by ``stage, prompt``), or None
    when the ids do not fit a box or something is off (a null id, a duplicate
    candidate, a reward that is not finite): :func:`prompt_summary` then runs, and
    the checks name the problem. Time and memory are O(candidates) when the box
    is at most 4 positions per candidate; it gives up otherwise.
    """
    box = box_of(keys)
    if box is None or box.prompts > 4 * keys.height:
        return None
    reward = keys["reward"].cast(pl.Float64).to_numpy()  # a null reward: NaN
    if not np.isfinite(reward).all():
        return None
    index = box.index(keys)
    present = np.zeros(box.size, dtype=bool)
    present[index] = True
    if int(np.count_nonzero(present)) != len(index):  # a duplicate candidate
        return None
    k = box.spans[2]
    if box.size <= 4 * keys.height:  # a (prompt x K) reward matrix, row by row
        matrix = np.full(box.size, -np.inf)
        matrix[index] = reward
        group = index
        group //= k  # in place: the positions are not needed any more
        counts = np.count_nonzero(present.reshape(box.prompts, k), axis=1)
        used = np.flatnonzero(counts)
        rows = matrix.reshape(box.prompts, k)
        if len(used) < box.prompts:  # a copy only when some positions hold no prompt
            rows = rows[used]
        del matrix
        cand = rows.argmax(axis=1)  # the first maximum: ties go to the smallest cand
        best = rows[np.arange(len(used)), cand]  # its own reward: -0.0 stays -0.0
        ties = np.count_nonzero(rows == best[:, None], axis=1)
        del rows
    else:  # scattered: O(candidates) with unbuffered ufunc.at
        group = index // k
        counts = np.bincount(group, minlength=box.prompts)
        used = np.flatnonzero(counts)
        top = np.full(box.prompts, -np.inf)
        np.maximum.at(top, group, reward)
        at_top = reward == top[group]
        offset = index - group * k
        del index
        first = np.full(box.prompts, k)
        np.minimum.at(first, group[at_top], offset[at_top])
        cand = first[used]
        ties = np.bincount(group[at_top], minlength=box.prompts)[used]
        picked = at_top & (offset == first[group])  # one row per prompt
        top[group[picked]] = reward[picked]  # its own reward: -0.0 stays -0.0
        best = top[used]
    sums = np.bincount(group, weights=reward, minlength=box.prompts)[used]
    count = pl.get_index_type()
    zeros = pl.Series(np.zeros(len(used), dtype=np.uint32), dtype=count)
    return pl.DataFrame({
        **box.ids(used),
        "cand": cand + box.lows[2],
        "reward": best,
        "candidates": pl.Series(counts[used], dtype=count),
        "cand_unique": pl.Series(counts[used], dtype=count),
        "null_cands": zeros,
        "reward_sum": sums,
        "ties": pl.Series(ties, dtype=count),
        "bad_rewards": zeros,
    }).cast({"stage": pl.Int64, "prompt": pl.Int64, "cand": pl.Int64, "reward": pl.Float64})


def select(candidates: pl.LazyFrame, selection: Selection) -> pl.LazyFrame:
    """The selected candidates: ``stage, prompt, cand, reward``, one row each.

    :func:`rank` followed by :func:`apply_min_reward`. Row order carries no
    meaning; the rewards are assumed finite (:func:`prompt_summary` counts the
    bad ones).
    """
    return apply_min_reward(rank(candidates, selection), selection)


def rank(candidates: pl.LazyFrame, selection: Selection) -> pl.LazyFrame:
    """The candidates the strategy selects, before any ``min_reward`` threshold."""
    keys = candidates.select(*ID_COLUMNS, "reward")
    if selection.strategy == "global":
        assert selection.fraction is not None
        ranked = keys.sort(["stage", "reward", "cand", "prompt"],
                           descending=[False, True, False, False])
        position = pl.int_range(pl.len()).over("stage")
        # ceil(fraction * n), tolerant of binary rounding: 0.28 * 25 is 7.000000000000001
        keep = (pl.len().over("stage") * selection.fraction - _CEIL_TOLERANCE).ceil()
        return ranked.filter(position < keep)
    if selection.is_best_of_k:
        return prompt_summary(keys).select(*ID_COLUMNS, "reward")
    ranked = keys.sort([*_PROMPT, "reward", "cand"], descending=[False, False, True, False])
    return ranked.filter(pl.int_range(pl.len()).over(_PROMPT) < selection.n)


def apply_min_reward(chosen: FrameT, selection: Selection) -> FrameT:
    """Drop the selected candidates whose reward is below ``selection.min_reward``."""
    if selection.min_reward is None:
        return chosen
    return chosen.filter(pl.col("reward") >= selection.min_reward)
