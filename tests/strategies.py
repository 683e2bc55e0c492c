"""Hypothesis strategies for random, valid, ragged RAFT stage logs.

The main one is :func:`ragged_logs`, which draws ``(lps, rws)``: the nested lists of
the seed function, ``lps[t][i][j]`` the log-probs of response ``j`` of prompt ``i``
at stage ``t`` and ``rws[t][i][j]`` its reward. Sizes are ragged at every level
(prompts per stage, ``K`` per prompt, tokens per response) and every log drawn is
valid input (SEMANTICS.md): rewards are finite, log-probs finite and ``<= 0``, and
the selected responses of every stage hold at least one token. Feed the lists to
the plain reference in ``tests/reference.py`` and to the entry point under test.

Identifiers for the file layouts come from :func:`stage_ids` and
:func:`prompt_ids`; they plug into ``reference.nested_frame`` /
``reference.long_frames`` (``stage_ids=``, ``prompt_ids=``).

Examples
--------
>>> from hypothesis import given
>>> from reference import reference_losses
>>> @given(ragged_logs(max_stages=2, ties=True))
... def test_one_loss_per_stage(log):
...     lps, rws = log
...     assert len(reference_losses(lps, rws)) == len(lps)
>>> test_one_loss_per_stage()
"""

from __future__ import annotations

from typing import Any, Literal

from hypothesis import strategies as st
from reference import best_index

__all__ = [
    "TIE_REWARDS",
    "logprob_values",
    "prompt_ids",
    "ragged_logs",
    "reward_values",
    "stage_ids",
]

LogProbs = list[list[list[list[float]]]]
Rewards = list[list[list[float]]]

# the small reward set of ``ties=True``: two candidates share a reward often
TIE_REWARDS = (-1.0, 0.0, 0.25, 0.5, 1.0)


def logprob_values(
    *,
    float32: bool = False,
    ints: bool = False,
    min_value: float = -30.0,
) -> st.SearchStrategy[float]:
    """Valid token log-probs: finite, in ``[min_value, 0]``.

    Parameters
    ----------
    float32
        Every value is exactly representable as a float32 (so a float32 column
        holds the same numbers as the lists).
    ints
        Also draw Python ``int`` values (``-3``, ``0``), accepted where floats are.
    min_value
        The most negative value; use ``-1e6`` for large magnitudes.
    """
    width: Literal[32, 64] = 32 if float32 else 64
    values: st.SearchStrategy[Any] = st.one_of(
        st.floats(
            min_value=min_value, max_value=0.0, width=width, allow_nan=False, allow_infinity=False
        ),
        st.sampled_from([0.0, -0.5, -1.0, -2.25]),
    )
    if ints:
        values = st.one_of(values, st.integers(min_value=max(int(min_value), -100), max_value=0))
    return values


def reward_values(
    *,
    ties: bool = False,
    negative: bool = True,
    float32: bool = False,
) -> st.SearchStrategy[float]:
    """Valid (finite) rewards.

    Parameters
    ----------
    ties
        Draw from the small set :data:`TIE_REWARDS`, so that equal best rewards
        (ties, won by the first candidate) are common.
    negative
        Allow rewards below zero.
    float32
        Every value is exactly representable as a float32.
    """
    low = -10.0 if negative else 0.0
    if ties:
        return st.sampled_from([r for r in TIE_REWARDS if r >= low])
    return st.floats(
        min_value=low,
        max_value=10.0,
        width=32 if float32 else 64,
        allow_nan=False,
        allow_infinity=False,
    )


@st.composite
def ragged_logs(
    draw: st.DrawFn,
    *,
    min_stages: int = 1,
    max_stages: int = 3,
    max_prompts: int = 3,
    min_k: int = 1,
    max_k: int = 4,
    max_tokens: int = 5,
    ties: bool = True,
    zero_tokens: bool = True,
    negative_rewards: bool = True,
    float32: bool = False,
    ints: bool = False,
    min_logprob: float = -30.0,
) -> tuple[LogProbs, Rewards]:
    """A valid ragged stage log ``(lps, rws)`` as nested lists.

    Parameters
    ----------
    min_stages, max_stages
        Number of stages ``T`` (``min_stages=0`` allows the empty log).
    max_prompts
        Prompts per stage, drawn in ``[1, max_prompts]`` for each stage.
    min_k, max_k
        Candidates per prompt, drawn for each prompt (``max_k=1`` gives K = 1).
    max_tokens
        Tokens per response, drawn for each response in ``[0 or 1, max_tokens]``.
    ties
        When true, each prompt draws its rewards either from the small set
        :data:`TIE_REWARDS` (ties likely) or from a continuous range.
    zero_tokens
        Allow responses with no tokens. Each stage still keeps at least one token
        in its selected responses (otherwise the log is invalid).
    negative_rewards
        Allow rewards below zero.
    float32
        Every log-prob and reward is exactly representable as a float32.
    ints
        Also draw Python ints for log-probs and rewards.
    min_logprob
        The most negative log-prob (``-1e6`` for large magnitudes).
    """
    lp = logprob_values(float32=float32, ints=ints, min_value=min_logprob)
    continuous = reward_values(negative=negative_rewards, float32=float32)
    if ints:
        continuous = st.one_of(continuous, st.integers(-3 if negative_rewards else 0, 3))
    tied = reward_values(ties=True, negative=negative_rewards)
    lengths = st.integers(0 if zero_tokens else 1, max_tokens)

    n_stages = draw(st.integers(min_stages, max_stages))
    lps: LogProbs = []
    rws: Rewards = []
    for _ in range(n_stages):
        stage_lp: list[list[list[float]]] = []
        stage_rw: list[list[float]] = []
        for _ in range(draw(st.integers(1, max_prompts))):
            k = draw(st.integers(min_k, max_k))
            rewards = tied if ties and draw(st.booleans()) else continuous
            stage_rw.append(draw(st.lists(rewards, min_size=k, max_size=k)))
            stage_lp.append(
                [
                    draw(st.lists(lp, min_size=n, max_size=n))
                    for n in draw(st.lists(lengths, min_size=k, max_size=k))
                ]
            )
        if not any(p[best_index(r)] for p, r in zip(stage_lp, stage_rw, strict=True)):
            # the stage's selected responses must hold a token: give one to prompt 0
            stage_lp[0][best_index(stage_rw[0])].append(draw(lp))
        lps.append(stage_lp)
        rws.append(stage_rw)
    return lps, rws


def stage_ids(n: int, *, large: bool = True) -> st.SearchStrategy[list[int]]:
    """``n`` distinct integer stage ids in no particular order (not from 0, not
    contiguous; with ``large``, up to 10**12 so that id ranges are huge)."""
    ids = st.integers(0, 10**12) if large else st.integers(0, 50)
    return st.lists(ids, min_size=n, max_size=n, unique=True)


def prompt_ids(n: int, *, kind: str = "any") -> st.SearchStrategy[list[Any]]:
    """``n`` distinct prompt ids: ``kind`` ``"int"`` (any sign, possibly huge),
    ``"str"`` (short unicode, possibly empty) or ``"any"`` (either, one kind per
    list)."""
    ints = st.lists(st.integers(-(10**9), 10**12), min_size=n, max_size=n, unique=True)
    strs = st.lists(st.text(max_size=4), min_size=n, max_size=n, unique=True)
    if kind == "int":
        return ints
    if kind == "str":
        return strs
    return st.one_of(ints, strs)
