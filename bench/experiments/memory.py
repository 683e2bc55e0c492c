"""Time and peak RSS of each step of the long-layout path of the engine (issue 3).

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
from raft_polars.logs import read_log
from raft_polars.ranking import Selection


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


def ranking_steps(log: L.StageLog) -> tuple[object, pl.DataFrame]:
    keys = step("read_keys: the rewards, numpy summary", lambda: L.read_keys(log))
    _, chosen = step("rank_keys: checks, best-of-K", lambda: L.rank_keys(log, keys, Selection()))
    token_status = step("status table (+ footers)", lambda: L._token_status(log, keys, chosen))
    return token_status, chosen


def main() -> None:
    root = Path(sys.argv[1])
    tokens, rewards = str(root / "tokens"), str(root / "rewards")
    log = step("read_log", lambda: read_log(tokens, rewards=rewards))
    token_status, chosen = ranking_steps(log)  # the keys are freed before the pass
    step("token pass",
         lambda: L._long_token_stats(log, token_status, chosen, per_response=False))
    step("floor: scan the 4 token columns", lambda: pl.scan_parquet(f"{tokens}/*.parquet").select(
        pl.col("stage", "prompt", "cand", "logprob").sum()).collect(engine="streaming"))
    step("whole stage_losses", lambda: L.stage_losses(tokens, rewards=rewards))


if __name__ == "__main__":
    main()
