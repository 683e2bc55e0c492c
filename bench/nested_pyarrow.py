"""pyarrow's decode of nested lists fed straight to the compiled sums, against
Polars' read floor of the same files (fifteenth session; docs/performance.md).

    python bench/nested_pyarrow.py {floor,pyarrow} DIR [--reps 3]

``floor``: Polars scans ``stage, prompt, cand, reward`` and the lists, each
summed. ``pyarrow``: every row group read by pyarrow (ids and lists, two
threads, one row group a task), ``_compiled.list_sums`` over each chunk's
offsets and values, as the nested reduce runs it over Polars' batches. Prints
the best and median of ``--reps`` timed calls after one untimed call, the
checksum of the log-probs and the process's peak RSS. Run each method in a
fresh process, alternating.
"""

from __future__ import annotations

import argparse
import glob
import resource
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from raft_polars._engine import _compiled


def floor(files: list[str]) -> float:
    query = pl.scan_parquet(files).select(
        pl.col("stage").sum(),
        pl.col("prompt").cast(pl.Int64).sum(),
        pl.col("cand").sum(),
        pl.col("reward").sum(),
        -pl.col("logprobs").list.sum().sum(),
    )
    return float(query.collect().row(0)[-1])


def through_pyarrow(files: list[str]) -> float:
    units = [(f, i) for f in files for i in range(pq.ParquetFile(f).num_row_groups)]

    def one(unit: tuple[str, int]) -> float:
        path, group = unit
        table = pq.ParquetFile(path, memory_map=True).read_row_group(
            group, columns=["stage", "prompt", "cand", "logprobs"], use_threads=False
        )
        total = 0.0
        for chunk in table.column("logprobs").chunks:
            n = len(chunk)
            nll, top, nulls = np.empty(n), np.empty(n), np.empty(n, dtype=np.int64)
            _compiled.list_sums(
                chunk.offsets.to_numpy().astype(np.int64, copy=False),
                chunk.values.to_numpy(zero_copy_only=False),
                _compiled.NO_MASK,
                nll,
                top,
                nulls,
            )
            total += float(nll.sum())
        return total

    with ThreadPoolExecutor(2) as pool:
        return sum(pool.map(one, units))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("method", choices=["floor", "pyarrow"])
    parser.add_argument("directory")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    files = sorted(glob.glob(f"{args.directory}/**/*.parquet", recursive=True))
    run: Callable[[list[str]], float] = floor if args.method == "floor" else through_pyarrow
    run(files)  # untimed: numba's load, the page cache
    times = []
    for _ in range(args.reps):
        start = time.perf_counter()
        checksum = run(files)
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    times.sort()
    print(
        f"{args.method:8} {args.directory}: best {times[0]:.3f} s, median "
        f"{times[len(times) // 2]:.3f} s, checksum {checksum:.6g}, peak {peak} MiB"
    )


if __name__ == "__main__":
    main()
