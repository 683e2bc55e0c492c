"""Scale measurement of the Dask engine (issue 5).

At the small benchmark size (8 stages x 4,096 prompts x K = 8, 16-512 tokens per
response), in both layouts, times:

- ``raft_polars.stage_losses`` in this process (all cores), and in a child process
  with ``POLARS_MAX_THREADS=1`` (the per-core throughput);
- ``raft_polars.dask.stage_losses`` on a local cluster of 1 and of 2 worker
  processes (cluster start-up not counted; one warm-up call first);

and measures the bytes read from Parquet (compressed column chunks the tasks
read) against the bytes of every task result that is sent on to another task or to
the client (Dask's size estimate of each result), and the bytes that actually
crossed between worker processes (their transfer logs). It also runs the nested
layout with the shard isolation switched off, so every prompt goes through the
hash-bucketed reduce: the worst case of bytes moved.

Data is generated with ``raft_polars.synth.generate`` into
``/work/bench_data/dask_small_{nested,long}`` (outside the repository) when absent.

Usage::

    python bench/dask_bench.py [--root /work/bench_data] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import polars as pl

import raft_polars as rp
import raft_polars.dask as rd
from raft_polars import _shards

SHAPE = {"stages": 8, "prompts": 4096, "k": 8, "min_tokens": 16, "max_tokens": 512, "seed": 0}


def ensure_data(root: Path) -> dict[str, dict[str, str]]:
    """Generate the two data sets when missing; the entry-point arguments of each."""
    from raft_polars.synth import generate

    out: dict[str, dict[str, str]] = {}
    for layout in ("nested", "long"):
        folder = root / f"dask_small_{layout}"
        done = folder / "shape.json"
        if not (done.is_file() and json.loads(done.read_text()) == SHAPE):
            generate(folder, layout=layout, **SHAPE)  # type: ignore[arg-type]
            done.write_text(json.dumps(SHAPE))
        out[layout] = (
            {"source": str(folder)}
            if layout == "nested"
            else {"source": str(folder / "tokens"), "rewards": str(folder / "rewards")}
        )
    return out


def best_of(repeat: int, call: Callable[[], Any]) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - start)
    return min(times), result


def one_thread(kwargs: dict[str, str], repeat: int) -> float:
    """Seconds of ``raft_polars.stage_losses`` in a child process on one thread."""
    script = (
        "import sys, json, time, raft_polars as rp\n"
        "kw = json.loads(sys.argv[1]); best = 1e9\n"
        f"for _ in range({repeat}):\n"
        "    t = time.perf_counter(); rp.stage_losses(**kw)\n"
        "    best = min(best, time.perf_counter() - t)\n"
        "print(best)\n"
    )
    env = {**os.environ, "POLARS_MAX_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(kwargs)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(done.stdout.strip())


def transferred(client: Any) -> int:
    """Bytes received by all workers from other workers so far."""
    logs = client.run(
        lambda dask_worker: sum(e["total"] for e in dask_worker.transfer_incoming_log)
    )
    return int(sum(logs.values()))


@contextmanager
def no_isolation() -> Iterator[None]:
    """Treat every shard as overlapping: all prompts go through the bucketed reduce."""
    with mock.patch.object(_shards, "mark_isolated", list):
        yield


def tokens_of(kwargs: dict[str, str]) -> int:
    if "rewards" in kwargs:
        return int(pl.scan_parquet(kwargs["source"]).select(pl.len()).collect().item())
    return int(
        pl.scan_parquet(kwargs["source"] + "/*.parquet")
        .select(pl.col("logprobs").list.len().sum())
        .collect()
        .item()
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("/work/bench_data"))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    data = ensure_data(args.root)
    rows: list[dict[str, Any]] = []
    expected: dict[str, pl.DataFrame] = {}
    for layout, kwargs in data.items():
        tokens = tokens_of(kwargs)

        def single(kw: dict[str, str] = kwargs) -> pl.DataFrame:
            return rp.stage_losses(kw["source"], rewards=kw.get("rewards"))

        seconds, expected[layout] = best_of(args.repeat, single)
        rows.append(
            {
                "layout": layout,
                "engine": f"polars ({os.cpu_count()} threads)",
                "seconds": seconds,
                "tokens": tokens,
            }
        )
        rows.append(
            {
                "layout": layout,
                "engine": "polars (1 thread)",
                "seconds": one_thread(kwargs, args.repeat),
                "tokens": tokens,
            }
        )
    for workers in (1, 2):
        with rd.connect(workers=workers) as client:
            for layout, kwargs in data.items():
                tokens = rows[0 if layout == "nested" else 2]["tokens"]
                variants = [("", False)] + (
                    [(", no isolation", True)] if layout == "nested" else []
                )
                for suffix, forced in variants:
                    with no_isolation() if forced else _nothing():

                        def call(kw: dict[str, str] = kwargs) -> pl.DataFrame:
                            return rd.stage_losses(**kw, client=client)  # type: ignore[arg-type]

                        call()  # warm-up: imports in the workers
                        seconds, table = best_of(args.repeat, call)
                        before = transferred(client)
                        with rd._measure() as metrics:
                            call()
                        moved_workers = transferred(client) - before
                    assert table.select("stage", "tokens").equals(
                        expected[layout].select("stage", "tokens")
                    )
                    assert (table["loss"] - expected[layout]["loss"]).abs().max() < 1e-9
                    rows.append(
                        {
                            "layout": layout,
                            "engine": f"dask, {workers} worker(s){suffix}",
                            "seconds": seconds,
                            "tokens": tokens,
                            "bytes_read": metrics.bytes_read,
                            "results": metrics.futures[0],
                            "between_workers": moved_workers,
                            "tasks": metrics.tasks,
                        }
                    )
    print_table(rows)
    return 0


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (
        f"{'layout':<7} {'engine':<34} {'seconds':>8} {'Mtok/s':>7} {'tasks':>6} "
        f"{'read MB':>8} {'results kB':>10} {'results/read':>12} {'between workers kB':>18}"
    )
    print(head)
    print("-" * len(head))
    for row in rows:
        rate = row["tokens"] / row["seconds"] / 1e6
        line = f"{row['layout']:<7} {row['engine']:<34} {row['seconds']:>8.2f} {rate:>7.1f}"
        if "bytes_read" in row:
            line += (
                f" {row['tasks']:>6} {row['bytes_read'] / 1e6:>8.1f} "
                f"{row['results'] / 1e3:>10.1f} "
                f"{row['results'] / row['bytes_read']:>12.4%} "
                f"{row['between_workers'] / 1e3:>18.1f}"
            )
        print(line)


if __name__ == "__main__":
    sys.exit(main())
