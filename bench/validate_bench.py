"""validate against the read floor: time and peak memory, each in a fresh process.

    python bench/validate_bench.py [--data /work/bench_data] [--size small|large]
        [--layouts long,nested] [--methods floor,stage_losses,validate] [--reps 2]
        [--case NAME=DIR ...]

Uses the data sets of ``bench/run.py`` (generate them with ``python
bench/datagen.py --size large``). For each layout it first reads every file once
(so that every method finds them in the page cache, the floor included), then
runs, each in its own process (``--case NAME=DIR``, repeated: those data sets
instead, side by side in one run, each long when ``DIR/tokens`` exists, else
nested; say, the same log written by Polars, without page checksums, and by the
package's generator, with them): ``floor`` (Polars reading the same columns with a
trivial sum, as in ``bench/queries.py``), ``stage_losses`` and ``validate`` (the
full pass: every candidate and token row checked, every file decoded strictly by
pyarrow), and prints the median seconds, the ratio to the floor, the CPU seconds
and the peak RSS (the child's VmHWM: after the first call, the peak of one call
in a fresh process, as the command line runs it; after every call, ``--reps``
calls back to back in one process, where memory one call freed is still held
by the allocators, for up to 1.5 s in Polars' jemalloc, when the next begins).
``validate`` must report the generated logs
as sound; the script exits 1 otherwise.
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
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    return 0
times, cpus, ok, first = [], [], None, None
for _ in range(reps):
    start, used = time.perf_counter(), time.process_time()
    out = call()
    times.append(time.perf_counter() - start)
    cpus.append(time.process_time() - used)
    first = hwm() if first is None else first
    if method == "validate":
        ok = out.ok
print(json.dumps({"times": times, "cpus": cpus, "peak": hwm(), "first": first, "ok": ok}))
"""


def run(method: str, layout: str, root: Path, reps: int) -> dict[str, object]:
    here = Path(__file__).resolve().parent
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, method, layout, str(root), str(reps), str(here)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


def warm(root: Path) -> None:
    """Read every file of a data set once, into the page cache."""
    for path in sorted(root.rglob("*.parquet")):
        with path.open("rb") as handle:
            while handle.read(16 << 20):
                pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="/work/bench_data")
    parser.add_argument("--size", default="large", choices=("small", "large"))
    parser.add_argument("--layouts", default="long,nested")
    parser.add_argument("--methods", default="floor,stage_losses,validate")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--case", action="append", default=[], help="NAME=DIR, repeatable")
    args = parser.parse_args()
    cases = [
        (layout, layout, Path(args.data) / args.size / layout) for layout in args.layouts.split(",")
    ]
    if args.case:
        named = [case.split("=", 1) for case in args.case]
        cases = [
            (name, "long" if (Path(d) / "tokens").is_dir() else "nested", Path(d))
            for name, d in named
        ]
    status = 0
    print(f"{'case':12} {'method':13} {'median s':>9} {'x floor':>8} {'CPU s':>7}", end=" ")
    print(f"{'1-call peak MiB':>16} {'peak RSS MiB':>13}")
    for name, layout, root in cases:
        warm(root)
        floor = None
        for method in args.methods.split(","):
            out = run(method, layout, root, args.reps)
            times, cpus = out["times"], out["cpus"]
            assert isinstance(times, list)
            assert isinstance(cpus, list)
            median = statistics.median(times)
            floor = median if method == "floor" else floor
            ratio = median / floor if floor else float("nan")
            cpu = statistics.median(cpus)
            print(
                f"{name:12} {method:13} {median:9.2f} {ratio:7.2f}x {cpu:7.2f}"
                f" {out['first']:16} {out['peak']:13}"
            )
            if method == "validate" and out["ok"] is not True:
                print(f"validate found problems in {root}", file=sys.stderr)
                status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
