"""Nested rows in files of one row group each are read side by side, a piece of
whole files per Polars thread (Polars decodes such files one after another, on
one core): the same answers and the same errors as one read."""

from __future__ import annotations

import tempfile
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import nested_frame, reference_rounded, write_split
from strategies import LogProbs, Rewards, ragged_logs

import raft_polars
from raft_polars import RaftInputError
from raft_polars._engine.read import file_pieces, read_log


def _pieces(directory: Path) -> list[tuple[int, ...]]:
    log = read_log(str(directory))
    return [
        (tuple(range(len(log.cand_source.files))) if p is None else p.files)
        for p in file_pieces(log, None)
    ]


@settings(max_examples=40, deadline=None)
@given(log=ragged_logs(max_stages=4, max_prompts=4), parts=st.integers(2, 5))
def test_files_read_side_by_side_give_the_reference(
    log: tuple[LogProbs, Rewards], parts: int
) -> None:
    lps, rws = log
    frame = nested_frame(lps, rws)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_split(frame, Path(tmp), parts)  # one row group each
        pieces = _pieces(Path(tmp))
        if pl.thread_pool_size() >= 2:  # the files are cut in whole, in order
            assert len(pieces) == min(parts, pl.thread_pool_size())
        assert [i for p in pieces for i in p] == list(range(len(paths)))
        got = raft_polars.stage_losses(tmp)
        assert [round(x, 4) for x in got["loss"].to_list()] == reference_rounded(lps, rws)


def test_files_of_many_row_groups_are_one_read(tmp_path: Path) -> None:
    """Files whose row groups Polars decodes side by side already stay one read."""
    frame = nested_frame([[[[-1.0]] * 4] * 8], [[[0.5] * 4] * 8])
    for part in range(3):
        frame.write_parquet(tmp_path / f"p{part}.parquet", row_group_size=4)
    assert _pieces(tmp_path) == [(0, 1, 2)]


def test_an_error_in_a_later_piece_names_its_file(tmp_path: Path) -> None:
    """A file of the second piece whose lists cannot be read is named, as one
    read names it."""
    lps: LogProbs = [[[[-1.0, -2.0]] * 2] * 4]
    rws: Rewards = [[[0.1, 0.9]] * 4]
    paths = write_split(nested_frame(lps, rws), tmp_path, 4)
    data = paths[3].read_bytes()
    paths[3].write_bytes(data[: len(data) // 2])  # cut short
    if pl.thread_pool_size() >= 2:
        assert len(file_pieces(read_log([str(p) for p in paths[:3]]), None)) >= 2
    with pytest.raises(RaftInputError, match=r"part-3\.parquet"):
        raft_polars.stage_losses(tmp_path)


@settings(max_examples=40, deadline=None)
@given(log=ragged_logs(max_stages=3, max_prompts=4), parts=st.integers(2, 5))
def test_numbered_candidates_are_one_read(log: tuple[LogProbs, Rewards], parts: int) -> None:
    """Files without a ``cand`` column number their candidates in the order of
    the files, then of the rows: the files stay one read, so that no piece
    numbers its own from 0 (a prompt's candidates split over two pieces took
    the loss of other candidates). The rows in order, cut into consecutive
    files: the candidates' numbers are their places in the log."""
    lps, rws = log
    frame = nested_frame(lps, rws).sort("stage", "prompt", "cand").drop("cand")
    with tempfile.TemporaryDirectory() as tmp:
        size = -(-frame.height // parts)
        for part in range(parts):
            frame.slice(part * size, size).write_parquet(Path(tmp) / f"part-{part}.parquet")
        assert _pieces(Path(tmp)) == [tuple(range(parts))]
        got = raft_polars.stage_losses(tmp)
        assert [round(x, 4) for x in got["loss"].to_list()] == reference_rounded(lps, rws)
