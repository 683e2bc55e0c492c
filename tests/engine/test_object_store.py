"""Object stores (issue 10 item 7): ``s3://`` paths, globs and prefixes through
Polars' cloud readers, against a local S3-compatible server (moto) started here on
127.0.0.1; nothing leaves the machine. Both layouts, both executors, the
credentials given as ``storage_options=`` or in the usual environment variables."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import dask_cluster
import polars as pl
import pytest
from reference import long_frames, nested_frame, reference_rounded

import raft_polars as rp

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
        s3.put_object(Bucket="logs", Key=key, Body=buffer.getvalue())

    nested = nested_frame(LPS, RWS)
    for stage in (0, 1):
        put(f"nested/part-{stage}.parquet", nested.filter(pl.col("stage") == stage))
    tokens, rewards = long_frames(LPS, RWS)
    put("long/tokens/part-0.parquet", tokens)
    put("long/rewards/part-0.parquet", rewards)
    put("jsonl/log.jsonl", nested, json=True)
    yield {"aws_endpoint_url": url, "aws_access_key_id": "key",
           "aws_secret_access_key": "secret", "aws_region": "us-east-1",
           "aws_allow_http": "true"}  # fmt: skip
    server.stop()


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
    ],
    ids=["glob", "prefix", "list", "long", "jsonl"],
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


def test_missing_object_is_an_input_error(store: dict[str, str]) -> None:
    with pytest.raises(rp.RaftInputError, match="cannot read source 's3://logs/nope/"):
        rp.stage_losses("s3://logs/nope/*.parquet", storage_options=store)
