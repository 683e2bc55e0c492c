"""The engine-free map and reduce of raft_polars._shards, with no cluster."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from dask_cases import assert_same

import raft_polars as rp
from raft_polars import _shards
from raft_polars._shards import Shard
from raft_polars.errors import RaftInputError
from raft_polars.logs import read_log


def _nested(rows: list[tuple[int, object, int, float, list[float]]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema={"stage": pl.Int64, "prompt": pl.Int64, "cand": pl.Int64,
                                      "reward": pl.Float64, "logprobs": pl.List(pl.Float64)},
                        orient="row")


def _through_shards(frames: list[pl.DataFrame], buckets: int = 3) -> pl.DataFrame:
    """Map every frame, shuffle into buckets, reduce, finish: the task graph by hand."""
    parts = [_shards.candidate_partial(f, responses=True) for f in frames]
    pieces = [_shards.split_buckets(p.prompts, buckets) for p in parts]
    finals = [_shards.finalize(_shards.combine([piece[b] for piece in pieces]), responses=True)
              for b in range(buckets)]
    return _shards.finish([*(f.stages for f in finals), *(p.stages for p in parts)], log=None)


ROWS = [
    (0, 1, 0, 0.5, [-1.0, -2.0]), (0, 1, 1, 0.9, [-0.5]), (0, 1, 2, 0.9, [-3.0, -3.0, -3.0]),
    (0, 2, 0, -1.0, [-0.25]), (0, 2, 5, 2.0, []), (0, 2, 7, 2.0, [-0.75, -0.25]),
    (3, 1, 0, 0.0, [-2.0]), (3, 1, 1, 0.0, [-4.0]),
]


@pytest.mark.parametrize("split", [[8], [1, 7], [3, 3, 2], [1, 1, 1, 1, 1, 1, 1, 1]])
def test_spread_candidates_match_engine(split: list[int]) -> None:
    frame = _nested(ROWS).sample(fraction=1.0, shuffle=True, seed=3)
    frames, start = [], 0
    for size in split:
        frames.append(frame.slice(start, size))
        start += size
    assert_same(rp.stage_losses(_nested(ROWS)), _through_shards(frames))


def test_tie_across_shards_goes_to_smallest_cand() -> None:
    # the shard holding cand 2 comes first; cand 1 in another shard wins the tie
    a = _nested([(0, 1, 2, 0.9, [-3.0]), (0, 1, 0, 0.1, [-9.0])])
    b = _nested([(0, 1, 1, 0.9, [-0.5])])
    parts = [_shards.candidate_partial(x, responses=True) for x in (a, b)]
    final = _shards.finalize(_shards.combine([p.prompts for p in parts]), responses=True)
    assert final.chosen is not None
    assert final.chosen.select("cand", "reward").rows() == [(1, 0.9)]
    summary = _shards.combine([p.prompts for p in parts])
    assert summary["ties"].to_list() == [2]


@pytest.mark.parametrize("cands", [(3, 3), (70, 70), (-1, -1)])
def test_duplicate_across_shards_detected(cands: tuple[int, int]) -> None:
    a = _nested([(0, 1, cands[0], 0.2, [-1.0]), (0, 1, 1, 0.3, [-1.0])])
    b = _nested([(0, 1, cands[1], 0.4, [-1.0])])
    parts = [_shards.candidate_partial(x, responses=True) for x in (a, b)]
    final = _shards.finalize(_shards.combine([p.prompts for p in parts]), responses=True)
    count, rows = final.issues["duplicates"]
    assert count == 1
    assert rows.rows() == [(0, 1)]


def test_wide_candidate_ids_are_not_duplicates() -> None:
    a = _nested([(0, 1, 100, 0.2, [-1.0]), (0, 1, 1, 0.3, [-1.0])])
    b = _nested([(0, 1, 101, 0.4, [-2.0]), (0, 1, -5, 0.4, [-4.0])])
    parts = [_shards.candidate_partial(x, responses=True) for x in (a, b)]
    final = _shards.finalize(_shards.combine([p.prompts for p in parts]), responses=True)
    assert "duplicates" not in final.issues
    assert final.chosen is not None
    assert final.chosen["cand"].to_list() == [-5]


def test_bad_reward_and_null_ids_are_counted() -> None:
    frame = _nested([(0, 1, 0, float("nan"), [-1.0]), (0, 2, 0, float("inf"), [-1.0])])
    part = _shards.candidate_partial(frame, responses=True)
    count, rows = part.issues["bad_rewards"]
    assert count == 2
    assert rows.select("prompt").item() == 1
    nulls = _nested([(0, 1, 0, 0.5, [-1.0])]).with_columns(pl.lit(None, pl.Int64).alias("cand"))
    assert _shards.candidate_partial(nulls, responses=True).issues["null_ids"][0] == 1


def test_min_reward_counts_prompts_below() -> None:
    frame = _nested(ROWS)
    final = _shards.finalize(
        _shards.combine([_shards.candidate_partial(frame, responses=True).prompts]),
        min_reward=0.6, responses=True,
    )
    expected = rp.stage_losses(frame, min_reward=0.6)
    part = _shards.candidate_partial(frame, responses=True)
    assert_same(expected, _shards.finish([final.stages, part.stages], log=None))


def test_token_partial_sums_split_candidates() -> None:
    keys = pl.DataFrame({"stage": [0, 0, 0], "prompt": [1, 1, 2], "cand": [0, 1, 0],
                         "reward": [0.1, 0.9, 0.5]})
    chosen = keys.filter(pl.col("cand") == pl.when(pl.col("prompt") == 1).then(1).otherwise(0))
    masks = _shards.keys_masks(keys, chosen)
    tokens = pl.DataFrame({"stage": [0] * 6, "prompt": [1, 1, 1, 2, 2, 9],
                           "cand": [1, 1, 0, 0, 0, 0],
                           "logprob": [-1.0, -2.0, -50.0, -0.5, -0.5, -1.0]})
    halves = [_shards.token_partial(tokens.slice(0, 2), masks),
              _shards.token_partial(tokens.slice(2, 4), masks)]
    total = pl.concat([h.stages for h in halves]).select(pl.col("nll", "tokens").sum()).row(0)
    assert total == (4.0, 4)
    assert halves[1].issues["orphans"][0] == 1
    first = _shards.first_bad_tokens(tokens.slice(2, 4), masks, halves[1].issues)
    assert first["orphans"][1].rows() == [(0, 9, 0)]


def test_masks_use_narrow_types() -> None:
    keys = pl.DataFrame({"stage": [0, 0], "prompt": [1, 1], "cand": [0, 7], "reward": [0.0, 1.0]})
    masks = _shards.keys_masks(keys, keys.tail(1))
    assert masks.schema["exists"] == pl.UInt8
    assert masks.schema["stage"] == pl.Int32
    assert masks.row(0, named=True) == {"stage": 0, "prompt": 1, "exists": 129, "chosen": 128}


def test_mark_isolated() -> None:
    shards = [Shard(0, "a", lo=(0, 0), hi=(0, 9)), Shard(1, "b", lo=(1, 0), hi=(1, 9)),
              Shard(2, "c", lo=(1, 9), hi=(2, 0)), Shard(3, "d", lo=(3, "a"), hi=(3, "a"))]
    flags = [s.isolated for s in _shards.mark_isolated(shards[:3])]
    assert flags == [True, False, False]
    unknown = [*shards[:2], Shard(4, "e")]
    assert not any(s.isolated for s in _shards.mark_isolated(unknown))


def test_plan_splits_row_groups_and_reads_bounds(tmp_path: Path) -> None:
    frame = _nested(ROWS)
    path = tmp_path / "log.parquet"
    pq.write_table(frame.to_arrow(), path, row_group_size=2)
    log = read_log(str(path))
    spec = _shards.ReadSpec("nested", (), tuple(frame.schema.items()), pl.Int64(), (), "x")
    shards = _shards.plan_files([(path, None)], spec, shard_bytes=1)
    assert [s.row_groups for s in shards] == [(0,), (1,), (2,), (3,)]
    assert [(s.lo, s.hi) for s in shards] == [((0, 1), (0, 1)), ((0, 1), (0, 2)),
                                             ((0, 2), (0, 2)), ((3, 1), (3, 1))]
    frames = [_shards.read_shard(s, spec) for s in shards]
    assert_same(rp.stage_losses(frame), _through_shards(frames))
    assert log.layout == "nested"


def test_hive_partition_values_become_columns(tmp_path: Path) -> None:
    frame = _nested(ROWS)
    for stage in (0, 3):
        folder = tmp_path / f"stage={stage}"
        folder.mkdir()
        frame.filter(pl.col("stage") == stage).drop("stage").write_parquet(folder / "p.parquet")
    log = read_log(str(tmp_path))
    schema = log.candidates.collect_schema()
    spec = _shards.ReadSpec("nested", (), tuple(schema.items()), pl.Int64(), (), "x")
    shards = _shards.plan_files(_shards.resolve_files(str(tmp_path)), spec)
    assert [s.partitions for s in shards] == [(("stage", "0"),), (("stage", "3"),)]
    assert [s.lo[0] for s in shards if s.lo] == [0, 3]
    frames = [_shards.read_shard(s, spec) for s in shards]
    assert_same(rp.stage_losses(frame), _through_shards(frames))


def test_unreadable_file_named_at_plan(tmp_path: Path) -> None:
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 not really")
    spec = _shards.ReadSpec("nested", (), (), pl.Int64(), (), "x")
    with pytest.raises(RaftInputError, match=r"cannot read Parquet file .*bad\.parquet"):
        _shards.plan_files([(bad, None)], spec)


def test_shrink_and_widen_round_trip() -> None:
    frame = pl.DataFrame({"stage": [0, 3], "prompt": [5, 1 << 40], "cand": [0, 7],
                          "tokens": [0, 300], "candidates": pl.Series([1, 2], dtype=pl.UInt32)})
    small = _shards.shrink(frame)
    assert small.schema["stage"] == pl.Int8
    assert small.schema["prompt"] == pl.Int64
    assert small.schema["tokens"] == pl.Int16
    assert small.schema["candidates"] == pl.UInt8
    back = _shards.widen(small)
    assert back.select("stage", "prompt", "cand", "tokens").equals(
        frame.select("stage", "prompt", "cand", "tokens"))


def test_dense_and_joined_status_agree() -> None:
    keys = pl.DataFrame({"stage": [0, 0, 0, 2], "prompt": [1, 1, 3, 1], "cand": [0, 5, 2, 1],
                         "reward": [0.0, 1.0, 0.5, 0.5]})
    masks = _shards.keys_masks(keys, keys.filter(pl.col("cand") != 0))
    tokens = pl.DataFrame({"stage": [0, 0, 0, 0, 2, 2, None, 1],
                           "prompt": [1, 1, 3, 3, 1, 1, 1, 1],
                           "cand": [0, 5, 2, 9, 1, 0, 1, 1],
                           "logprob": [-1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0, -8.0]})
    dense = _shards._status(tokens.lazy(), masks).collect()
    assert dense["status"].to_list() == [1, 2, 2, 0, 2, 0, 0, 0]
    as_strings = masks.with_columns(pl.col("prompt").cast(pl.String))
    joined = _shards._status(
        tokens.with_columns(pl.col("prompt").cast(pl.String)).with_row_index("row").lazy(),
        as_strings,
    ).collect().sort("row")  # the join path does not keep the row order
    assert joined["status"].to_list() == dense["status"].to_list()
