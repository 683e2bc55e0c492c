"""A numpy fast path for ``raft_alignment`` (scratch, issue 3).

    /work/venv/bin/python bench/experiments/list_path.py

``raft_alignment`` spends its time on Polars query overhead (~0.3 ms a collect,
several collects and frame constructions per call), which dominates tiny inputs
such as the seed example. ``fast_alignment`` keeps the engine's shape checks
(``lists._read_rewards``) and computes best-of-K and the pooled loss with numpy on
the flat arrays; on anything unusual (a non-finite reward, a bad or non-numeric
selected log-prob, a stage without selected tokens) it returns None and the
engine's path runs, so every error message stays the engine's.
"""

from __future__ import annotations

import sys
import timeit
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import datagen
import queries

from raft_polars import lists, raft_alignment


def fast_alignment(lps: Any, rws: Any) -> list[float] | None:
    """Best-of-K pooled token loss per stage, rounded; None: use the engine."""
    keys = lists._read_rewards(lps, rws)  # shape checks and messages of the engine
    if keys.height == 0:
        return []
    return _fast(keys["stage"].to_numpy(), keys["prompt"].to_numpy(), keys["cand"].to_numpy(),
                 keys["reward"].to_numpy(), lps)


def _fast(stage: np.ndarray, prompt: np.ndarray, cand: np.ndarray, reward: np.ndarray,
          lps: Any) -> list[float] | None:
    if len(reward) == 0:
        return []
    if not np.isfinite(reward).all():  # NaN also stands for a null (None) reward
        return None
    # candidates of a prompt are contiguous, in order: group starts where cand == 0
    starts = np.flatnonzero(cand == 0)
    best = np.maximum.reduceat(reward, starts)
    k = np.diff(np.append(starts, len(reward)))
    top = reward == np.repeat(best, k)
    position = np.where(top, np.arange(len(reward)), len(reward))
    first = np.minimum.reduceat(position, starts)  # ties: the smallest candidate
    picks = [lps[t][i][j] for t, i, j in zip(stage[first].tolist(), prompt[first].tolist(),
                                            cand[first].tolist(), strict=True)]
    array = lists._float_lists(picks)  # the engine's strict converter (Arrow)
    if array is None or array.null_count or array.values.null_count:
        return None
    values = array.values.to_numpy()
    offsets = array.offsets.to_numpy()
    if not (np.isfinite(values).all() and (values <= 0).all()):
        return None
    lengths = np.diff(offsets)
    # one padding zero keeps every start a valid index (an empty last response)
    sums = np.add.reduceat(np.append(values, 0.0), offsets[:-1])
    sums[lengths == 0] = 0.0  # reduceat gives the next value for an empty segment
    n_stages = int(stage.max()) + 1
    nll = np.bincount(stage[first], weights=-sums, minlength=n_stages)
    tokens = np.bincount(stage[first], weights=lengths, minlength=n_stages)
    if (tokens == 0).any():
        return None
    return [round(float(x), 4) for x in nll / tokens]


def _reward_arrays() -> Any:
    """``lists._read_rewards`` (same checks, same messages) returning the numpy
    columns instead of a DataFrame: built from the engine's source, so that the
    measurement shows what skipping the ~100 us frame construction buys."""
    import inspect

    source = inspect.getsource(lists._read_rewards)
    source = source.replace("def _read_rewards(", "def _read_reward_arrays(")
    source = source.replace('reward = pl.Series("reward", rewards.values)',
                            "reward = rewards.values.to_numpy(zero_copy_only=False)")
    source = source.replace("keys = pl.DataFrame(", "keys = dict(")
    namespace = dict(vars(lists))
    exec(compile(source, "<_read_reward_arrays>", "exec"), namespace)
    return namespace["_read_reward_arrays"]


_read_reward_arrays = _reward_arrays()


def fast_alignment_arrays(lps: Any, rws: Any) -> list[float] | None:
    """:func:`fast_alignment` without the candidate DataFrame."""
    keys = _read_reward_arrays(lps, rws)
    return _fast(keys["stage"], keys["prompt"], keys["cand"], keys["reward"], lps)


def main() -> None:
    seed = (queries.SEED_LOGPROBS, queries.SEED_REWARDS)
    big = queries.list_case(datagen.LIST_SHAPE, datagen.SEED)
    assert fast_alignment(*seed) == raft_alignment(*seed) == queries.SEED_ANSWER
    assert fast_alignment(*big) == raft_alignment(*big) == queries.numpy_loop(*big)
    assert fast_alignment_arrays(*seed) == queries.SEED_ANSWER
    edge = ([[[[-1.0, -3.0], [-1.0]], [[], [-2.0]]], [[[-0.5], []]]],  # ties, empty responses
            [[[5, 5], [1, 0]], [[0, 1]]])
    got = fast_alignment_arrays(*edge)
    assert got is None or got == raft_alignment(*edge)
    assert fast_alignment_arrays(*big) == raft_alignment(*big)
    for name, func in (("numpy loop", queries.numpy_loop), ("raft_alignment", raft_alignment),
                       ("numpy fast path", fast_alignment),
                       ("fast path, no frame", fast_alignment_arrays)):
        for case, args in (("seed example", seed), ("2M tokens", big)):
            timer = timeit.Timer(lambda f=func, a=args: f(*a))
            number, _ = timer.autorange()
            per = sorted(t / number for t in timer.repeat(7, number))[3]
            print(f"{name:16s} {case:13s} {per * 1e6:12.1f} us/call")


if __name__ == "__main__":
    main()
