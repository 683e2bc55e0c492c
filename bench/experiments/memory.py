"""Peak RSS of each step of the long-layout path (scratch, issue 3).

    /work/venv/bin/python bench/experiments/memory.py /work/bench_data/large/long

The kernel's high-water mark (VmHWM) is reset before each step by writing 5 to
/proc/self/clear_refs, so each line shows the peak of that step alone.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))

from raft_polars import losses as L
from raft_polars.logs import ID_COLUMNS, collect, read_log
from raft_polars.ranking import Selection, prompt_summary, rank


def status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) // 1024
    return 0


def step(name: str, func):
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status("VmRSS")
    t0 = time.perf_counter()
    out = func()
    print(f"{name:44s} {time.perf_counter() - t0:7.2f} s  RSS before {before:6d} MiB, "
          f"peak {status('VmHWM'):6d} MiB, after {status('VmRSS'):6d} MiB", flush=True)
    return out


def main() -> None:
    root = Path(sys.argv[1])
    tokens, rewards = str(root / "tokens"), str(root / "rewards")
    log = step("read_log", lambda: read_log(tokens, rewards=rewards))
    keys = step("keys: collect the rewards",
                lambda: collect(log, log.candidates.select(*ID_COLUMNS, "reward")))
    summary = step("prompt_summary",
                   lambda: prompt_summary(keys.lazy()).collect(engine="in-memory"))
    chosen = step("rank", lambda: rank(keys.lazy(), Selection()).collect(engine="in-memory"))
    step("token pass", lambda: L._long_token_stats(log, keys, chosen, per_response=False))
    step("floor: scan the 4 token columns", lambda: pl.scan_parquet(f"{tokens}/*.parquet").select(
        pl.col("stage", "prompt", "cand", "logprob").sum()).collect(engine="streaming"))
    step("token columns cast to Int64, sum", lambda: log.tokens.select(
        pl.col("stage", "prompt", "cand", "logprob").sum()).collect(engine="streaming"))
    if len(sys.argv) > 2:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import long_path
        step("proposed: numpy summary", lambda: long_path.numpy_summary(keys))
        raw = pl.scan_parquet(f"{tokens}/*.parquet")
        step("proposed: native token pass", lambda: long_path.native_token_stats(
            log, raw, keys, summary.select(*ID_COLUMNS, "reward")))


if __name__ == "__main__":
    main()
