"""One call of a public function in this fresh process: its time and peak RSS.

    python bench/peak_once.py OP LAYOUT DIR

OP is ``stage_losses``, ``stage_stats``, ``prompt_stats``, ``best_of_n`` or
``validate``; LAYOUT ``long`` (DIR holds ``tokens/`` and ``rewards/``) or
``nested`` (DIR holds the Parquet parts), as ``bench/datagen.py`` writes them.
The peak is the process's high-water mark (``VmHWM``, Linux), libraries
included, so that it is what a command line user sees.
"""

from __future__ import annotations

import argparse
import time

import raft_polars as rp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("op", choices=["stage_losses", "stage_stats", "prompt_stats",
                                       "best_of_n", "validate"])  # fmt: skip
    parser.add_argument("layout", choices=["long", "nested"])
    parser.add_argument("dir")
    args = parser.parse_args()
    if args.layout == "long":
        kwargs = {"source": f"{args.dir}/tokens", "rewards": f"{args.dir}/rewards"}
    else:
        kwargs = {"source": f"{args.dir}/*.parquet"}
    start = time.perf_counter()
    getattr(rp, args.op)(**kwargs)
    took = time.perf_counter() - start
    with open("/proc/self/status", encoding="ascii") as status:
        peak = next(int(line.split()[1]) >> 10 for line in status if line.startswith("VmHWM"))
    print(f"{args.op:13} {args.layout:6} {args.dir} {took:6.2f} s {peak:5} MiB", flush=True)


if __name__ == "__main__":
    main()
