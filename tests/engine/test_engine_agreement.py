"""Hand-made edge cases through every entry point, against the reference."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from engine_cases import (
    ENTRIES,
    FRAME_ENTRIES,
    REDUCTION_ENTRIES,
    Case,
    Entry,
    check_losses,
    check_selection,
)
from hypothesis import given, settings
from reference import SEED_LOG_PROBS, SEED_REWARDS, reference_losses
from strategies import LogProbs, Rewards, ragged_logs

import raft_polars
import raft_polars._engine.dense
import raft_polars._engine.rank
import raft_polars._engine.reduce
import raft_polars.lists
from raft_polars._engine.read import file_pieces

SEED = Case(SEED_LOG_PROBS, SEED_REWARDS)

# prompt 0's best holds 1 token, prompt 1's best 4: pooled 13/5 = 2.6, per-sequence 2.0
RAGGED = Case(
    [
        [[[-1.0], [-9.0, -9.0]], [[-5.0], [-3.0, -3.0, -3.0, -3.0]]],
        [[[-0.5, -0.25, -0.125]], [[-2.0]], [[-0.1, -0.2], [-0.3]]],
    ],
    [[[0.9, 0.1], [0.2, 0.8]], [[1.0], [0.5], [0.1, 0.0]]],
)

CASES = {
    "seed": SEED,
    "ties-first-wins": Case(
        [[[[-1.0], [-2.0], [-3.0]], [[-4.0, -4.0], [-0.5], [-6.0]]]],
        [[[0.5, 0.5, 0.1], [1.0, 0.3, 1.0]]],
    ),
    "ties-everywhere": Case(
        [[[[-0.3, -0.2], [-1.0], [-2.0, -2.0, -2.0]]], [[[-0.4], [-0.8]], [[-1.5], [-0.1]]]],
        [[[0.0, 0.0, 0.0]], [[-1.0, -1.0], [7.0, 7.0]]],
    ),
    "ragged": RAGGED,
    "k-1": Case(
        [[[[-0.7, -0.1]], [[-2.0]], [[-0.25, -0.5, -0.125]]], [[[-3.5]]]],
        [[[0.3], [-2.0], [9.0]], [[0.0]]],
    ),
    "negative-rewards": Case(
        [[[[-1.0], [-2.0], [-3.0]], [[-0.5, -0.5], [-0.75]]]],
        [[[-5.0, -0.5, -7.25], [-1e9, -1e8]]],
    ),
    "zero-logprobs": Case(
        [[[[0.0, 0.0], [-1.0]], [[-0.0], [0.0, -0.0, 0.0]]], [[[-0.5, 0.0], [0.0]]]],
        [[[1.0, 0.0], [0.0, 1.0]], [[0.0, 0.5]]],
    ),
    "large-magnitudes": Case(
        [[[[-1e6, -1e6], [-1.0]], [[-999999.5], [-1e6, -0.0001]]], [[[-1e6]], [[-1e-6]]]],
        [[[1e6, -1e6], [1e12, 2e12]], [[3.0], [1e-12]]],
    ),
    "zero-token-responses": Case(
        # stage 0: the selected response of prompt 0 has no tokens, prompt 1's has 2
        [[[[], [-1.0]], [[-0.5, -1.5], []]], [[[], [], [-2.0]]]],
        [[[0.9, 0.1], [0.6, 0.4]], [[0.0, 0.0, 1.0]]],
    ),
    "ints-for-floats": Case(
        [[[[-1, -2], [-3]], [[0, -1, -1], [-4]]], [[[-2, -2, -2], [-1.5]]]],
        [[[1, 2], [5, 3]], [[0, -1]]],
    ),
    "stage-ids-unsorted-sparse": Case(
        [*SEED_LOG_PROBS, [[[-0.9], [-0.05, -0.05]]]],
        [*SEED_REWARDS, [[0.1, 0.2]]],
        stage_ids=[30, 7, 1_000_000, 12],
    ),
    "string-prompt-ids": Case(
        [[[[-1.0], [-2.0]], [[-0.5, -1.0], [-0.25]], [[-3.0], [-0.1]]]],
        [[[0.3, 0.2], [0.1, 0.4], [0.0, 0.0]]],
        prompt_ids=["zeta", "", "émoji 🙂"],
    ),
    "huge-int-prompt-ids": Case(
        [[[[-1.0], [-2.0]], [[-0.5, -1.0], [-0.25]]]],
        [[[0.3, 0.2], [0.1, 0.4]]],
        prompt_ids=[-(10**15), 10**15],
        stage_ids=[10**12],
    ),
    "shuffled-rows": Case(
        RAGGED.lps,
        RAGGED.rws,
        stage_ids=[5, 2],
        prompt_ids=[11, 3, 7],
        shuffle=1234,
    ),
    "cand-ids-not-positions": Case(
        [[[[-1.0], [-2.0], [-3.0]], [[-4.0, -4.0], [-0.5], [-6.0]]]],
        [[[0.5, 0.5, 0.1], [1.0, 0.3, 1.0]]],
        cand_step=2,
        cand_offset=3,
        shuffle=7,
    ),
    "column-mapping": Case(
        RAGGED.lps,
        RAGGED.rws,
        shuffle=3,
        rename={
            "prompt": "prompt_id",
            "logprobs": "token_logprobs",
            "logprob": "lp",
            "stage": "round",
            "cand": "candidate",
            "reward": "score",
            "token": "pos",
        },
    ),
    "float32": Case(
        [[[[-0.1, -0.2, -0.3], [-0.7]], [[-1.1], [-1.3, -1.7]]], [[[-0.123456789] * 7]]],
        [[[0.2, 0.1], [0.0, 0.3]], [[1.0]]],
        float32=True,
    ),
    "no-payload": Case(SEED_LOG_PROBS, SEED_REWARDS, payload=False),
    # -0.0 == 0.0: a tie, won by the first candidate (as numpy.argmax does)
    "negative-zero-reward-tie": Case(
        [[[[-1.0], [-3.0]], [[-2.0, -2.0], [-0.5]], [[-4.0], [-0.25]]]],
        [[[-0.0, 0.0], [0.0, -0.0], [-1.0, -0.0]]],
    ),
    # exact binary half-way points of the 4th decimal: Python's round() gives
    # 0.0312, 0.1562, 1.2812 (half to even on the exact value), not 0.0313, ...
    "half-way-rounding": Case(
        [[[[-0.0625, 0.0], [-1.0]]], [[[-0.15625]]], [[[-1.28125, -1.28125], [-0.5]]]],
        [[[1.0, 0.0]], [[0.0]], [[2.0, 1.0]]],
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize("entry", ENTRIES, ids=str)
def test_hand_made_cases(entry: Entry, case: Case, tmp_path: Path) -> None:
    check_losses(entry, case, tmp_path)


SELECT_CASES = {
    name: CASES[name]
    for name in (
        "seed",
        "ties-first-wins",
        "ties-everywhere",
        "k-1",
        "zero-token-responses",
        "stage-ids-unsorted-sparse",
        "string-prompt-ids",
        "huge-int-prompt-ids",
        "shuffled-rows",
        "cand-ids-not-positions",
        "column-mapping",
        "no-payload",
    )
}


@pytest.mark.parametrize("case", SELECT_CASES.values(), ids=SELECT_CASES.keys())
@pytest.mark.parametrize("entry", [e for e in FRAME_ENTRIES if e.kind != "LazyFrame"], ids=str)
def test_select_best_hand_made(entry: Entry, case: Case, tmp_path: Path) -> None:
    check_selection(entry, case, tmp_path)


@pytest.mark.parametrize(
    "case",
    [RAGGED, CASES["zero-token-responses"], CASES["float32"]],
    ids=["ragged", "zero-token-responses", "float32"],
)
@pytest.mark.parametrize("entry", REDUCTION_ENTRIES, ids=str)
def test_sequence_reduction(entry: Entry, case: Case, tmp_path: Path) -> None:
    check_losses(entry, case, tmp_path, reduction="sequence")
    check_losses(entry, case, tmp_path / "token", reduction="token")


def test_ragged_case_tells_the_reductions_apart() -> None:
    token = reference_losses(RAGGED.lps, RAGGED.rws)
    sequence = reference_losses(RAGGED.lps, RAGGED.rws, reduction="sequence")
    assert token[0] == pytest.approx(2.6)
    assert sequence[0] == pytest.approx(2.0)
    assert [round(x, 4) for x in token] != [round(x, 4) for x in sequence]


def test_seed_example() -> None:
    assert raft_polars.raft_alignment(SEED_LOG_PROBS, SEED_REWARDS) == [1.55, 0.55, 0.15]


@settings(max_examples=150, deadline=None)
@given(ragged_logs(max_stages=4, ints=True), ragged_logs(max_stages=2, float32=True))
def test_clean_lists_take_the_compiled_path(
    log: tuple[LogProbs, Rewards], narrow: tuple[LogProbs, Rewards]
) -> None:
    """raft_alignment's compiled path (one Arrow conversion of the rewards, one of
    the selected log-probs, the rank and reduce kernels) answers every clean log
    itself, with the reference's very additions: equal before rounding."""
    for lps, rws in (log, narrow):
        assert raft_polars.lists._best_of_k_losses(lps, rws) == reference_losses(lps, rws)


def test_half_way_rounding_is_pythons_round() -> None:
    case = CASES["half-way-rounding"]
    assert raft_polars.raft_alignment(case.lps, case.rws) == [0.0312, 0.1562, 1.2812]


def test_raft_alignment_does_not_modify_its_input(seed_log: tuple[LogProbs, Rewards]) -> None:
    lps, rws = seed_log
    raft_polars.raft_alignment(lps, rws)
    assert (lps, rws) == (SEED_LOG_PROBS, SEED_REWARDS)


@pytest.mark.parametrize("entry", FRAME_ENTRIES, ids=str)
def test_stage_losses_does_not_modify_its_input(entry: Entry, tmp_path: Path) -> None:
    case = CASES["shuffled-rows"]
    kwargs = (
        entry.lay_out(tmp_path, case.nested())
        if entry.layout == "nested"
        else entry.lay_out(tmp_path, long=case.long())
    )
    before = {k: v.clone() if isinstance(v, pl.DataFrame) else v for k, v in kwargs.items()}
    entry.stage_losses(kwargs)
    for key, value in before.items():
        if isinstance(value, pl.DataFrame):
            assert kwargs[key].equals(value), key


def test_numpy_inputs() -> None:
    """numpy arrays (and numpy scalars) where lists are expected."""
    lps = [[np.array([-2.0, -1.8]), np.array([-1.5, -1.6], dtype=np.float32)]]
    rws = [np.array([[0.2, 0.4]])]
    # the annotations say nested sequences; arrays are accepted all the same
    got = raft_polars.raft_alignment([lps], rws)  # type: ignore[list-item, arg-type]
    assert got == [round(-(-1.5 + float(np.float32(-1.6))) / 2, 4)]


def test_rewards_in_any_nest_answer_as_lists_do() -> None:
    """Rewards as numpy arrays (one, or one a stage) and as an Arrow array (a
    slice of one too) take the compiled path with the reference's additions,
    which differ here in the fourth decimal from adding each response first."""
    tiny = -2.4980018054066023e-17
    lps = [
        [[[-0.30015], [-9.0]], [[tiny, tiny], [-9.0]]],
        [[[-1.0], [-2.0]], [[-3.0], [-4.0]]],
    ]
    rws = [[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [1.0, 0.0]]]
    want = reference_losses(lps, rws)
    kind = pa.large_list(pa.large_list(pa.float64()))
    sliced = pa.array([[[9.0, 0.0]], *rws], type=kind).slice(1)
    for nest in (rws, np.array(rws), [np.array(stage) for stage in rws], sliced):
        assert raft_polars.lists._best_of_k_losses(lps, nest) == want  # type: ignore[arg-type]
        assert raft_polars.raft_alignment(lps, nest) == [0.1, 2.5]  # type: ignore[arg-type]
    assert [round(x, 4) for x in want] == [0.1, 2.5]


def test_a_loss_that_overflows_only_token_by_token_is_inf() -> None:
    lps = [[[[-1.7976931348623155e308]], [[-1.1975041857208318e292] * 2]]]
    rws = [[[1.0], [1.0]]]
    assert reference_losses(lps, rws) == [math.inf]
    assert raft_polars.raft_alignment(lps, rws) == [math.inf]


@pytest.mark.parametrize(
    ("lps", "rws", "message"),
    [
        ([[[[-1.0]]]], [], "stages_log_probs has 1 stage(s) but stages_rewards has 0"),
        ([], [[[1.0]]], "stages_log_probs has 0 stage(s) but stages_rewards has 1"),
        ([[[[-1.0]]]], np.array([0.5]), "stages_rewards[0] must be a list"),
    ],
)
def test_nests_that_are_not_stage_logs(lps: Any, rws: Any, message: str) -> None:
    with pytest.raises(raft_polars.RaftInputError) as raised:
        raft_polars.raft_alignment(lps, rws)
    assert message in str(raised.value)


# ids: dense integers, string prompts and hashed (sparse integer) prompts take the
# dense path (the last two as codes); sparse stage ids are too sparse for a box
_IDS: dict[str, dict[str, Any]] = {
    "int": {},
    "str": {"prompt_ids": ["a", "b", "c"]},
    "hashed": {"prompt_ids": [0, 2**40, 7]},
    "sparse": {"stage_ids": [0, 2**40, 7]},
}


_LOCAL = [e for e in FRAME_ENTRIES if e.engine == "polars"]


def _spy(original: Any, seen: list[object]) -> Any:
    def call(*args: object, **kwargs: object) -> object:
        seen.append(original(*args, **kwargs))
        return seen[-1]

    return call


@pytest.mark.parametrize("entry", [e for e in _LOCAL if e.layout == "long"], ids=str)
@pytest.mark.parametrize("prompts", list(_IDS))
def test_long_layout_takes_the_intended_path(entry: Entry, prompts: str, tmp_path: Path) -> None:
    """The dense fast path (numpy summary, slots found at box positions) runs for
    integer ids and for string or hashed prompt ids (as codes); the Polars group-by
    and the hash-join fallback for ids too sparse for a box, or when forced (so
    both are covered by the entry points). The token pass hands the compiled
    loop the raw ids (string prompts as they are, hashed ones as codes) or,
    after the join, each row's index among the keys."""
    summaries: list[object] = []
    located: list[Any] = []
    rank, reduce = raft_polars._engine.rank, raft_polars._engine.reduce
    case = Case(RAGGED.lps, RAGGED.rws, **_IDS[prompts])
    with (
        mock.patch.object(rank, "dense_summary", _spy(rank.dense_summary, summaries)),
        mock.patch.object(reduce, "_locate", _spy(reduce._locate, located)),
    ):
        check_losses(entry, case, tmp_path)
    dense = prompts != "sparse" and not entry.fallback
    assert bool(summaries and summaries[-1] is not None) == dense
    assert len(located) == 1
    ids, categories = located[0].ids, located[0].categories
    if not dense:
        assert ids == ("_index", None, None)
    elif prompts == "str":
        assert ids == ("stage", None, "cand")
        assert categories is not None
    elif prompts == "hashed":  # the codes, in a column of their own
        assert (ids[0], ids[2]) == ("stage", "cand")
        assert ids[1] not in {None, "prompt"}
    else:
        assert ids == ("stage", "prompt", "cand")
        assert categories is None


@pytest.mark.parametrize("entry", [e for e in _LOCAL if e.layout == "nested"], ids=str)
@pytest.mark.parametrize("prompts", list(_IDS))
def test_nested_layout_takes_the_intended_path(entry: Entry, prompts: str, tmp_path: Path) -> None:
    """The keys are ranked first; then only the selected lists are decoded, found
    by a gathered 1-byte flag when the ids fit a dense box (string or hashed
    prompt ids as codes), by a join for ids too sparse for one."""
    gathers: list[object] = []
    pieces: list[object] = []  # files of one row group are read a piece per thread
    rank, kernels = raft_polars._engine.rank, raft_polars._engine.dense
    reduce = raft_polars._engine.reduce
    case = Case(RAGGED.lps, RAGGED.rws, **_IDS[prompts])
    with (
        mock.patch.object(rank, "position", _spy(kernels.position, gathers)),
        mock.patch.object(reduce, "file_pieces", _spy(file_pieces, pieces)),
    ):
        check_losses(entry, case, tmp_path)
        check_losses(entry, case, tmp_path / "again", reduction="sequence")
    reads = sum(len(p) for p in pieces if isinstance(p, list))
    assert len(pieces) == 2
    assert len(gathers) == reads * (prompts != "sparse")


# --- empty logs (T = 0) -----------------------------------------------------------------


def test_empty_lists() -> None:
    assert raft_polars.raft_alignment([], []) == []
    table = raft_polars.lists_losses([], [])
    assert table.height == 0
    assert table.schema["loss"] == pl.Float64


@pytest.mark.parametrize("entry", [e for e in FRAME_ENTRIES if e.kind != "hive"], ids=str)
def test_empty_log(entry: Entry, tmp_path: Path) -> None:
    table = entry.losses(Case([], []), tmp_path)
    assert isinstance(table, pl.DataFrame)
    assert table.height == 0
    assert table.schema["loss"] == pl.Float64
    assert {"stage", "loss", "prompts", "tokens", "reward_best_mean", "reward_mean"} <= set(
        table.columns
    )
    selected = entry.select(Case([], []), tmp_path / "select")
    assert selected.height == 0
    assert selected.columns[:5] == ["stage", "prompt", "cand", "reward", "tokens"]


# --- ties decided by candidate id in files, not by row order ---------------------------


def _tie_frame() -> pl.DataFrame:
    """Candidates 7, 3, 5 in that row order, all with the best reward: 3 wins."""
    return pl.DataFrame(
        {
            "stage": [4, 4, 4, 4, 9, 9, 9],
            "prompt": ["q", "q", "q", "q", "q", "q", "r"],
            "cand": [7, 3, 5, 1, 5, 8, 2],
            "reward": [1.0, 1.0, 1.0, 0.5, -2.0, -2.0, 0.0],
            "logprobs": [[-7.0], [-3.0, -3.5], [-5.0], [-0.01], [-0.5], [-8.0], [-1.0, -2.0]],
            "response": ["seven", "three", "five", "one", "five", "eight", "two"],
        },
        schema_overrides={"logprobs": pl.List(pl.Float64)},
    )


@pytest.mark.parametrize("entry", FRAME_ENTRIES, ids=str)
@pytest.mark.parametrize("shuffle", [None, 1])
def test_ties_go_to_the_smallest_cand_id(entry: Entry, shuffle: int | None, tmp_path: Path) -> None:
    frame = _tie_frame()
    if shuffle is not None:
        frame = frame.sample(fraction=1.0, shuffle=True, seed=shuffle)
    kwargs = entry.lay_out(tmp_path, frame)
    table = entry.stage_losses(kwargs)
    assert table["stage"].to_list() == [4, 9]
    assert table["loss"].to_list() == [pytest.approx(3.25), pytest.approx(3.5 / 3)]
    assert table["ties"].to_list() == [1, 1]
    assert table["tokens"].to_list() == [2, 3]
    selected = entry.select_best(entry.lay_out(tmp_path / "select", frame))
    assert selected.select("stage", "prompt", "cand", "reward", "tokens", "response").rows() == [
        (4, "q", 3, 1.0, 2, "three"),
        (9, "q", 5, -2.0, 1, "five"),
        (9, "r", 2, 0.0, 2, "two"),
    ]


# --- float32 log-probs are accumulated in float64 ----------------------------------------


def _float32_trap() -> tuple[LogProbs, Rewards]:
    """One large log-prob and many tiny ones: summed in float32 the tiny ones
    vanish and the loss moves at the 4th decimal; in float64 they do not."""
    big, tiny, n = -16384.0, float(np.float32(-0.0001)), 4000
    lps = [[[[big, *([tiny] * n)]]]]
    return lps, [[[1.0]]]


def test_float32_trap_is_a_trap() -> None:
    (((resp,),),), _ = _float32_trap()
    acc = np.float32(0.0)
    for v in resp:
        acc = np.float32(acc + np.float32(v))
    f32 = round(-float(acc) / len(resp), 4)
    f64 = round(-sum(resp) / len(resp), 4)
    assert f32 != f64


@pytest.mark.parametrize("entry", ENTRIES, ids=str)
def test_float32_logprobs_accumulate_in_float64(entry: Entry, tmp_path: Path) -> None:
    lps, rws = _float32_trap()
    check_losses(entry, Case(lps, rws, float32=True), tmp_path)


def test_float32_column_dtypes_are_kept_float32(tmp_path: Path) -> None:
    """The float32 cases really hand float32 columns to the engine."""
    case = CASES["float32"]
    assert case.nested().schema["logprobs"] == pl.List(pl.Float32)
    assert case.long()[0].schema["logprob"] == pl.Float32
    assert case.values()[0][0][0][0] == float(np.float32(-0.1)) != -0.1
    assert not math.isclose(case.values()[0][0][0][0], -0.1, rel_tol=1e-12)


# --- golden files -----------------------------------------------------------------------


def test_golden_nested_file(data_dir: Path) -> None:
    table = raft_polars.stage_losses(data_dir / "seed_nested.parquet")
    assert [round(x, 4) for x in table["loss"]] == [1.55, 0.55, 0.15]
    assert table["stage"].to_list() == [0, 1, 2]


def test_golden_long_files(data_dir: Path) -> None:
    table = raft_polars.stage_losses(
        data_dir / "seed_tokens.parquet", rewards=data_dir / "seed_rewards.parquet"
    )
    assert [round(x, 4) for x in table["loss"]] == [1.55, 0.55, 0.15]


def test_golden_hive_directory(data_dir: Path) -> None:
    table = raft_polars.stage_losses(data_dir / "hive")
    assert table["stage"].to_list() == [3, 5, 8]
    assert [round(x, 4) for x in table["loss"]] == [1.55, 0.55, 0.15]
    selected = raft_polars.select_best(data_dir / "hive").collect()
    assert selected.select("stage", "cand", "response").rows() == [
        (3, 1, "b"),
        (5, 0, "c"),
        (8, 0, "e"),
    ]
