"""validate against the read floor: time and peak memory, each in a fresh process.

    python bench/validate_bench.py [--data /work/bench_data] [--size small|large]
        [--layouts long,nested] [--reps 2]

Uses the data sets of ``bench/run.py`` (generate them with ``python
bench/datagen.py --size large``). For each layout it runs, each in its own
process: ``floor`` (Polars reading the same columns with a trivial sum, as in
``bench/queries.py``), ``stage_losses`` and ``validate`` (the full pass: every
candidate and token row checked, plus pyarrow's strict decode of every file), and
prints the median seconds, the ratio to the floor and the peak RSS (the child's
VmHWM). ``validate`` must report the generated logs as sound; the script exits 1
otherwise.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

_CHILD = r"""
import json, sys, time
method, layout, root, reps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
sys.path.insert(0, sys.argv[5])
import queries
import raft_polars as rp
if layout == "nested":
    files = {"nested": f"{root}/*.parquet"}
    kwargs = {"source": files["nested"]}
else:
    files = {"tokens": f"{root}/tokens/*.parquet", "rewards": f"{root}/rewards/*.parquet"}
    kwargs = {"source": files["tokens"], "rewards": files["rewards"]}
if method == "floor":
    call = queries.floor(files, layout)
elif method == "stage_losses":
    call = lambda: rp.stage_losses(**kwargs)
else:
    call = lambda: rp.validate(**kwargs)
times, ok = [], None
for _ in range(reps):
    start = time.perf_counter()
    out = call()
    times.append(time.perf_counter() - start)
    if method == "validate":
        ok = out.ok
peak = 0
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        peak = int(line.split()[1]) // 1024
print(json.dumps({"times": times, "peak": peak, "ok": ok}))
"""


def run(method: str, layout: str, root: Path, reps: int) -> dict[str, object]:
    here = Path(__file__).resolve().parent
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, method, layout, str(root), str(reps), str(here)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="/work/bench_data")
    parser.add_argument("--size", default="large", choices=("small", "large"))
    parser.add_argument("--layouts", default="long,nested")
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()
    status = 0
    print(f"{'layout':8} {'method':13} {'median s':>9} {'x floor':>8} {'peak RSS MiB':>13}")
    for layout in args.layouts.split(","):
        root = Path(args.data) / args.size / layout
        floor = None
        for method in ("floor", "stage_losses", "validate"):
            out = run(method, layout, root, args.reps)
            times = out["times"]
            assert isinstance(times, list)
            median = statistics.median(times)
            floor = median if method == "floor" else floor
            ratio = median / floor if floor else float("nan")
            print(f"{layout:8} {method:13} {median:9.2f} {ratio:7.2f}x {out['peak']:13}")
            if method == "validate" and out["ok"] is not True:
                print(f"validate found problems in {root}", file=sys.stderr)
                status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
