"""engine="dask" against the default engine and the plain reference, on the
shared local cluster of ``tests/dask_cluster.py`` (a scheduler and 2 worker
processes, loopback only)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("distributed")

import dask_cluster
from dask_cases import assert_same, layout_files, ragged_logs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import long_frames, nested_frame, reference_rounded, write_split

import raft_polars as rp
import raft_polars._executors.dask
import raft_polars.dask as rd
from raft_polars import Selection
from raft_polars.errors import RaftInputError


@pytest.fixture(scope="module")
def client() -> Any:
    """The shared local cluster's client."""
    return dask_cluster.client()


def _on(client: Any) -> rd.DaskEngine:
    return rd.DaskEngine(client)


# cluster calls take a fraction of a second: keep the example counts small
FEW = settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

SELECTIONS = [
    Selection(),
    Selection(strategy="top_n", n=2),
    Selection(strategy="global", fraction=0.5),
    Selection(min_reward=0.2),
]


def _options(selection: Selection) -> dict[str, Any]:
    return {
        "strategy": selection.strategy,
        "n": selection.n,
        "fraction": selection.fraction,
        "min_reward": selection.min_reward,
    }


def _outcome(call: Callable[[], pl.DataFrame]) -> pl.DataFrame | str:
    try:
        return call()
    except RaftInputError as exc:
        return f"RaftInputError: {exc}"


def _agree(
    client: Any,
    kwargs: dict[str, Any],
    selection: Selection | None = None,
    reduction: str = "token",
) -> pl.DataFrame | str:
    selection = selection or Selection()
    expected = _outcome(
        lambda: rp.stage_losses(
            **kwargs,
            reduction=reduction,  # type: ignore[arg-type]
            **_options(selection),
        )
    )
    got = _outcome(
        lambda: rp.stage_losses(
            **kwargs,
            reduction=reduction,  # type: ignore[arg-type]
            **_options(selection),
            engine=_on(client),
        )
    )
    if isinstance(expected, str):
        assert got == expected
    else:
        assert isinstance(got, pl.DataFrame), got
        assert_same(expected, got)
    return got


# --- same answers ------------------------------------------------------------------------


@FEW
@given(
    log=ragged_logs(),
    parts=st.integers(1, 4),
    shuffle=st.integers(0, 9),
    strings=st.booleans(),
    layout=st.sampled_from(["nested", "long"]),
    selection=st.sampled_from(SELECTIONS),
)
def test_property_files(  # noqa: PLR0917 - one argument per strategy
    client: Any,
    log: Any,
    parts: int,
    shuffle: int,
    strings: bool,
    layout: str,
    selection: Selection,
) -> None:
    lps, rws = log
    prompts = max(len(stage) for stage in rws)
    ids = [f"p{i:02d}" for i in range(prompts)] if strings else None
    with tempfile.TemporaryDirectory() as tmp:
        kwargs = layout_files(
            lps,
            rws,
            Path(tmp),
            layout=layout,
            parts=parts,
            reward_parts=max(1, parts - 1),
            shuffle=shuffle,
            prompt_ids=ids,
        )
        got = _agree(client, kwargs, selection)
        if isinstance(got, pl.DataFrame) and selection == Selection():
            losses = [round(x, 4) for x in got["loss"].to_list()]
            assert losses == reference_rounded(lps, rws)
        expected = rp.select_best(**kwargs, **_options(selection)).collect()
        assert_same(
            expected, rp.select_best(**kwargs, **_options(selection), engine=_on(client)).collect()
        )


@FEW
@given(log=ragged_logs(max_stages=2), layout=st.sampled_from(["nested", "long"]))
def test_property_sequence_reduction(client: Any, log: Any, layout: str) -> None:
    lps, rws = log
    with tempfile.TemporaryDirectory() as tmp:
        kwargs = layout_files(lps, rws, Path(tmp), layout=layout, parts=3, shuffle=1)
        _agree(client, kwargs, reduction="sequence")


LPS = [
    [[[-2.0, -1.8], [-1.5, -1.6], [-0.25]], [[-1.0], [-3.0, -1.0], [-0.5]]],
    [[[-0.6, -0.5], [-0.7, -0.8]], [[-2.0], [-1.0, -1.0]]],
]
RWS = [[[0.2, 0.4, 0.4], [1.0, 1.0, -1.0]], [[0.75, 0.7], [0.3, 0.3]]]


@pytest.mark.parametrize("layout", ["nested", "long"])
@pytest.mark.parametrize("selection", SELECTIONS, ids=lambda s: s.strategy + str(s.min_reward))
def test_spread_shuffled_string_ids(
    client: Any, tmp_path: Path, layout: str, selection: Selection
) -> None:
    # candidates of every prompt dealt over 5 files, rows shuffled, string prompt ids
    kwargs = layout_files(
        LPS,
        RWS,
        tmp_path,
        layout=layout,
        parts=5,
        reward_parts=3,
        shuffle=7,
        prompt_ids=["b", "a"],
        stage_ids=[10, 4],
    )
    got = _agree(client, kwargs, selection)
    assert isinstance(got, pl.DataFrame)
    assert got["stage"].to_list() == [4, 10]


@pytest.mark.parametrize("layout", ["nested", "long"])
def test_in_memory_frames(client: Any, layout: str) -> None:
    if layout == "nested":
        kwargs: dict[str, Any] = {"source": nested_frame(LPS, RWS, shuffle=2)}
    else:
        tokens, rewards = long_frames(LPS, RWS, shuffle=2)
        kwargs = {"source": tokens.to_arrow(), "rewards": rewards.lazy()}
    _agree(client, kwargs)
    assert_same(
        rp.select_best(**kwargs).collect(), rp.select_best(**kwargs, engine=_on(client)).collect()
    )


def test_row_group_shards_of_one_big_file(
    client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frame = nested_frame(LPS, RWS, shuffle=4)
    path = tmp_path / "big.parquet"
    pq.write_table(frame.to_arrow(), path, row_group_size=3)
    monkeypatch.setattr(raft_polars._executors.dask, "SHARD_BYTES", 1)
    log = rp.read_log(str(path))
    shards = raft_polars._executors.dask.plan(log.main, ["stage", "prompt"])
    assert len(shards) == pq.ParquetFile(path).metadata.num_row_groups > 1
    _agree(client, {"source": str(path)})


def test_synthetic_files_are_isolated_shards(client: Any, tmp_path: Path) -> None:
    from raft_polars.synth import generate

    generate(
        tmp_path / "n",
        layout="nested",
        stages=3,
        prompts=40,
        k=3,
        seed=5,
        chunk_prompts=16,
        payload=True,
    )
    generate(tmp_path / "l", layout="long", stages=2, prompts=40, k=3, seed=6, chunk_prompts=16)
    log = rp.read_log(str(tmp_path / "n"))
    shards = raft_polars._executors.dask.plan(log.main, ["stage", "prompt"])
    assert len(shards) > 1
    assert all(s.isolated for s in shards)  # ranked where they are read: no shuffle
    _agree(client, {"source": str(tmp_path / "n")})
    _agree(
        client,
        {"source": str(tmp_path / "l" / "tokens"), "rewards": str(tmp_path / "l" / "rewards")},
    )
    assert_same(
        rp.select_best(str(tmp_path / "n")).collect(),
        rp.select_best(str(tmp_path / "n"), engine=_on(client)).collect(),
    )


@pytest.mark.parametrize("suffix", ["parquet", "jsonl"])
@pytest.mark.parametrize("interleaved", [False, True])
def test_many_small_files_are_a_few_shards(
    client: Any, tmp_path: Path, suffix: str, interleaved: bool
) -> None:
    """A log of many small files (a prompt's candidates a file) is planned as a
    few shards, each a run of consecutive files, every file once and in order
    (a shard a file made a task per file, each with a copy of the log: minutes
    and gigabytes at 5,000 files); the answers are in-process's and the
    reference's, with the stages in file order or dealt over the files (no
    shard isolated: the shuffle)."""
    frame = nested_frame(LPS, RWS, shuffle=2)
    groups = frame.partition_by("stage", "prompt", maintain_order=True)
    copies = [g.with_columns(pl.col("prompt") + 10 * n) for n in range(20) for g in groups]
    # in stage order (a shard may end one stage and begin the next), or dealt
    # stage 0, stage 1, stage 0, ...: every shard's bounds overlap
    first = ("prompt", "stage") if interleaved else ("stage", "prompt")
    copies.sort(key=lambda g: (g[first[0]][0], g[first[1]][0]))
    root = tmp_path / "many"
    root.mkdir()
    for i, part in enumerate(copies):
        path = root / f"part-{i:04d}.{suffix}"
        part.write_parquet(path) if suffix == "parquet" else part.write_ndjson(path)
    log = rp.read_log(str(root))
    shards = raft_polars._executors.dask.plan(log.main, ["stage", "prompt"], parts=4)
    assert 1 < len(shards) <= 16 < len(copies)
    assert [i for s in shards for i in s.piece.files] == list(range(len(copies)))
    job = raft_polars._executors.dask._Job
    ranked = job.partitions
    retries: list[bool] = []

    def counted(self: Any, *args: Any, retry: bool = True, **kwargs: Any) -> Any:
        retries.append(not retry)
        return ranked(self, *args, retry=retry, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(job, "partitions", counted)
        got = _agree(client, {"source": str(root)})
    # the joined shards' bounds hold what they read: ranked once, not again
    assert retries == [False]
    assert isinstance(got, pl.DataFrame)
    assert got["candidates"].sum() == sum(c.height for c in copies)
    want = rp.validate(str(root)).to_dict()
    assert rp.validate(str(root), engine=_on(client)).to_dict() == want
    assert want["ok"]
    if suffix == "parquet":  # a file's finding is its own, among the many in a task
        bad = root / "part-0077.parquet"
        chunk = pq.ParquetFile(bad).metadata.row_group(0).column(4)  # the log-probs
        at = chunk.dictionary_page_offset or chunk.data_page_offset
        data = bytearray(bad.read_bytes())
        data[at : at + 4] = b"\xff\xff\xff\xff"  # its first page header
        bad.write_bytes(bytes(data))
        want = rp.validate(str(root)).to_dict()
        assert rp.validate(str(root), engine=_on(client)).to_dict() == want
        assert str(bad) in str(want["problems"])


@pytest.mark.parametrize("layout", ["nested", "long"])
def test_candidate_ids_outside_the_bit_mask(client: Any, tmp_path: Path, layout: str) -> None:
    # ids beyond 63 and below 0 take the list path of the masks (and the join path
    # of the token status); prompts spread over files
    def renumber(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.with_columns((pl.col("cand") * 70 - 1).alias("cand"))

    tokens, rewards = long_frames(LPS, RWS, shuffle=1)
    nested = nested_frame(LPS, RWS, shuffle=1)
    if layout == "nested":
        write_split(renumber(nested), tmp_path / "n", 3)
        kwargs: dict[str, Any] = {"source": str(tmp_path / "n")}
    else:
        write_split(renumber(tokens), tmp_path / "t", 3)
        write_split(renumber(rewards), tmp_path / "r", 2)
        kwargs = {"source": str(tmp_path / "t"), "rewards": str(tmp_path / "r")}
    for selection in (Selection(), Selection(strategy="top_n", n=2)):
        _agree(client, kwargs, selection)
    assert_same(
        rp.select_best(**kwargs).collect(), rp.select_best(**kwargs, engine=_on(client)).collect()
    )


def test_columns_mapping_and_hive(client: Any, tmp_path: Path) -> None:
    frame = nested_frame(LPS, RWS, shuffle=3).rename({"prompt": "pid", "logprobs": "lp"})
    for stage in (0, 1):
        folder = tmp_path / f"stage={stage}"
        folder.mkdir()
        write_split(frame.filter(pl.col("stage") == stage).drop("stage"), folder, 2)
    _agree(client, {"source": str(tmp_path), "columns": {"prompt": "pid", "logprobs": "lp"}})


def test_cluster_on_loopback_and_joined_by_address(client: Any) -> None:
    info = client.scheduler_info()
    addresses = [info["address"], *info["workers"]]
    assert len(info["workers"]) == 2
    assert all(address.startswith("tcp://127.0.0.1:") for address in addresses)
    assert all(w["nthreads"] == 1 for w in info["workers"].values())
    with rd.connect(scheduler=info["address"]) as joined:
        assert_same(
            rp.stage_losses(nested_frame(LPS, RWS)),
            rp.stage_losses(nested_frame(LPS, RWS), engine=rd.DaskEngine(joined)),
        )
    assert_same(
        rp.stage_losses(nested_frame(LPS, RWS)),
        rp.stage_losses(nested_frame(LPS, RWS), engine=rd.DaskEngine(scheduler=info["address"])),
    )


def test_current_client_is_used(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """engine="dask" runs on the client a ``with`` block made current, and starts
    no cluster of its own."""
    from distributed import Client, default_client

    def no_new_cluster(*args: object, **kwargs: object) -> None:
        raise AssertionError("a local cluster was started")

    monkeypatch.setattr(rd, "connect", no_new_cluster)
    # distributed's Client and default_client are not annotated
    with (
        Client(client.scheduler.address, set_as_default=False) as other,  # type: ignore[no-untyped-call]
        other.as_current(),
    ):
        assert default_client() is other  # type: ignore[no-untyped-call]
        got = rp.stage_losses(nested_frame(LPS, RWS), engine="dask")
    assert_same(rp.stage_losses(nested_frame(LPS, RWS)), got)


@pytest.mark.parametrize("engine", ["polars", "dask"])
def test_spark_style_directory(client: Any, tmp_path: Path, engine: str) -> None:
    """Hidden files, _temporary/ and _SUCCESS are skipped and .pq counts, on every
    executor (the Dask plan once read .hidden/ and _temporary/ and dropped .pq)."""
    frame = nested_frame(LPS, RWS)
    root = tmp_path / "out"
    (root / "_temporary" / "0").mkdir(parents=True)
    (root / ".hidden").mkdir()
    frame.filter(pl.col("stage") == 0).write_parquet(root / "a.parquet")
    frame.filter(pl.col("stage") == 1).write_parquet(root / "b.pq")
    frame.write_parquet(root / "_temporary" / "0" / "c.parquet")
    frame.write_parquet(root / ".hidden" / "e.parquet")
    (root / "_SUCCESS").write_bytes(b"")
    on: rd.DaskEngine | Literal["polars"] = _on(client) if engine == "dask" else "polars"
    got = rp.stage_losses(str(root), engine=on)
    assert [round(x, 4) for x in got["loss"].to_list()] == reference_rounded(LPS, RWS)
    assert got["candidates"].to_list() == [6, 4]


def test_write_selected(client: Any, tmp_path: Path) -> None:
    kwargs = layout_files(
        LPS, RWS, tmp_path / "in", layout="long", parts=3, reward_parts=2, shuffle=5
    )
    out = tmp_path / "out.parquet"
    rows = rp.write_selected(**kwargs, output=out, engine=_on(client))
    expected = rp.select_best(**kwargs).collect()
    assert rows == expected.height
    assert_same(expected.rename({"prompt": "prompt_id"}), pl.read_parquet(out))
    with pytest.raises(RaftInputError, match="exists"):
        rp.write_selected(**kwargs, output=out, engine=_on(client))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out.parquet"]


def test_write_selected_leaves_nothing_on_failure(client: Any, tmp_path: Path) -> None:
    frame = nested_frame(LPS, RWS)
    write_split(frame, tmp_path / "in", 2)
    write_split(frame.head(1), tmp_path / "in" / "dup", 1)  # a duplicate candidate
    with pytest.raises(RaftInputError, match="duplicate candidate"):
        rp.write_selected(str(tmp_path / "in"), tmp_path / "out.jsonl", engine=_on(client))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


# --- bad input: the same error, with the same message -------------------------------


def _nested_case(tmp: Path, change: Callable[[pl.DataFrame], pl.DataFrame]) -> dict[str, Any]:
    frame = change(nested_frame(LPS, RWS, prompt_ids=["x", "y"]))
    write_split(frame, tmp / "n", 3)
    return {"source": str(tmp / "n")}


def _long_case(
    tmp: Path,
    tokens_change: Callable[[pl.DataFrame], pl.DataFrame],
    rewards_change: Callable[[pl.DataFrame], pl.DataFrame] = lambda f: f,
) -> dict[str, Any]:
    tokens, rewards = long_frames(LPS, RWS, prompt_ids=["x", "y"])
    write_split(tokens_change(tokens), tmp / "t", 3)
    write_split(rewards_change(rewards), tmp / "r", 2)
    return {"source": str(tmp / "t"), "rewards": str(tmp / "r")}


def _set(column: str, value: Any, where: pl.Expr) -> Callable[[pl.DataFrame], pl.DataFrame]:
    def change(frame: pl.DataFrame) -> pl.DataFrame:
        dtype = frame.schema[column]
        return frame.with_columns(
            pl.when(where).then(pl.lit(value, dtype)).otherwise(column).alias(column)
        )

    return change


FIRST = (pl.col("stage") == 0) & (pl.col("prompt") == "y")
BEST = FIRST & (pl.col("cand") == 0)


def _truncated(tmp: Path) -> dict[str, Any]:
    kwargs = _nested_case(tmp, lambda f: f)
    path = tmp / "n" / "part-1.parquet"
    path.write_bytes(path.read_bytes()[:40])
    return kwargs


def _bad_page_header(tmp: Path) -> dict[str, Any]:
    """A part whose first page header (after 'PAR1') is garbled, its footer whole:
    the read names the file (found by the culprit's search, not by the footer)."""
    kwargs = _nested_case(tmp, lambda f: f)
    path = tmp / "n" / "part-1.parquet"
    data = bytearray(path.read_bytes())
    data[4] ^= 0x5A
    path.write_bytes(bytes(data))
    return kwargs


BAD: dict[str, tuple[Callable[[Path], dict[str, Any]], str]] = {
    "nan-reward": (
        lambda t: _nested_case(t, _set("reward", float("nan"), BEST)),
        "reward must be a finite number",
    ),
    "inf-reward": (
        lambda t: _long_case(t, lambda f: f, _set("reward", float("inf"), BEST)),
        "reward must be a finite number",
    ),
    "duplicate-across-files": (
        lambda t: _nested_case(t, lambda f: pl.concat([f, f.filter(BEST)])),
        "duplicate candidate: stage 0, prompt 'y', candidate 0 has 2",
    ),
    "duplicate-reward-rows": (
        lambda t: _long_case(t, lambda f: f, lambda f: pl.concat([f, f.filter(BEST)])),
        "duplicate candidate",
    ),
    "null-id": (lambda t: _nested_case(t, _set("cand", None, BEST)), "null id"),
    "positive-logprob": (
        lambda t: _nested_case(
            t,
            lambda f: f.with_columns(
                pl.when(BEST).then(pl.lit([-1.0, 0.5])).otherwise("logprobs").alias("logprobs")
            ),
        ),
        "must be finite and <= 0, found 0.5 at stage 0, prompt 'y', candidate 0, token 1",
    ),
    "null-logprobs": (lambda t: _nested_case(t, _set("logprobs", None, BEST)), "logprobs is null"),
    "nan-token": (
        lambda t: _long_case(t, _set("logprob", float("nan"), BEST & (pl.col("token") == 0))),
        "found nan at stage 0, prompt 'y', candidate 0, token 0",
    ),
    "orphan-tokens": (
        lambda t: _long_case(
            t,
            lambda f: pl.concat(
                [f, f.filter(BEST).with_columns(pl.lit(9, pl.Int64).alias("cand"))]
            ),
        ),
        "1 token row(s) have no reward row",
    ),
    "no-tokens-in-stage": (
        lambda t: _nested_case(
            t,
            lambda f: f.with_columns(
                pl.when(pl.col("stage") == 1)
                .then(pl.lit([], pl.List(pl.Float64)))
                .otherwise("logprobs")
                .alias("logprobs")
            ),
        ),
        "stage 1: the 2 selected response(s) hold no tokens",
    ),
    "missing-column": (
        lambda t: _nested_case(t, lambda f: f.drop("reward")),
        "missing column(s) ['reward']",
    ),
    "wrong-type": (
        lambda t: _nested_case(t, lambda f: f.with_columns(pl.col("reward").cast(pl.String))),
        "column 'reward' must be numeric",
    ),
    "truncated-file": (_truncated, "cannot read Parquet file"),
    "bad-page-header": (_bad_page_header, "cannot read Parquet file"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_same_error(client: Any, tmp_path: Path, name: str) -> None:
    build, fragment = BAD[name]
    kwargs = build(tmp_path)
    with pytest.raises(RaftInputError) as single:
        rp.stage_losses(**kwargs)
    with pytest.raises(RaftInputError) as dask:
        rp.stage_losses(**kwargs, engine=_on(client))
    assert fragment in str(dask.value)
    assert str(dask.value) == str(single.value)


@pytest.mark.parametrize("name", ["duplicate-across-files", "positive-logprob", "nan-token"])
def test_bad_input_other_strategy(client: Any, tmp_path: Path, name: str) -> None:
    build, fragment = BAD[name]
    kwargs = build(tmp_path)
    selection = Selection(strategy="top_n", n=2)
    with pytest.raises(RaftInputError) as single:
        rp.stage_losses(**kwargs, **_options(selection))
    with pytest.raises(RaftInputError) as dask:
        rp.stage_losses(**kwargs, **_options(selection), engine=_on(client))
    assert str(dask.value) == str(single.value)
    assert fragment in str(dask.value)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"reduction": "mean"}, "reduction must be"),
        ({"engine": "spark"}, "engine must be 'polars', 'dask' or a raft_polars.dask.DaskEngine"),
        ({"strategy": "top_n", "n": 0}, "n must be a whole number"),
    ],
)
def test_bad_options(client: Any, kwargs: dict[str, Any], fragment: str) -> None:
    options = {"engine": _on(client), **kwargs}
    with pytest.raises(RaftInputError, match=fragment):
        rp.stage_losses(nested_frame(LPS, RWS), **options)


def test_engine_takes_a_client_or_a_cluster_size_not_both(client: Any) -> None:
    with pytest.raises(RaftInputError, match="not both"):
        rd.DaskEngine(client, workers=2)


def test_missing_dask_says_how_to_install() -> None:
    # in a fresh process: hiding distributed here would break the module's cluster
    script = """
import sys
sys.modules["distributed"] = None
import polars as pl
import raft_polars as rp
import raft_polars.dask as rd
from raft_polars.errors import MissingDependencyError
frame = pl.DataFrame({"stage": [0], "prompt": [0], "cand": [0], "reward": [1.0],
                      "logprobs": [[-1.0]]})
for call in (lambda: rp.stage_losses(frame, engine="dask"),
             lambda: rd.connect(workers=1).__enter__()):
    try:
        call()
    except MissingDependencyError as exc:
        assert isinstance(exc, ImportError)
        print(exc)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    lines = done.stdout.splitlines()
    assert len(lines) == 2
    assert all("pip install 'raft-polars[dask]'" in line for line in lines)


def test_empty_log(client: Any) -> None:
    empty = nested_frame([], [])
    assert_same(rp.stage_losses(empty), rp.stage_losses(empty, engine=_on(client)))


def test_float32_arrays(client: Any) -> None:
    frame = nested_frame(LPS, RWS, float32=True)
    table = frame.to_arrow()
    assert isinstance(table, pa.Table)
    _agree(client, {"source": table})
    assert np.isfinite(rp.stage_losses(table, engine=_on(client))["loss"].to_numpy()).all()


# --- the CLI ------------------------------------------------------------------------------


def test_cli_losses_on_dask(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from raft_polars import cli

    write_split(nested_frame(LPS, RWS), tmp_path / "n", 2)
    code = cli.main(["losses", str(tmp_path / "n"), "--engine", "dask", "--workers", "2"])
    assert code in (0, None)
    out = capsys.readouterr().out
    for loss in reference_rounded(LPS, RWS):
        assert str(loss) in out


def test_a_scheduler_without_workers_says_so(tmp_path: Path) -> None:
    """``--scheduler`` of a scheduler that has no workers: Dask waits for some,
    silently (it looked like a hang); now a note on standard error says so, and
    the answer comes once a worker joins."""
    import json
    import time

    _dask = dask_cluster._dask
    info = tmp_path / "scheduler.json"
    scheduler = subprocess.Popen(
        _dask("dask_scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
              "--scheduler-file", str(info)),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    worker = None
    try:
        deadline = time.monotonic() + 60
        while not info.exists() or not info.read_text().strip():
            assert time.monotonic() < deadline, "the scheduler did not start"
            time.sleep(0.1)
        address = json.loads(info.read_text())["address"]
        seed = Path(__file__).resolve().parents[2] / "data" / "seed" / "nested.parquet"
        cli = subprocess.Popen(
            [sys.executable, "-m", "raft_polars", "losses", str(seed), "--engine", "dask",
             "--scheduler", address, "--format", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert cli.stderr is not None
        note = cli.stderr.readline()
        assert note.startswith("raft-polars: note: the Dask scheduler"), note
        assert "has no workers yet" in note
        worker = subprocess.Popen(
            _dask("dask_worker", address, "--nthreads", "1", "--host", "127.0.0.1",
                  "--no-dashboard", "--local-directory", str(tmp_path)),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        out, err = cli.communicate(timeout=120)
        assert cli.returncode == 0, err
        # the seed example's worked table (docs/semantics.md)
        assert [row["loss"] for row in json.loads(out)] == [1.55, 0.55, 0.15]
    finally:
        for proc in (worker, scheduler):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)


def test_a_task_error_on_a_local_cluster_is_one_line(tmp_path: Path) -> None:
    """An input error raised in a worker's task (an id beyond Int64) on a local
    cluster (``--workers 1``): one error line, the in-process one; the worker's
    own log ("Compute Failed" and a traceback) was printed before it."""
    path = tmp_path / "log.parquet"
    pq.write_table(pa.table({
        "stage": pa.array([0, 0], pa.uint64()), "prompt": pa.array([2**63, 2**63], pa.uint64()),
        "cand": pa.array([0, 1], pa.uint64()), "reward": [0.5, 0.7],
        "logprobs": [[-1.0], [-2.0]],
    }), path)  # fmt: skip
    lines = {}
    for engine in (["--engine", "dask", "--workers", "1"], []):
        done = subprocess.run(
            [sys.executable, "-m", "raft_polars", "losses", str(path), *engine],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert done.returncode == 2
        lines[bool(engine)] = done.stderr.splitlines()
    assert len(lines[True]) == 1, lines[True]
    assert lines[True] == lines[False]


# --- text prompt ids of a dictionary type ------------------------------------------------


def _text_prompt_log() -> pl.DataFrame:
    """Nested rows: 2 stages of 4 prompts of 3 candidates, rewards all distinct."""
    rows = [
        (stage, f"p{prompt}", cand)
        for stage in range(2)
        for prompt in range(4)
        for cand in range(3)
    ]
    rewards = [((7 * i) % 24) / 24 for i in range(len(rows))]
    logprobs = [[-0.5 - (i % 5) / 8] * (1 + i % 3) for i in range(len(rows))]
    stage, prompt, cand = (list(c) for c in zip(*rows, strict=True))
    return pl.DataFrame(
        {"stage": stage, "prompt": prompt, "cand": cand, "reward": rewards, "logprobs": logprobs}
    )


# an Enum's own order (its categories') is not the text's; Categorical for contrast
TEXT_PROMPT_TYPES = {
    "enum": pl.Enum(["p3", "p1", "p2", "p0"]),
    "categorical": pl.Categorical(),
}


def _every_entry(kwargs: dict[str, Any], engine: Any) -> dict[str, Any]:
    report = rp.validate(**kwargs, engine=engine)
    return {
        "stage_losses": rp.stage_losses(**kwargs, engine=engine),
        "select_best": rp.select_best(**kwargs, engine=engine).collect().sort(_IDS),
        "stage_stats": rp.stage_stats(**kwargs, engine=engine),
        "prompt_stats": rp.prompt_stats(**kwargs, engine=engine).sort(_IDS[:2]),
        "best_of_n": rp.best_of_n(**kwargs, engine=engine),
        "validate": (report.ok, report.summary, [(p.kind, p.count) for p in report.problems]),
    }


_IDS = ["stage", "prompt", "cand"]


@pytest.mark.parametrize("kind", TEXT_PROMPT_TYPES, ids=str)
@pytest.mark.parametrize("layout", ["nested", "long"])
@pytest.mark.parametrize("form", ["frame", "files"])
def test_dictionary_prompt_ids(  # noqa: PLR0917 - one argument per parameter
    client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, layout: str, form: str
) -> None:
    """Prompt ids of an Enum (categories not in text order) or a Categorical, in
    frames and in Parquet files (read back as such, the shards bounded by their
    row groups' statistics): every entry point on Dask gives the answer of the
    same log with String prompt ids in process. The Enum's prompts were ranked
    and bounded in its categories' order on Dask: nothing was selected."""
    monkeypatch.setattr(raft_polars._executors.dask, "SHARD_BYTES", 1)
    plain = _text_prompt_log()
    typed = plain.with_columns(pl.col("prompt").cast(TEXT_PROMPT_TYPES[kind]))

    def sources(frame: pl.DataFrame, name: str) -> dict[str, Any]:
        tokens = frame.select(*_IDS, pl.col("logprobs").alias("logprob")).explode("logprob")
        tokens = tokens.with_columns(pl.int_range(pl.len()).over(_IDS).alias("token"))
        rewards = frame.select(*_IDS, "reward")
        if form == "frame":
            if layout == "nested":
                return {"source": frame}
            return {"source": tokens, "rewards": rewards}
        folder = tmp_path / name
        folder.mkdir()
        main = tokens if layout == "long" else frame
        pq.write_table(main.to_arrow(), folder / "main.parquet", row_group_size=5)
        if layout == "nested":
            return {"source": str(folder / "main.parquet")}
        pq.write_table(rewards.to_arrow(), folder / "rewards.parquet", row_group_size=5)
        return {"source": str(folder / "main.parquet"), "rewards": str(folder / "rewards.parquet")}

    expected = _every_entry(sources(plain, "plain"), "polars")
    typed_sources = sources(typed, "typed")
    if form == "files":
        assert isinstance(
            pl.read_parquet(typed_sources["source"]).schema["prompt"], type(TEXT_PROMPT_TYPES[kind])
        )
    for engine in ("polars", _on(client)):
        got = _every_entry(typed_sources, engine)
        assert got["select_best"].height == 8
        for name, value in expected.items():
            if isinstance(value, pl.DataFrame):
                assert_same(value, got[name])
            else:
                assert got[name] == value, name


@pytest.mark.parametrize("form", ["frame", "file"])
def test_stages_beyond_int64_on_dask(
    client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, form: str
) -> None:
    """UInt64 stages from 2**63: the ids error, with no warning on the way (the
    shard bounds compared a null stage with ==: "Comparisons with None")."""
    monkeypatch.setattr(raft_polars._executors.dask, "SHARD_BYTES", 1)
    frame = pl.DataFrame(
        {"stage": [2**63, 2**63, 2**63 + 1, 2**63 + 1], "prompt": [0, 1, 0, 1],
         "cand": [0, 0, 0, 0], "reward": [0.5] * 4, "logprobs": [[-1.0], [-2.0]] * 2},
        schema_overrides={"stage": pl.UInt64},
    )  # fmt: skip
    source: Any = frame
    if form == "file":
        source = tmp_path / "log.parquet"
        pq.write_table(frame.to_arrow(), source, row_group_size=1)
    for entry in (rp.stage_losses, rp.validate):
        with pytest.raises(rp.RaftInputError, match="must fit a 64-bit signed integer") as dask:
            entry(source, engine=_on(client))
        with pytest.raises(rp.RaftInputError) as local:  # the same words: no partition's counts
            entry(source)
        assert str(dask.value) == str(local.value)
        assert "column 'stage' holds UInt64 values outside -9223372036854775808 .." in str(
            dask.value
        )


def _refused_port() -> int:
    """A loopback port where nothing listens (bound, then closed)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("tls://127.0.0.1:1", "a tls:// scheduler needs Dask's TLS configuration"),
        ("inproc://x", "an inproc:// address is inproc://HOST/PID/N"),
        ("tcp://127.0.0.1:99999", "the port must be 1 to 65535, got 99999"),
        ("tcp://127.0.0.1:0", "the port must be 1 to 65535, got 0"),
        ("tcp://127.0.0.1:{refused}", "connection refused: nothing listens on port {refused}"),
        ("ws://127.0.0.1:{refused}", "connection refused: nothing listens on port {refused}"),
    ],
)
def test_a_scheduler_that_cannot_be_reached_is_one_line(address: str, why: str) -> None:
    """``--scheduler`` of a TLS address without Dask's TLS configuration (a
    traceback, exit 1), a malformed inproc address ("not enough values to
    unpack"), a port out of range or where nothing listens (distributed tried
    for 30 s, then said "Timed out"): exit 2, one line naming the address and
    why, at once."""
    refused = _refused_port()
    address, why = address.format(refused=refused), why.format(refused=refused)
    seed = Path(__file__).resolve().parents[2] / "data" / "seed" / "nested.parquet"
    done = subprocess.run(
        [sys.executable, "-m", "raft_polars", "losses", str(seed), "--engine", "dask",
         "--scheduler", address],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    said = f"raft-polars: error: cannot connect to the Dask scheduler {address!r}: {why}"
    assert done.stderr.startswith(said), done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("layout", ["nested", "long"])
def test_relative_paths_from_another_working_directory(
    client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str
) -> None:
    """The workers started in another directory than the caller's (a cluster
    started elsewhere): relative paths read the caller's files on every entry
    point. validate took every file for a corrupted one (a strict reader could
    not open it) and said the log was bad."""
    files = layout_files(LPS, RWS, tmp_path / "in", layout=layout, parts=2)
    monkeypatch.chdir(tmp_path)
    kwargs: dict[str, Any] = {k: str(Path(v).relative_to(tmp_path)) for k, v in files.items()}
    on = _on(client)
    assert_same(rp.stage_losses(**kwargs), rp.stage_losses(**kwargs, engine=on))
    assert_same(rp.stage_stats(**kwargs), rp.stage_stats(**kwargs, engine=on))
    assert_same(rp.prompt_stats(**kwargs), rp.prompt_stats(**kwargs, engine=on))
    assert_same(rp.select_best(**kwargs).collect(), rp.select_best(**kwargs, engine=on).collect())
    report = rp.validate(**kwargs, engine=on)
    assert report.ok, report.problems
    assert report.to_dict()["summary"] == rp.validate(**kwargs).to_dict()["summary"]
    assert rp.write_selected(**kwargs, output="out.parquet", engine=on) == len(LPS[0]) + len(LPS[1])


@pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="Linux's /proc/self/cwd")
def test_a_file_the_workers_cannot_see_is_an_input_error(
    client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cluster without the caller's file system: the workers cannot open a file
    the caller can (here ``/proc/self/cwd/...``, which names another file in each
    process). validate reported the healthy file as ``corrupt_file`` (exit 1);
    it is an input error that says so, as on every other entry point."""
    name = f"seen-here-{uuid.uuid4().hex}.parquet"
    nested_frame(LPS, RWS).write_parquet(tmp_path / name)
    monkeypatch.chdir(tmp_path)
    path = f"/proc/self/cwd/{name}"
    assert rp.validate(path).ok
    with pytest.raises(RaftInputError, match=rf"cannot read '{path}': the strict read could not"):
        rp.validate(path, engine=_on(client))
    with pytest.raises(RaftInputError, match=re.escape(name)):
        rp.stage_losses(path, engine=_on(client))


def test_relative_paths_from_the_workers_directory_are_named_as_given(
    client: Any, tmp_path: Path
) -> None:
    """Workers that work where the caller does read the paths as given, and the
    errors and findings name the files as the local executor does (not by the
    cwd-joined absolute path: validate's corrupt_file named '/abs/.../b.parquet'
    on Dask, 'logs/b.parquet' in process)."""
    from raft_polars._export import write_parquet

    logs = tmp_path / "logs"
    logs.mkdir()
    write_parquet(nested_frame(LPS, RWS), logs / "a.parquet")  # page checksums
    data = (logs / "a.parquet").read_bytes()
    given = os.path.relpath(logs)
    for at in range(4, len(data) // 2):  # a flipped byte the checksums catch
        (logs / "b.parquet").write_bytes(data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1 :])
        try:
            local = rp.validate(given).to_dict()
        except RaftInputError:
            continue
        if [p["kind"] for p in local["problems"]] == ["corrupt_file"]:
            break
    else:
        pytest.fail("no flipped byte made a corrupt file")
    remote = rp.validate(given, engine=_on(client)).to_dict()
    assert remote["problems"] == local["problems"]
    assert os.path.join(given, "b.parquet") in str(remote["problems"])
