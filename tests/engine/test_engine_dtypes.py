"""Column types and file sets users really have: other integer and float widths,
fixed-size arrays, categorical ids, files written by different writers, Spark-style
output directories, extra columns named like the engine's own outputs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
from engine_cases import FRAME_ENTRIES, Case, Entry, check_table, to_long

import raft_polars

# every response holds two tokens, so the log-probs also fit a fixed-size array
UNIFORM = Case(
    [
        [[[-1.0, -2.0], [-3.0, -0.5]], [[-0.25, -4.0], [-1.0, -1.0]]],
        [[[-0.5, -0.5], [-2.0, -2.0], [-0.75, -1.25]]],
    ],
    [[[0.5, 0.25], [0.0, 1.0]], [[3.0, 3.0, -1.0]]],
    stage_ids=[3, 1],
    prompt_ids=[40, 7],
)
INTS = Case(
    [[[[-1, -2], [-3, 0]], [[-4, -4], [-1, -1]]], [[[0, -5], [-2, -2]]]],
    [[[1, 2], [2, 2]], [[0, -1]]],
)

NESTED_VARIANTS: dict[str, tuple[Case, Callable[[pl.DataFrame], pl.DataFrame]]] = {
    "logprobs-array-float64": (
        UNIFORM,
        lambda f: f.with_columns(pl.col("logprobs").cast(pl.Array(pl.Float64, 2))),
    ),
    "logprobs-array-float32": (
        UNIFORM,
        lambda f: f.with_columns(pl.col("logprobs").cast(pl.Array(pl.Float32, 2))),
    ),
    "logprobs-list-int64": (
        INTS,
        lambda f: f.with_columns(pl.col("logprobs").cast(pl.List(pl.Int64))),
    ),
    "logprobs-list-int8": (
        INTS,
        lambda f: f.with_columns(pl.col("logprobs").cast(pl.List(pl.Int8))),
    ),
    "reward-float32": (UNIFORM, lambda f: f.with_columns(pl.col("reward").cast(pl.Float32))),
    "reward-int32": (INTS, lambda f: f.with_columns(pl.col("reward").cast(pl.Int32))),
    "reward-decimal": (UNIFORM, lambda f: f.with_columns(pl.col("reward").cast(pl.Decimal(12, 4)))),
    "ids-narrow-unsigned": (
        UNIFORM,
        lambda f: f.with_columns(
            pl.col("stage").cast(pl.UInt8),
            pl.col("prompt").cast(pl.UInt16),
            pl.col("cand").cast(pl.UInt32),
        ),
    ),
    "ids-int32": (
        UNIFORM,
        lambda f: f.with_columns(pl.col("stage", "prompt", "cand").cast(pl.Int32)),
    ),
    "prompt-categorical": (
        UNIFORM,
        lambda f: f.with_columns(pl.col("prompt").cast(pl.String).cast(pl.Categorical)),
    ),
    "prompt-enum": (
        UNIFORM,
        lambda f: f.with_columns(pl.col("prompt").cast(pl.String).cast(pl.Enum(["7", "40"]))),
    ),
    "extra-struct-and-list-columns": (
        UNIFORM,
        lambda f: f.with_columns(
            pl.struct(score=pl.col("reward"), text=pl.lit("t")).alias("meta"),
            pl.concat_list(pl.lit("a"), pl.lit("b")).alias("tags"),
        ),
    ),
}
VARIANT_ENTRIES = [
    e
    for e in FRAME_ENTRIES
    if e.name
    in (
        "nested-DataFrame",
        "nested-Arrow",
        "nested-file",
        "long-DataFrame",
        "long-glob",
        "long-DataFrame-fallback",
        "dask-nested-file",
        "dask-long-glob",
    )
]


@pytest.mark.parametrize(("case", "change"), NESTED_VARIANTS.values(), ids=NESTED_VARIANTS.keys())
@pytest.mark.parametrize("entry", VARIANT_ENTRIES, ids=str)
def test_column_types(
    entry: Entry, case: Case, change: Callable[[pl.DataFrame], pl.DataFrame], tmp_path: Path
) -> None:
    """Any integer width for ids, any numeric type for rewards and log-probs,
    string-like prompt ids: the same answer as the reference."""
    frame = change(case.nested())
    if entry.layout == "long" and isinstance(frame.schema["logprobs"], pl.Array):
        frame = frame.with_columns(pl.col("logprobs").arr.to_list())
    table = entry.stage_losses(entry.lay_out(tmp_path, frame))
    check_table(table, case, case.expected_losses())
    selected = entry.select_best(entry.lay_out(tmp_path / "select", frame))
    got = {
        (s, str(p), c): n
        for s, p, c, n in selected.select("stage", "prompt", "cand", "tokens").rows()
    }
    assert got == {
        (r["stage"], str(r["prompt"]), r["cand"]): r["tokens"] for r in case.expected_selection()
    }


@pytest.mark.parametrize("layout", ["nested", "long"])
def test_files_from_different_writers(layout: str, tmp_path: Path) -> None:
    """One log split over files whose column types differ in width only (Int32 /
    Int64 ids, Float32 / Float64 values): read as one log."""
    case = UNIFORM
    nested = case.nested()
    first, second = nested.head(3), nested.tail(nested.height - 3)
    narrow = {"stage": pl.Int32, "prompt": pl.Int32, "cand": pl.Int16, "reward": pl.Float32}
    if layout == "nested":
        second = second.with_columns(
            pl.col("logprobs").cast(pl.List(pl.Float32)),
            *(pl.col(c).cast(t) for c, t in narrow.items()),
        )
        first.write_parquet(tmp_path / "a.parquet")
        second.write_parquet(tmp_path / "b.parquet")
        table = raft_polars.stage_losses(str(tmp_path / "*.parquet"))
    else:
        (tmp_path / "t").mkdir()
        (tmp_path / "r").mkdir()
        for name, part, cast in (("a", first, False), ("b", second, True)):
            tokens, rewards = to_long(part)
            if cast:
                tokens = tokens.with_columns(
                    pl.col("logprob").cast(pl.Float32), pl.col("stage").cast(pl.Int32)
                )
                rewards = rewards.with_columns(
                    pl.col("reward").cast(pl.Float32), pl.col("cand").cast(pl.Int16)
                )
            tokens.write_parquet(tmp_path / "t" / f"{name}.parquet")
            rewards.write_parquet(tmp_path / "r" / f"{name}.parquet")
        table = raft_polars.stage_losses(tmp_path / "t", rewards=tmp_path / "r")
    check_table(table, case, case.expected_losses())


def test_spark_style_directory(tmp_path: Path) -> None:
    """A directory as Spark and friends write it: _SUCCESS, .crc files, a Hive
    partition per stage; only the Parquet files are read."""
    case = UNIFORM
    nested = case.nested()
    for (sid,), part in nested.partition_by("stage", as_dict=True).items():
        directory = tmp_path / f"stage={sid}"
        directory.mkdir()
        part.drop("stage").write_parquet(directory / "part-00000.parquet")
        (directory / ".part-00000.parquet.crc").write_bytes(b"\x00crc")
    (tmp_path / "_SUCCESS").write_text("")
    (tmp_path / "README.txt").write_text("not a log")
    check_table(raft_polars.stage_losses(tmp_path), case, case.expected_losses())


@pytest.mark.parametrize("name", ["tokens", "loss", "selected", "status", "nll"])
@pytest.mark.parametrize("layout", ["nested", "long"])
def test_extra_column_named_like_an_output(layout: str, name: str) -> None:
    """An extra candidate column called like one of the engine's own columns
    (``tokens`` is a natural one to log) is carried through or refused with a
    RaftInputError naming it; never a bare Polars error."""
    case = UNIFORM
    frame = case.nested().with_columns(pl.lit(99).alias(name))
    kwargs: dict[str, object] = {}
    source: object = frame
    if layout == "long":
        source, kwargs["rewards"] = to_long(frame)
    refused = None
    try:
        table = raft_polars.stage_losses(source, **kwargs)  # type: ignore[arg-type]
        selected = raft_polars.select_best(source, **kwargs).collect()  # type: ignore[arg-type]
    except raft_polars.RaftInputError as exc:
        refused = str(exc)
    if refused is not None:
        assert name in refused
        return
    check_table(table, case, case.expected_losses())
    want = case.expected_selection()
    assert selected.select("stage", "prompt", "cand", "tokens").rows() == [
        (r["stage"], r["prompt"], r["cand"], r["tokens"]) for r in want
    ]
    if name != "tokens":
        assert selected[name].to_list() == [99] * len(want)


@pytest.mark.parametrize("low", [2**53, -(2**60), 2**62])
def test_integer_rewards_compare_as_float64(low: int) -> None:
    """docs/semantics.md, *Ranking*: integer rewards are compared as float64, so
    two beyond 2**53 that differ in their last bits tie (the smallest id wins),
    as numpy's argmax of the float64 rewards picks."""
    import numpy as np

    rewards = [low, low + 1, low - 3]
    lps = [[-1.0], [-3.0], [-5.0, -6.0]]
    frame = pl.DataFrame({"stage": [0] * 3, "prompt": [0] * 3, "cand": [0, 1, 2],
                          "reward": rewards, "logprobs": lps})  # fmt: skip
    want = lps[int(np.argmax(np.array(rewards, dtype=np.float64)))]
    got = raft_polars.stage_losses(frame)["loss"].to_list()
    assert got == [-sum(want) / len(want)]
    # the list API compares them so too (it refused them as "not numbers")
    assert raft_polars.raft_alignment([[lps]], [[rewards]]) == [round(-sum(want) / len(want), 4)]
    with pytest.raises(raft_polars.RaftInputError, match="not a number"):
        raft_polars.raft_alignment([[lps]], [[[low, "1", 0]]])  # type: ignore[list-item]


@pytest.mark.parametrize("column", ["stage", "prompt", "cand"])
@pytest.mark.parametrize("dtype", [pl.Int128, pl.UInt128])
def test_128_bit_ids(column: str, dtype: pl.DataType) -> None:
    """128-bit integer ids are read as Int64 (numpy has no such integers: best_of_n
    raised Polars' "cannot convert i128 to NumPy"); one beyond Int64 is named."""
    frame = UNIFORM.nested()
    wide = frame.with_columns(pl.col(column).cast(dtype))
    for entry in ("stage_losses", "stage_stats", "prompt_stats", "best_of_n"):
        function = getattr(raft_polars, entry)
        assert function(wide).equals(function(frame)), entry
    assert raft_polars.validate(wide).problems == raft_polars.validate(frame).problems == ()
    beyond = frame.with_columns(pl.col(column).cast(dtype) + 2**64)
    for entry in ("stage_losses", "best_of_n", "validate"):
        with pytest.raises(raft_polars.RaftInputError, match="must fit a 64-bit signed integer"):
            getattr(raft_polars, entry)(beyond)
