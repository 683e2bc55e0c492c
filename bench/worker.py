"""One method, timed in this fresh process; prints one JSON line for ``run.py``.

Usage (run.py does this; by hand only to debug one method)::

    python bench/worker.py '{"method": "raft_polars", "layout": "long", "reps": 5,
                             "files": {"tokens": "...", "rewards": "..."}}'

(with ``"op": "stage_stats"`` and the like, a method of ``bench/ops.py``.)

Imports and setup happen before the clock starts; each repetition times the query
only (``time.perf_counter`` around the call, plus the process's CPU seconds from
``getrusage``). The JSON line holds every repetition's seconds, the answer, the
RSS right after the imports and the peak RSS (``VmHWM``: the kernel's
high-water mark of this process since its exec).
"""

from __future__ import annotations

import json
import resource
import sys
import time
import timeit
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import queries


def _rss_kib(key: str = "VmRSS") -> int:
    """A memory figure of this process from /proc/self/status, in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _time(query: Any, reps: int) -> tuple[list[float], list[float], Any]:
    """Wall seconds and CPU seconds (user + system, all threads) of each call."""
    times, cpus = [], []
    result = None
    for _ in range(reps):
        cpu = _cpu()
        start = time.perf_counter()
        result = query()
        times.append(time.perf_counter() - start)
        cpus.append(_cpu() - cpu)
    return times, cpus, result


def _per_call(func: Any, *args: Any) -> float:
    """Median seconds per call of ``func(*args)`` with timeit, many calls per run."""
    timer = timeit.Timer(lambda: func(*args))
    number, _ = timer.autorange()  # calls that take >= 0.2 s
    runs = sorted(t / number for t in timer.repeat(repeat=7, number=number))
    return runs[len(runs) // 2]


def main(spec: dict[str, Any]) -> dict[str, Any]:
    method, layout, reps = spec["method"], spec["layout"], spec["reps"]
    out: dict[str, Any] = {"method": method, "layout": layout}
    if layout == "list":
        if method == "numpy_loop":
            func = queries.numpy_loop
        else:
            from raft_polars import raft_alignment as func
        import numpy  # noqa: F401 - both methods use it; keep the import out of the clock

        lps, rws = queries.list_case(spec["shape"], spec["seed"])
        out["rss_import_kib"] = _rss_kib()
        times, cpus, losses = _time(lambda: func(lps, rws), reps)
        out["result"] = {str(i): [loss, None] for i, loss in enumerate(losses)}
        seed = func(queries.SEED_LOGPROBS, queries.SEED_REWARDS)
        if seed != queries.SEED_ANSWER:
            out["seed_mismatch"] = seed
        out["seed_call_s"] = _per_call(func, queries.SEED_LOGPROBS, queries.SEED_REWARDS)
    else:
        if spec.get("op"):  # another operation than stage_losses (bench/ops.py)
            import ops

            query = ops.OPS[spec["op"]][method](spec["files"], layout)
        else:
            query = queries.FILE_METHODS[method](spec["files"], layout)
        out["rss_import_kib"] = _rss_kib()
        times, cpus, result = _time(query, reps)
        out["result"] = {str(k): list(v) for k, v in result.items()}
    out["times"] = times
    out["cpu"] = cpus
    # the kernel's RSS high-water mark of this process since its exec; unlike
    # ru_maxrss it does not inherit the parent's peak through fork + exec
    out["peak_rss_kib"] = _rss_kib("VmHWM")
    out["ru_maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return out


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(json.loads(sys.argv[1]))), flush=True)
