"""The logs pipelines write (issue 10): JSON lines as well as Parquet, wide rows
(one per prompt, lists of candidates), logs without candidate or stage ids, logs
without log-probs. The same log in every layout and format gives the reference's
table, on both executors."""

from __future__ import annotations

import gzip
import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, cast

import dask_cluster
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from reference import best_index, long_frames, nested_frame, reference_losses
from strategies import ragged_logs

import raft_polars as rp
from raft_polars import RaftInputError

Log = tuple[list[Any], list[Any]]
LPS = [[[[-1.0, -2.0], [-0.5], [-3.0]], [[-0.25], [-1.0, -1.0]]], [[[-0.2], [-0.1, -0.3]]]]
RWS = [[[0.1, 0.9, 0.9], [0.7, 0.2]], [[1.0, 0.0]]]


def _engine(name: str) -> Any:
    return dask_cluster.engine() if name == "dask" else "polars"


def _write(frame: pl.DataFrame, path: Path, parts: int = 1) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for i in range(parts):
        part = frame.filter(pl.int_range(pl.len()) % parts == i)
        if path.suffix:  # never: path is a directory
            raise AssertionError(path)
        if i % 2 and parts > 1:
            with gzip.open(path / f"part-{i}.jsonl.gz", "wb") as handle:
                part.write_ndjson(cast("IO[bytes]", handle))
        else:
            part.write_ndjson(path / f"part-{i}.jsonl")


def wide_frame(lps: list[Any], rws: list[Any]) -> pl.DataFrame:
    """One row per (stage, prompt): rewards, logprobs and responses as lists."""
    nested = nested_frame(lps, rws).sort("stage", "prompt", "cand")
    return nested.group_by("stage", "prompt", maintain_order=True).agg(
        pl.col("reward").alias("rewards"),
        pl.col("logprobs"),
        pl.format("r{}", pl.col("cand")).alias("responses"),
        pl.lit("prompt text").first().alias("question"),
    )


def _nested_jsonl(log: Log, d: Path) -> dict[str, Any]:
    _write(nested_frame(*log, shuffle=3), d / "n", 3)
    return {"source": str(d / "n")}


def _long_jsonl(log: Log, d: Path) -> dict[str, Any]:
    tokens, rewards = long_frames(*log, shuffle=2)
    _write(tokens, d / "t", 2)
    _write(rewards, d / "r")
    return {"source": str(d / "t"), "rewards": str(d / "r")}


def _wide_parquet(log: Log, d: Path) -> dict[str, Any]:
    wide_frame(*log).write_parquet(d / "wide.parquet")
    return {"source": str(d / "wide.parquet")}


def _wide_jsonl(log: Log, d: Path) -> dict[str, Any]:
    _write(wide_frame(*log), d / "w", 2)
    return {"source": str(d / "w")}


def _no_cand(log: Log, d: Path) -> dict[str, Any]:
    nested_frame(*log).sort("stage", "prompt", "cand").drop("cand").write_parquet(
        d / "nocand.parquet"
    )
    return {"source": str(d / "nocand.parquet")}


def _no_cand_parts(log: Log, d: Path) -> dict[str, Any]:
    # rows in id order, cut over files in blocks: file order keeps the id order
    _write_blocks(nested_frame(*log).sort("stage", "prompt", "cand").drop("cand"), d / "b")
    return {"source": str(d / "b")}


LAYOUTS: dict[str, Callable[[Log, Path], dict[str, Any]]] = {
    "nested-jsonl": _nested_jsonl,
    "long-jsonl": _long_jsonl,
    "wide-parquet": _wide_parquet,
    "wide-jsonl": _wide_jsonl,
    "nested-no-cand": _no_cand,
    "nested-no-cand-jsonl-parts": _no_cand_parts,
}


def _write_blocks(frame: pl.DataFrame, path: Path) -> None:
    path.mkdir(parents=True)
    size = max(1, -(-frame.height // 3))
    for i in range(3):
        frame.slice(i * size, size).write_ndjson(path / f"part-{i}.jsonl")


def check(log: Log, layout: str, engine: str) -> None:
    lps, rws = log
    with tempfile.TemporaryDirectory() as tmp:
        kwargs = LAYOUTS[layout](log, Path(tmp))
        table = rp.stage_losses(**kwargs, engine=_engine(engine))
        picked = rp.select_best(**kwargs, engine=_engine(engine)).collect()
    want = reference_losses(lps, rws)
    got = table["loss"].to_list()
    assert [round(x, 4) for x in got] == [round(x, 4) for x in want]
    assert all(
        math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) for a, b in zip(got, want, strict=True)
    )
    assert table["candidates"].to_list() == [sum(len(p) for p in s) for s in rws]
    expected = sorted((t, i, best_index(r)) for t, s in enumerate(rws) for i, r in enumerate(s))
    assert picked.select("stage", "prompt", "cand").rows() == expected
    if layout.startswith("wide"):
        assert picked["responses"].to_list() == [f"r{j}" for _, _, j in expected]


@pytest.mark.parametrize("engine", ["polars", "dask"])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_hand_made(layout: str, engine: str) -> None:
    check((LPS, RWS), layout, engine)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(log=ragged_logs(max_stages=2, max_prompts=3, max_k=4))
def test_random_logs(layout: str, log: Log) -> None:
    lps, rws = log
    if any(
        sum(len(lp[best_index(r)]) for lp, r in zip(a, b, strict=True)) == 0
        for a, b in zip(lps, rws, strict=True)
    ):
        return  # no selected tokens in a stage: an error, tested elsewhere
    for engine in ("polars", "dask"):
        check(log, layout, engine)


def test_first_written_candidate_wins_ties_without_ids(tmp_path: Path) -> None:
    frame = pl.DataFrame({"prompt": ["q", "q", "q"], "reward": [0.5, 0.9, 0.9],
                          "logprobs": [[-1.0], [-2.0], [-3.0]]})  # fmt: skip
    frame.write_ndjson(tmp_path / "log.jsonl")
    for engine in ("polars", "dask"):
        table = rp.stage_losses(str(tmp_path / "log.jsonl"), engine=_engine(engine))
        assert table.select("stage", "loss").rows() == [(0, 2.0)]  # no stage: stage 0


@pytest.mark.parametrize("engine", ["polars", "dask"])
def test_rewards_only(tmp_path: Path, engine: str) -> None:
    nested = nested_frame(LPS, RWS).drop("logprobs")
    nested.write_parquet(tmp_path / "r.parquet")
    on = _engine(engine)
    table = rp.stage_losses(str(tmp_path / "r.parquet"), engine=on)
    assert table["loss"].to_list() == [None, None]
    assert table["tokens"].to_list() == [None, None]
    assert table["reward_best_mean"].to_list() == pytest.approx([(0.9 + 0.7) / 2, 1.0])
    picked = rp.select_best(str(tmp_path / "r.parquet"), engine=on).collect()
    assert picked.select("stage", "prompt", "cand").rows() == [(0, 0, 1), (0, 1, 0), (1, 0, 0)]
    assert picked["tokens"].null_count() == 3
    assert rp.validate(str(tmp_path / "r.parquet"), engine=on).ok
    stats = rp.stage_stats(str(tmp_path / "r.parquet"), engine=on)
    assert stats["length_mean"].to_list() == [None, None]
    assert stats["win_rate"].to_list() == pytest.approx([(0.75 + 1.0) / 2, 1.0])


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("log.csv", "stage,prompt\n0,0\n", "reads Parquet"),
        ("log.json", '[{"stage": 0}]', "one JSON array, not JSON lines"),
    ],
)
def test_other_kinds_say_what_is_read(tmp_path: Path, name: str, content: str,
                                      fragment: str) -> None:  # fmt: skip
    (tmp_path / name).write_text(content)
    with pytest.raises(RaftInputError, match=fragment):
        rp.stage_losses(str(tmp_path / name))


def test_mixed_kinds_in_one_source(tmp_path: Path) -> None:
    frame = nested_frame(LPS, RWS)
    frame.write_parquet(tmp_path / "a.parquet")
    frame.write_ndjson(tmp_path / "b.jsonl")
    with pytest.raises(RaftInputError, match="mixes Parquet"):
        rp.stage_losses(str(tmp_path))
