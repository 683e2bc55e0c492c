"""Sources and options that once went wrong: file order and widths, .pq files,
hidden files, global-ranking rounding, option types."""

from __future__ import annotations

import io
import json
import math
import re
import sys
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any, cast

import dask_cluster
import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import long_frames, nested_frame, reference_losses, reference_rounded
from strategies import ragged_logs

import raft_polars
from raft_polars import RaftInputError

LPS = [[[[-1.0, -2.0], [-0.5]], [[-3.0], [-0.25, -0.75, -1.0]]], [[[-0.1], [-0.2, -0.3]]]]
_BEYOND_INT64 = re.escape("holds UInt64 values outside -9223372036854775808 .. 9223372036854775807")
RWS = [[[0.1, 0.9], [0.4, 0.4]], [[2.0, 1.0]]]


def _rounded(table: pl.DataFrame) -> list[float]:
    return [round(x, 4) for x in table["loss"].to_list()]


@pytest.mark.parametrize("narrow_first", [True, False])
def test_file_order_and_widths_do_not_matter(tmp_path: Path, narrow_first: bool) -> None:
    frame = nested_frame(LPS, RWS)
    wide = frame.filter(pl.col("stage") == 0)
    narrow = frame.filter(pl.col("stage") == 1).with_columns(
        pl.col("prompt").cast(pl.Int32),
        pl.col("cand").cast(pl.Int16),
        pl.col("reward").cast(pl.Float32),
        pl.col("logprobs").cast(pl.List(pl.Float32)),
    )
    first, second = (narrow, wide) if narrow_first else (wide, narrow)
    first.write_parquet(tmp_path / "a.parquet")
    second.write_parquet(tmp_path / "b.parquet")
    expected = reference_rounded(LPS, RWS)
    assert _rounded(raft_polars.stage_losses(tmp_path)) == expected
    assert (
        _rounded(raft_polars.stage_losses([tmp_path / "b.parquet", tmp_path / "a.parquet"]))
        == expected
    )


@settings(max_examples=20, deadline=None)
@given(
    layout=st.sampled_from(["nested", "long"]),
    orders=st.lists(st.permutations(range(5)), min_size=2, max_size=2),
    narrow=st.booleans(),
)
def test_column_order_does_not_matter_across_parts(
    tmp_path_factory: pytest.TempPathFactory, layout: str, orders: list[list[int]], narrow: bool
) -> None:
    """Parts whose columns come in another order (and, with ``narrow``, other
    widths) are read by name: the answer is the reference's, and validate is clean."""
    tmp = tmp_path_factory.mktemp("order")
    tokens, rewards = long_frames(LPS, RWS)
    frame = nested_frame(LPS, RWS) if layout == "nested" else tokens
    for stage, order in enumerate(orders):
        part = frame.filter(pl.col("stage") == stage)
        if narrow and stage == 1:
            part = part.with_columns(pl.col("prompt", "cand").cast(pl.Int16))
        part.select(pl.nth(order)).write_parquet(tmp / f"part-{stage}.parquet")
    kwargs: dict[str, Any] = {}
    if layout == "long":
        rewards.write_parquet(tmp / "rewards.parquet")
        kwargs = {"rewards": str(tmp / "rewards.parquet")}
    parts = [str(tmp / "part-0.parquet"), str(tmp / "part-1.parquet")]
    for engine in ["polars", *([dask_cluster.engine()] if narrow and orders[0][0] == 0 else [])]:
        got = raft_polars.stage_losses(parts, **kwargs, engine=engine)
        assert _rounded(got) == reference_rounded(LPS, RWS)
        assert raft_polars.validate(parts, **kwargs, engine=engine).ok


def test_files_whose_columns_differ_name_the_file(tmp_path: Path) -> None:
    frame = nested_frame(LPS, RWS)
    frame.filter(pl.col("stage") == 0).write_parquet(tmp_path / "a.parquet")
    frame.filter(pl.col("stage") == 1).with_columns(pl.col("prompt").cast(pl.String)).write_parquet(
        tmp_path / "b.parquet"
    )
    with pytest.raises(RaftInputError, match=r"column 'prompt' is String in .*b\.parquet"):
        raft_polars.stage_losses(tmp_path)


@pytest.mark.parametrize("renamed", [False, True])
def test_a_part_of_the_wrong_type_is_named(tmp_path: Path, renamed: bool) -> None:
    """Parts whose types merge into one of the wrong kind (an integer prompt id in
    one file, a float in the next; the same of the rewards' stage) name the part
    that holds it, under the source's own column names too."""
    names = {"prompt": "question_id", "reward": "score"} if renamed else {}
    columns = names or None
    frame = nested_frame(LPS, RWS).rename(names)
    prompt = names.get("prompt", "prompt")
    frame.filter(pl.col("stage") == 0).write_parquet(tmp_path / "a.parquet")
    frame.filter(pl.col("stage") == 1).with_columns(pl.col(prompt).cast(pl.Float64)).write_parquet(
        tmp_path / "b.parquet"
    )
    nulls = frame.head(0).with_columns(pl.lit(None).alias(prompt))  # Null: it takes any type
    nulls.write_parquet(tmp_path / "0.parquet")
    named = "'question_id' \\(read as 'prompt'\\)" if renamed else "'prompt'"
    with pytest.raises(RaftInputError, match=rf"{named} must be .*found Float64 in .*b\.parquet"):
        raft_polars.stage_losses(tmp_path, columns=columns)
    tokens, rewards = long_frames(LPS, RWS)
    (tmp_path / "r").mkdir()
    rewards = rewards.rename(names)
    rewards.head(2).write_parquet(tmp_path / "r" / "a.parquet")
    rewards.tail(-2).with_columns(pl.col("stage").cast(pl.Float64)).write_parquet(
        tmp_path / "r" / "c.parquet"
    )
    tokens.rename({"prompt": prompt}).write_parquet(tmp_path / "t.parquet")
    with pytest.raises(
        RaftInputError, match=r"'stage' must be an integer, found Float64 in .*c\.p"
    ):
        raft_polars.validate(tmp_path / "t.parquet", rewards=tmp_path / "r", columns=columns)


def test_parts_of_categorical_and_enum_ids_name_the_column(tmp_path: Path) -> None:
    """Polars' own types that it cannot read as one (Categorical, Enum): the column
    and both files named, as for every other clash of types."""
    frame = nested_frame(LPS, RWS).with_columns(pl.col("prompt").cast(pl.String))
    frame.filter(stage=0).with_columns(pl.col("prompt").cast(pl.Categorical)).write_parquet(
        tmp_path / "a.parquet"
    )
    frame.filter(stage=1).with_columns(pl.col("prompt").cast(pl.Enum(["0", "1"]))).write_parquet(
        tmp_path / "b.parquet"
    )
    want = r"column 'prompt' is Enum.* in '.*b\.parquet' but Categorical in '.*a\.parquet'"
    with pytest.raises(RaftInputError, match=want):
        raft_polars.stage_losses(tmp_path)


def test_every_part_of_a_wrong_type_is_named(tmp_path: Path) -> None:
    """Of many parts whose types merge into one of the wrong kind, the ones of
    the wrong type are all named (the first three after the first, then a
    count; only the first was)."""
    frame = nested_frame(LPS, RWS)
    for part in range(8):
        stage = (pl.col("stage") + 10 * part).cast(
            pl.Float64 if part in (2, 4, 5, 6, 7) else pl.Int64
        )
        frame.with_columns(stage).write_parquet(tmp_path / f"p{part}.parquet")
    found = (
        r"column 'stage' must be an integer, found Float64 in '[^']*p2\.parquet' \(also "
        r"Float64 in '[^']*p4\.parquet', Float64 in '[^']*p5\.parquet', Float64 in "
        r"'[^']*p6\.parquet', and 1 more; 5 of 8 parts\)"
    )
    for run in (raft_polars.stage_losses, raft_polars.validate):
        with pytest.raises(RaftInputError, match=found):
            run(tmp_path)


def test_pq_files_are_read_and_hidden_ones_skipped(tmp_path: Path) -> None:
    frame = nested_frame(LPS, RWS)
    frame.filter(pl.col("stage") == 0).write_parquet(tmp_path / "a.parquet")
    frame.filter(pl.col("stage") == 1).write_parquet(tmp_path / "b.pq")
    (tmp_path / "_temporary").mkdir()
    frame.write_parquet(tmp_path / "_temporary" / "c.parquet")  # would duplicate rows
    (tmp_path / ".hidden.parquet").write_bytes(b"not parquet")
    assert _rounded(raft_polars.stage_losses(tmp_path)) == reference_rounded(LPS, RWS)


@pytest.mark.parametrize(
    ("n", "fraction"),
    [(25, 0.28), (100, 0.07), (10, 0.3), (7, 1.0), (9, 0.5), (3, 0.01), (5, 1e-10), (5, 1e-300),
     (25, 0.28 + 1e-12), (25, 0.28 - 1e-12), (3, 1 / 3), (6, 2 / 3), (1000, 0.9999999999999999),
     (10**6, 1.2345678901234567e-5)],
)  # fmt: skip
def test_global_keeps_ceil_of_fraction(n: int, fraction: float) -> None:
    frame = pl.DataFrame(
        {
            "stage": [0] * n,
            "prompt": list(range(n)),
            "cand": [0] * n,
            "reward": [float(i) for i in range(n)],
            "logprobs": [[-1.0]] * n,
        }
    )
    # the decimal product, not its binary rounding: 0.28 * 25 is exactly 7, and
    # 1e-10 * 5 is above 0, so one is kept
    want = math.ceil(Fraction(repr(fraction)) * n)
    table = raft_polars.stage_losses(frame, strategy="global", fraction=fraction)
    assert table["selected"].to_list() == [want]
    chosen = raft_polars.select_best(frame, strategy="global", fraction=fraction).collect()
    assert sorted(chosen["prompt"].to_list()) == list(range(n - want, n))


@pytest.mark.parametrize(
    "written",
    [np.float32(0.28), np.float64(0.28), np.float16(0.28), Decimal("0.28"), Fraction(7, 25)],
    ids=repr,
)
def test_numbers_of_other_kinds_are_taken_as_written(written: object) -> None:
    """A numpy float by its own shortest decimal (np.float32(0.28) prints as 0.28
    and is 0.2800000011920929 as a float64: 8 of 25 were kept), a Decimal or a
    Fraction exactly: 7 of 25, as 0.28. min_reward alike: np.float32(0.2)
    keeps a reward of 0.2."""
    n = 25
    frame = pl.DataFrame(
        {"stage": [0] * n, "prompt": list(range(n)), "cand": [0] * n,
         "reward": [float(i) for i in range(n)], "logprobs": [[-1.0]] * n}
    )  # fmt: skip
    assert str(written) in ("0.28", "7/25")  # the number the user wrote
    for engine in ("polars", dask_cluster.engine()):
        table = raft_polars.stage_losses(
            frame, strategy="global", fraction=cast(float, written), engine=engine
        )
        assert table["selected"].to_list() == [7]
    with pytest.raises(RaftInputError, match=r"got Decimal\('0'\)"):  # quoted as given
        raft_polars.stage_losses(frame, strategy="global", fraction=cast(float, Decimal("0")))
    rewards = frame.with_columns(reward=pl.Series([0.2] + [0.1] * (n - 1)))
    for bound in (np.float32(0.2), Decimal("0.2"), 0.2):
        assert raft_polars.stage_losses(rewards, min_reward=cast(float, bound))[
            "selected"
        ].to_list() == [1]


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"strategy": "global", "fraction": "0.5"}, "fraction must be a number"),
        ({"strategy": "global", "fraction": True}, "fraction must be a number"),
        ({"min_reward": "0.5"}, "min_reward must be a number"),
        ({"min_reward": 10**400}, "min_reward must be a finite number"),
        ({"columns": ["prompt"]}, "columns= must map"),
        ({"columns": {"prompt": "x", "cand": "x"}}, "a different column name"),
        ({"reduction": "mean"}, "reduction must be 'token' or 'sequence'"),
        ({"columns": {"prompt": ["input"]}}, r"column names \(strings\), got \['input'\]"),
        ({"preset": ["verl"]}, r"preset must be one of .*got \['verl'\]"),
        ({"preset": {"verl": 1}}, "preset must be one of"),
        ({"storage_options": "key=val"}, "storage_options= must map option names to strings"),
        ({"storage_options": {"aws_allow_http": True}}, "storage_options= must map option"),
    ],
)
def test_bad_options(options: dict[str, object], fragment: str) -> None:
    frame = nested_frame(LPS, RWS)
    with pytest.raises(RaftInputError, match=fragment):
        raft_polars.stage_losses(frame, **options)  # type: ignore[arg-type]


def test_collect_and_force_take_only_their_kinds(tmp_path: Path) -> None:
    """collect takes a lazy frame and Polars' two engines; write_selected's force
    is a bool ('no' or [0] replaced an existing OUT)."""
    frame = nested_frame(LPS, RWS)
    lazy = raft_polars.select_best(frame)
    for bad, fragment in (
        ({"frame": frame}, "collect takes the lazy frame select_best returns, got DataFrame"),
        ({"frame": lazy, "engine": "gpu"}, "engine must be 'streaming' or 'in-memory'"),
    ):
        with pytest.raises(RaftInputError, match=re.escape(fragment)):
            raft_polars.collect(**bad)
    out = tmp_path / "batch.parquet"
    raft_polars.write_selected(frame, out)
    before = out.read_bytes()
    for force in ("no", 1, [0]):
        with pytest.raises(RaftInputError, match="force must be True or False"):
            raft_polars.write_selected(frame, out, force=force)  # type: ignore[arg-type]
    assert out.read_bytes() == before


def test_lists_reduction_is_checked() -> None:
    with pytest.raises(RaftInputError, match="reduction must be"):
        raft_polars.lists_losses(LPS, RWS, reduction="mean")  # type: ignore[arg-type]


def test_ragged_nesting_in_lists_is_an_input_error() -> None:
    with pytest.raises(RaftInputError, match="not a number"):
        raft_polars.raft_alignment([[[[-1.0], [-2.0]]]], [[[[0.1], 0.9]]])  # type: ignore[list-item]


@pytest.mark.parametrize("dtype", [pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt16, pl.UInt64])
def test_long_layout_in_narrow_id_types(dtype: pl.DataType) -> None:
    tokens = pl.DataFrame(
        {
            "stage": [0, 0, 0, 1],
            "prompt": [3, 3, 3, 3],
            "cand": [0, 0, 1, 0],
            "logprob": [-1.0, -2.0, -4.0, -0.5],
        }
    ).with_columns(pl.col("stage", "prompt", "cand").cast(dtype))
    rewards = pl.DataFrame(
        {"stage": [0, 0, 1], "prompt": [3, 3, 3], "cand": [0, 1, 0], "reward": [0.9, 0.1, 0.0]}
    )
    assert raft_polars.stage_losses(tokens, rewards=rewards)["loss"].to_list() == [1.5, 0.5]


@pytest.mark.parametrize("orphan", [2**31 - 1, -(2**31), 4, -1])
def test_orphan_ids_at_the_int32_limits(orphan: int) -> None:
    tokens = pl.DataFrame(
        {
            "stage": [0, 0, 0],
            "prompt": [3, 3, orphan],
            "cand": [0, 1, 0],
            "logprob": [-1.0, -2.0, -4.0],
        },
        schema_overrides={"stage": pl.Int32, "prompt": pl.Int32, "cand": pl.Int32},
    )
    rewards = pl.DataFrame(
        {"stage": [0, 0], "prompt": [3, 3], "cand": [0, 1], "reward": [0.9, 0.1]}
    )
    with pytest.raises(RaftInputError, match=f"no reward row.*prompt {orphan}"):
        raft_polars.stage_losses(tokens, rewards=rewards)


# --- found by the review of the integer fast path ---------------------------------------


def test_list_fast_path_adds_token_by_token_like_the_plain_loop() -> None:
    """A loss on a rounding midpoint: a pairwise sum rounded it the other way."""
    lps = [[[[-0.2433, -0.186, -0.0721, -0.12], [-1.0]]]]
    rws = [[[0.9, 0.1]]]
    assert raft_polars.raft_alignment(lps, rws) == reference_rounded(lps, rws) == [0.1554]


def test_list_fast_path_zero_loss_is_positive_zero() -> None:
    for lp in (-0.0, 0.0):
        got = raft_polars.raft_alignment([[[[lp]]]], [[[1.0]]])
        assert got == [0.0]
        assert math.copysign(1.0, got[0]) == 1.0


def test_overflowing_nll_is_not_an_input_error() -> None:
    """Every log-prob is sound but their sum overflows: the loss is inf, as in the
    reference, from both list entry points."""
    lps, rws = [[[[-1e308, -1e308]]]], [[[1.0]]]
    assert raft_polars.raft_alignment(lps, rws) == [math.inf]
    assert raft_polars.lists_losses(lps, rws)["loss"].to_list() == [math.inf]


@pytest.mark.parametrize("dtype", [pl.Int128, pl.UInt128])
def test_128_bit_ids(dtype: pl.DataType, tmp_path: Path) -> None:
    """128-bit ids (Polars widens UInt64 + Int64 parts to Int128) take the general path."""
    frame = pl.DataFrame(
        {
            "stage": [0, 0, 1],
            "prompt": [5, 5, 6],
            "cand": [0, 1, 0],
            "reward": [0.1, 0.2, 0.3],
            "logprobs": [[-1.0], [-2.0], [-3.0]],
        }
    )
    assert raft_polars.stage_losses(frame.cast({"prompt": dtype}))["loss"].to_list() == [2.0, 3.0]
    frame.head(2).cast({"prompt": pl.UInt64}).write_parquet(tmp_path / "a.parquet")
    frame.tail(1).write_parquet(tmp_path / "b.parquet")
    got = raft_polars.stage_losses([tmp_path / "a.parquet", tmp_path / "b.parquet"])
    assert got["loss"].to_list() == [2.0, 3.0]


@pytest.mark.parametrize("column", ["stage", "prompt", "cand"])
def test_128_bit_token_ids(column: str, tmp_path: Path) -> None:
    """Long layout: token files whose ids Polars widens to Int128 (UInt64 in
    one part, Int64 in another) give the losses of the same ids as Int64, into
    the dense path's compiled loop."""
    tokens = pl.DataFrame(
        {
            "stage": [0, 0, 0, 1, 1],
            "prompt": [5, 5, 5, 6, 6],
            "cand": [0, 1, 1, 0, 0],
            "logprob": [-1.0, -2.0, -4.0, -3.0, -5.0],
        }
    )
    rewards = pl.DataFrame(
        {"stage": [0, 0, 1], "prompt": [5, 5, 6], "cand": [0, 1, 0], "reward": [0.1, 0.2, 0.3]}
    )
    tokens.head(2).cast({column: pl.UInt64}).write_parquet(tmp_path / "a.parquet")
    tokens.tail(3).write_parquet(tmp_path / "b.parquet")
    parts = [tmp_path / "a.parquet", tmp_path / "b.parquet"]
    got = raft_polars.stage_losses(parts, rewards=rewards)
    assert got["loss"].to_list() == [3.0, 4.0]
    assert got["tokens"].to_list() == [2, 2]


@pytest.mark.parametrize(
    "strategy", [{}, {"strategy": "top_n", "n": 2}, {"strategy": "global", "fraction": 0.5}]
)
def test_uint64_ids_beyond_int64_are_input_errors(strategy: dict[str, object]) -> None:
    big = {"stage": pl.UInt64}
    rewards = pl.DataFrame(
        {"stage": [2**63] * 2, "prompt": [0, 0], "cand": [0, 1], "reward": [0.1, 0.2]},
        schema_overrides=big,
    )
    tokens = pl.DataFrame(
        {"stage": [2**63], "prompt": [0], "cand": [1], "logprob": [-1.0]}, schema_overrides=big
    )
    with pytest.raises(
        RaftInputError,
        match=_BEYOND_INT64,
    ):
        raft_polars.stage_losses(tokens, rewards=rewards, **strategy)  # type: ignore[arg-type]
    with pytest.raises(
        RaftInputError,
        match=_BEYOND_INT64,
    ):
        raft_polars.select_best(tokens, rewards=rewards, **strategy)  # type: ignore[arg-type]


@pytest.mark.parametrize("reduction", ["token", "sequence"])
def test_orphan_uint64_ids_beyond_int64_are_input_errors(reduction: str) -> None:
    rewards = pl.DataFrame(
        {"stage": [0, 0], "prompt": [0, 0], "cand": [0, 1], "reward": [0.1, 0.2]},
        schema_overrides={"stage": pl.UInt64},
    )
    tokens = pl.DataFrame(
        {"stage": [0, 2**63], "prompt": [0, 0], "cand": [1, 1], "logprob": [-1.0, -2.0]},
        schema_overrides={"stage": pl.UInt64},
    )
    with pytest.raises(RaftInputError):
        raft_polars.stage_losses(tokens, rewards=rewards, reduction=reduction)  # type: ignore[arg-type]


@pytest.mark.parametrize("reduction", ["token", "sequence"])
@pytest.mark.parametrize("prompts", [[2**40, 7], ["x", "y"]], ids=["hashed", "str"])
def test_coded_prompts_find_orphans_and_reduce(prompts: list[object], reduction: str) -> None:
    """Prompt ids taken as codes: the answer is the reference's, and a token row
    whose prompt has no reward row is an orphan, named."""
    lps = [[[[-1.0, -2.0], [-0.5]], [[-3.0], [-0.25, -0.75]]]]
    rws = [[[0.1, 0.9], [0.8, 0.2]]]
    tokens, rewards = long_frames(lps, rws, prompt_ids=prompts)
    got = raft_polars.stage_losses(tokens, rewards=rewards, reduction=reduction)  # type: ignore[arg-type]
    want = reference_losses(lps, rws, reduction=reduction)
    assert got["loss"].to_list() == pytest.approx(want, rel=1e-12)
    stray = 12345 if isinstance(prompts[0], int) else "zz"
    orphan = pl.concat(
        [tokens, tokens.head(1).with_columns(pl.lit(stray).alias("prompt"))], how="vertical_relaxed"
    )
    with pytest.raises(RaftInputError, match="no reward row"):
        raft_polars.stage_losses(orphan, rewards=rewards, reduction=reduction)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "prompts", [[10**12, 10**12, 5, 5], ["a", "a", "b", "b"]], ids=["hashed", "str"]
)
def test_a_source_column_named_like_the_codes_is_kept(prompts: list[object]) -> None:
    """An extra column with the name the engine gives the prompt's codes changes
    nothing: the same loss as the reference, and the column in the selected batch."""
    frame = pl.DataFrame(
        {
            "stage": [0] * 4,
            "prompt": prompts,
            "cand": [0, 1, 0, 1],
            "reward": [0.0, 1.0, 1.0, 0.0],
            "logprobs": [[-1.0], [-2.0], [-3.0], [-4.0]],
            "_raft_prompt_code": [7, 7, 7, 7],
            "_raft_prompt_code_": [8, 8, 8, 8],
        }
    )
    assert raft_polars.stage_losses(frame)["loss"].to_list() == [2.5]
    selected = raft_polars.select_best(frame).collect()
    assert selected.select("prompt", "cand").rows() == sorted([(prompts[0], 1), (prompts[2], 0)])
    assert selected["_raft_prompt_code"].to_list() == [7, 7]
    assert selected["_raft_prompt_code_"].to_list() == [8, 8]


def test_uint64_prompt_ids_beyond_int64_fail_alike_on_every_path() -> None:
    ids = pl.Series([2**63, 2**63, 5, 5], dtype=pl.UInt64)
    rewards = pl.DataFrame(
        {"stage": [0] * 4, "prompt": ids, "cand": [0, 1, 0, 1], "reward": [0.0, 1.0, 1.0, 0.0]}
    )
    tokens = pl.DataFrame(
        {"stage": [0] * 4, "prompt": ids, "cand": [0, 1, 0, 1], "logprob": [-1.0, -2.0, -3.0, -4.0]}
    )
    with pytest.raises(
        RaftInputError,
        match=_BEYOND_INT64,
    ):
        raft_polars.stage_losses(tokens, rewards=rewards)
    with pytest.raises(
        RaftInputError,
        match=_BEYOND_INT64,
    ):
        raft_polars.select_best(tokens, rewards=rewards)


def test_a_read_failure_of_a_two_source_log_names_both(tmp_path: Path) -> None:
    """A query over token rows and rewards that fails past the footers (a page
    Polars cannot decode; here a value it cannot convert) names both sources:
    it named the rewards alone, for a page of the token files."""
    from raft_polars._engine.read import read_log

    tokens, rewards = long_frames([[[[-1.0, -2.0]]]], [[[0.5]]])
    tokens.write_parquet(tmp_path / "tokens.parquet")
    rewards.write_parquet(tmp_path / "rewards.parquet")
    log = read_log(str(tmp_path / "tokens.parquet"), rewards=str(tmp_path / "rewards.parquet"))
    failing = log.tokens().select(pl.lit("x").str.to_integer())
    with pytest.raises(RaftInputError) as err:
        log.collect(failing)
    message = str(err.value)
    assert "source " in message
    assert str(tmp_path / "tokens.parquet") in message
    assert str(tmp_path / "rewards.parquet") in message


@pytest.mark.parametrize("name", ["j[1].jsonl", "j*.jsonl", "j?.jsonl"])
def test_a_json_lines_path_with_glob_characters_is_that_file(tmp_path: Path, name: str) -> None:
    """An existing JSON lines file whose name holds glob characters is read as
    itself, not as a pattern matching a file beside it (Polars' JSON lines scan
    expands every path; ``j[1].jsonl`` read ``j1.jsonl``)."""
    row = '{{"stage": 0, "prompt": 0, "cand": 0, "reward": 1.0, "logprobs": [{}]}}\n'
    (tmp_path / name).write_text(row.format(-1.0))
    (tmp_path / "j1.jsonl").write_text(row.format(-9.0))
    losses = raft_polars.stage_losses(str(tmp_path / name))
    assert losses["loss"].to_list() == [1.0]
    assert raft_polars.validate(str(tmp_path / name)).ok


@settings(max_examples=15, deadline=None)
@given(
    first=st.integers(1000, 1100),
    late=st.sampled_from(["float_reward", "float_logprob", "text_prompt", "response"]),
    seed=st.integers(0, 2**16),
)
def test_json_lines_types_and_keys_come_from_every_line(
    tmp_path_factory: pytest.TempPathFactory, first: int, late: str, seed: int
) -> None:
    """A JSON lines file whose lines after the first thousand bring a float
    beside integers, a text id beside numbers or a new key is read whole: the
    answer is the plain loop's over every line (the schema once came from the
    first 1000 lines: the read failed, or the late key was dropped)."""
    import json
    import random

    rng = random.Random(seed)
    tmp = tmp_path_factory.mktemp("late")
    prompts = first // 2 + 1  # two candidates a prompt; the late lines are the last prompt's
    lps: list[list[list[list[float]]]] = [[]]
    rws: list[list[list[float]]] = [[]]
    lines = []
    for p in range(prompts):
        is_late = p == prompts - 1
        rewards = [float(rng.randint(0, 3)) for _ in range(2)]
        if is_late and late == "float_reward":
            rewards[1] = 0.25 + rng.randint(3, 4)
        lists = [[float(-rng.randint(0, 3)) for _ in range(rng.randint(1, 3))] for _ in range(2)]
        if is_late and late == "float_logprob":
            lists[0][0] = -1.5
        lps[0].append(lists)
        rws[0].append(rewards)
        for c in range(2):
            row: dict[str, Any] = {"stage": 0, "prompt": p, "cand": c, "reward": rewards[c]}
            if is_late and late == "text_prompt":
                row["prompt"] = f"p{p}"
            if is_late and late == "response":
                row["response"] = "late text"
            row["logprobs"] = [int(x) if x.is_integer() else x for x in lists[c]]
            row["reward"] = int(rewards[c]) if rewards[c].is_integer() else rewards[c]
            lines.append(json.dumps(row))
    path = tmp / "log.jsonl"
    path.write_text("\n".join(lines) + "\n")
    assert _rounded(raft_polars.stage_losses(path)) == reference_rounded(lps, rws)
    report = raft_polars.validate(path)  # ids of numbers and text: read as text, reported
    assert [p.kind for p in report.problems] == (["corrupt_file"] if late == "text_prompt" else [])
    if late == "response":
        out = tmp / "out.jsonl"
        raft_polars.write_selected(path, out)
        kept = pl.read_ndjson(out, infer_schema_length=None)
        assert "response" in kept.columns
        assert kept["response"].drop_nulls().to_list() == ["late text"]


def test_a_directory_with_glob_characters_is_that_directory(tmp_path: Path) -> None:
    """An existing directory named with glob characters (``run[0]``) is read as
    itself, like a file: Parquet's schema read expanded it as a pattern."""
    frame = nested_frame(LPS, RWS)
    for name in ("run[0]", "run*", "run?"):
        folder = tmp_path / name
        folder.mkdir()
        frame.write_parquet(folder / "part-0.parquet")
        expected = reference_rounded(LPS, RWS)
        assert _rounded(raft_polars.stage_losses(folder)) == expected
        assert _rounded(raft_polars.stage_losses(folder / "part-0.parquet")) == expected
        assert raft_polars.validate(folder).ok


@pytest.mark.parametrize("engine", ["polars", "dask"])
def test_a_data_file_linking_to_nothing_is_an_error(tmp_path: Path, engine: str) -> None:
    """A part of a directory that is a symbolic link to nothing (an unfetched
    git-annex or DVC checkout) is an error naming it, not a part left out."""
    frame = nested_frame(LPS, RWS)
    frame.filter(pl.col("stage") == 0).write_parquet(tmp_path / "part-0.parquet")
    (tmp_path / "part-1.parquet").symlink_to(tmp_path / "missing" / "blob.parquet")
    chosen: Any = dask_cluster.engine() if engine == "dask" else engine
    with pytest.raises(RaftInputError, match=r"part-1\.parquet.*does not exist"):
        raft_polars.stage_losses(tmp_path, engine=chosen)
    with pytest.raises(RaftInputError, match=r"part-1\.parquet"):
        raft_polars.validate(tmp_path, engine=chosen)
    (tmp_path / ".hidden.parquet").symlink_to(tmp_path / "missing" / "other.parquet")
    (tmp_path / "part-1.parquet").unlink()  # hidden names stay out, linked or not
    assert raft_polars.stage_losses(tmp_path, engine=chosen)["stage"].to_list() == [0]


@pytest.mark.parametrize("engine", ["polars", "dask"])
def test_a_linked_directory_is_read_once(tmp_path: Path, engine: str) -> None:
    """A stage directory linked from elsewhere (another disk) is part of the log,
    with its Hive key; a link back up to the log's own directory (a cycle) and a
    hidden linked directory add nothing; every file is read once."""
    frame = nested_frame(LPS, RWS)
    run, other = tmp_path / "run", tmp_path / "other" / "s1"
    (run / "stage=0").mkdir(parents=True)
    other.mkdir(parents=True)
    frame.filter(pl.col("stage") == 0).drop("stage").write_parquet(run / "stage=0" / "p.parquet")
    frame.filter(pl.col("stage") == 1).drop("stage").write_parquet(other / "p.parquet")
    (run / "stage=1").symlink_to(other, target_is_directory=True)
    (run / "stage=0" / "again").symlink_to(run, target_is_directory=True)  # a cycle
    (run / ".old").symlink_to(other, target_is_directory=True)
    chosen: Any = dask_cluster.engine() if engine == "dask" else engine
    got = raft_polars.stage_losses(run, engine=chosen)
    assert _rounded(got) == reference_rounded(LPS, RWS)
    report = raft_polars.validate(run, engine=chosen)
    assert report.ok
    assert report.to_dict()["summary"]["candidates"] == frame.height


@pytest.mark.parametrize("pattern", ["out/*.parquet", "out/*", "out/**"])
def test_a_glob_reads_the_directories_it_matches(tmp_path: Path, pattern: str) -> None:
    """A glob that matches a directory (Spark and DuckDB write a "file" as a
    directory of parts) reads its parts, as the matched paths given one by one
    do; a recursive glob reads each file once; a matched ``_temporary`` directory
    is left out, as below a source directory."""
    frame = nested_frame(LPS, RWS)
    out = tmp_path / "out"
    (out / "b.parquet").mkdir(parents=True)
    (out / "_temporary").mkdir()
    frame.filter(pl.col("stage") == 0).write_parquet(out / "a.parquet")
    frame.filter(pl.col("stage") == 1).write_parquet(out / "b.parquet" / "part-0.parquet")
    frame.write_parquet(out / "_temporary" / "part-9.parquet")  # would repeat every row
    expected = reference_rounded(LPS, RWS)
    assert _rounded(raft_polars.stage_losses(str(tmp_path / pattern))) == expected
    listed = sorted(str(p) for p in tmp_path.glob("out/*.parquet"))
    assert _rounded(raft_polars.stage_losses(listed)) == expected
    assert raft_polars.validate(str(tmp_path / pattern)).to_dict()["summary"]["candidates"] == (
        frame.height
    )
    spelled = raft_polars.stage_losses(str(tmp_path / "o*" / "_temporary" / "*.parquet"))
    assert _rounded(spelled) == expected  # a name the pattern spells out is read
    for spelt in ("out/_tem*/*.parquet", "o*/_*/part-9.parquet"):  # its first character
        assert _rounded(raft_polars.stage_losses(str(tmp_path / spelt))) == expected


def test_a_recursive_glob_reads_a_file_once_and_names_a_link_to_nothing(tmp_path: Path) -> None:
    """A recursive glob through a link back up reaches a file under many names: it
    is read once; a data file the glob matches that links to nothing is named, as
    in a directory."""
    frame = nested_frame(LPS, RWS)
    (tmp_path / "loop").mkdir()
    frame.write_parquet(tmp_path / "loop" / "a.parquet")
    (tmp_path / "loop" / "up").symlink_to(tmp_path / "loop", target_is_directory=True)
    got = raft_polars.stage_losses(str(tmp_path / "loop" / "**" / "*.parquet"))
    assert _rounded(got) == reference_rounded(LPS, RWS)
    (tmp_path / "loop" / "up").unlink()
    (tmp_path / "loop" / "b.parquet").symlink_to(tmp_path / "missing.parquet")
    with pytest.raises(RaftInputError, match=r"b\.parquet.*does not exist"):
        raft_polars.stage_losses(str(tmp_path / "loop" / "*.parquet"))


@pytest.mark.parametrize("engine", ["polars", "dask"])
@pytest.mark.parametrize("suffix", ["parquet", "jsonl"])
def test_an_id_beyond_int64_names_the_source(tmp_path: Path, engine: str, suffix: str) -> None:
    path = tmp_path / f"log.{suffix}"
    if suffix == "jsonl":
        path.write_text(
            '{"stage": 9223372036854775808, "prompt": 0, "cand": 0, "reward": 1, "logprobs": [-1]}'
            '\n{"stage": 0, "prompt": 0, "cand": 0, "reward": 1, "logprobs": [-1]}\n'
        )
    else:
        pl.DataFrame(
            {"stage": [2**64 - 1, 0], "prompt": [0, 0], "cand": [0, 0], "reward": [1.0, 1.0],
             "logprobs": [[-1.0], [-1.0]]},
            schema_overrides={"stage": pl.UInt64},
        ).write_parquet(path)  # fmt: skip
    chosen: Any = dask_cluster.engine() if engine == "dask" else engine
    with pytest.raises(RaftInputError, match=r"log\.(parquet|jsonl).*64-bit"):
        raft_polars.stage_losses(path, engine=chosen)


@pytest.mark.parametrize("suffix", ["", ".gz", ".zst"])
@pytest.mark.parametrize("head", ["\ufeff", "[", " ["])
def test_a_json_lines_file_that_is_not_says_why(tmp_path: Path, head: str, suffix: str) -> None:
    """A JSON lines file that begins with a byte order mark, or holds one JSON
    array, is an error that names the file and says which, compressed or not
    (the reason is in the decompressed text)."""
    row = '{"stage": 0, "prompt": 0, "cand": 0, "reward": 1.0, "logprobs": [-1.0]}'
    text = head + (f"{row}]" if "[" in head else row + "\n")
    path = tmp_path / f"log.jsonl{suffix}"
    codec = {"": None, ".gz": "gzip", ".zst": "zstd"}[suffix]
    with pa.output_stream(str(path), compression=codec) as stream:
        stream.write(text.encode())
    reason = "byte order mark" if head == "\ufeff" else "one JSON array"
    with pytest.raises(RaftInputError, match=rf"log\.jsonl{re.escape(suffix)}.*{reason}"):
        raft_polars.stage_losses(path)
    with pytest.raises(RaftInputError, match=rf"log\.jsonl{re.escape(suffix)}.*{reason}"):
        raft_polars.validate(path)


@pytest.mark.parametrize("bad", [(1,), (1, 2), (0, 3), (3,)])
def test_json_lines_parts_name_the_first_that_is_not(tmp_path: Path, bad: tuple[int, ...]) -> None:
    """The parts' schemas are inferred side by side, in threads: where several
    parts are not JSON lines, the error names the first of them, as a read in
    order would; the good parts read on their own give the plain answer."""
    row = '{"stage": 0, "prompt": %d, "cand": 0, "reward": 1.0, "logprobs": [-%d.0]}\n'
    for i in range(4):
        text = "\ufeff" + row % (i, i) if i in bad else row % (i, i)
        (tmp_path / f"part-{i}.jsonl").write_text(text, encoding="utf-8")
    with pytest.raises(RaftInputError, match=rf"part-{bad[0]}\.jsonl.*byte order mark"):
        raft_polars.stage_losses(tmp_path)
    good = [str(tmp_path / f"part-{i}.jsonl") for i in range(4) if i not in bad]
    loss = raft_polars.stage_losses(good)["loss"].to_list()
    want = [i for i in range(4) if i not in bad]
    assert loss == [pytest.approx(sum(want) / len(want))]


@pytest.mark.parametrize(
    ("row", "column"),
    [
        ({"prompt": ["turn 1", "turn 2"], "rewards": [0.9, 0.1]}, "prompt"),
        ({"prompt": ["turn 1", "turn 2", "turn 3"], "rewards": [0.9, 0.1]}, "prompt"),
        ({"stage": [0, 1], "prompt": "p", "rewards": [0.9, 0.3]}, "stage"),
    ],
)
def test_a_wide_rows_ids_are_never_one_per_candidate(
    tmp_path: Path, row: dict[str, Any], column: str
) -> None:
    """A wide row is one (stage, prompt): a list there (chat turns) is a wrong type
    whatever its length, never K prompts of one candidate each."""
    path = tmp_path / "wide.jsonl"
    path.write_text(json.dumps({**row, "responses": ["a", "b"]}) + "\n")
    with pytest.raises(RaftInputError, match=f"column '{column}' must be an integer"):
        raft_polars.stage_losses(str(path))


@pytest.mark.parametrize(
    ("row", "preset", "message"),
    [
        (
            {"prompt": "p", "cand": 7, "responses": ["a", "b"], "rewards": [0.9, 0.1]},
            None,
            r"column 'rewards' \(read as 'reward'\) must be numeric, found List\(Float64\); "
            r"a row with a 'cand' column is one candidate",
        ),
        (
            {"prompt": "p", "responses": ["a", "b"], "rewards": [[0.9], [0.1]]},
            None,
            r"column 'rewards' \(read as 'reward'\) must be numeric, found List\(Float64\)$",
        ),
        (
            {"input": "q", "output": "a", "score": "0.5", "step": 1},
            "verl",
            r"column 'score' \(read as 'reward'\) must be numeric, found String$",
        ),
    ],
)
def test_a_wrong_type_names_the_logs_own_column(
    tmp_path: Path, row: dict[str, Any], preset: Any, message: str
) -> None:
    path = tmp_path / "1.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(RaftInputError, match=message):
        raft_polars.stage_losses(str(path), preset=preset)


@pytest.mark.parametrize("engine", ["polars", "dask"])
@pytest.mark.parametrize(
    "broken",
    [
        {"rewards": [0.3, 0.4], "logprobs": [[-1.0], [-2.0]], "responses": ["x"]},
        {"rewards": [], "logprobs": [], "responses": []},
        {"rewards": None, "logprobs": [[-1.0]], "responses": ["x"]},
    ],
    ids=["shorter", "empty", "null"],
)
def test_validate_reports_a_wide_row_without_its_candidates_once(
    tmp_path: Path, broken: dict[str, Any], engine: str
) -> None:
    """A wide row whose lists do not hold its candidates is one null id, not also a
    null reward and a null log-probs list that the log does not hold; a null
    reward inside a sound row's list still is one."""
    rows = [
        {"stage": 0, "prompt": "a", "rewards": [0.1, None], "logprobs": [[-1.0], [-0.5]],
         "responses": ["x", "y"]},
        {"stage": 0, "prompt": "d", **broken},
    ]  # fmt: skip
    path = tmp_path / "wide.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    on: Any = dask_cluster.engine() if engine == "dask" else "polars"
    report = raft_polars.validate(str(path), engine=on)
    kinds = {p.kind: (p.count, [dict(loc) for loc in p.locations]) for p in report.problems}
    assert kinds == {
        "null_id": (1, [{"stage": 0, "prompt": "d", "cand": None}]),
        "bad_reward": (1, [{"stage": 0, "prompt": "a", "cand": 1, "reward": None}]),
    }


def test_a_wide_row_without_candidates_is_an_error(tmp_path: Path) -> None:
    """A wide row whose rewards list is empty is a prompt without candidates (bad
    input, docs/semantics.md): an error naming the prompt, never a prompt left out."""
    import json

    rows = [
        {"prompt": "p1", "responses": [], "rewards": [], "logprobs": []},
        {"prompt": "p2", "responses": ["a", "b"], "rewards": [0.5, 0.2],
         "logprobs": [[-1.0], [-3.0]]},
    ]  # fmt: skip
    path = tmp_path / "wide.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(RaftInputError, match="p1"):
        raft_polars.stage_losses(str(path))
    assert "null_id" in [p.kind for p in raft_polars.validate(str(path)).problems]


@pytest.mark.parametrize(
    "rows",
    [
        [{"stage": 0, "prompt": 7, "rewards": [], "logprobs": []}],  # every list empty
        [{"stage": 0, "prompt": 7, "rewards": None, "logprobs": None}],  # every list null
        [{"stage": 0, "prompt": 7, "rewards": [], "logprobs": []}] * 2,
    ],
)
def test_wide_rows_whose_every_list_is_empty_name_the_prompt(
    tmp_path: Path, rows: list[dict[str, Any]]
) -> None:
    """JSON lines type a key null in every line as Null: the error was "column
    'reward' must be numeric, found Null", naming no row. A column of nulls only
    is taken for its kind, and the checks of the values name the prompt."""
    path = tmp_path / "wide.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(RaftInputError, match=r"null id.*near stage 0, prompt 7"):
        raft_polars.stage_losses(str(path))
    assert "null_id" in [p.kind for p in raft_polars.validate(str(path)).problems]


def test_a_log_probs_column_of_nulls_only_names_the_response(tmp_path: Path) -> None:
    path = tmp_path / "nested.jsonl"
    row = {"stage": 0, "prompt": 3, "cand": 1, "reward": 0.5, "logprobs": None}
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(RaftInputError, match=r"logprobs is null .* stage 0, prompt 3, candidate 1"):
        raft_polars.stage_losses(str(path))
    assert "null_logprobs" in [p.kind for p in raft_polars.validate(str(path)).problems]


@pytest.mark.parametrize("kind", ["arrow", "polars"])
def test_wide_rows_of_fixed_size_lists(tmp_path: Path, kind: str) -> None:
    """A writer of K candidates a prompt may store the rewards (and log-probs) as
    fixed-size lists: they were "missing column(s) ['cand', 'reward']"."""
    import pyarrow as pa

    rewards = [[0.1, 0.9], [0.7, 0.2]]
    logprobs = [[[-1.0, -2.0], [-3.0]], [[-0.5], [-4.0, -4.0]]]
    plain = pl.DataFrame({"stage": [0, 1], "prompt": [0, 0], "rewards": rewards,
                          "logprobs": logprobs})  # fmt: skip
    if kind == "polars":
        fixed: Any = plain.with_columns(pl.col("rewards").cast(pl.Array(pl.Float64, 2)))
    else:
        fixed = pa.table({
            "stage": [0, 1], "prompt": [0, 0],
            "rewards": pa.array(rewards, pa.list_(pa.float64(), 2)),
            "logprobs": pa.array(logprobs, pa.list_(pa.list_(pa.float64()), 2)),
        })  # fmt: skip
    want = reference_losses(
        [[logprobs[0]], [logprobs[1]]], [[rewards[0]], [rewards[1]]]
    )  # two stages of one prompt each
    assert raft_polars.stage_losses(fixed)["loss"].to_list() == pytest.approx(want, abs=1e-12)
    assert want == pytest.approx([3.0, 0.5])
    mapped = raft_polars.stage_losses(fixed, columns={"reward": "rewards"})
    assert mapped["loss"].to_list() == pytest.approx(want, abs=1e-12)
    best = raft_polars.select_best(fixed).collect().sort("stage")
    assert best["cand"].to_list() == [1, 0]


def test_a_column_of_a_type_polars_cannot_hold_is_named(tmp_path: Path) -> None:
    """A decimal wider than Polars' 38 digits: RaftInputError naming the column
    and the file, not Polars' bare InvalidOperationError."""
    import decimal

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({
        "stage": [0], "prompt": [0], "cand": [0],
        "reward": pa.array([decimal.Decimal("1.5")], pa.decimal256(40, 3)),
        "logprobs": [[-1.0]],
    })  # fmt: skip
    path = tmp_path / "log.parquet"
    pq.write_table(table, path)
    for call in (raft_polars.stage_losses, raft_polars.validate):
        with pytest.raises(RaftInputError, match=r"log\.parquet.*column 'reward'"):
            call(str(path))


@pytest.mark.skipif(sys.platform != "linux", reason="names that are not UTF-8: Linux")
def test_a_file_name_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    """A data file whose name holds bytes that are not UTF-8 (Python gives it as
    surrogate escapes; Polars cannot open it): RaftInputError, not a TypeError
    from deep inside Polars, whether the file or its directory is given."""
    import os
    import shutil

    folder = os.fsencode(tmp_path / "logs")
    os.makedirs(folder)
    seed = Path(__file__).resolve().parents[2] / "data" / "seed" / "nested.parquet"
    target = folder + b"/y\xfe.parquet"
    shutil.copy(os.fsencode(seed), target)
    for named in (os.fsdecode(folder), os.fsdecode(target)):
        with pytest.raises(RaftInputError, match="not UTF-8"):
            raft_polars.stage_losses(named)


def test_an_arrow_table_with_two_columns_of_one_name_is_an_input_error() -> None:
    """pyarrow allows two columns named ``reward``; Polars refuses them: a
    RaftInputError naming the table, not Polars' bare DuplicateError."""
    import pyarrow as pa

    table = pa.table([[0], [0], [0], [0.5], [0.9], [[-1.0]]],
                     names=["stage", "prompt", "cand", "reward", "reward", "logprobs"])  # fmt: skip
    for call in (raft_polars.stage_losses, raft_polars.validate):
        with pytest.raises(RaftInputError, match="Arrow table"):
            call(table)


def test_an_arrow_column_polars_cannot_take_is_named() -> None:
    """An Arrow column of a type Polars does not take (``list_view``) is named with
    its type; Polars' message named neither."""
    import pyarrow as pa

    lists = pa.array([[-1.0], [-2.0]], pa.list_view(pa.float64()))
    table = pa.table({"stage": [0, 0], "prompt": [0, 0], "cand": [0, 1], "reward": [0.5, 0.9],
                      "logprobs": lists})  # fmt: skip
    for call in (raft_polars.stage_losses, raft_polars.validate):
        with pytest.raises(RaftInputError, match=r"column 'logprobs' \(list_view<item: double>\)"):
            call(table)


@pytest.mark.parametrize("stage", ["LAST", "0", 1.5, True, [0], float("nan")])
def test_a_stage_option_that_is_not_an_id_is_an_input_error(tmp_path: Path, stage: Any) -> None:
    """``stage=`` takes a stage id or ``"last"``: anything else is a RaftInputError
    saying so (a string raised Polars' InvalidOperationError from deep inside)."""
    frame = pl.DataFrame({"stage": [0, 0], "prompt": [0, 0], "cand": [0, 1],
                          "reward": [0.5, 0.9], "logprobs": [[-1.0], [-3.0]]})  # fmt: skip
    with pytest.raises(RaftInputError, match="stage id"):
        raft_polars.write_selected(frame, tmp_path / "out.jsonl", stage=stage)
    assert list(tmp_path.iterdir()) == []
    np = pytest.importorskip("numpy")
    raft_polars.write_selected(frame, tmp_path / "out.jsonl", stage=np.int64(0))  # numpy's ids
    assert (tmp_path / "out.jsonl").exists()


def test_parts_of_decimal_and_float_rewards_are_refused_by_every_entry(tmp_path: Path) -> None:
    """One part's reward a decimal, the other's a float: Polars' reader cannot read
    them as one column. Every entry point, validate too, says so naming both files
    (validate passed a log the default path refused)."""
    import decimal

    import pyarrow as pa
    import pyarrow.parquet as pq

    for name, reward in (("a", pa.array([decimal.Decimal("0.5")], pa.decimal128(10, 3))),
                         ("b", pa.array([0.7]))):  # fmt: skip
        table = pa.table({"stage": [0], "prompt": [int(name == "b")], "cand": [0],
                          "reward": reward, "logprobs": [[-1.0]]})  # fmt: skip
        pq.write_table(table, tmp_path / f"{name}.parquet")
    for call in (raft_polars.stage_losses, raft_polars.validate):
        with pytest.raises(RaftInputError, match=r"column 'reward'.*b\.parquet.*a\.parquet"):
            call(str(tmp_path))


@pytest.mark.parametrize("case", ["decimal scales", "fixed-size lists"])
def test_parts_whose_types_polars_cannot_read_as_one_are_refused_by_every_entry(
    tmp_path: Path, case: str
) -> None:
    """Two parts whose rewards are decimals of two scales, or whose log-probs are a
    fixed-size list in one and lists in the other: Polars' reader refuses them as
    one column. Every entry point, validate too, says so naming the part (validate
    passed such a log: its reader casts)."""
    import decimal

    import pyarrow as pa
    import pyarrow.parquet as pq

    for i, name in enumerate("ab"):
        reward = pa.array([0.5])
        logprobs = pa.array([[-1.0]])
        if case == "decimal scales":
            reward = pa.array([decimal.Decimal("0.5")], pa.decimal128(10 + 2 * i, 2 + 2 * i))
        elif i == 0:
            logprobs = pa.array([[-1.0]], pa.list_(pa.float64(), 1))
        table = pa.table({"stage": [0], "prompt": [i], "cand": [0], "reward": reward,
                          "logprobs": logprobs})  # fmt: skip
        pq.write_table(table, tmp_path / f"{name}.parquet")
    column = "reward" if case == "decimal scales" else "logprobs"
    for call in (raft_polars.stage_losses, raft_polars.validate, raft_polars.select_best):
        with pytest.raises(RaftInputError, match=rf"cannot be read as one.*a\.parquet.*{column}"):
            call(str(tmp_path))
    # parts of one type each are read, and agree with the plain sum
    for name in "ab":
        pq.write_table(pq.read_table(tmp_path / f"{name}.parquet").cast(
            pa.schema([("stage", pa.int64()), ("prompt", pa.int64()), ("cand", pa.int64()),
                       ("reward", pa.float64()), ("logprobs", pa.list_(pa.float64()))])
        ), tmp_path / f"{name}.parquet")  # fmt: skip
    assert raft_polars.stage_losses(str(tmp_path))["loss"].to_list() == [1.0]
    assert raft_polars.validate(str(tmp_path)).ok


@pytest.mark.skipif(sys.platform == "win32", reason="FIFOs")
def test_a_source_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    """A FIFO with no writer (a pipe left by a script) made every read wait forever."""
    import os

    fifo = tmp_path / "log.jsonl"
    os.mkfifo(fifo)
    for call in (raft_polars.stage_losses, raft_polars.validate):
        with pytest.raises(RaftInputError, match="not a regular file"):
            call(str(fifo))


@pytest.mark.parametrize("address", ["not a url", "foo://x:1"])
def test_a_malformed_scheduler_address_is_an_input_error(address: str) -> None:
    """A scheduler address Dask cannot parse: RaftInputError naming it, not Dask's
    traceback."""
    pytest.importorskip("distributed")
    from raft_polars.dask import DaskEngine

    frame = pl.DataFrame({"stage": [0], "prompt": [0], "cand": [0], "reward": [0.5],
                          "logprobs": [[-1.0]]})  # fmt: skip
    with pytest.raises(RaftInputError, match="cannot connect to the Dask scheduler"):
        raft_polars.stage_losses(frame, engine=DaskEngine(scheduler=address))


@pytest.mark.parametrize("blank", ["", " ", "\t"])
@pytest.mark.parametrize("role", ["source", "rewards"])
def test_an_empty_path_names_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, blank: str, role: str
) -> None:
    """An empty path (an unset ``$LOG``) read the working directory, as "." does,
    and printed its losses; as ``rewards`` it made the log the long layout,
    with an unrelated error. Now an input error on both, from the API and the
    command line."""
    from raft_polars.cli import main

    raft_polars.write_selected(
        pl.DataFrame({"stage": [0], "prompt": [0], "cand": [0], "reward": [0.5],
                      "logprobs": [[-1.0]]}),
        tmp_path / "log.parquet",
    )  # fmt: skip
    monkeypatch.chdir(tmp_path)  # a directory holding a log: "" read it
    kwargs: dict[str, Any] = (
        {"source": blank} if role == "source" else {"source": "log.parquet", "rewards": blank}
    )
    with pytest.raises(RaftInputError, match=rf"{role}: an empty path"):
        raft_polars.stage_losses(**kwargs)
    argv = [blank] if role == "source" else ["log.parquet", "--rewards", blank]
    assert main(["losses", *argv]) == 2


@pytest.mark.parametrize("answer", [b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n", None])
def test_a_port_that_answers_http_is_not_a_scheduler(
    monkeypatch: pytest.MonkeyPatch, answer: bytes | None
) -> None:
    """A scheduler address where an HTTP server listens (a proxy, an ingress):
    one that answers garbage with an error made Dask read "HTTP/1.1" as a
    frame's length and numpy's MemoryError came out (the command line called it
    out of memory); one that waits for a whole request (Python's http.server)
    kept the client waiting past any timeout. A scheduler sends its handshake
    as a connection opens: now an input error naming the address."""
    import socket
    import threading

    pytest.importorskip("distributed")
    import raft_polars.dask
    from raft_polars.dask import DaskEngine

    monkeypatch.setattr(raft_polars.dask, "_PROBE_SECONDS", 1.0)

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:  # closed: the test is done
                return
            with conn:
                if answer is None:  # waits for a request that never comes
                    conn.recv(65536)
                    continue
                conn.sendall(answer)

    threading.Thread(target=serve, daemon=True).start()
    frame = pl.DataFrame({"stage": [0], "prompt": [0], "cand": [0], "reward": [0.5],
                          "logprobs": [[-1.0]]})  # fmt: skip
    try:
        with pytest.raises(RaftInputError, match=rf"127\.0\.0\.1:{port}.*not a Dask scheduler"):
            raft_polars.stage_losses(frame, engine=DaskEngine(scheduler=f"tcp://127.0.0.1:{port}"))
    finally:
        server.close()


def test_a_client_that_fails_to_start_is_gone_before_the_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A malformed address makes no client; a client whose start fails (nothing
    listening) is collected before the error is raised: left to the garbage
    collector, its ``__del__`` once ran inside the next client's start in the same
    thread, which then waited for itself forever (a hung test run)."""
    import weakref

    distributed = pytest.importorskip("distributed")
    import raft_polars.dask
    from raft_polars.dask import connect

    made: list[weakref.ref[object]] = []

    class Failing:
        def __init__(self, address: str) -> None:
            made.append(weakref.ref(self))
            self.me = self  # a cycle, as the half-made client holds: only gc frees it
            raise OSError(f"Timed out trying to connect to {address}")

    monkeypatch.setattr(distributed, "Client", Failing)
    # nothing listens on port 9: the probe says so at once; the client's start fails here
    monkeypatch.setattr(raft_polars.dask, "_unreachable", lambda *args: None)
    for address in ("not a url", "foo://x:1"):
        with pytest.raises(RaftInputError, match="cannot connect to the Dask scheduler"):
            connect(scheduler=address).__enter__()
    assert made == []  # refused before any client was made
    with pytest.raises(RaftInputError, match=r"tcp://127\.0\.0\.1:9.*Timed out"):
        connect(scheduler="tcp://127.0.0.1:9").__enter__()
    assert len(made) == 1
    assert made[0]() is None  # collected already


@pytest.mark.parametrize("rows", [2, 40])
def test_a_wide_row_with_fewer_responses_than_rewards_is_an_error(
    tmp_path: Path, rows: int
) -> None:
    """A truncated wide row (3 rewards, 2 responses), or one whose rewards list is
    null, among sound ones: an error naming the file and the prompt on every path,
    never the column taken as prompt-level (each selected candidate exported with
    its prompt's whole list of responses, validate clean); validate reports the
    prompt's null id (Polars' "exploded columns must have matching element counts"
    named neither)."""
    lines: list[dict[str, Any]] = [
        {"prompt": "q0", "responses": ["d", "e", "f"], "rewards": [0.7, 0.2, 0.6]}
    ]
    lines += [{"prompt": f"q{i}", "responses": ["a", "b"], "rewards": [0.1, 0.9, 0.5]}
              if i == rows // 2 else
              {"prompt": f"q{i}", "responses": ["d", "e", "f"], "rewards": [0.7, 0.2, 0.6]}
              for i in range(1, rows)]  # fmt: skip
    bad = f"q{rows // 2}"
    for broken in ("short", "null"):
        if broken == "null":
            lines[rows // 2]["rewards"] = None
        path = tmp_path / "wide.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in lines))
        with pytest.raises(RaftInputError, match=rf"wide\.jsonl.*null id.*prompt '{bad}'"):
            raft_polars.collect(raft_polars.select_best(str(path)))
        with pytest.raises(RaftInputError, match=rf"wide\.jsonl.*null id.*prompt '{bad}'"):
            raft_polars.stage_losses(str(path), engine=dask_cluster.engine())
        report = raft_polars.validate(str(path))
        null = [p for p in report.problems if p.kind == "null_id"]
        assert [row["prompt"] for row in null[0].locations] == [bad], report.format()


@pytest.mark.parametrize("suffix", [".bz2", ".xz", ".zip", ".tar.gz"])
def test_a_compression_polars_does_not_read_is_named(tmp_path: Path, suffix: str) -> None:
    """A ``.jsonl.bz2`` was read as Parquet ("must end with PAR1"), and a directory
    left it out silently: both now say which compression it is, naming the file."""
    (tmp_path / "a.jsonl").write_text('{"prompt": 0, "reward": 1.0, "logprobs": [-1.0]}\n')
    (tmp_path / f"b.jsonl{suffix}").write_bytes(b"not read")
    for source in (tmp_path / f"b.jsonl{suffix}", tmp_path):
        for call in (raft_polars.stage_losses, raft_polars.validate):
            kind = suffix.removesuffix(".gz")
            with pytest.raises(
                RaftInputError, match=rf"b\.jsonl{re.escape(suffix)}': a \{kind} file"
            ):
                call(str(source))


@pytest.mark.parametrize("suffix", [".gz", ".zst"])
def test_a_parquet_file_compressed_whole_is_named(tmp_path: Path, suffix: str) -> None:
    """A ``log.parquet.gz`` (a Parquet file gzipped whole) failed with Polars' bare
    "must end with PAR1": it is named, alone and as a part of a directory."""
    import gzip

    frame = nested_frame(LPS, RWS)
    frame.write_parquet(tmp_path / "a.parquet")
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    (tmp_path / f"b.parquet{suffix}").write_bytes(gzip.compress(buffer.getvalue()))
    for source in (tmp_path / f"b.parquet{suffix}", tmp_path):
        for call in (raft_polars.stage_losses, raft_polars.validate):
            with pytest.raises(
                RaftInputError, match=rf"b\.parquet{re.escape(suffix)}': a Parquet file compressed"
            ):
                call(str(source))


def test_json_lines_of_blank_lines_hold_no_rows(tmp_path: Path) -> None:
    """A JSON lines part of blank lines (gzip-compressed or not) is a part without
    rows, as an empty one is: read beside the others (it failed with Polars'
    "could not infer data-type"); alone, the log holds no JSON objects."""
    import gzip

    rows = [{"prompt": 0, "cand": c, "reward": r, "logprobs": lp}
            for c, r, lp in ((0, 0.5, [-1.0, -2.0]), (1, 0.9, [-4.0]))]  # fmt: skip
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "b.jsonl").write_text("\n  \n\n")
    (tmp_path / "c.jsonl.gz").write_bytes(gzip.compress(b"\n\n"))
    assert raft_polars.stage_losses(str(tmp_path))["loss"].to_list() == [4.0]
    assert raft_polars.validate(str(tmp_path)).ok
    for name in ("b.jsonl", "c.jsonl.gz"):
        with pytest.raises(RaftInputError, match="hold no JSON objects"):
            raft_polars.stage_losses(str(tmp_path / name))


def test_rows_with_a_reward_and_a_rewards_list_ask_which(tmp_path: Path) -> None:
    """Rows with ``reward`` (a number) and ``rewards`` (a list) were read as one
    candidate a row with ``reward``, silently; now the user says which, and each
    choice gives the plain reference's answer."""
    frame = pl.DataFrame({
        "prompt": [0, 1], "reward": [0.9, 0.8], "rewards": [[0.1, 0.9], [0.8, 0.2]],
        "logprobs": [[[-1.0], [-2.0]], [[-3.0], [-4.0]]],
    })  # fmt: skip
    with pytest.raises(RaftInputError, match=r"'reward'.*'rewards'.*say which"):
        raft_polars.stage_losses(frame)
    # one row per prompt: the best of each list (-2.0 and -3.0)
    wide = raft_polars.stage_losses(frame, columns={"reward": "rewards"})
    assert wide["loss"].to_list() == [2.5]
    # one row per candidate: prompts 0 and 1 each one candidate, its whole list
    long = raft_polars.stage_losses(frame.drop("logprobs").with_columns(
        logprobs=pl.Series([[-1.0, -2.0], [-3.0]])), columns={"reward": "reward"})  # fmt: skip
    assert long["loss"].to_list() == [2.0]
    # candidate rows (a cand column) with a list of reward components: no question
    rows = pl.DataFrame({"stage": [0, 0], "prompt": ["a", "a"], "cand": [0, 1],
                         "reward": [0.7, 0.2], "rewards": [[0.3, 0.4], [0.1, 0.1]],
                         "logprobs": [[-1.0], [-2.0]]})  # fmt: skip
    assert raft_polars.stage_losses(rows)["loss"].to_list() == [1.0]


def test_a_gzip_file_padded_with_zeros_is_explained(tmp_path: Path) -> None:
    """Zero bytes after the gzip data (a block-padded copy), which gzip -d ignores
    and Polars' reader does not: the error says so ("invalid gzip header" alone
    did not); a file of two gzip members is read whole."""
    import gzip

    line = b'{"prompt": 0, "reward": 1.0, "logprobs": [-1.0]}\n'
    padded = tmp_path / "padded.jsonl.gz"
    padded.write_bytes(gzip.compress(line) + bytes(512))
    for call in (raft_polars.stage_losses, raft_polars.validate):
        with pytest.raises(RaftInputError, match=r"padded\.jsonl\.gz.*ends in zero bytes"):
            call(str(padded))
    # a truncated gzip file that happens to end in zeros: not called padding
    truncated = tmp_path / "truncated.jsonl.gz"
    truncated.write_bytes(gzip.compress(line * 1000)[:-100] + bytes(8))
    with pytest.raises(RaftInputError, match="truncated") as caught:
        raft_polars.stage_losses(str(truncated))
    assert "padding" not in str(caught.value)
    members = tmp_path / "members.jsonl.gz"
    members.write_bytes(gzip.compress(line) + gzip.compress(line.replace(b"0,", b"1,", 1)))
    table = raft_polars.stage_losses(str(members))
    assert table.select("prompts", "loss").rows() == [(2, 1.0)]


def test_collect_refuses_a_log_changed_after_select_best(tmp_path: Path) -> None:
    """The lazy batch reads the payload when collected: a log rewritten in between
    gave the old selection with the new rows (cand 1, reward 0.1, as best)."""
    path = tmp_path / "log.parquet"

    def write(rewards: list[float], texts: list[str]) -> None:
        ids = {"stage": [0, 0], "prompt": [0, 0], "cand": [0, 1]}
        rows = {"reward": rewards, "logprobs": [[-1.0], [-2.0]], "response": texts}
        pl.DataFrame({**ids, **rows}).write_parquet(path)  # "BB": another size

    write([0.1, 0.9], ["a", "b"])
    batch = raft_polars.select_best(path)
    assert raft_polars.collect(batch).select("cand", "reward", "response").rows() == [(1, 0.9, "b")]
    write([0.9, 0.1], ["A", "BB"])
    with pytest.raises(RaftInputError, match="changed after select_best read it"):
        raft_polars.collect(batch)
    fresh = raft_polars.collect(raft_polars.select_best(path))
    assert fresh.select("cand", "reward", "response").rows() == [(0, 0.9, "A")]


@pytest.mark.parametrize("kind", ["int8", "int64", "uint32"])
def test_numpy_integers_for_n_are_whole_numbers(tmp_path: Path, kind: str) -> None:
    """``n=`` read from a numpy array (``np.int64(2)``) is the whole number it
    holds, in every function that takes it, as ``stage=`` and ``limit=`` take
    numpy's integers; a float, a bool, a string or 0 are still refused."""
    np = pytest.importorskip("numpy")
    frame = nested_frame(LPS, RWS)
    two = np.dtype(kind).type(2)
    options: dict[str, Any] = {"strategy": "top_n"}
    calls: dict[str, Callable[[Any], object]] = {
        "stage_losses": lambda n: raft_polars.stage_losses(frame, **options, n=n).rows(),
        "select_best": lambda n: raft_polars.select_best(frame, **options, n=n).collect().rows(),
        "stage_stats": lambda n: raft_polars.stage_stats(frame, **options, n=n).rows(),
        "prompt_stats": lambda n: raft_polars.prompt_stats(frame, **options, n=n).rows(),
        "validate": lambda n: raft_polars.validate(frame, **options, n=n).format(),
        "write_selected": lambda n: raft_polars.write_selected(
            frame, tmp_path / f"out-{n!r}.parquet", **options, n=n
        ),
    }
    for name, call in calls.items():
        assert call(two) == call(2), name
        for bad in (2.0, True, "2", 0, np.dtype(kind).type(0)):
            with pytest.raises(RaftInputError, match="n must be a whole number >= 1"):
                call(bad)


@pytest.mark.parametrize("layout", ["nested", "long"])
@pytest.mark.parametrize("engine", ["polars", "dask"])
@settings(max_examples=8, deadline=None)
@given(logs=ragged_logs())
def test_token_and_logprob_columns_of_candidate_rows_are_payload(
    engine: str, layout: str, logs: tuple[list[Any], list[Any]]
) -> None:
    """Candidate rows' own ``token`` (say, the text sampled), ``logprob`` (say,
    the response's summed log-prob) and, beside the long layout's token rows,
    ``logprobs`` are payload, as any other column: kept with the selected rows,
    the answers those of the log without them (the token rows' checks were
    applied to them, and they were dropped)."""
    lps, rws = logs
    plain = nested_frame(lps, rws)
    tokens, rewards = long_frames(lps, rws)
    keys = rewards.select("stage", "prompt", "cand").rows() if layout == "long" else None
    rows = plain.height
    added = {
        "token": pl.Series([f"t{i}" for i in range(rows)]),
        "logprob": pl.Series([-0.5 * i for i in range(rows)], dtype=pl.Float64),
    }
    if layout == "long":
        added["logprobs"] = pl.Series([[float(i)] for i in range(rows)])
    index = {key: i for i, key in enumerate(plain.select("stage", "prompt", "cand").rows())}
    if keys is not None:  # the rewards' rows in their own order
        order = [index[key] for key in keys]
        added = {name: values.gather(order) for name, values in added.items()}
    chosen: Any = dask_cluster.engine() if engine == "dask" else engine

    def source(frame: pl.DataFrame) -> dict[str, Any]:
        if layout == "long":
            return {"source": tokens, "rewards": frame, "engine": chosen}
        return {"source": frame, "engine": chosen}

    base = rewards if layout == "long" else plain
    extra = base.with_columns(**added)
    assert raft_polars.stage_losses(**source(extra)).equals(
        raft_polars.stage_losses(**source(base))
    )
    got = raft_polars.select_best(**source(extra)).collect()
    want = raft_polars.select_best(**source(base)).collect()
    assert got.drop(*added).equals(want)
    at = [index[key] for key in got.select("stage", "prompt", "cand").rows()]
    assert got["token"].to_list() == [f"t{i}" for i in at]
    assert got["logprob"].to_list() == [-0.5 * i for i in at]


def test_token_columns_named_for_candidate_rows_say_so() -> None:
    """A list column of candidate rows (no rewards=) named ``logprob``, or
    mapped as ``logprob`` (the long layout's name), beside no ``logprobs``, is an
    error pointing at ``logprobs``, not a log without log-probs."""
    frame = nested_frame(LPS, RWS).rename({"logprobs": "lp"})
    with pytest.raises(RaftInputError, match=r"list column 'lp'.*columns=\{'logprobs': 'lp'\}"):
        raft_polars.stage_losses(frame, columns={"logprob": "lp"})
    with pytest.raises(RaftInputError, match=r"list column 'logprob'.*columns=\{'logprobs'"):
        raft_polars.stage_losses(frame.rename({"lp": "logprob"}))
    loss = raft_polars.stage_losses(frame, columns={"logprobs": "lp"})["loss"].to_list()
    assert [round(x, 4) for x in loss] == reference_rounded(LPS, RWS)


def test_wide_rows_per_candidate_logprob_is_payload() -> None:
    """In wide rows (one per prompt, every candidate column a list) a ``logprob``
    list is one number per candidate (a dump's summed log-prob): payload, as in
    candidate rows; a list of lists there is the log-probs, and the error says so."""
    wide = pl.DataFrame(
        {
            "stage": [0, 1],
            "prompt": ["a", "b"],
            "responses": [["x", "y"], ["u", "v"]],
            "rewards": [[1.0, 0.0], [0.0, 1.0]],
        }
    )
    got = raft_polars.select_best(
        wide.with_columns(logprob=pl.Series([[-3.0, -2.0], [-1.0, -5.0]])), preset="rlhflow"
    ).collect()
    assert got.select("stage", "cand", "responses", "logprob").rows() == [
        (0, 0, "x", -3.0),
        (1, 1, "v", -5.0),
    ]
    nested = wide.with_columns(logprob=pl.Series([[[-3.0], [-2.0, -1.0]], [[-1.0], [-5.0]]]))
    with pytest.raises(RaftInputError, match=r"list column 'logprob'.*columns=\{'logprobs'"):
        raft_polars.stage_losses(nested, preset="rlhflow")
    losses = raft_polars.stage_losses(nested, columns={"logprobs": "logprob"})
    assert losses["loss"].to_list() == [3.0, 5.0]
    # a list of another length than K: the prompt's own (its tokens' log-probs), payload
    prompt_level = wide.with_columns(logprob=pl.Series([[-0.1, -0.2, -0.3], [-0.4]]))
    got = raft_polars.select_best(prompt_level, preset="rlhflow").collect()
    assert got.select("cand", "logprob").rows() == [(0, [-0.1, -0.2, -0.3]), (1, [-0.4])]
    for numbers in (
        prompt_level,
        wide.with_columns(logprob=pl.Series([[-3.0, -2.0], [-1.0, -5.0]])),
    ):
        with pytest.raises(
            RaftInputError, match=r"'logprobs' must hold a list of numbers for each"
        ):
            raft_polars.stage_losses(numbers, columns={"logprobs": "logprob"})


@pytest.mark.parametrize("engine", ["polars", "dask"])
def test_a_file_named_twice_is_refused(tmp_path: Path, engine: str) -> None:
    """The same file listed twice, a directory and a file in it, overlapping
    globs, a link and its target: read twice, its candidates would be duplicate
    rows or, in a log without candidate ids, silently doubled."""
    logs = tmp_path / "logs"
    logs.mkdir()
    frame = nested_frame(LPS, RWS)
    frame.filter(stage=0).drop("cand").write_parquet(logs / "a.parquet")
    frame.filter(stage=1).drop("cand").write_parquet(logs / "b.parquet")
    (tmp_path / "link.parquet").symlink_to(logs / "a.parquet")
    a = str(logs / "a.parquet")
    on: Any = dask_cluster.engine() if engine == "dask" else engine
    for sources in (
        [a, a],
        [str(logs), a],
        [str(logs / "*.parquet"), str(logs / "a*")],
        [str(tmp_path / "link.parquet"), a],
        [a, str(logs / ".." / "logs" / "a.parquet")],
    ):
        with pytest.raises(RaftInputError, match=r"a.parquet' is named twice \(also as '"):
            raft_polars.stage_losses(sources, engine=on)
    losses = raft_polars.stage_losses([a, str(logs / "b.parquet")], engine=on)
    assert [round(x, 4) for x in losses["loss"].to_list()] == reference_rounded(LPS, RWS)
