"""Scale measurement of the Dask engine.

On synthetic logs made with ``raft_polars.synth.generate`` (default: 8 stages x
4,096 prompts x K = 8 candidates, 16-512 tokens per response, one file per
stage), times ``raft_polars.stage_losses``

- in this process (``engine="polars"``, all cores), and in a child process with
  ``POLARS_MAX_THREADS=1`` (the throughput of one core);
- with ``engine=DaskEngine(client)`` on a local cluster of 1 and of 2 worker
  processes (``raft_polars.dask.connect(workers=N)``; cluster start-up not
  counted, one warm-up call first);

checks that every answer agrees with the in-process one (counts exactly, loss
and rewards to 4 decimals), and measures, in one more untimed call, what moved
against what was read:

- **read**: the compressed Parquet bytes of the columns each pass reads, from
  the footers (pyarrow): the rank pass reads ``stage, prompt, cand, reward`` of
  the candidate rows, the reduce pass the ids and ``logprobs`` (nested) or the
  ids and ``logprob`` of the token rows (long);
- **task results**, by kind: the candidate keys shuffled to the rank buckets,
  the rank results handed to the reduce tasks, and what the client gathers
  (per-stage sums, problem records). Sizes are the bytes ``distributed``
  serializes for each result, recorded by a worker plugin as each task result
  reaches a worker's memory. (Dask's own estimate, ``TaskState.nbytes``, is
  printed beside them: ``dask.sizeof`` does not know polars frames and counts
  each about 56 bytes, so the scheduler's figures and the byte totals of the
  workers' ``transfer_incoming_log`` are far too small for these tasks.)
- **between workers**: the serialized bytes of the results that one worker
  fetched from another (zero with one worker).

Four data sets: ``nested`` and ``long`` as generated (every file holds whole
prompts of one stage, so every shard is *isolated* and is ranked in place), and
``nested_shuffled`` / ``long_shuffled``: the same candidate rows shuffled at
random over 8 files (long: the rewards table; the token files are shared), so
that every shard overlaps every other and the candidate keys go through the
hash-bucketed rank: the worst case of bytes moved. All four give the same
answers.

Data is generated once under ``--root`` (default ``/work/bench_data``, outside
the repository) in ``dask/<shape>/``, reused while its ``manifest.json``
matches.

Usage::

    python bench/dask_bench.py                  # the default size: 3-5 minutes on 2 cores
    python bench/dask_bench.py --prompts 40960 --workers 1,2,4 --repeat 5   # 10x bigger
    python bench/dask_bench.py --datasets nested,long --no-single-thread

It exits 1 (after the table) if any answer disagrees. Other load on the machine
shows in the timings: the header prints the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq
from dask.utils import key_split
from distributed.diagnostics.plugin import WorkerPlugin
from distributed.protocol.serialize import serialize_bytelist

import raft_polars as rp
from raft_polars.dask import DaskEngine, connect
from raft_polars.synth import generate

DATASETS = ("nested", "long", "nested_shuffled", "long_shuffled")
SHUFFLED_FILES = 8
SEED = 0
_FORMAT = 1  # bump when the way the data is written changes
EXACT = ("stage", "prompts", "candidates", "selected", "tokens", "ties", "below_min")
ROUNDED = ("loss", "reward_best_mean", "reward_mean", "reward_lift")
ID_COLUMNS = ["stage", "prompt", "cand"]
SHUFFLED_KEYS = "getitem"  # key prefix of one hash bucket of one shard's candidate keys


# --- data --------------------------------------------------------------------------------


@dataclass
class DataSet:
    """One data set: the arguments of ``stage_losses`` and the files each pass reads."""

    name: str
    kwargs: dict[str, str]
    candidates: list[Path]  # the rank pass reads their keys
    reduced: list[Path]  # the reduce pass reads their ids and log-probs
    log_column: str  # logprobs (nested) or logprob (long)
    tokens: int = 0
    read_bytes: int = 0


def _parquet(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.parquet"))


def _shuffle(files: list[Path], out: Path) -> None:
    """The rows of ``files``, shuffled at random over ``SHUFFLED_FILES`` files."""
    out.mkdir(parents=True, exist_ok=True)
    rows = pl.read_parquet(files).sample(fraction=1.0, shuffle=True, seed=SEED)
    size = -(-rows.height // SHUFFLED_FILES)
    for i in range(SHUFFLED_FILES):
        rows.slice(i * size, size).write_parquet(out / f"part-{i:05d}.parquet")


def ensure_data(root: Path, shape: dict[str, int]) -> Path:
    """Generate the data sets under ``root`` unless a matching manifest is there."""
    tag = "x".join(str(shape[k]) for k in ("stages", "prompts", "k"))
    folder = root / "dask" / f"{tag}_{shape['min_tokens']}-{shape['max_tokens']}"
    spec = {**shape, "seed": SEED, "format": _FORMAT, "polars": pl.__version__}
    manifest = folder / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text()) == spec:
        return folder
    if folder.exists():
        shutil.rmtree(folder)
    start = time.perf_counter()
    print(f"generating {folder} ...", file=sys.stderr, flush=True)
    for layout in ("nested", "long"):
        generate(folder / layout, layout=layout, seed=SEED, **shape)  # type: ignore[arg-type]
    _shuffle(_parquet(folder / "nested"), folder / "nested_shuffled")
    _shuffle(_parquet(folder / "long" / "rewards"), folder / "long_shuffled" / "rewards")
    manifest.write_text(json.dumps(spec, indent=1) + "\n")
    print(f"generated in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return folder


def data_sets(folder: Path, names: list[str]) -> list[DataSet]:
    tokens = folder / "long" / "tokens"
    nested = {
        "nested": folder / "nested",
        "nested_shuffled": folder / "nested_shuffled",
    }
    rewards = {
        "long": folder / "long" / "rewards",
        "long_shuffled": folder / "long_shuffled" / "rewards",
    }
    out = []
    for name in names:
        if name in nested:
            files = _parquet(nested[name])
            out.append(DataSet(name, {"source": str(nested[name])}, files, files, "logprobs"))
        else:
            kwargs = {"source": str(tokens), "rewards": str(rewards[name])}
            out.append(DataSet(name, kwargs, _parquet(rewards[name]), _parquet(tokens), "logprob"))
    for ds in out:
        ds.read_bytes = column_bytes(ds.candidates, [*ID_COLUMNS, "reward"]) + column_bytes(
            ds.reduced, [*ID_COLUMNS, ds.log_column]
        )
        ds.tokens = token_count(ds)
    return out


def column_bytes(files: list[Path], columns: list[str]) -> int:
    """Compressed bytes of ``columns`` in ``files``, from the Parquet footers."""
    total = 0
    for path in files:
        meta = pq.read_metadata(path)
        for rg in range(meta.num_row_groups):
            group = meta.row_group(rg)
            for i in range(group.num_columns):
                chunk = group.column(i)
                if chunk.path_in_schema.split(".")[0] in columns:
                    total += chunk.total_compressed_size
    return total


def token_count(ds: DataSet) -> int:
    if ds.log_column == "logprob":
        return sum(pq.read_metadata(p).num_rows for p in ds.reduced)
    query = pl.scan_parquet(ds.reduced).select(pl.col("logprobs").list.len().sum())
    return int(query.collect().item())


# --- timing and agreement -------------------------------------------------------------------


def best_of(repeat: int, call: Callable[[], pl.DataFrame]) -> tuple[float, pl.DataFrame]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - start)
    assert result is not None
    return min(times), result


def one_thread(kwargs: dict[str, str], repeat: int) -> tuple[float, pl.DataFrame]:
    """``stage_losses`` in a child process on one polars thread: seconds, answer."""
    script = (
        "import sys, json, time, raft_polars as rp\n"
        "kw = json.loads(sys.argv[1]); best = 1e9\n"
        f"for _ in range({repeat}):\n"
        "    t = time.perf_counter(); table = rp.stage_losses(**kw)\n"
        "    best = min(best, time.perf_counter() - t)\n"
        "print(json.dumps({'seconds': best, 'table': table.to_dicts()}))\n"
    )
    env = {**os.environ, "POLARS_MAX_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(kwargs)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    found = json.loads(done.stdout.strip().splitlines()[-1])
    return float(found["seconds"]), pl.DataFrame(found["table"])


def disagreement(got: pl.DataFrame, want: pl.DataFrame) -> str | None:
    """Where ``got`` differs from ``want``: counts exactly, floats to 4 decimals."""
    if got.height != want.height:
        return f"{got.height} stages, expected {want.height}"
    for name in EXACT:
        if got[name].to_list() != want[name].to_list():
            return f"column {name}: {got[name].to_list()} != {want[name].to_list()}"
    for name in ROUNDED:
        a = [None if v is None else round(v, 4) for v in got[name].to_list()]
        b = [None if v is None else round(v, 4) for v in want[name].to_list()]
        if a != b:
            return f"column {name}: {a} != {b}"
    return None


# --- bytes moved --------------------------------------------------------------------------


class ResultSizes(WorkerPlugin):
    """Records, on each worker, the serialized size of every task result that
    reaches its memory: computed there, or fetched from another worker."""

    name = "raft-bench-result-sizes"

    def setup(self, worker: Any) -> None:
        self.worker = worker
        self.records: list[tuple[str, str, int, int]] = []

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        if finish != "memory":
            return
        value = self.worker.data[key]
        size = sum(memoryview(frame).nbytes for frame in serialize_bytelist(value))
        nbytes = self.worker.state.tasks[key].nbytes or 0
        how = "fetched" if start == "flight" else "computed"
        self.records.append((how, result_kind(key, value), size, nbytes))


def result_kind(key: Any, value: Any) -> str:
    """What a task result of the Dask executor is, from its key and type."""
    first = value[0] if isinstance(value, tuple) and value else None
    if key_split(key) == SHUFFLED_KEYS:
        return "keys"  # one hash bucket of one shard's candidate keys
    if type(value).__name__ == "Ranked":
        return "ranked"  # a rank result, handed whole to the reduce tasks
    if type(first).__name__ == "Ranked":
        return "wrapper"  # (rank result, bounds): the same object again
    if isinstance(value, list):
        return "split"  # a shard's keys cut into buckets, kept where it was made
    return "client"  # per-stage sums, problem records: gathered by the client


def drain(dask_worker: Any) -> list[tuple[str, str, int, int]]:
    plugin = dask_worker.plugins[ResultSizes.name]
    records, plugin.records = plugin.records, []
    return list(records)


@dataclass
class Moved:
    tasks: int = 0
    shuffled: int = 0  # candidate keys, bucket pieces
    ranked: int = 0  # rank results, handed to the reduce tasks
    to_client: int = 0  # gathered by the client
    between_workers: int = 0  # fetched by one worker from another
    dask_nbytes: int = 0  # Dask's own estimate of the same results
    kinds: dict[str, int] = field(default_factory=dict)


def measure(client: Any, call: Callable[[], pl.DataFrame]) -> Moved:
    """Run ``call`` once with :class:`ResultSizes` on every worker."""
    client.register_plugin(ResultSizes(), name=ResultSizes.name)
    try:
        call()
        found = client.run(drain)
    finally:
        client.unregister_worker_plugin(ResultSizes.name)
    moved = Moved()
    for records in found.values():
        for how, kind, size, nbytes in records:
            if how == "fetched":
                moved.between_workers += size
                continue
            moved.tasks += 1
            moved.kinds[kind] = moved.kinds.get(kind, 0) + 1
            if kind in ("wrapper", "split"):
                continue
            moved.dask_nbytes += nbytes
            if kind == "keys":
                moved.shuffled += size
            elif kind == "ranked":
                moved.ranked += size
            else:
                moved.to_client += size
    return moved


# --- the run ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("/work/bench_data"))
    parser.add_argument("--stages", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=4096, help="per stage (default 4096)")
    parser.add_argument("--k", type=int, default=8, help="candidates per prompt (default 8)")
    parser.add_argument("--min-tokens", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3, help="timed calls, best kept")
    parser.add_argument("--workers", default="1,2", help="local cluster sizes (default 1,2)")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument(
        "--no-single-thread", action="store_true", help="skip the one-thread child process"
    )
    args = parser.parse_args(argv)
    names = [n for n in args.datasets.split(",") if n]
    unknown = sorted(set(names) - set(DATASETS))
    if unknown:
        parser.error(f"unknown data set(s) {unknown}; choose from {', '.join(DATASETS)}")
    shape = {
        "stages": args.stages,
        "prompts": args.prompts,
        "k": args.k,
        "min_tokens": args.min_tokens,
        "max_tokens": args.max_tokens,
    }
    folder = ensure_data(args.root, shape)
    sets = data_sets(folder, names)
    candidates = args.stages * args.prompts * args.k
    rows: list[dict[str, Any]] = []
    failures: list[str] = []
    expected: pl.DataFrame | None = None  # every data set holds the same log

    def check(label: str, table: pl.DataFrame) -> None:
        assert expected is not None
        wrong = disagreement(table, expected)
        if wrong is not None:
            failures.append(f"MISMATCH {label}: {wrong}")

    for ds in sets:

        def local(kw: dict[str, str] = ds.kwargs) -> pl.DataFrame:
            return rp.stage_losses(**kw)  # type: ignore[arg-type]

        local()  # warm-up: the page cache
        seconds, table = best_of(args.repeat, local)
        if expected is None:
            expected = table
        check(f"{ds.name} / polars", table)
        rows.append({"data": ds, "engine": f"polars, {os.cpu_count()} threads", "s": seconds})
        if not args.no_single_thread:
            seconds, table = one_thread(ds.kwargs, args.repeat)
            check(f"{ds.name} / polars 1 thread", table)
            rows.append({"data": ds, "engine": "polars, 1 thread", "s": seconds})

    for workers in (int(w) for w in args.workers.split(",") if w):
        with connect(workers=workers) as client:
            engine = DaskEngine(client=client)
            for ds in sets:

                def call(kw: dict[str, str] = ds.kwargs, on: Any = engine) -> pl.DataFrame:
                    return rp.stage_losses(**kw, engine=on)  # type: ignore[arg-type]

                call()  # warm-up: imports in the workers
                seconds, table = best_of(args.repeat, call)
                check(f"{ds.name} / dask {workers}", table)
                moved = measure(client, call)
                rows.append(
                    {"data": ds, "engine": f"dask, {workers} worker(s)", "s": seconds, "m": moved}
                )

    print_table(rows, candidates)
    for line in failures:
        print(line)
    return 1 if failures else 0


def print_table(rows: list[dict[str, Any]], candidates: int) -> None:
    first = rows[0]["data"]
    print(
        f"raft_polars from {Path(rp.__file__).parent}; {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[1]:.1f} (5 min); {candidates:,} candidates, {first.tokens:,} "
        "tokens; best of the timed calls"
    )
    head = (
        f"{'data':<15} {'engine':<19} {'seconds':>7} {'Mtok/s':>6} {'tasks':>5} "
        f"{'read MB':>7} {'keys kB':>8} {'ranked kB':>9} {'client kB':>9} "
        f"{'handed/read':>11} {'betw. workers kB':>16} {'dask nbytes kB':>14}"
    )
    print(head)
    print("-" * len(head))
    for row in rows:
        ds: DataSet = row["data"]
        line = (
            f"{ds.name:<15} {row['engine']:<19} {row['s']:>7.2f} {ds.tokens / row['s'] / 1e6:>6.1f}"
        )
        m: Moved | None = row.get("m")
        if m is not None:
            handed = m.shuffled + m.ranked + m.to_client
            line += (
                f" {m.tasks:>5} {ds.read_bytes / 1e6:>7.1f} {m.shuffled / 1e3:>8.1f} "
                f"{m.ranked / 1e3:>9.1f} {m.to_client / 1e3:>9.1f} "
                f"{handed / ds.read_bytes:>11.3%} {m.between_workers / 1e3:>16.1f} "
                f"{m.dask_nbytes / 1e3:>14.1f}"
            )
        print(line)
    print(
        "keys: candidate keys shuffled to the rank buckets; ranked: rank results handed to "
        "the reduce tasks;\nclient: results the client gathers; handed/read: their sum over "
        "the Parquet bytes read;\nbetw. workers: results one worker fetched from another; "
        "dask nbytes: Dask's own estimate of\nthe keys, ranked and client results (kB = "
        "1,000 bytes). Per candidate:"
    )
    for row in rows:
        m = row.get("m")
        if m is not None:
            print(
                f"  {row['data'].name:<15} {row['engine']:<19} keys "
                f"{m.shuffled / candidates:5.1f} B, ranked {m.ranked / candidates:5.1f} B, "
                f"between workers {m.between_workers / candidates:6.1f} B"
            )


if __name__ == "__main__":
    sys.exit(main())
