"""The seed's entry point: RAFT over nested Python lists.

``raft_alignment(stages_log_probs, stages_rewards)`` reads the nested lists into
the canonical frame (only the rewards, and then only the log-probs of the selected
responses, so the unselected tokens are never converted), ranks with the shared
best-of-K ranking and reduces with the shared reduction of
:mod:`raft_polars.losses`; it returns the per-stage losses rounded with Python's
``round(x, 4)``. Candidate ids are positions, so ties go to the first candidate,
as ``numpy.argmax`` does.

Examples
--------
>>> from raft_polars import raft_alignment
>>> raft_alignment(
...     [[[[-2.0, -1.8], [-1.5, -1.6]]], [[[-0.6, -0.5], [-0.7, -0.8]]],
...      [[[-0.2, -0.1], [-0.3, -0.4]]]],
...     [[[0.2, 0.4]], [[0.75, 0.7]], [[0.95, 0.8]]],
... )
[1.55, 0.55, 0.15]
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from itertools import chain, pairwise
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa

from raft_polars._engine.checks import raise_first
from raft_polars._engine.rank import rank_keys
from raft_polars._engine.read import StageLog
from raft_polars._engine.reduce import finish, nested_sums
from raft_polars._engine.sources import Resolved
from raft_polars.errors import RaftInputError
from raft_polars.selection import Reduction, Selection, check_reduction

__all__ = ["lists_losses", "raft_alignment"]

Number: TypeAlias = float | int
LogProbs: TypeAlias = Sequence[Sequence[Sequence[Sequence[Number]]]]
Rewards: TypeAlias = Sequence[Sequence[Sequence[Number]]]

_LISTS = pa.large_list(pa.float64())
# what Arrow's converter raises for values that are not numbers or nests that are not lists
_NOT_CONVERTED = (
    pa.ArrowInvalid,
    pa.ArrowTypeError,
    pa.ArrowNotImplementedError,
    TypeError,
    OverflowError,
)
_NEST = pa.large_list(_LISTS)
_LP = "stages_log_probs"
_RW = "stages_rewards"


def raft_alignment(stages_log_probs: LogProbs, stages_rewards: Rewards) -> list[float]:
    """Per-stage SFT loss of RAFT over nested lists, each rounded to 4 decimals.

    Parameters
    ----------
    stages_log_probs
        ``[T][prompts][K][tokens]`` token log-probabilities; every level may be
        ragged, and a response may have no tokens.
    stages_rewards
        ``[T][prompts][K]`` rewards, shaped like ``stages_log_probs`` down to ``K``.

    Returns
    -------
    list of float
        ``round(loss_t, 4)`` for every stage, in stage order; ``[]`` for ``T = 0``.

    Raises
    ------
    RaftInputError
        Shapes disagree, a stage has no prompts or a prompt no candidates, a reward
        is not finite, a selected log-prob is not finite or > 0, or a stage's
        selected responses hold no tokens.

    Examples
    --------
    >>> raft_alignment([[[[-1.0, -3.0], [-1.0]]]], [[[5, 5]]])  # tie: first wins
    [2.0]
    >>> raft_alignment([], [])
    []
    """
    stages_log_probs, stages_rewards = _stages(stages_log_probs), _stages(stages_rewards)
    _ordered(stages_log_probs, stages_rewards)
    losses = _best_of_k_losses(stages_log_probs, stages_rewards)
    if losses is None:  # something to report: the frame path names it
        keys = _read_rewards(stages_log_probs, stages_rewards)
        losses = _losses(stages_log_probs, keys, "token")["loss"].to_list()
    return [round(loss, 4) for loss in losses]


def lists_losses(
    stages_log_probs: LogProbs,
    stages_rewards: Rewards,
    *,
    reduction: Reduction = "token",
) -> pl.DataFrame:
    """The per-stage table of :func:`raft_polars.stage_losses` for nested lists.

    Stages, prompts and candidates are numbered by position from 0.
    """
    check_reduction(reduction)
    lps, rws = _stages(stages_log_probs), _stages(stages_rewards)
    _ordered(lps, rws)
    return _losses(lps, _read_rewards(lps, rws), reduction)


def _stages(nest: Any) -> Any:
    """The stages of a nest as a list when they come as an iterable without a
    length (a generator of stages: read once, which the checks and the fallback
    would each have read); anything else as it is, for the checks to judge."""
    if hasattr(nest, "__len__") or isinstance(nest, str | bytes | Mapping | np.ndarray):
        return nest
    if isinstance(nest, Iterable):
        return list(nest)
    return nest


def _unordered(item: object) -> str | None:
    """What keeps a level of a nest from being a sequence, or None: a set (its
    order is not the one it was written in: ``{3.0, 1.0}`` iterates 1.0, 3.0, and
    the best candidate was silently another), a mapping, a masked array."""
    if isinstance(item, Set):
        return "a set, which keeps neither order nor repeats"
    if isinstance(item, Mapping):
        return "a mapping"
    if isinstance(item, np.ma.MaskedArray):
        return "a numpy masked array (fill it: numpy.ma.filled)"
    if isinstance(item, bytes | bytearray | memoryview):  # its numbers are its bytes
        data = item.tobytes() if isinstance(item, memoryview) else bytes(item)
        return f"bytes ({data[:8]!r}{'...' if len(data) > 8 else ''}), not a list of numbers"
    if isinstance(item, np.ndarray) and item.ndim == 0:
        return f"a 0-d numpy array ({item!r}: one value, not a list)"
    return None


def _ordered(lps: Any, rws: Any) -> None:
    """Raise where a stage or a prompt of either nest is not a sequence
    (:func:`_unordered`); the selected log-prob lists are checked where they are
    read."""
    for nest, name in ((lps, _LP), (rws, _RW)):
        level: list[tuple[tuple[int, ...], Any]] = [((), nest)]
        for depth in range(3):
            for where, item in level:
                kind = _unordered(item)
                if kind is not None:
                    place = "".join(f"[{i}]" for i in where)
                    msg = f"{name}{place} is {kind}; each level must be a sequence (a list)"
                    raise RaftInputError(msg)
            if depth < 2:
                level = [
                    ((*where, i), sub)
                    for where, item in level
                    if hasattr(item, "__len__") and not isinstance(item, str | bytes)
                    for i, sub in enumerate(item)
                ]


@dataclass(frozen=True)
class _Keys:
    """The candidate rows of nested lists: ids by position, rewards (None: null)."""

    cand: npt.NDArray[np.int64]
    reward: pa.Array
    # each candidate's (stage, prompt) group, and each group's stage and prompt
    group: npt.NDArray[np.int64]
    group_stage: npt.NDArray[np.int64]
    group_prompt: npt.NDArray[np.int64]

    @property
    def stage(self) -> npt.NDArray[np.int64]:
        return self.group_stage[self.group]

    @property
    def prompt(self) -> npt.NDArray[np.int64]:
        return self.group_prompt[self.group]

    def frame(self) -> pl.DataFrame:
        return pl.DataFrame(
            {
                "stage": self.stage,
                "prompt": self.prompt,
                "cand": self.cand,
                "reward": pl.Series("reward", self.reward),
            }
        )


def _losses(lps: LogProbs, candidates: _Keys, reduction: Reduction) -> pl.DataFrame:
    """Rank and reduce with the engine's kernels, with all of their checks."""
    ranked = rank_keys(candidates.frame(), Selection())
    raise_first(ranked.problems, origin=_RW, token_origin=_LP)
    rows = ranked.chosen.with_columns(_selected_logprobs(lps, ranked.chosen))
    source = Resolved("source", _LP, (), tuple(rows.schema.items()), (), rows.lazy())
    log = StageLog("nested", source, None, (), (), pl.Int64())
    reduced = nested_sums(log, ranked.chosen)
    return finish(log, [ranked.stages, reduced.stages], [None], reduced.problems, reduction)


def _lengths(items: Sequence[object], name: str, where: str) -> list[int]:
    try:
        return [len(item) for item in items]  # type: ignore[arg-type]
    except TypeError:
        for index, item in enumerate(items):
            if not hasattr(item, "__len__"):
                msg = f"{name}{where}[{index}] must be a list, found {item!r}"
                raise RaftInputError(msg) from None
        raise


def _best_of_k_losses(lps: LogProbs, rws: Rewards) -> list[float] | None:
    """Best-of-K pooled token losses with the engine's compiled kernels, for the
    common, clean case, without the frames' per-query overhead.

    The ranking is :func:`~raft_polars._engine._compiled.best_of_groups` (the
    dense path of the rank step, through ``best_of_nest``), the reduction
    :func:`~raft_polars._engine._compiled.list_sums` (the nested layout's pass of
    the reduce step) over each stage's selected tokens as one list: the NLL
    added token by token from 0.0, as the plain loop does. None when anything
    needs a message (the frame path then finds it): shapes that disagree, an
    empty stage or prompt, a reward or selected log-prob that is null, not
    finite or not a number, a log-prob > 0, a stage whose selected responses
    hold no tokens; also a loss that overflows (the frame path gives ``inf``).
    """
    from raft_polars._engine._compiled import NO_MASK, list_sums

    ranked = _best_of_k(lps, rws)
    if ranked is None:
        return None
    stage_offsets, stage, prompt, cand = ranked
    if not len(cand):
        return []
    picks = [
        lps[t][i][j] for t, i, j in zip(stage.tolist(), prompt.tolist(), cand.tolist(), strict=True)
    ]
    unordered = any(_unordered(pick) is not None for pick in picks)
    array = None if unordered else _float_lists(picks)
    selected = None if array is None else _levels(array, 1)
    if selected is None:
        return None
    offsets, values = selected
    # the groups are in stage order, one selected response each: stage t's
    # tokens are one run of the selected values, from ends[t] to ends[t + 1]
    ends = offsets[stage_offsets]
    stages = len(ends) - 1
    nll, top, nulls = np.empty(stages), np.empty(stages), np.empty(stages, np.int64)
    list_sums(ends, values, NO_MASK, nll, top, nulls)
    sums, bounds = nll.tolist(), ends.tolist()
    tokens = [b - a for a, b in pairwise(bounds)]
    # a NaN makes its sum NaN, +inf the largest value; -inf or an overflow makes
    # the sum inf (an overflow is an infinite loss, as in the loop)
    clean = all(k and not math.isnan(s) for s, k in zip(sums, tokens, strict=True))
    if not clean or max(top.tolist()) > 0:
        return None
    if math.inf in sums and not np.isfinite(values).all():
        return None
    return [s / k for s, k in zip(sums, tokens, strict=True)]


def _best_of_k(lps: LogProbs, rws: Rewards) -> list[npt.NDArray[np.int64]] | None:
    """The rank step of :func:`_best_of_k_losses`: the rewards checked against
    the shape of ``lps`` and ranked in one compiled call; the offsets of the
    stages' prompts, then each group's stage, prompt and best ``cand``. None
    when anything needs a message (a shape the checks reject raises here).

    The rewards take one Arrow conversion (:func:`_reward_levels`); a nest
    Arrow cannot convert in one call (numpy arrays of two or more dimensions)
    the checks of :func:`_read_rewards`."""
    from raft_polars._engine._compiled import best_of_nest

    got = _reward_levels(lps, rws)
    if got is None:  # shapes the checks accept: the nest agrees with lps
        nest = _checked_levels(lps, rws)
        prompts, ks = np.diff(nest[0]), np.diff(nest[1])
    else:
        nest, prompts, ks = got
    stage_offsets, prompt_offsets, reward = nest
    ranked = best_of_nest(stage_offsets, prompt_offsets, reward, prompts, ks)
    if not len(ranked[0]) and (len(prompts) or len(stage_offsets) > 1):
        return None  # the checks failed (T = 0 has no candidates, and no message)
    return [stage_offsets, *ranked]


def _checked_levels(lps: LogProbs, rws: Rewards) -> list[npt.NDArray[Any]]:
    """:func:`_levels` of the rewards as :func:`_read_rewards` reads them (a
    null reward is NaN)."""
    keys = _read_rewards(lps, rws)
    groups = len(keys.group_stage)
    stage_offsets = np.zeros(len(lps) + 1, dtype=np.int64)
    np.cumsum(np.bincount(keys.group_stage, minlength=len(lps)), out=stage_offsets[1:])
    prompt_offsets = np.zeros(groups + 1, dtype=np.int64)
    np.cumsum(np.bincount(keys.group, minlength=groups), out=prompt_offsets[1:])
    return [stage_offsets, prompt_offsets, keys.reward.to_numpy(zero_copy_only=False)]


def _reward_levels(
    lps: LogProbs, rws: Rewards
) -> tuple[list[npt.NDArray[Any]], npt.NDArray[np.int64], npt.NDArray[np.int64]] | None:
    """The rewards converted by Arrow in one call, as :func:`_levels`, with the
    prompts per stage and the candidates per prompt of ``lps``; None when Arrow
    cannot convert them, a list or a reward is null, or ``lps`` is not nested."""
    try:
        nest = pa.array(rws, type=_NEST, from_pandas=False)
        prompts = np.array([len(stage) for stage in lps], dtype=np.int64)
        ks = np.array([len(prompt) for stage in lps for prompt in stage], dtype=np.int64)
    except _NOT_CONVERTED:
        return None
    levels = _levels(nest, 2)
    return None if levels is None else (levels, prompts, ks)


def _levels(array: pa.LargeListArray, depth: int) -> list[npt.NDArray[Any]] | None:
    """The offsets of each of the ``depth`` list levels of an Arrow list array
    (from 0) and its float64 values, read from its buffers (zero copy, a
    slice's too); None when a list or a value is null, or a child array is a
    slice of its own."""
    arrays = [array]
    for _ in range(depth):
        arrays.append(arrays[-1].values)
    if any(a.offset for a in arrays[1:]) or any(a.null_count for a in arrays):
        return None
    buffers = array.buffers()
    levels: list[npt.NDArray[Any]] = []
    low, high = array.offset, array.offset + len(array)
    for buffer in buffers[1:-1:2]:
        if buffer is None or buffer.size < (high + 1) * 8:
            return None
        level = np.frombuffer(buffer, np.int64)[low : high + 1]
        low, high = int(level[0]), int(level[-1])
        levels.append(level - low if low else level)
    values = buffers[-1]
    if values is None or values.size < high * 8:
        return None
    return [*levels, np.frombuffer(values, np.float64)[low:high]]


def _read_rewards(lps: LogProbs, rws: Rewards) -> _Keys:
    """Check the shapes of both nests and return the candidate rows."""
    keys = _shaped_rewards(lps, rws)
    if keys is not None:
        return keys
    for nest, name in ((lps, _LP), (rws, _RW)):
        if isinstance(nest, str | bytes) or not hasattr(nest, "__len__"):
            msg = f"{name} must be a list, found {type(nest).__name__}"
            raise RaftInputError(msg)
    if len(lps) != len(rws):
        msg = (
            f"{_LP} has {len(lps)} stage(s) but {_RW} has {len(rws)}; both need one entry per stage"
        )
        raise RaftInputError(msg)
    prompts = _lengths(rws, _RW, "")
    if prompts != _lengths(lps, _LP, ""):
        t = next(
            t
            for t, (a, b) in enumerate(zip(prompts, _lengths(lps, _LP, ""), strict=True))
            if a != b
        )
        msg = f"stage {t}: {_LP}[{t}] has {len(lps[t])} prompt(s) but {_RW}[{t}] has {len(rws[t])}"
        raise RaftInputError(msg)
    if 0 in prompts:
        msg = f"stage {prompts.index(0)} has no prompts"
        raise RaftInputError(msg)
    k_r = list(chain.from_iterable(_lengths(stage, _RW, f"[{t}]") for t, stage in enumerate(rws)))
    k_l = list(chain.from_iterable(_lengths(stage, _LP, f"[{t}]") for t, stage in enumerate(lps)))
    starts = np.zeros(len(prompts) + 1, dtype=np.int64)
    np.cumsum(prompts, out=starts[1:])
    if k_r != k_l or 0 in k_r:
        flat = next(i for i, (a, b) in enumerate(zip(k_r, k_l, strict=True)) if a != b or a == 0)
        t = int(np.searchsorted(starts, flat, side="right") - 1)
        i = flat - int(starts[t])
        if k_r[flat] == 0:
            msg = f"stage {t}, prompt {i} has no candidates"
        else:
            msg = (
                f"stage {t}, prompt {i}: {_LP} has {k_l[flat]} candidate(s) but {_RW} "
                f"has {k_r[flat]}"
            )
        raise RaftInputError(msg)
    rewards = _float_lists(list(chain.from_iterable(rws)))
    if rewards is None:
        for t, stage in enumerate(rws):
            for i, prompt in enumerate(stage):
                for j, value in enumerate(prompt):
                    problem = _not_a_float(value)
                    if problem is not None:
                        msg = f"reward at stage {t}, prompt {i}, candidate {j} {problem}"
                        raise RaftInputError(msg)
        msg = f"{_RW} holds values that are not numbers"
        raise RaftInputError(msg)
    k = np.asarray(k_r, dtype=np.int64)
    return _keys(np.asarray(prompts, dtype=np.int64), k, rewards.values)


def _shaped_rewards(lps: LogProbs, rws: Rewards) -> _Keys | None:
    """The candidate rows of well-shaped nests, the rewards converted by Arrow in
    one call (:func:`_reward_levels`); None when anything needs a message (the
    checks then find it)."""
    got = _reward_levels(lps, rws)
    if got is None:
        return None
    (stage_offsets, prompt_offsets, rewards), shape, ks = got
    prompts, k = np.diff(stage_offsets), np.diff(prompt_offsets)
    if not (np.array_equal(prompts, shape) and np.array_equal(k, ks)):
        return None
    if not (prompts.all() and k.all()):
        return None
    return _keys(prompts, k, pa.array(rewards))


def _keys(prompts: npt.NDArray[np.int64], k: npt.NDArray[np.int64], rewards: pa.Array) -> _Keys:
    """The candidate rows from the prompts per stage and candidates per prompt."""
    from raft_polars._engine._compiled import nest_ids

    group, cand, group_stage, group_prompt = nest_ids(prompts, k)
    # None became null: a bad reward
    return _Keys(cand, rewards, group, group_stage, group_prompt)


def _not_a_float(value: object) -> str | None:
    """What keeps ``value`` from being a float64 (not a number, an integer beyond
    its range), or None."""
    if not _is_number(value):
        return f"is not a number: {value!r}"
    try:
        _widened(value)
    except OverflowError:  # (its digits, not counted: Python's str() stops at 4,300)
        if not isinstance(value, int):  # a Fraction, or a Decimal
            return "is beyond a float64's range"
        bits = int(value).bit_length()
        return f"is an integer of {bits} bits, beyond a float64's range (1,024 bits)"
    except ValueError:  # Decimal('sNaN')
        return f"is not a number: {value!r}"
    return None


def _is_number(value: object) -> bool:
    """Integers and floats, Python's and numpy's, decimals and fractions (each as
    the nearest float64, as every number is compared); ``True`` and ``False``
    (numpy's too) are 1 and 0, as in Python and numpy."""
    return isinstance(value, int | float | np.integer | np.floating | np.bool_ | Decimal | Fraction)


def _float_lists(lists: Sequence[object]) -> pa.LargeListArray | None:
    """Lists of numbers as an Arrow list array of float64 (None becomes null), or
    None if an element is not a number.

    Arrow's converter is strict where ``numpy.fromiter`` is not: a numeric string
    is an error, not a number, and None is null, not NaN.
    """
    try:
        return pa.array(lists, type=_LISTS, from_pandas=False)
    except _NOT_CONVERTED:
        pass
    try:  # integers beyond 2**53, which Arrow will not round: as numpy and float() do
        widened = [None if inner is None else [_widened(v) for v in inner] for inner in lists]  # type: ignore[attr-defined]
        return pa.array(widened, type=_LISTS, from_pandas=False)
    except (*_NOT_CONVERTED, TypeError, ValueError, OverflowError):
        return None


def _widened(value: object) -> float | None:
    """A number as float64 (None stays null); anything else is an error."""
    if value is None:
        return None
    if not _is_number(value):
        raise TypeError(value)
    widened = float(value)  # type: ignore[arg-type]
    if math.isinf(widened) and isinstance(value, Decimal) and value.is_finite():
        raise OverflowError(value)  # a Fraction's or an int's float() raises so
    return widened


def _selected_logprobs(lps: LogProbs, chosen: pl.DataFrame) -> pl.Series:
    """The selected responses' log-probs as a list column; only they are converted."""
    ids = list(
        zip(
            chosen["stage"].to_list(),
            chosen["prompt"].to_list(),
            chosen["cand"].to_list(),
            strict=True,
        )
    )
    picks = [lps[t][i][j] for t, i, j in ids]
    for (t, i, j), pick in zip(ids, picks, strict=True):
        kind = _unordered(pick)
        if kind is not None:
            msg = f"{_LP}[{t}][{i}][{j}] is {kind}; a response's log-probs must be a sequence"
            raise RaftInputError(msg)
    array = _float_lists(picks)
    if array is None:
        for (t, i, j), pick in zip(ids, picks, strict=True):
            if not hasattr(pick, "__len__"):
                msg = f"{_LP}[{t}][{i}][{j}] must be a list of log-probs, found {pick!r}"
                raise RaftInputError(msg)
            for index, value in enumerate(pick):
                problem = None if value is None else _not_a_float(value)
                if problem is not None:
                    where = f"stage {t}, prompt {i}, candidate {j}, token {index}"
                    msg = f"log-prob at {where} {problem}"
                    raise RaftInputError(msg)
        msg = f"{_LP} holds values that are not numbers"
        raise RaftInputError(msg)
    return pl.Series("logprobs", array)
