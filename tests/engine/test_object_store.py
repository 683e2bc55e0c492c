"""Object stores (issue 10 item 7): ``s3://`` paths, globs and prefixes through
Polars' cloud readers, against a local S3-compatible server (moto) started here on
127.0.0.1; nothing leaves the machine. Both layouts, both executors, the
credentials given as ``storage_options=`` or in the usual environment variables."""

from __future__ import annotations

import gzip
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask_cluster
import polars as pl
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from reference import long_frames, nested_frame, reference_rounded

import raft_polars as rp
from raft_polars._engine import sources
from raft_polars._engine.sources import local_files

moto_server = pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")

LPS = [[[[-1.0, -2.0], [-0.5]], [[-0.25], [-1.0, -1.0]]], [[[-0.2], [-0.1, -0.3]]]]
RWS = [[[0.1, 0.9], [0.7, 0.2]], [[1.0, 0.0]]]


@pytest.fixture(scope="module")
def store() -> Iterator[dict[str, str]]:
    """A bucket ``logs`` on a local moto server, and the options to reach it."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    s3 = boto3.client("s3", endpoint_url=url, aws_access_key_id="key",
                      aws_secret_access_key="secret", region_name="us-east-1")  # fmt: skip
    s3.create_bucket(Bucket="logs")

    def put(key: str, frame: pl.DataFrame, *, json: bool = False) -> None:
        buffer = io.BytesIO()
        if json:
            frame.write_ndjson(buffer)
        else:
            frame.write_parquet(buffer)
        body = gzip.compress(buffer.getvalue()) if key.endswith(".gz") else buffer.getvalue()
        s3.put_object(Bucket="logs", Key=key, Body=body)

    nested = nested_frame(LPS, RWS)
    for stage in (0, 1):
        put(f"nested/part-{stage}.parquet", nested.filter(pl.col("stage") == stage))
    tokens, rewards = long_frames(LPS, RWS)
    put("long/tokens/part-0.parquet", tokens)
    put("long/rewards/part-0.parquet", rewards)
    put("jsonl/log.jsonl", nested, json=True)
    # prefixes of JSON lines, told apart by the extension as in a local directory:
    # hidden and temporary names and other files left out, a part compressed
    put("jsonl-parts/part-0.jsonl", nested.filter(pl.col("stage") == 0), json=True)
    put("jsonl-parts/more/part-1.ndjson.gz", nested.filter(pl.col("stage") == 1), json=True)
    for junk in (
        "jsonl-parts/_tmp/part-9.jsonl",
        "jsonl-parts/.part-9.jsonl",
        "jsonl-parts/README",
    ):
        s3.put_object(Bucket="logs", Key=junk, Body=b"not a log")
    put("jsonl-long/tokens/part-0.jsonl", tokens, json=True)
    put("jsonl-long/rewards/part-0.jsonl", rewards, json=True)
    for stage in (0, 1):  # Hive directories whose key is also a column
        put(f"hive/stage={stage}/part.parquet", nested.filter(pl.col("stage") == stage))
    put("mixed/a.parquet", nested)
    put("mixed/b.jsonl", nested, json=True)
    s3.put_object(Bucket="logs", Key="no-data/notes.txt", Body=b"nothing to read")
    for run in _ODD_RUNS:  # names Polars' glob listing takes for nothing below them
        for stage in (0, 1):
            put(f"odd/{run}/part-{stage}.parquet", nested.filter(pl.col("stage") == stage))
        put(f"odd/{run}0/part-9.parquet", nested)  # beside it: not below the prefix
    for run in _LISTED_RUNS:  # names Polars lists as they are: listed below them only
        for stage in (0, 1):
            put(f"plus/{run}/part-{stage}.parquet", nested.filter(pl.col("stage") == stage))
    # a key that Polars' listing of 'plus/' cannot take (an empty path segment)
    s3.put_object(Bucket="logs", Key="plus/scratch/a//b.txt", Body=b"not a log")
    put("bad/exp~1/part-0.parquet", nested)  # beside such a key: not listed
    s3.put_object(Bucket="logs", Key="bad/scratch/a//b.txt", Body=b"not a log")
    yield {"aws_endpoint_url": url, "aws_access_key_id": "key",
           "aws_secret_access_key": "secret", "aws_region": "us-east-1",
           "aws_allow_http": "true"}  # fmt: skip
    server.stop()


_ODD_RUNS = ["exp~1", "café", "lr=1e-5%warm", "a#b", "sp ace"]
_LISTED_RUNS = ["lr=1e-5+wd", "a,b", "v(2)", "x@y!"]


@pytest.mark.parametrize("engine", ["polars", "dask"])
@pytest.mark.parametrize("run", _ODD_RUNS)
@pytest.mark.parametrize("tail", ["", "*.parquet", "part-*"])
def test_a_prefix_of_any_name_is_listed(
    store: dict[str, str], run: str, tail: str, engine: str
) -> None:
    """A prefix or glob below a name with ``~``, ``%``, ``#`` or a letter beyond
    ASCII: its objects, and not those of the name beside it (``exp~10/``)."""
    source = f"s3://logs/odd/{run}/{tail}"
    table = rp.stage_losses(source, storage_options=store, engine=_engine(engine))
    assert [round(x, 4) for x in table["loss"].to_list()] == reference_rounded(LPS, RWS)
    assert table["candidates"].to_list() == [4, 2]


@pytest.mark.parametrize("run", _LISTED_RUNS)
@pytest.mark.parametrize("tail", ["", "*.parquet"])
def test_a_prefix_is_listed_below_it_only(store: dict[str, str], run: str, tail: str) -> None:
    """A prefix whose name Polars lists as it is: listed there, not from above,
    where an unrelated key Polars cannot take ('a//b.txt') made the listing fail."""
    table = rp.stage_losses(f"s3://logs/plus/{run}/{tail}", storage_options=store)
    assert [round(x, 4) for x in table["loss"].to_list()] == reference_rounded(LPS, RWS)


def test_a_prefix_that_cannot_be_listed_says_why(store: dict[str, str]) -> None:
    """Below a name Polars does not list ('exp~1'), beside a key that fails the
    listing of the prefix above: the message says so and how to read it; the
    object named reads."""
    for source, said in (
        ("s3://logs/bad/exp~1/", "holds no *.parquet or *.pq files (nor JSON lines) as listed"),
        ("s3://logs/bad/exp~1/*.parquet", "no object matches it as a glob pattern as listed"),
    ):
        with pytest.raises(rp.RaftInputError, match=re.escape(said) + ".*name its objects"):
            rp.stage_losses(source, storage_options=store)
    table = rp.stage_losses("s3://logs/bad/exp~1/part-0.parquet", storage_options=store)
    assert [round(x, 4) for x in table["loss"].to_list()] == reference_rounded(LPS, RWS)


def _engine(name: str) -> Any:
    return dask_cluster.engine() if name == "dask" else "polars"


@pytest.mark.parametrize("engine", ["polars", "dask"])
@pytest.mark.parametrize(
    "source",
    [
        {"source": "s3://logs/nested/*.parquet"},
        {"source": "s3://logs/nested/"},
        {"source": ["s3://logs/nested/part-0.parquet", "s3://logs/nested/part-1.parquet"]},
        {"source": "s3://logs/long/tokens/*.parquet", "rewards": "s3://logs/long/rewards/"},
        {"source": "s3://logs/jsonl/log.jsonl"},
        {"source": "s3://logs/jsonl-parts/"},
        {"source": "s3://logs/jsonl-long/tokens/", "rewards": "s3://logs/jsonl-long/rewards/"},
        {"source": "s3://logs/hive/"},
        # globs are listed too: the objects' names tell the kind and leave out the
        # hidden ones (_tmp/part-9.jsonl), as a local glob's files
        {"source": "s3://logs/jsonl-parts/**/part-*"},
        {"source": "s3://logs/hive/*/part.parquet"},
        # a glob ending in "/" is a glob still: the data files of the "directories"
        # it matches, not a prefix named 'hive/*/'
        {"source": "s3://logs/hive/*/"},
    ],
    ids=[
        "glob",
        "prefix",
        "list",
        "long",
        "jsonl",
        "jsonl-prefix",
        "jsonl-long",
        "hive",
        "jsonl-glob",
        "hive-glob",
        "hive-dirs",
    ],
)
def test_s3(store: dict[str, str], source: dict[str, Any], engine: str) -> None:
    table = rp.stage_losses(**source, storage_options=store, engine=_engine(engine))
    assert [round(x, 4) for x in table["loss"].to_list()] == reference_rounded(LPS, RWS)
    picked = rp.select_best(**source, storage_options=store, engine=_engine(engine)).collect()
    assert picked.select("stage", "prompt", "cand").rows() == [(0, 0, 1), (0, 1, 0), (1, 0, 0)]


def test_environment_variables(store: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in store.items():
        monkeypatch.setenv(name.upper(), value)
    table = rp.stage_losses("s3://logs/nested/*.parquet")
    assert [round(x, 4) for x in table["loss"].to_list()] == reference_rounded(LPS, RWS)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            "s3://logs/mixed/",
            "source 's3://logs/mixed/' mixes Parquet ('s3://logs/mixed/a.parquet') "
            "and JSON lines ('s3://logs/mixed/b.jsonl')",
        ),
        ("s3://logs/no-data/", "source: prefix 's3://logs/no-data/' holds no *.parquet"),
        ("s3://logs/nope/", "source: prefix 's3://logs/nope/' holds no *.parquet"),
    ],
    ids=["mixed", "no-data", "empty"],
)
def test_prefix_errors(store: dict[str, str], source: str, message: str) -> None:
    with pytest.raises(rp.RaftInputError, match=re.escape(message)):
        rp.stage_losses(source, storage_options=store)


def test_missing_object_is_an_input_error(store: dict[str, str]) -> None:
    with pytest.raises(rp.RaftInputError, match="cannot read source 's3://logs/nope/"):
        rp.stage_losses("s3://logs/nope/*.parquet", storage_options=store)


_KEYS = [
    "p0.parquet", "a/p1.parquet", "a/b/p2.jsonl", "_tmp/p3.parquet", ".hid/p4.parquet",
    "stage=1/p5.parquet", "d.parquet/part-0.parquet", "d.parquet/_x/p6.parquet", "a/README",
    "a/_p7.parquet", "notes.txt",
]  # fmt: skip
_GLOBS = [
    "*", "*.parquet", "**/*.parquet", "**", "p?.parquet", "[ap]*", "*/*", "_*/*", "**/_*",
    ".*/*", "a/**", "*.parquet/*", "*/p*", "**/p[0-9].*", "a*", "*/**", "_*/**",
    "*/", "**/", "_*/", "*.parquet/",
]  # fmt: skip


@settings(max_examples=40, deadline=None)
@given(keys=st.sets(st.sampled_from(_KEYS), min_size=1), pattern=st.sampled_from(_GLOBS))
@example(keys={"notes.txt", "a/p1.parquet"}, pattern="*/**")  # "*" before a last "**": a/ only
@example(keys={"p0.parquet", "a/p1.parquet"}, pattern="*/")  # the data files of a/ only
def test_a_glob_takes_the_same_objects_as_files(
    store: dict[str, str], tmp_path_factory: pytest.TempPathFactory, keys: set[str], pattern: str
) -> None:
    """An object store glob takes the objects a local glob takes of the same
    tree written as files: the names it matches, the data files below the
    "directories" it matches, hidden names left out unless spelled; no match
    is an error on both."""
    s3 = boto3.client("s3", endpoint_url=store["aws_endpoint_url"], aws_access_key_id="key",
                      aws_secret_access_key="secret", region_name="us-east-1")  # fmt: skip
    root = tmp_path_factory.mktemp("tree")
    prefix = f"trees/{root.name}/"
    for key in keys:
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(b"x")
        s3.put_object(Bucket="logs", Key=prefix + key, Body=b"x")
    try:
        local = sorted(str(Path(p).relative_to(root)) for p in local_files(f"{root}/{pattern}"))
    except rp.RaftInputError:
        local = None
    try:
        found = sources._globbed(f"s3://logs/{prefix}{pattern}", "source", store)
        remote = sorted(f.path.removeprefix(f"s3://logs/{prefix}") for f in found)
    except rp.RaftInputError:
        remote = None
    assert remote == local


@pytest.mark.parametrize(
    "sources",
    [
        ["s3://logs/nested/part-0.parquet", "s3://logs/nested/part-0.parquet"],
        ["s3://logs/nested/", "s3://logs/nested/part-1.parquet"],
        ["s3://logs/nested/*.parquet", "s3://logs/nested/part-*.parquet"],
    ],
    ids=["twice", "prefix-and-file", "two-globs"],
)
def test_an_object_named_twice_is_refused(store: dict[str, str], sources: list[str]) -> None:
    """Read twice, its candidates would be duplicates (or, without ids, doubled)."""
    with pytest.raises(
        rp.RaftInputError, match=r"s3://logs/nested/part-\d.parquet' is named twice"
    ):
        rp.stage_losses(sources, storage_options=store)
