"""Timing helper of the experiments: quiet-gated repetitions, wall and CPU time.

Other sessions share the 2-core machine, so each repetition first waits (up to
90 s) until the other processes use < 0.2 cores, and CPU seconds (user + system
of this process) are reported beside wall seconds: they move less with load.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _busy() -> float:
    with open("/proc/stat") as stat:
        v = [int(x) for x in stat.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def quiet(limit: float = 90.0, threshold: float = 0.2) -> None:
    start = time.perf_counter()
    while time.perf_counter() - start < limit:
        b0 = _busy()
        time.sleep(0.5)
        if (_busy() - b0) / 0.5 < threshold:
            return


@dataclass
class Timing:
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    other: list[float] = field(default_factory=list)
    value: Any = None

    def med(self, xs: list[float]) -> float:
        return sorted(xs)[len(xs) // 2]


def run(name: str, func: Callable[[], Any], reps: int) -> Timing:
    out = Timing()
    for _ in range(reps):
        quiet()
        b0, c0, t0 = _busy(), _cpu(), time.perf_counter()
        out.value = func()
        wall, cpu = time.perf_counter() - t0, _cpu() - c0
        out.wall.append(wall)
        out.cpu.append(cpu)
        out.other.append(max(0.0, (_busy() - b0 - cpu) / wall))
    print(f"{name:46s} wall med {out.med(out.wall):6.3f} min {min(out.wall):6.3f} | "
          f"cpu med {out.med(out.cpu):6.3f} min {min(out.cpu):6.3f} | "
          f"other load max {max(out.other):.2f} cores", flush=True)
    return out


def report(results: dict[str, Timing], base: str) -> None:
    b = results[base]
    print(f"\n{'':46s} {'wall med':>9} {'x floor':>8} {'cpu med':>8} {'x floor':>8}")
    for name, t in results.items():
        print(f"{name:46s} {t.med(t.wall):9.3f} {t.med(t.wall) / b.med(b.wall):7.2f}x "
              f"{t.med(t.cpu):8.3f} {t.med(t.cpu) / b.med(b.cpu):7.2f}x")


def run_interleaved(funcs: dict[str, Callable[[], Any]], reps: int) -> dict[str, Timing]:
    """Like :func:`run` for several functions, round-robin, so drifting load hits
    them alike."""
    out = {name: Timing() for name in funcs}
    for _ in range(reps):
        for name, func in funcs.items():
            quiet()
            t = out[name]
            b0, c0, t0 = _busy(), _cpu(), time.perf_counter()
            t.value = func()
            wall, cpu = time.perf_counter() - t0, _cpu() - c0
            t.wall.append(wall)
            t.cpu.append(cpu)
            t.other.append(max(0.0, (_busy() - b0 - cpu) / wall))
    for name, t in out.items():
        print(f"{name:46s} wall med {t.med(t.wall):6.3f} min {min(t.wall):6.3f} | "
              f"cpu med {t.med(t.cpu):6.3f} min {min(t.cpu):6.3f} | "
              f"other load max {max(t.other):.2f} cores", flush=True)
    return out
