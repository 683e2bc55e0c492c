"""Presets for the dumps of common pipelines, and columns moved aside when another
is mapped onto their name (issue 10 item 5), on both executors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask_cluster
import polars as pl
import pytest

import raft_polars as rp
from raft_polars import RaftInputError

ENGINES = ["polars", "dask"]


def _engine(name: str) -> Any:
    return dask_cluster.engine() if name == "dask" else "polars"


def _picks(frame: pl.LazyFrame, *columns: str) -> list[tuple[Any, ...]]:
    return frame.collect().select(*columns).rows()


@pytest.mark.parametrize("engine", ENGINES)
def test_verl(tmp_path: Path, engine: str) -> None:
    for step in (0, 1):
        pl.DataFrame({
            "input": ["q1", "q1", "q2", "q2"], "output": [f"a{step}", "b", "c", f"d{step}"],
            "score": [0.2, 0.1, 0.0, 0.5 + step], "step": [step] * 4,
        }).write_ndjson(tmp_path / f"{step}.jsonl")  # fmt: skip
    on = _engine(engine)
    table = rp.stage_losses(str(tmp_path), preset="verl", engine=on)
    assert table.select("stage", "prompts", "candidates").rows() == [(0, 2, 4), (1, 2, 4)]
    assert table["loss"].to_list() == [None, None]  # no log-probs in a verl dump
    picked = rp.select_best(str(tmp_path), preset="verl", engine=on)
    assert _picks(picked, "stage", "prompt", "cand", "output") == [
        (0, "q1", 0, "a0"), (0, "q2", 1, "d0"), (1, "q1", 0, "a1"), (1, "q2", 1, "d1"),
    ]  # fmt: skip


@pytest.mark.parametrize("engine", ENGINES)
def test_trl_sums_its_reward_columns(tmp_path: Path, engine: str) -> None:
    path = tmp_path / "completions_00003.parquet"
    pl.DataFrame({
        "step": [3, 3, 3], "prompt": ["p", "p", "p"], "completion": ["x", "y", "z"],
        "accuracy_reward": [0.0, 1.0, 0.0], "format_reward": [0.9, 0.5, 0.2],
        "advantage": [9.0, -9.0, 0.0],
    }).write_parquet(path)  # fmt: skip
    picked = rp.select_best(str(path), preset="trl", engine=_engine(engine))
    assert _picks(picked, "stage", "cand", "reward", "completion") == [(3, 1, 1.5, "y")]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("source", ["file", "frame"])
def test_trl_sums_as_nansum(tmp_path: Path, engine: str, source: str) -> None:
    """A reward function that does not apply to a prompt returns None, which TRL
    logs as NaN (or null) and sums with ``nansum``: the reward is the sum of the
    others (a NaN made it NaN, a bad-reward error), 0 when none applies. The
    reference is numpy's nansum over the columns."""
    import numpy as np

    nan = float("nan")
    rewards = {"accuracy_reward": [nan, 1.0, None, nan], "format_reward": [0.9, 0.5, None, 2.0]}
    frame = pl.DataFrame({"step": [0] * 4, "prompt": ["p", "p", "p", "p"],
                          "completion": ["w", "x", "y", "z"], **rewards})  # fmt: skip
    expected = np.nansum(
        np.array([[nan if v is None else v for v in col] for col in rewards.values()]), axis=0
    )
    best = int(np.argmax(expected))
    path = tmp_path / "completions_00000.parquet"
    frame.write_parquet(path)
    log = str(path) if source == "file" else frame
    picked = rp.select_best(log, preset="trl", engine=_engine(engine))
    assert _picks(picked, "cand", "reward") == [(best, expected[best])]
    stats = rp.stage_losses(log, preset="trl", engine=_engine(engine))
    assert stats["reward_mean"].to_list() == [pytest.approx(expected.mean())]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    ("extra", "columns"),
    [
        ({"cand": [0, 1, 0, 1]}, {}),
        ({"sample_idx": [0, 1, 0, 1]}, {"cand": "sample_idx"}),
        ({"prompt_idx": [0, 0, 7, 7]}, {"prompt": "prompt_idx"}),
        ({"stage": [5, 5, 5, 5]}, {}),  # moved aside by stage=step
        ({"lp": [[-1.0], [-2.0], [-0.5], [-0.5]]}, {"logprobs": "lp"}),
        ({"cand": [0, 1, 0, 1], "sample_idx": [1, 0, 1, 0]}, {"cand": "sample_idx"}),
    ],
    ids=["cand", "mapped-cand", "mapped-prompt", "stage", "mapped-logprobs", "cand-aside"],
)
def test_trl_sums_no_id_column(
    engine: str, extra: dict[str, list[Any]], columns: dict[str, str]
) -> None:
    """The ids and log-probs a call reads (a log's own ``cand`` or ``stage``, or
    a column ``columns=`` maps) are no reward function: the reward is the sum of
    the reward columns alone, here ``accuracy_reward`` (the id was added to it,
    so that another candidate was selected)."""
    accuracy = [1.0, 0.5, 0.25, 1.0]
    frame = pl.DataFrame(
        {"step": [0] * 4, "prompt": ["a", "a", "b", "b"], "completion": ["4", "5", "6", "9"],
         "accuracy_reward": accuracy, "advantage": [0.1, -0.1, 0.2, -0.2], **extra}
    )  # fmt: skip
    picked = rp.select_best(frame, preset="trl", columns=columns, engine=_engine(engine))
    got = picked.collect().sort("prompt")
    assert got["reward"].to_list() == [1.0, 1.0]
    assert got["completion"].to_list() == ["4", "9"]
    table = rp.stage_losses(frame, preset="trl", columns=columns, engine=_engine(engine))
    assert table["reward_mean"].to_list() == [pytest.approx(sum(accuracy) / 4)]


def test_trl_without_reward_columns(tmp_path: Path) -> None:
    path = tmp_path / "c.parquet"
    pl.DataFrame({"step": [0], "prompt": ["p"], "completion": ["x"]}).write_parquet(path)
    with pytest.raises(RaftInputError, match="no reward columns"):
        rp.stage_losses(str(path), preset="trl")


@pytest.mark.parametrize("engine", ENGINES)
def test_openrlhf_and_rlhflow(tmp_path: Path, engine: str) -> None:
    on = _engine(engine)
    pl.DataFrame({"input": ["q", "q"], "output": ["a", "b"], "reward": [0.0, 1.0]}).write_ndjson(
        tmp_path / "o.jsonl"
    )
    picked = rp.select_best(str(tmp_path / "o.jsonl"), preset="openrlhf", engine=on)
    assert _picks(picked, "prompt", "cand", "output") == [("q", 1, "b")]
    pl.DataFrame({"prompt": ["q"], "responses": [["a", "b", "c"]], "rewards": [[0.1, 0.7, 0.7]]}
                 ).write_ndjson(tmp_path / "w.jsonl")  # fmt: skip
    picked = rp.select_best(str(tmp_path / "w.jsonl"), preset="rlhflow", engine=on)
    assert _picks(picked, "prompt", "cand", "responses") == [("q", 1, "b")]


@pytest.mark.parametrize("engine", ENGINES)
def test_mapped_column_moves_the_old_one_aside(tmp_path: Path, engine: str) -> None:
    """``prompt`` holds the text and ``prompt_id`` the id: mapping prompt=prompt_id
    keeps the text as ``prompt_text`` (once an error)."""
    pl.DataFrame({
        "stage": [0, 0], "prompt": ["the text", "the text"], "prompt_id": [7, 7],
        "cand": [0, 1], "reward": [0.1, 0.9], "logprobs": [[-1.0], [-2.0, -4.0]],
        "cand_original": [1, 2],
    }).write_parquet(tmp_path / "log.parquet")  # fmt: skip
    on = _engine(engine)
    kwargs: dict[str, Any] = {"columns": {"prompt": "prompt_id", "cand": "cand_original"},
                              "engine": on}  # fmt: skip
    table = rp.stage_losses(str(tmp_path / "log.parquet"), **kwargs)
    assert table.select("loss", "tokens").rows() == [(3.0, 2)]
    picked = rp.select_best(str(tmp_path / "log.parquet"), **kwargs).collect()
    assert picked.select("prompt", "cand", "prompt_text", "cand_original_").rows() == [
        (7, 2, "the text", 1)
    ]


def test_unknown_preset() -> None:
    frame = pl.DataFrame({"prompt": ["q"], "reward": [1.0]})
    with pytest.raises(RaftInputError, match="preset must be one of"):
        rp.stage_losses(frame, preset="nemo")  # type: ignore[arg-type]


@pytest.mark.parametrize("engine", ENGINES)
def test_presets_read_the_rewards_table_of_the_long_layout(tmp_path: Path, engine: str) -> None:
    """With token rows and a rewards table, a preset's names are taken in the
    table that has them, and TRL's reward functions are summed in the rewards
    table, whatever numeric payload the token rows carry."""
    from reference import long_frames, reference_rounded

    lps = [[[[-1.0], [-2.0, -2.0]], [[-0.5], [-4.0], [-3.0]]], [[[-0.25], [-1.0]]]]
    rws = [[[0.1, 0.5], [0.3, 0.2, 0.9]], [[2.0, 1.0]]]
    tokens, rewards = long_frames(lps, rws)
    tokens = tokens.with_columns(token_id=pl.lit(7)).rename({"stage": "step"})
    want = reference_rounded(lps, rws)
    on = _engine(engine)

    def losses(table: pl.DataFrame, preset: Any) -> list[float]:
        path = tmp_path / "r.parquet"
        table.write_parquet(path)
        got = rp.stage_losses(tokens, rewards=str(path), preset=preset, engine=on)
        return [round(x, 4) for x in got["loss"].to_list()]

    steps = rewards.rename({"stage": "step"})
    assert losses(steps, "trl") == want  # a reward column: no sum
    # one column per reward function, summed: fmt the reward, acc 0.25 each
    functions = steps.rename({"reward": "fmt"}).with_columns(acc=pl.lit(0.25))
    assert losses(functions, "trl") == want
    picked = rp.select_best(tokens, rewards=functions, preset="trl", engine=on).collect()
    assert picked["reward"].to_list() == [0.75, 1.15, 2.25]
    assert losses(rewards.rename({"reward": "score"}), "verl") == want
    with pytest.raises(RaftInputError, match="preset 'trl' found no reward columns in"):
        losses(steps.select("step", "prompt", "cand", fmt=pl.lit("x")), "trl")
