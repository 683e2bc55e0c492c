"""The numpy prompt summary of the integer fast path against Polars' group-by.

``dense_summary`` must return exactly what ``prompt_summary`` returns (same
columns, types and values; reward sums to the last bits aside) whenever it
returns anything, and step aside (None) for input the checks must name.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import raft_polars._engine.dense
from raft_polars._engine.rank import dense_summary, prompt_summary

_EXACT = [
    "stage",
    "prompt",
    "cand",
    "reward",
    "candidates",
    "cand_unique",
    "null_cands",
    "ties",
    "bad_rewards",
]


def _polars(keys: pl.DataFrame) -> pl.DataFrame:
    """The Polars summary on canonical (Int64) ids, as the engine runs it."""
    canonical = keys.cast({"stage": pl.Int64, "prompt": pl.Int64, "cand": pl.Int64})
    return prompt_summary(canonical.lazy()).collect().sort("stage", "prompt")


def _same(keys: pl.DataFrame) -> None:
    got = dense_summary(keys)
    assert got is not None
    want = _polars(keys)
    assert got.schema == want.schema
    assert got.select(_EXACT).equals(want.select(_EXACT))
    # the selected reward is the candidate's own: a -0.0 that wins a tie stays -0.0
    assert (
        np.signbit(got["reward"].to_numpy()).tolist()
        == np.signbit(want["reward"].to_numpy()).tolist()
    )
    np.testing.assert_allclose(
        got["reward_sum"].to_numpy(), want["reward_sum"].to_numpy(), rtol=1e-12, atol=1e-12
    )


@st.composite
def key_frames(draw: st.DrawFn) -> pl.DataFrame:
    """Candidate keys with gaps in every id, ragged K, ties and a few id widths."""
    stages = draw(st.lists(st.integers(-3, 40), min_size=1, max_size=3, unique=True))
    wide = draw(st.booleans())  # now and then a box too sparse for the numpy summary
    prompts = draw(
        st.lists(st.integers(-50, 10**6 if wide else 30), min_size=1, max_size=4, unique=True)
    )
    cands = st.lists(st.integers(-2, 12), min_size=1, max_size=5, unique=True)
    rewards = st.sampled_from([-1.0, 0.0, -0.0, 0.25, 0.5, 1e300, -1e-300])  # ties likely
    rows = [(s, p, c, draw(rewards)) for s in stages for p in prompts for c in draw(cands)]
    order = draw(st.permutations(range(len(rows))))
    dtype = draw(st.sampled_from([pl.Int64, pl.Int32, pl.UInt64]))
    if dtype == pl.UInt64:
        rows = [(s + 3, p + 50, c + 2, r) for s, p, c, r in rows]
    frame = pl.DataFrame(
        [rows[i] for i in order], orient="row", schema=["stage", "prompt", "cand", "reward"]
    )
    return frame.cast({"stage": dtype, "prompt": dtype, "cand": dtype, "reward": pl.Float64})


@settings(max_examples=150, deadline=None)
@given(key_frames())
def test_dense_summary_equals_the_polars_summary(keys: pl.DataFrame) -> None:
    box = raft_polars._engine.dense.box_of(keys)
    got = dense_summary(keys)
    if box is None or box.prompts > 4 * keys.height:
        assert got is None  # too sparse a box: the Polars group-by runs
        return
    _same(keys)


def test_matrix_and_scattered_forms() -> None:
    """K dense in [0, 3] takes the reward matrix; cand ids 0 and 90 the ufunc.at form."""
    dense = pl.DataFrame(
        {
            "stage": [0] * 8,
            "prompt": [5] * 4 + [6] * 4,
            "cand": [3, 2, 1, 0] * 2,
            "reward": [0.5, 0.9, 0.9, 0.1, 0.0, 0.0, 0.0, 0.0],
        }
    )
    _same(dense)
    got = dense_summary(dense)
    assert got is not None
    assert got.select("prompt", "cand", "ties").rows() == [(5, 1, 2), (6, 0, 4)]
    scattered = pl.DataFrame(
        {
            "stage": [1, 1, 1, 1],
            "prompt": [7, 7, 8, 8],
            "cand": [90, 0, 0, 90],
            "reward": [2.0, 1.0, -1.0, -1.0],
        }
    )
    _same(scattered)
    got = dense_summary(scattered)
    assert got is not None
    assert got.select("prompt", "cand", "ties").rows() == [(7, 90, 1), (8, 0, 2)]
    for cands in ([0, 1], [0, 90]):  # both forms, -0.0 and 0.0 tied: the first wins
        zeros = pl.DataFrame(
            {
                "stage": [0] * 4,
                "prompt": [0, 0, 1, 1],
                "cand": cands * 2,
                "reward": [-0.0, 0.0, 0.0, -0.0],
            }
        )
        _same(zeros)


@pytest.mark.parametrize(
    "keys",
    [
        pl.DataFrame({"stage": [0, 0], "prompt": [1, 1], "cand": [0, 0], "reward": [1.0, 2.0]}),
        pl.DataFrame(
            {"stage": [0, 0], "prompt": [1, 1], "cand": [0, 1], "reward": [1.0, math.nan]}
        ),
        pl.DataFrame({"stage": [0, 0], "prompt": [1, 1], "cand": [0, 1], "reward": [1.0, None]}),
        pl.DataFrame(
            {"stage": [0, 0], "prompt": [1, 1], "cand": [0, 1], "reward": [1.0, math.inf]}
        ),
        pl.DataFrame({"stage": [0, 0], "prompt": [1, None], "cand": [0, 1], "reward": [1.0, 2.0]}),
        pl.DataFrame({"stage": [0, 0], "prompt": ["a", "b"], "cand": [0, 1], "reward": [1.0, 2.0]}),
        pl.DataFrame({"stage": [0, 0], "prompt": [0, 10**9], "cand": [0, 1], "reward": [1.0, 2.0]}),
        pl.DataFrame(
            schema={"stage": pl.Int64, "prompt": pl.Int64, "cand": pl.Int64, "reward": pl.Float64}
        ),
    ],
    ids=["duplicate", "nan", "null-reward", "inf", "null-id", "string-ids", "sparse", "empty"],
)
def test_dense_summary_steps_aside(keys: pl.DataFrame) -> None:
    """Bad or unsuitable keys go to the Polars summary, whose checks name the problem."""
    assert dense_summary(keys) is None


# --- positions in a box, with and without bounds checks ------------------------------

_BOX = raft_polars._engine.dense.Box((0, 10, 0), (2, 5, 4))  # stage 0-1, prompt 10-14, cand 0-3


@pytest.mark.parametrize("checked", [True, False])
def test_gather_with_and_without_bounds_checks(checked: bool) -> None:
    """Inside the box both forms agree; the checked one sends the rest to "outside"."""
    table = np.arange(_BOX.size + 1, dtype=np.uint8)
    inside = pl.DataFrame(
        {"stage": [0, 1, 1], "prompt": [10, 12, 14], "cand": [0, 2, 3]},
        schema={"stage": pl.Int32, "prompt": pl.Int64, "cand": pl.UInt8},
    )
    got = inside.select(
        raft_polars._engine.dense.gather(table, _BOX, inside.schema, checked=checked)
    )
    assert got.to_series().to_list() == [0, 20 + 2 * 4 + 2, 20 + 4 * 4 + 3]
    outside = pl.DataFrame({"stage": [0, 2, None], "prompt": [9, 10, 10], "cand": [0, 0, 0]})
    got = outside.select(raft_polars._engine.dense.gather(table, _BOX, outside.schema))
    assert got.to_series().to_list() == [_BOX.size] * 3


@pytest.mark.parametrize("prompts", [["b", "a", "b"], [2**40, -7, 2**40]], ids=["str", "int"])
def test_prompt_codes_round_trip_and_unknown_prompts(prompts: list[object]) -> None:
    keys = pl.DataFrame(
        {"stage": [0, 0, 1], "prompt": prompts, "cand": [0, 1, 0], "reward": [1.0, 2.0, 3.0]}
    )
    codes = raft_polars._engine.dense.prompt_codes(keys)
    assert codes is not None
    coded = codes.encode(keys)
    assert coded["prompt"].to_list() == [1, 0, 1]  # the codes in the ids' order
    assert coded.columns == keys.columns
    assert codes.decode(coded).equals(keys)
    tokens = pl.DataFrame(
        {"prompt": [prompts[1], 12345 if prompts[0] != "b" else "zz", None, prompts[0]]},
        strict=False,
    )
    if prompts[0] != "b":
        tokens = tokens.cast(pl.Int32, strict=False)  # narrower than some categories
    got = codes.attach(tokens, "code")
    assert got["code"].to_list() == [0, None, None, 1 if prompts[0] == "b" else None]
    assert got["prompt"].equals(tokens["prompt"])
    lazy = codes.attach(tokens.lazy(), "code").collect()
    assert lazy.equals(got)


def test_prompt_codes_step_aside() -> None:
    keys = pl.DataFrame(
        {
            "stage": [0, 0, 1],
            "prompt": ["b", "a", "b"],
            "cand": [0, 1, 0],
            "reward": [1.0, 2.0, 3.0],
        }
    )
    within = raft_polars._engine.dense.prompt_codes
    assert within(keys.with_columns(pl.col("prompt").cast(pl.Categorical))) is None
    assert within(keys.with_columns(prompt=pl.Series(["a", None, "b"]))) is None
    assert within(keys.with_columns(pl.col("cand").cast(pl.String))) is None
