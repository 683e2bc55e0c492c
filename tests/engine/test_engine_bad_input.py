"""Bad input: a table of cases, each with the error and message fragments naming
where (stage, prompt, candidate, file, column) and what was found.

Every case must raise :class:`raft_polars.RaftInputError` (also a ``ValueError``);
``pytest.raises`` lets any other exception (a bare Polars, pyarrow or IndexError
traceback) fail the test.
"""

from __future__ import annotations

import dataclasses
import math
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import polars as pl
import pytest
from engine_cases import (
    ENTRIES,
    FRAME_ENTRIES,
    LIST_ENTRIES,
    Case,
    Entry,
    cases,
    check_losses,
    rounding_is_ambiguous,
    to_long,
    workdir,
)
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from reference import best_index

import raft_polars

# --- helpers ---------------------------------------------------------------------------


def where(stage: Any = None, prompt: Any = None, cand: Any = None) -> list[str]:
    """Patterns that a message naming this location must contain."""
    out = []
    if stage is not None:
        out.append(rf"stage\W{{0,3}}{re.escape(str(stage))}\b")
    if prompt is not None:
        out.append(rf"prompt\W{{0,3}}{re.escape(str(prompt))}\b")
    if cand is not None:
        out.append(rf"cand(idate)?\W{{0,3}}{re.escape(str(cand))}\b")
    return out


def assert_input_error(call: Callable[[], object], fragments: list[str]) -> str:
    """``call`` raises RaftInputError (a ValueError) whose message matches every
    pattern of ``fragments`` (case-insensitive); returns the message."""
    with pytest.raises(raft_polars.RaftInputError) as info:
        call()
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, raft_polars.RaftPolarsError)
    message = str(info.value)
    for pattern in fragments:
        assert re.search(pattern, message, re.IGNORECASE), (pattern, message)
    return message


NAN, INF = math.nan, math.inf

# --- nested lists -----------------------------------------------------------------------

# a valid log: stage 0 selects (0,0,1) and (0,1,0); stage 1 selects (1,0,0)
LPS = [[[[-1.0], [-0.5, -0.25]], [[-2.0, -1.0], [-3.0]]], [[[-0.1], [-0.2]]]]
RWS = [[[0.1, 0.9], [0.5, 0.4]], [[1.0, 0.0]]]


def _set(nest: Any, path: tuple[int, ...], value: Any) -> Any:
    import copy

    out = copy.deepcopy(nest)
    target = out
    for index in path[:-1]:
        target = target[index]
    target[path[-1]] = value
    return out


LIST_CASES: dict[str, tuple[Any, Any, list[str]]] = {
    "stage-count": (LPS, RWS[:1], [r"\b2\b", r"\b1\b", r"stage"]),
    "stage-count-other-way": (LPS[:1], RWS, [r"\b2\b", r"\b1\b", r"stage"]),
    "prompts-per-stage": (
        _set(LPS, (1,), [[[-0.1], [-0.2]], [[-0.3]]]),
        RWS,
        [*where(1), r"\b2\b", r"\b1\b", r"prompt"],
    ),
    "k-per-prompt": (
        _set(LPS, (0, 1), [[-2.0], [-3.0], [-4.0]]),
        RWS,
        [*where(0, 1), r"\b3\b", r"\b2\b"],
    ),
    "k-per-prompt-rewards-longer": (
        LPS,
        _set(RWS, (1, 0), [1.0, 0.0, 0.5]),
        [*where(1, 0), r"\b3\b", r"\b2\b"],
    ),
    "stage-without-prompts": ([*LPS, []], [*RWS, []], [*where(2), r"no prompts"]),
    "prompt-without-candidates": (
        _set(LPS, (1, 0), []),
        _set(RWS, (1, 0), []),
        [*where(1, 0), r"no candidates"],
    ),
    "nan-reward": (LPS, _set(RWS, (0, 0, 0), NAN), [r"reward", r"nan", *where(0, 0, 0)]),
    "inf-reward": (LPS, _set(RWS, (1, 0, 1), INF), [r"reward", r"inf", *where(1, 0, 1)]),
    "minus-inf-reward": (LPS, _set(RWS, (0, 1, 1), -INF), [r"reward", r"-inf", *where(0, 1, 1)]),
    "none-reward": (LPS, _set(RWS, (0, 1, 1), None), [r"reward", r"none|null", *where(0, 1, 1)]),
    "string-reward": (LPS, _set(RWS, (0, 1, 1), "0.3"), [r"reward", r"'0\.3'", *where(0, 1, 1)]),
    "reward-beyond-float64": (
        LPS,
        _set(RWS, (1, 0, 1), 10**5000),  # beyond str()'s 4,300 digits too
        [r"reward", r"16610 bits", *where(1, 0, 1)],
    ),
    "logprob-beyond-float64": (
        _set(LPS, (0, 1, 0, 1), -(10**309)),
        RWS,
        [r"log-?prob", r"1027 bits", *where(0, 1, 0)],
    ),
    "nan-logprob-selected": (
        _set(LPS, (0, 0, 1, 1), NAN),
        RWS,
        [r"log-?prob", r"nan", *where(0, 0, 1)],
    ),
    "inf-logprob-selected": (
        _set(LPS, (0, 1, 0, 0), INF),
        RWS,
        [r"log-?prob", r"inf", *where(0, 1, 0)],
    ),
    "minus-inf-logprob-selected": (
        _set(LPS, (1, 0, 0, 0), -INF),
        RWS,
        [r"log-?prob", r"-inf", *where(1, 0, 0)],
    ),
    "positive-logprob-selected": (
        _set(LPS, (0, 1, 0, 1), 0.5),
        RWS,
        [r"log-?prob", r"0\.5", *where(0, 1, 0)],
    ),
    "none-logprob-selected": (
        _set(LPS, (0, 0, 1, 0), None),
        RWS,
        [r"log-?prob", r"none|null", *where(0, 0, 1)],
    ),
    "string-logprob-selected": (
        _set(LPS, (0, 0, 1, 0), "x"),
        RWS,
        [r"log-?prob", r"'x'", *where(0, 0, 1)],
    ),
    "numeric-string-logprob-selected": (
        _set(LPS, (0, 0, 1, 0), "-0.5"),
        RWS,
        [r"log-?prob", r"'-0\.5'", *where(0, 0, 1)],
    ),
    "selected-responses-without-tokens": (_set(LPS, (1, 0, 0), []), RWS, [*where(1), r"no tokens"]),
    "not-lists": (5, RWS, [r"list", r"int"]),
    "prompt-not-a-list": (
        _set(LPS, (1, 0), 3.0),
        RWS,
        [r"list", r"\[1\]\[0\]|stage 1\W+prompt 0", r"3\.0"],
    ),
}


@pytest.mark.parametrize("function", ["raft_alignment", "lists_losses"])
@pytest.mark.parametrize(("lps", "rws", "fragments"), LIST_CASES.values(), ids=LIST_CASES.keys())
def test_bad_lists(function: str, lps: Any, rws: Any, fragments: list[str]) -> None:
    call = getattr(raft_polars, function)
    assert_input_error(lambda: call(lps, rws), fragments)


_LISTED = {k: v for k, v in LIST_CASES.items() if isinstance(v[0], list) and isinstance(v[1], list)}


@pytest.mark.parametrize("function", ["raft_alignment", "lists_losses"])
@pytest.mark.parametrize(("lps", "rws", "fragments"), _LISTED.values(), ids=_LISTED.keys())
def test_stages_as_generators_are_read_as_lists(
    function: str, lps: Any, rws: Any, fragments: list[str]
) -> None:
    """Stages handed over as generators (a stream, read once) give what the same
    stages as lists give: the same error here (it was swallowed, and the answer
    was []), and the same losses for the sound log."""
    call = getattr(raft_polars, function)
    assert_input_error(lambda: call(iter(lps), (stage for stage in rws)), fragments)
    streamed, listed = call(iter(LPS), iter(RWS)), call(LPS, RWS)
    if isinstance(listed, pl.DataFrame):
        assert streamed.equals(listed)
    else:
        assert streamed == listed
        assert listed


_UNORDERED = {
    "set-of-rewards": (
        lambda: [[[[-1.0], [-5.0]]]],
        lambda: [[{3.0, 1.0}]],
        "stages_rewards[0][0]",
    ),
    "frozenset-of-rewards": (
        lambda: [[[[-1.0], [-5.0]]]],
        lambda: [[frozenset([3.0, 1.0])]],
        "stages_rewards[0][0]",
    ),
    "set-of-candidates": (
        lambda: [[{(-1.0,), (-5.0,)}]],
        lambda: [[[3.0, 1.0]]],
        "stages_log_probs[0][0]",
    ),
    "dict-of-prompts": (
        lambda: [{0: [[-1.0], [-5.0]]}],
        lambda: [[[3.0, 1.0]]],
        "stages_log_probs[0]",
    ),
    "set-of-log-probs": (
        lambda: [[[{-1.0, -2.0}, [-5.0]]]],
        lambda: [[[3.0, 1.0]]],
        "stages_log_probs[0][0][0]",
    ),
    "masked-rewards": (
        lambda: [[[[-1.0], [-5.0]]]],
        lambda: np.ma.masked_array([[[0.2, 0.4]]], mask=[[[True, False]]]),
        "stages_rewards",
    ),
    # bytes are a sequence of numbers, their bytes: b"\x01\x02" made rewards 1 and 2
    "bytes-of-rewards": (
        lambda: [[[[-1.0], [-2.0]]]],
        lambda: [[b"\x01\x02"]],
        "stages_rewards[0][0]",
    ),
    "bytearray-stage": (
        lambda: [[[[-1.0], [-2.0]]]],
        lambda: [bytearray(b"ab")],
        "stages_rewards[0]",
    ),
    "bytes-of-log-probs": (
        lambda: [[[[-1.0], b"\x00"]]],
        lambda: [[[0.5, 1.0]]],
        "stages_log_probs[0][0][1]",
    ),
    "memoryview-0-d-rewards": (
        lambda: [[[[-1.0], [-2.0]]]],
        lambda: [[memoryview(b"\x01").cast("B", ())]],
        "stages_rewards[0][0]",
    ),
    "memoryview-of-log-probs": (
        lambda: [[[[-1.0], memoryview(b"\x00")]]],
        lambda: [[[0.5, 1.0]]],
        "stages_log_probs[0][0][1]",
    ),
}


@pytest.mark.parametrize("function", ["raft_alignment", "lists_losses"])
@pytest.mark.parametrize(("lps", "rws", "place"), _UNORDERED.values(), ids=_UNORDERED.keys())
def test_a_level_that_is_not_a_sequence_is_named(
    function: str, lps: Callable[[], Any], rws: Callable[[], Any], place: str
) -> None:
    """A set at any level (no order of its own: ``{3.0, 1.0}`` iterates 1.0, 3.0,
    and the second candidate was silently the best), a mapping or a masked array
    is an input error naming its place (a raw TypeError or ValueError, or a
    wrong answer, before)."""
    call = getattr(raft_polars, function)
    assert_input_error(lambda: call(lps(), rws()), [re.escape(place), "sequence"])


# (nest, path to the item made a 0-d array): every level of both nests
_ZERO_D = [("lps", ()), ("lps", (0,)), ("lps", (0, 0)), ("lps", (0, 0, 0)),
           ("rws", ()), ("rws", (0,)), ("rws", (0, 0))]  # fmt: skip


@pytest.mark.parametrize("function", ["raft_alignment", "lists_losses"])
@pytest.mark.parametrize(("nest", "path"), _ZERO_D, ids=str)
def test_a_zero_d_array_where_a_list_belongs_is_named(
    function: str, nest: str, path: tuple[int, ...]
) -> None:
    """A 0-d numpy array (one number taken out of a tensor with ``.numpy()``) at
    any level of either nest, a list's place: an input error naming the place (a
    raw TypeError, 'len() of unsized object', before)."""
    nests: dict[str, Any] = {"lps": [[[[-1.0], [-5.0, -1.0]]]], "rws": [[[3.0, 1.0]]]}
    if path:
        parent = nests[nest]
        for index in path[:-1]:
            parent = parent[index]
        parent[path[-1]] = np.array(-1.0)
    else:
        nests[nest] = np.array(1.0)
    place = ("stages_log_probs" if nest == "lps" else "stages_rewards") + "".join(
        f"[{i}]" for i in path
    )
    call = getattr(raft_polars, function)
    assert_input_error(lambda: call(nests["lps"], nests["rws"]), [re.escape(place)])


@pytest.mark.parametrize("function", ["raft_alignment", "lists_losses"])
def test_numpy_booleans_are_numbers_as_python_ones(function: str) -> None:
    """numpy's True and False are 1 and 0, as Python's are (docs/semantics.md):
    they were refused as not numbers."""
    call = getattr(raft_polars, function)
    lps = [[[[-1.0], [-5.0]], [[-2.0], [-3.0]]]]
    want = call(lps, [[[1.0, 0.0], [0.0, 1.0]]])
    for rws in ([[[True, False], [False, True]]], [[[np.True_, np.False_], [np.False_, np.True_]]],
                [np.array([[True, False], [False, True]])]):  # fmt: skip
        got = call(lps, rws)
        assert got.equals(want) if isinstance(want, pl.DataFrame) else got == want
    assert (
        (call(lps, [[[1.0, 0.0], [0.0, 1.0]]]) == [2.0]) if function == "raft_alignment" else True
    )


@pytest.mark.parametrize("function", ["raft_alignment", "lists_losses"])
def test_decimals_and_fractions_are_numbers_as_floats(function: str) -> None:
    """A Decimal or a Fraction, reward or log-prob, is the nearest float64, as any
    number there is (docs/semantics.md); one beyond float64's range is named."""
    call = getattr(raft_polars, function)
    lps = [[[[-1.0, -0.5], [-2.0]]]]
    want = call(lps, [[[0.2, 0.4]]])
    for rws in ([[[Decimal("0.2"), Decimal("0.4")]]], [[[Fraction(1, 5), Fraction(2, 5)]]]):
        got = call(lps, rws)
        assert got.equals(want) if isinstance(want, pl.DataFrame) else got == want
    got = call([[[[Decimal("-1.0"), Fraction(-1, 2)], [-2.0]]]], [[[0.9, 0.2]]])
    want = call([[[[-1.0, -0.5], [-2.0]]]], [[[0.9, 0.2]]])
    assert got.equals(want) if isinstance(want, pl.DataFrame) else got == want
    for bad, fragment in (
        (Decimal("sNaN"), "is not a number: Decimal('sNaN')"),
        (Fraction(10**400, 3), "is beyond a float64's range"),
        (Decimal("1e400"), "is beyond a float64's range"),
        (Decimal("Infinity"), "must be a finite number"),
        (Decimal("NaN"), "must be a finite number"),
    ):
        with pytest.raises(raft_polars.RaftInputError, match=re.escape(fragment)):
            call(lps, [[[0.2, bad]]])


# the bad values of the table above in responses that are NOT selected: no error
UNSELECTED = {
    "nan-inf": Case(_set(_set(LPS, (0, 0, 0, 0), NAN), (0, 1, 1, 0), INF), RWS),
    "minus-inf": Case(_set(LPS, (1, 0, 1, 0), -INF), RWS),
    "positive": Case(_set(LPS, (1, 0, 1, 0), 3.5), RWS),
}


@pytest.mark.parametrize("case", UNSELECTED.values(), ids=UNSELECTED.keys())
@pytest.mark.parametrize("entry", ENTRIES, ids=str)
def test_bad_logprob_in_unselected_response_is_fine(
    entry: Entry, case: Case, tmp_path: Path
) -> None:
    check_losses(entry, case, tmp_path)


@pytest.mark.parametrize("value", [None, "x"])
def test_non_number_in_unselected_list_response_is_fine(value: Any) -> None:
    lps = _set(LPS, (0, 0, 0, 0), value)
    assert raft_polars.raft_alignment(lps, RWS) == [round(x, 4) for x in ((0.75 + 3.0) / 4, 0.1)]


# --- frames and files in both layouts ----------------------------------------------------


# stage 20 selects (7, 1) and (8, 0); stage 30 selects (7, 1) and (8, 0)
def base_frame(prompts: str) -> pl.DataFrame:
    p7, p8 = ("p7", "p8") if prompts == "str" else (7, 8)
    return pl.DataFrame(
        {
            "stage": [20, 20, 20, 20, 20, 30, 30, 30],
            "prompt": [p7, p7, p7, p8, p8, p7, p7, p8],
            "cand": [0, 1, 2, 0, 1, 0, 1, 0],
            "reward": [0.1, 0.9, 0.5, 0.3, 0.2, 0.0, 1.0, 2.0],
            "logprobs": [
                [-1.0],
                [-0.5, -0.25, -0.125],
                [-2.0],
                [-0.75],
                [-3.0, -1.0],
                [-0.1],
                [-0.2, -0.3],
                [-0.4],
            ],
            "response": [f"r{i}" for i in range(8)],
        },
        schema_overrides={"logprobs": pl.List(pl.Float64)},
    )


def _row(frame: pl.DataFrame, stage: int, prompt: int, cand: int) -> pl.Expr:
    key: int | str = f"p{prompt}" if isinstance(frame.schema["prompt"], pl.String) else prompt
    return (pl.col("stage") == stage) & (pl.col("prompt") == key) & (pl.col("cand") == cand)


def set_value(
    column: str, stage: int, prompt: int, cand: int, value: Any, *, token: int | None = None
) -> Callable[[pl.DataFrame], pl.DataFrame]:
    """A defect: one value (or one token of the log-probs) of one candidate row."""

    def apply(frame: pl.DataFrame) -> pl.DataFrame:
        rows = frame.to_dicts()
        mask = frame.select(_row(frame, stage, prompt, cand)).to_series().to_list()
        for row, hit in zip(rows, mask, strict=True):
            if hit:
                if token is None:
                    row[column] = value
                else:
                    row[column] = [*row[column][:token], value, *row[column][token + 1 :]]
        return pl.DataFrame(rows, schema=frame.schema)

    return apply


def duplicate(
    stage: int, prompt: int, cand: int, reward: float | None = None
) -> Callable[[pl.DataFrame], pl.DataFrame]:
    def apply(frame: pl.DataFrame) -> pl.DataFrame:
        extra = frame.filter(_row(frame, stage, prompt, cand))
        if reward is not None:
            extra = extra.with_columns(pl.lit(reward).alias("reward"))
        return pl.concat([frame, extra])

    return apply


def cast(
    column: str, dtype: pl.DataType | type[pl.DataType]
) -> Callable[[pl.DataFrame], pl.DataFrame]:
    return lambda frame: frame.with_columns(pl.col(column).cast(dtype))


def no_tokens(stage: int) -> Callable[[pl.DataFrame], pl.DataFrame]:
    """Every selected response of ``stage`` loses its tokens (the others keep theirs)."""

    def apply(frame: pl.DataFrame) -> pl.DataFrame:
        best = (
            frame.sort("reward", "cand", descending=[True, False])
            .group_by("stage", "prompt", maintain_order=True)
            .first()
            .select("stage", "prompt", "cand")
        )
        chosen = frame.join(best, on=["stage", "prompt", "cand"], how="semi")
        chosen = chosen.filter(pl.col("stage") == stage).with_columns(
            pl.lit([], pl.List(pl.Float64)).alias("logprobs")
        )
        rest = frame.join(
            chosen.select("stage", "prompt", "cand"), on=["stage", "prompt", "cand"], how="anti"
        )
        return pl.concat([rest, chosen])

    return apply


@dataclass(frozen=True)
class Bad:
    """A defect of the nested base frame (the long layout sees it through
    :func:`to_long`), the layouts it applies to, the message patterns, and whether
    ``select_best`` (which ranks but reads no log-probs) must reject it too."""

    defect: Callable[[pl.DataFrame], pl.DataFrame]
    fragments: list[str]
    layouts: tuple[str, ...] = ("nested", "long")
    ranking: bool = False
    prompts: tuple[str, ...] = ("int", "str")


P7 = r"prompt\W{0,3}p?7\b"
P8 = r"prompt\W{0,3}p?8\b"

FRAME_CASES = {
    "nan-reward-unselected": Bad(
        set_value("reward", 20, 7, 2, NAN),
        [r"reward", r"nan", *where(20), P7, *where(cand=2)],
        ranking=True,
    ),
    "inf-reward": Bad(
        set_value("reward", 30, 8, 0, INF),
        [r"reward", r"inf", *where(30), P8, *where(cand=0)],
        ranking=True,
    ),
    "null-reward": Bad(
        set_value("reward", 20, 8, 1, None),
        [r"reward", r"none|null", *where(20), P8, *where(cand=1)],
        ranking=True,
    ),
    "nan-logprob-selected": Bad(
        set_value("logprobs", 20, 7, 1, NAN, token=1),
        [r"log-?prob", r"nan", *where(20), P7, *where(cand=1)],
    ),
    "inf-logprob-selected": Bad(
        set_value("logprobs", 30, 7, 1, INF, token=0),
        [r"log-?prob", r"inf", *where(30), P7, *where(cand=1)],
    ),
    "minus-inf-logprob-selected": Bad(
        set_value("logprobs", 30, 7, 1, -INF, token=1),
        [r"log-?prob", r"-inf", *where(30), P7, *where(cand=1)],
    ),
    "positive-logprob-selected": Bad(
        set_value("logprobs", 20, 8, 0, 0.5, token=0),
        [r"log-?prob", r"0\.5", *where(20), P8, *where(cand=0)],
    ),
    "null-logprob-selected": Bad(
        set_value("logprobs", 30, 8, 0, None, token=0),
        [r"log-?prob", r"none|null", *where(30), P8, *where(cand=0)],
    ),
    "null-logprobs-list-selected": Bad(
        set_value("logprobs", 20, 7, 1, None),
        [r"log-?probs", r"null|none", *where(20), P7, *where(cand=1)],
        layouts=("nested",),
    ),
    "selected-responses-without-tokens": Bad(no_tokens(30), [*where(30), r"no tokens"]),
    "duplicate-candidate": Bad(
        duplicate(20, 7, 1), [r"duplicate", *where(20), P7, *where(cand=1)], ranking=True
    ),
    "duplicate-candidate-other-reward": Bad(
        duplicate(30, 8, 0, reward=5.0),
        [r"duplicate", *where(30), P8, *where(cand=0)],
        ranking=True,
    ),
    "null-stage": Bad(set_value("stage", 30, 7, 0, None), [r"null|none", r"stage"], ranking=True),
    "null-prompt": Bad(
        set_value("prompt", 20, 8, 1, None), [r"null|none", r"prompt"], ranking=True
    ),
    "null-cand": Bad(set_value("cand", 20, 7, 2, None), [r"null|none", r"cand"], ranking=True),
    "missing-reward-column": Bad(
        lambda f: f.drop("reward"),
        [r"missing", r"reward", r"columns present", r"'cand'"],
        ranking=True,
    ),
    # no "missing-cand-column": nested rows without candidate ids are numbered in order
    # (tests/engine/test_formats.py); token rows without one are in LONG_CASES
    "reward-as-string": Bad(cast("reward", pl.String), [r"reward", r"str"], ranking=True),
    "stage-as-float": Bad(cast("stage", pl.Float64), [r"stage", r"float|f64"], ranking=True),
    "cand-as-string": Bad(cast("cand", pl.String), [r"cand", r"str"], ranking=True),
    "prompt-as-float": Bad(
        cast("prompt", pl.Float64), [r"prompt", r"float|f64"], ranking=True, prompts=("int",)
    ),
    "logprobs-as-strings": Bad(cast("logprobs", pl.List(pl.String)), [r"log-?probs?", r"str"]),
}

# the entries the table runs through (every layout and long-layout path, frames and files)
BAD_ENTRIES = [
    e
    for e in FRAME_ENTRIES
    if e.name
    in (
        "nested-DataFrame",
        "nested-LazyFrame",
        "nested-Arrow",
        "nested-glob",
        "nested-hive",
        "long-DataFrame",
        "long-Arrow",
        "long-glob",
        "long-DataFrame-fallback",
        "long-hive-fallback",
        "dask-nested-DataFrame",
        "dask-nested-LazyFrame",
        "dask-nested-Arrow",
        "dask-nested-glob",
        "dask-nested-hive",
        "dask-long-DataFrame",
        "dask-long-Arrow",
        "dask-long-glob",
        "dask-long-hive",
    )
]


def _bad_kwargs(entry: Entry, bad: Bad, prompts: str, directory: Path) -> dict[str, Any]:
    frame = bad.defect(base_frame(prompts))
    if entry.kind == "hive" and (frame.schema["stage"] != pl.Int64 or frame["stage"].null_count()):
        pytest.skip("a Hive directory names its stages by path")
    if entry.layout == "long" and not {"stage", "prompt", "cand", "logprobs"} <= set(frame.columns):
        pytest.skip("the long-layout table covers missing token columns")
    return entry.lay_out(directory, frame)


# integer prompt ids through every entry; string prompt ids (always the hash-join
# path) through one entry of each layout and source family
BAD_RUNS = [(e, "int") for e in BAD_ENTRIES] + [
    (e, "str")
    for e in BAD_ENTRIES
    if e.name
    in (
        "nested-DataFrame",
        "nested-glob",
        "long-DataFrame",
        "long-glob",
        "dask-nested-DataFrame",
        "dask-long-glob",
    )
]


@pytest.mark.parametrize("bad", FRAME_CASES.values(), ids=FRAME_CASES.keys())
@pytest.mark.parametrize(("entry", "prompts"), BAD_RUNS, ids=str)
def test_bad_frames(entry: Entry, bad: Bad, prompts: str, tmp_path: Path) -> None:
    if entry.layout not in bad.layouts:
        pytest.skip(f"not a {entry.layout}-layout defect")
    if prompts not in bad.prompts:
        pytest.skip(f"not a defect of {prompts} prompt ids")
    kwargs = _bad_kwargs(entry, bad, prompts, tmp_path)
    assert_input_error(lambda: entry.stage_losses(kwargs), bad.fragments)
    if bad.ranking:
        assert_input_error(lambda: entry.select_best(kwargs), bad.fragments)


@pytest.mark.parametrize("prompts", ["int", "str"])
@pytest.mark.parametrize("entry", BAD_ENTRIES, ids=str)
def test_base_frame_is_valid(entry: Entry, prompts: str, tmp_path: Path) -> None:
    """The frame the defects start from is fine (so each defect is what fails)."""
    table = entry.stage_losses(entry.lay_out(tmp_path, base_frame(prompts)))
    assert table["stage"].to_list() == [20, 30]
    assert table["loss"].to_list() == [pytest.approx((0.875 + 0.75) / 4), pytest.approx(0.9 / 3)]


@pytest.mark.parametrize("prompts", ["int", "str"])
@pytest.mark.parametrize("entry", [e for e in BAD_ENTRIES if e.layout == "nested"], ids=str)
def test_null_in_unselected_nested_response_is_fine(
    entry: Entry, prompts: str, tmp_path: Path
) -> None:
    frame = set_value("logprobs", 20, 7, 0, None, token=0)(base_frame(prompts))
    frame = set_value("logprobs", 30, 7, 0, None)(frame)
    table = entry.stage_losses(entry.lay_out(tmp_path, frame))
    assert table["loss"].to_list() == [pytest.approx((0.875 + 0.75) / 4), pytest.approx(0.9 / 3)]


# --- long layout only: token rows and reward rows disagree --------------------------------


def _long(prompts: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    return to_long(base_frame(prompts))


def _pid(prompts: str, value: int) -> Any:
    return f"p{value}" if prompts == "str" else value


def orphan_unselected(prompts: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    tokens, rewards = _long(prompts)
    return tokens, rewards.filter(~((pl.col("stage") == 20) & (pl.col("cand") == 2)))


def orphan_new_prompt(prompts: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    tokens, rewards = _long(prompts)
    extra = pl.DataFrame(
        {"stage": [30], "prompt": [_pid(prompts, 9)], "cand": [4], "logprob": [-1.0], "token": [0]}
    ).select(tokens.columns)
    return pl.concat([tokens, extra.cast(tokens.schema)]), rewards


def orphan_below_range(prompts: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Token rows of a stage below every rewarded stage (outside the dense table)."""
    tokens, rewards = _long(prompts)
    extra = tokens.filter(pl.col("stage") == 20).with_columns(pl.lit(5, pl.Int64).alias("stage"))
    return pl.concat([tokens, extra]), rewards


def orphan_null_id(prompts: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    tokens, rewards = _long(prompts)
    return tokens.with_columns(
        pl.when(pl.col("token") == 0).then(None).otherwise(pl.col("cand")).alias("cand")
    ), rewards


def duplicate_reward_row(prompts: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    tokens, rewards = _long(prompts)
    dup = rewards.filter((pl.col("stage") == 30) & (pl.col("cand") == 1))
    return tokens, pl.concat([rewards, dup])


def drop_column(which: int, column: str) -> Callable[[str], tuple[pl.DataFrame, pl.DataFrame]]:
    def build(prompts: str) -> tuple[pl.DataFrame, pl.DataFrame]:
        frames = list(_long(prompts))
        frames[which] = frames[which].drop(column)
        return frames[0], frames[1]

    return build


def cast_column(
    which: int, column: str, dtype: pl.DataType | type[pl.DataType]
) -> Callable[[str], tuple[pl.DataFrame, pl.DataFrame]]:
    def build(prompts: str) -> tuple[pl.DataFrame, pl.DataFrame]:
        frames = list(_long(prompts))
        frames[which] = frames[which].with_columns(pl.col(column).cast(dtype))
        return frames[0], frames[1]

    return build


LONG_CASES: dict[str, tuple[Callable[[str], tuple[pl.DataFrame, pl.DataFrame]], list[str]]] = {
    "tokens-without-reward-unselected": (
        orphan_unselected,
        [r"no reward", *where(20), P7, *where(cand=2)],
    ),
    "tokens-without-reward-new-prompt": (
        orphan_new_prompt,
        [r"no reward", *where(30), r"prompt\W{0,3}p?9\b", *where(cand=4)],
    ),
    "tokens-without-reward-below-range": (
        orphan_below_range,
        [r"no reward", *where(5), P7, *where(cand=0)],
    ),
    "tokens-with-null-cand": (orphan_null_id, [r"no reward|null", r"cand"]),
    "duplicate-reward-row": (duplicate_reward_row, [r"duplicate", *where(30), P7, *where(cand=1)]),
    "tokens-missing-logprob": (
        drop_column(0, "logprob"),
        [r"missing", r"logprob", r"columns present", r"token"],
    ),
    "tokens-missing-cand": (drop_column(0, "cand"), [r"missing", r"cand", r"columns present"]),
    "rewards-missing-reward": (
        drop_column(1, "reward"),
        [r"missing", r"reward", r"columns present", r"response"],
    ),
    "logprob-as-string": (cast_column(0, "logprob", pl.String), [r"logprob", r"str"]),
    "token-as-float": (cast_column(0, "token", pl.Float64), [r"token", r"float|f64"]),
    "prompt-kinds-differ": (cast_column(1, "prompt", pl.String), [r"prompt"]),
}
LONG_ENTRIES = [e for e in BAD_ENTRIES if e.layout == "long"]


_EVERY_CALL: dict[str, Callable[..., Any]] = {
    "stage_losses": raft_polars.stage_losses,
    "stage_stats": lambda *a, **k: raft_polars.stage_stats(*a, **k)[0],
    "prompt_stats": raft_polars.prompt_stats,
    "select_best": lambda *a, **k: raft_polars.select_best(*a, **k).collect(),
}


@pytest.mark.parametrize("engine", ["polars", "dask"])
@pytest.mark.parametrize("call", _EVERY_CALL.values(), ids=_EVERY_CALL.keys())
@pytest.mark.parametrize(
    "build", [orphan_unselected, orphan_new_prompt, orphan_below_range], ids=lambda b: b.__name__
)
def test_orphan_token_rows_are_an_error_of_every_call(
    build: Callable[[str], tuple[pl.DataFrame, pl.DataFrame]],
    call: Callable[..., Any],
    engine: str,
) -> None:
    """Token rows whose candidate has no reward row are an input error wherever the
    token rows are read: the losses, the statistics, the selected batch."""
    import dask_cluster

    tokens, rewards = build("int")
    chosen = dask_cluster.engine() if engine == "dask" else "polars"
    with pytest.raises(raft_polars.RaftInputError, match="no reward"):
        call(tokens, rewards=rewards, engine=chosen)


@pytest.mark.parametrize("prompts", ["int", "str"])
@pytest.mark.parametrize(("build", "fragments"), LONG_CASES.values(), ids=LONG_CASES.keys())
@pytest.mark.parametrize("entry", LONG_ENTRIES, ids=str)
def test_bad_long_layout(
    entry: Entry, build: Callable[[str], Any], fragments: list[str], prompts: str, tmp_path: Path
) -> None:
    if prompts == "str" and build is LONG_CASES["prompt-kinds-differ"][0]:
        pytest.skip("string prompts cast to string are not a defect")
    long = build(prompts)
    if entry.kind == "hive" and long[0]["stage"].null_count():
        pytest.skip("a Hive directory has no null stage")
    kwargs = entry.lay_out(tmp_path, long=long)
    assert_input_error(lambda: entry.stage_losses(kwargs), fragments)


# --- files --------------------------------------------------------------------------------


def _copy(data_dir: Path, tmp_path: Path, *names: str) -> Path:
    target = tmp_path / "logs"
    target.mkdir(exist_ok=True)
    for name in names:
        shutil.copy(data_dir / name, target / name)
    return target


def _empty_directory(d: Path, t: Path) -> dict[str, Any]:
    (t / "empty").mkdir()
    return {"source": t / "empty"}


FILE_CASES: dict[str, tuple[Callable[[Path, Path], dict[str, Any]], list[str]]] = {
    "truncated": (lambda d, t: {"source": d / "truncated.parquet"}, [r"truncated\.parquet"]),
    "not-parquet": (lambda d, t: {"source": d / "not_parquet.parquet"}, [r"not_parquet\.parquet"]),
    "empty-file": (lambda d, t: {"source": d / "empty_file.parquet"}, [r"empty_file\.parquet"]),
    "missing-column": (
        lambda d, t: {"source": d / "missing_reward.parquet"},
        [r"missing_reward\.parquet", r"reward", r"columns present", r"logprobs"],
    ),
    "wrong-type-reward": (
        lambda d, t: {"source": d / "wrong_type_reward.parquet"},
        [r"wrong_type_reward\.parquet", r"reward", r"str"],
    ),
    "wrong-type-logprobs": (
        lambda d, t: {"source": d / "wrong_type_logprobs.parquet"},
        [r"wrong_type_logprobs\.parquet", r"logprobs", r"str"],
    ),
    "no-such-file": (
        lambda d, t: {"source": t / "nope.parquet"},
        [r"nope\.parquet", r"not found|no such|does not exist"],
    ),
    "no-such-file-in-list": (
        lambda d, t: {"source": [d / "seed_nested.parquet", t / "nope.parquet"]},
        [r"nope\.parquet", r"not found|no such|does not exist"],
    ),
    "glob-matches-nothing": (
        lambda d, t: {"source": str(t / "nothing-*.parquet")},
        [r"nothing-\*\.parquet", r"no files|match"],
    ),
    "empty-directory": (
        _empty_directory,
        [r"empty", r"no .*parquet|no files"],
    ),
    "empty-list": (lambda d, t: {"source": []}, [r"empty|no path"]),
    "truncated-among-good-glob": (
        lambda d, t: {
            "source": str(_copy(d, t, "seed_nested.parquet", "truncated.parquet") / "*.parquet")
        },
        [r"truncated\.parquet"],
    ),
    "not-parquet-in-directory": (
        lambda d, t: {"source": _copy(d, t, "seed_nested.parquet", "not_parquet.parquet")},
        [r"not_parquet\.parquet"],
    ),
    "truncated-in-hive": (
        lambda d, t: {"source": _hive_with(d, t, "truncated.parquet")},
        [r"stage=5/part-1\.parquet"],
    ),
    "hive-stage-not-an-integer": (
        lambda d, t: {"source": _hive_named(d, t, "stage=abc")},
        [r"stage", r"integer", r"text: the directory 'stage=abc' of "],
    ),
    "long-truncated-rewards": (
        lambda d, t: {"source": d / "seed_tokens.parquet", "rewards": d / "truncated.parquet"},
        [r"truncated\.parquet"],
    ),
    "long-truncated-tokens": (
        lambda d, t: {"source": d / "truncated.parquet", "rewards": d / "seed_rewards.parquet"},
        [r"truncated\.parquet"],
    ),
    "long-rewards-not-found": (
        lambda d, t: {"source": d / "seed_tokens.parquet", "rewards": t / "nope.parquet"},
        [r"nope\.parquet", r"not found|no such|does not exist"],
    ),
    "long-tokens-missing-logprob": (
        lambda d, t: {
            "source": d / "tokens_missing_logprob.parquet",
            "rewards": d / "seed_rewards.parquet",
        },
        [r"tokens_missing_logprob\.parquet", r"logprob", r"columns present"],
    ),
    "long-rewards-wrong-type": (
        lambda d, t: {
            "source": d / "seed_tokens.parquet",
            "rewards": d / "wrong_type_reward.parquet",
        },
        [r"wrong_type_reward\.parquet", r"reward", r"str"],
    ),
    "long-tokens-without-rewards": (
        lambda d, t: {"source": d / "seed_tokens.parquet"},
        [r"seed_tokens\.parquet", r"reward", r"columns present", r"rewards="],
    ),
}


def _hive_named(data_dir: Path, tmp_path: Path, partition: str) -> Path:
    root = tmp_path / "hive"
    (root / partition).mkdir(parents=True)
    shutil.copy(data_dir / "hive" / "stage=3" / "part-0.parquet", root / partition)
    return root


def _hive_with(data_dir: Path, tmp_path: Path, broken: str) -> Path:
    root = tmp_path / "hive"
    shutil.copytree(data_dir / "hive", root)
    shutil.copy(data_dir / broken, root / "stage=5" / "part-1.parquet")
    return root


@pytest.mark.parametrize("function", ["stage_losses", "select_best"])
@pytest.mark.parametrize(("make", "fragments"), FILE_CASES.values(), ids=FILE_CASES.keys())
def test_bad_files(
    make: Callable[[Path, Path], dict[str, Any]],
    fragments: list[str],
    function: str,
    data_dir: Path,
    tmp_path: Path,
) -> None:
    kwargs = make(data_dir, tmp_path)
    source = kwargs.pop("source")
    call = getattr(raft_polars, function)

    def run() -> object:
        result = call(source, **kwargs)
        # select_best is lazy: the payload is read when collected
        return result.collect() if isinstance(result, pl.LazyFrame) else result

    assert_input_error(run, fragments)


@pytest.mark.parametrize(
    ("option", "value", "fragments"),
    [
        ("reduction", "mean", [r"reduction", r"'mean'"]),
        ("columns", {"promptt": "prompt_id"}, [r"promptt"]),
        ("strategy", "worst", [r"strategy", r"'worst'"]),
    ],
)
def test_bad_options(option: str, value: Any, fragments: list[str], data_dir: Path) -> None:
    assert_input_error(
        lambda: raft_polars.stage_losses(data_dir / "seed_nested.parquet", **{option: value}),
        fragments,
    )


def test_bad_source_type() -> None:
    # (``Source`` takes a pyarrow Table, which mypy sees as Any: no arg-type error to ignore)
    assert_input_error(lambda: raft_polars.stage_losses(42), [r"int", r"path|frame"])


# --- fuzz: no Polars / pyarrow / Python exception leaks -----------------------------------


Ex = TypeVar("Ex")


class Draw(Protocol):
    """``DataObject.draw`` (which ``st.DrawFn`` does not match: it asks for a
    ``__signature__``)."""

    def __call__(self, strategy: st.SearchStrategy[Ex], label: Any = None) -> Ex: ...


def _corrupt_values(draw: Draw, case: Case) -> tuple[Case, bool]:
    """A non-finite reward, or a bad log-prob anywhere; must the engine raise?"""
    t = draw(st.integers(0, len(case.rws) - 1))
    i = draw(st.integers(0, len(case.rws[t]) - 1))
    j = draw(st.integers(0, len(case.rws[t][i]) - 1))
    bad = draw(st.sampled_from([NAN, INF, -INF]))
    if not case.lps[t][i][j] or draw(st.booleans()):
        return dataclasses.replace(case, rws=_set(case.rws, (t, i, j), bad)), True
    k = draw(st.integers(0, len(case.lps[t][i][j]) - 1))
    value = draw(st.sampled_from([NAN, INF, -INF, 0.5, 1e-300]))
    selected = j == best_index(case.rws[t][i])
    return dataclasses.replace(case, lps=_set(case.lps, (t, i, j, k), value)), selected


FRAME_DEFECTS: dict[str, Callable[[pl.DataFrame, int], pl.DataFrame]] = {
    "null-reward": lambda f, r: f.with_columns(
        pl.when(pl.int_range(pl.len()) == r).then(None).otherwise(pl.col("reward")).alias("reward")
    ),
    "null-stage": lambda f, r: f.with_columns(
        pl.when(pl.int_range(pl.len()) == r).then(None).otherwise(pl.col("stage")).alias("stage")
    ),
    "null-prompt": lambda f, r: f.with_columns(
        pl.when(pl.int_range(pl.len()) == r).then(None).otherwise(pl.col("prompt")).alias("prompt")
    ),
    "null-cand": lambda f, r: f.with_columns(
        pl.when(pl.int_range(pl.len()) == r).then(None).otherwise(pl.col("cand")).alias("cand")
    ),
    "duplicate-row": lambda f, r: pl.concat([f, f.slice(r, 1)]),
    "drop-reward": lambda f, r: f.drop("reward"),
    # dropping stage (one stage, 0), logprobs (a rewards-only log) or cand (nested rows
    # numbered in order) leaves a valid log: tests/engine/test_formats.py; token rows
    # without cand are in LONG_CASES
    "reward-to-string": lambda f, r: f.with_columns(pl.col("reward").cast(pl.String)),
    "stage-to-float": lambda f, r: f.with_columns(pl.col("stage").cast(pl.Float64)),
    "cand-to-string": lambda f, r: f.with_columns(pl.col("cand").cast(pl.String)),
    "logprobs-to-strings": lambda f, r: f.with_columns(pl.col("logprobs").cast(pl.List(pl.String))),
    "all-tokens-gone": lambda f, r: f.with_columns(
        pl.lit([], pl.List(pl.Float64)).alias("logprobs")
    ),
}
FUZZ_ENTRIES = [
    e
    for e in FRAME_ENTRIES
    if e.name
    in (
        "nested-DataFrame",
        "nested-glob",
        "long-DataFrame",
        "long-DataFrame-fallback",
        "long-glob",
        "dask-nested-glob",
        "dask-long-DataFrame",
    )
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzzed_values_raise_only_input_errors(data: st.DataObject) -> None:
    """Bad rewards and log-probs anywhere, through every kind of entry point: an
    error is a RaftInputError, raised exactly when a reward or a selected log-prob
    is bad; otherwise the answer is the reference's."""
    case = data.draw(cases())
    entry = data.draw(st.sampled_from([*LIST_ENTRIES, *FUZZ_ENTRIES]), label="entry")
    bad, must_raise = _corrupt_values(data.draw, case)
    if must_raise:
        with workdir() as where:
            assert_input_error(lambda: entry.losses(bad, where), [r"stage", r"candidate|cand"])
    else:
        assume(not any(rounding_is_ambiguous(x) for x in bad.expected_losses()))
        check_losses(entry, bad)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzzed_frames_raise_only_input_errors(data: st.DataObject) -> None:
    """Nulls, duplicates, dropped and mistyped columns, missing tokens: always a
    RaftInputError naming the column or the place."""
    case = data.draw(cases(max_stages=2))
    entry = data.draw(st.sampled_from(FUZZ_ENTRIES), label="entry")
    name = data.draw(st.sampled_from(sorted(FRAME_DEFECTS)), label="defect")
    frame = case.nested()
    row = data.draw(st.integers(0, frame.height - 1), label="row")
    frame = FRAME_DEFECTS[name](frame, row)
    if entry.layout == "long" and not {"stage", "cand", "logprobs"} <= set(frame.columns):
        assume(False)
    column = {"null": name[5:], "drop": name[5:], "duplicate": "duplicate", "all": "token"}.get(
        name.split("-")[0], name.split("-")[0]
    )
    with workdir() as where:
        kwargs = entry.lay_out(where, frame)
        message = assert_input_error(lambda: entry.stage_losses(kwargs), [])
    pattern = rf"{column.removesuffix('s')}|candidate|no tokens|no reward"
    assert re.search(pattern, message, re.IGNORECASE), message


def test_messages_write_a_null_as_null() -> None:
    """A null reward, id or log-prob reads ``null`` in the message, as in the
    reports and the JSON output, not Python's ``None``."""
    from raft_polars import RaftInputError

    nested = pl.DataFrame(
        {"stage": [0, 0], "prompt": [0, None], "cand": [0, 1], "reward": [1.0, None]},
        schema_overrides={"reward": pl.Float64, "prompt": pl.Int64},
    ).with_columns(logprobs=pl.Series([[-1.0], [-2.0]]))
    with pytest.raises(RaftInputError, match="found null at stage 0, prompt 0, candidate 1"):
        raft_polars.stage_losses(nested.with_columns(prompt=pl.lit(0, pl.Int64)))
    with pytest.raises(RaftInputError, match="near stage 0, prompt null"):
        raft_polars.stage_losses(nested.with_columns(reward=pl.lit(1.0)))
    tokens = pl.DataFrame(
        {"stage": [0], "prompt": [0], "cand": [0], "token": [0], "logprob": [None]},
        schema_overrides={"logprob": pl.Float64},
    )
    rewards = pl.DataFrame({"stage": [0], "prompt": [0], "cand": [0], "reward": [1.0]})
    with pytest.raises(RaftInputError, match="found null at stage 0, prompt 0, candidate 0"):
        raft_polars.stage_losses(tokens, rewards=rewards)
