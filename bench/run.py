"""The raft_polars benchmark (issue 3): one command, see bench/README.md.

    /work/venv/bin/python bench/run.py --size all
    /work/venv/bin/python bench/run.py --size small --writers all
    /work/venv/bin/python bench/run.py --size small --ops all

Generates (or reuses) deterministic data with ``raft_polars.synth.generate``, runs
every method in its own fresh process (``bench/worker.py``), checks that all
answers agree to 4 decimals, and prints one table per case. Exits 1 on a
mismatch or a failed method.

``--writers`` runs the writer cases of ``bench/writers.py`` instead (the same log
written by pyarrow, DuckDB, as wide rows, as JSON lines, ...): ``stage_losses``
against the floor, DuckDB and hand-written Polars per case, then one summary
table of every case side by side. ``--ops`` runs ``read``, ``stage_stats``,
``best_of_n`` and ``validate`` (``bench/ops.py``) on writer cases, each against its
floor and the nearest DuckDB query.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import datagen  # noqa: E402 - sibling modules of this script
import ops  # noqa: E402
import writers  # noqa: E402

FILE_METHODS = ["floor", "duckdb", "pandas", "polars", "raft_polars"]
LIST_METHODS = ["numpy_loop", "raft_alignment"]
WRITER_METHODS = ["floor", "raft_polars", "duckdb", "polars"]
OPS_METHODS = ["floor", "raft_polars", "duckdb"]
# the cases --ops runs on unless --writers names others
OPS_WRITERS = "long_polars,nested_polars,wide_snappy,jsonl_nested"
CASES = {  # size -> layouts run at that size
    "small": ["long", "nested", "long_str"],
    "large": ["long", "nested"],
}
# pandas runs only where its estimated peak fits in this share of the RAM: the
# bytes per token row it needed at the small size (measured: see bench/README.md)
PANDAS_RAM_SHARE = 0.4
PANDAS_BYTES_PER_TOKEN = {"long": 60.0, "long_str": 90.0, "nested": 18.0}


# --- the machine ---------------------------------------------------------------------


def _meminfo_kib(key: str) -> int:
    with open("/proc/meminfo") as info:
        for line in info:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def machine() -> dict[str, str]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for dist in ("polars", "duckdb", "pandas", "pyarrow", "numpy", "raft-polars"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "-"
    try:
        commit = subprocess.run(
            ["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "-"
    found = importlib.util.find_spec("raft_polars")
    origin = str(Path(found.origin).parent) if found and found.origin else "-"
    return {
        "cpu": cpu,
        "nproc": str(os.cpu_count()),
        "ram": f"{_meminfo_kib('MemTotal') / 2**20:.1f} GiB",
        "python": platform.python_version(),
        "os": platform.platform(),
        **versions,
        "commit": commit,
        "raft_polars from": origin,
    }


# --- one method in a fresh process -----------------------------------------------------


class _Sampler(threading.Thread):
    """Samples the child's RSS and anonymous RSS from /proc every 10 ms."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak_rss, self.peak_anon = pid, 0, 0
        self.stop = threading.Event()

    def run(self) -> None:
        path = f"/proc/{self.pid}/status"
        while not self.stop.is_set():
            try:
                with open(path) as status:
                    for line in status:
                        if line.startswith("VmRSS:"):
                            self.peak_rss = max(self.peak_rss, int(line.split()[1]))
                        elif line.startswith("RssAnon:"):
                            self.peak_anon = max(self.peak_anon, int(line.split()[1]))
            except (OSError, ValueError):
                return
            self.stop.wait(0.01)


def _cpu_busy() -> tuple[float, float]:
    """Seconds of busy CPU time of the whole machine since boot, and now."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK"), time.perf_counter()


def wait_quiet(limit: float, threshold: float = 0.25) -> float:
    """Wait (at most ``limit`` s) until other processes use < ``threshold`` cores
    over one second; other sessions share this machine. Returns the seconds waited."""
    start = time.perf_counter()
    while True:
        busy0, t0 = _cpu_busy()
        time.sleep(1.0)
        busy1, t1 = _cpu_busy()
        if (busy1 - busy0) / (t1 - t0) < threshold or time.perf_counter() - start > limit:
            return time.perf_counter() - start


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``worker.py`` on ``spec``; add the sampled peaks and how many cores
    other processes kept busy meanwhile (``foreign_cores``).

    The peak RSS is the child's own ``VmHWM``, read by the child at its end:
    ``ru_maxrss`` (of ``wait4`` or ``getrusage``) is no good here, since Linux
    carries the parent's high-water mark into the child through fork + exec."""
    busy0, t0 = _cpu_busy()
    with tempfile.TemporaryFile(mode="w+") as out, tempfile.TemporaryFile(mode="w+") as err:
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "worker.py"), json.dumps(spec)], stdout=out, stderr=err
        )
        sampler = _Sampler(proc.pid)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        busy1, t1 = _cpu_busy()
        sampler.stop.set()
        sampler.join()
        out.seek(0)
        err.seek(0)
        lines = [ln for ln in out.read().splitlines() if ln.startswith("RESULT ")]
        errors = err.read().strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = errors[-1] if errors else "no output"
        return {"method": spec["method"], "failed": f"exit {proc.returncode}: {tail}"}
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    result["sampled_rss_kib"] = sampler.peak_rss
    result["sampled_anon_kib"] = sampler.peak_anon
    own = usage.ru_utime + usage.ru_stime
    result["foreign_cores"] = max(0.0, (busy1 - busy0 - own) / (t1 - t0))
    return result


def run_rounds(args: argparse.Namespace, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every spec ``args.rounds`` times, interleaved (each run a fresh process), so
    that load from other sessions hits all methods alike; times are pooled, the
    peak RSS is the largest of the runs."""
    merged: dict[str, dict[str, Any]] = {}
    for _ in range(args.rounds):
        for spec in specs:
            if args.quiet_wait > 0:
                wait_quiet(args.quiet_wait)
            res = run_worker(spec)
            name = spec["method"]
            old = merged.get(name)
            if old is None or "failed" in res:
                if old is None or "failed" not in old:
                    merged[name] = res
                continue
            if "failed" in old:
                continue
            if _differences(res["result"], old["result"]):
                old["result_changed"] = True
            old["times"] += res["times"]
            old["cpu"] += res["cpu"]
            for key in ("peak_rss_kib", "sampled_rss_kib", "sampled_anon_kib", "rss_import_kib"):
                old[key] = max(old[key], res[key])
            old["foreign_cores"] = max(old["foreign_cores"], res["foreign_cores"])
            if "seed_call_s" in res:
                old["seed_call_s"] = min(old["seed_call_s"], res["seed_call_s"])
    return [merged[spec["method"]] for spec in specs]


# --- cases -----------------------------------------------------------------------------


def _warm(root: Path) -> tuple[int, float]:
    """Read every file of a data set once so that all methods see a warm page cache."""
    start, total = time.perf_counter(), 0
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".parquet", ".jsonl")):
        with open(path, "rb") as handle:
            while block := handle.read(1 << 24):
                total += len(block)
    return total, time.perf_counter() - start


def _shape(root: Path, layout: str) -> dict[str, int]:
    import pyarrow.parquet as pq

    files = datagen.paths(root, layout)
    glob = files["nested"] if layout == "nested" else files["tokens"]
    rows = sum(pq.read_metadata(p).num_rows for p in sorted(Path(glob).parent.glob("*.parquet")))
    manifest = json.loads((root / "manifest.json").read_text())
    spec = manifest["spec"]
    candidates = spec["stages"] * spec["prompts"] * spec["k"]
    if layout == "nested":
        import polars as pl

        rows = int(
            pl.scan_parquet(glob).select(pl.col("logprobs").list.len().sum()).collect().item()
        )
    return {"tokens": rows, "candidates": candidates, "bytes": manifest["bytes"]}


def file_case(args: argparse.Namespace, size: str, layout: str) -> dict[str, Any]:
    root = datagen.ensure(args.data, size, layout)
    files = datagen.paths(root, layout)
    shape = _shape(root, layout)
    warmed, seconds = _warm(root)
    print(
        f"\n== {size} / {layout}: {shape['tokens']:,} tokens, {shape['candidates']:,} "
        f"candidates, {warmed / 2**20:,.0f} MiB of Parquet ({root}); page cache warmed "
        f"in {seconds:.1f} s",
        flush=True,
    )
    skipped: list[dict[str, Any]] = []
    methods = []
    for method in args.methods:
        if method not in FILE_METHODS:
            continue
        if method == "pandas":
            need = PANDAS_BYTES_PER_TOKEN[layout] * shape["tokens"]
            budget = PANDAS_RAM_SHARE * _meminfo_kib("MemTotal") * 1024
            if need > budget:
                reason = (
                    f"skipped: estimated peak {need / 2**30:.0f} GiB "
                    f"({PANDAS_BYTES_PER_TOKEN[layout]:.0f} B per token row, as "
                    f"measured at the small size) > {PANDAS_RAM_SHARE:.0%} of RAM "
                    f"({budget / 2**30:.0f} GiB)"
                )
                print(f"   {method:<14} {reason}", flush=True)
                skipped.append({"method": method, "skipped": reason})
                continue
        methods.append(method)
    order = [m for m in args.methods if m in FILE_METHODS]
    return _measure(
        args,
        f"{size}/{layout}",
        shape=shape,
        files=files,
        layout=layout,
        methods=methods,
        order=order,
        skipped=skipped,
    )


def _measure(
    args: argparse.Namespace,
    label: str,
    *,
    shape: dict[str, int],
    files: dict[str, str],
    layout: str,
    methods: list[str],
    order: list[str],
    skipped: list[dict[str, Any]],
    op: str | None = None,
) -> dict[str, Any]:
    """Run ``methods`` on ``files`` (rounds interleaved) and print each one's median."""
    rows = list(skipped)
    specs = []
    for method in methods:
        spec = {"method": method, "layout": layout, "reps": args.reps, "files": files}
        if op is not None:
            spec["op"] = op
        specs.append(spec)
    for res in run_rounds(args, specs):
        rows.append(res)
        if "failed" in res:
            print(f"   {res['method']:<14} FAILED {res['failed']}", flush=True)
        else:
            print(
                f"   {res['method']:<14} median {_median(res['times']):8.3f} s  "
                f"peak RSS {res['peak_rss_kib'] / 1024:8.0f} MiB",
                flush=True,
            )
    rows.sort(key=lambda r: order.index(r["method"]))
    return {"case": label, "shape": shape, "rows": rows}


def writer_cases(args: argparse.Namespace, size: str) -> list[dict[str, Any]]:
    """Each writer case of ``--writers`` (converted now if need be): stage_losses by
    every method, or (``--ops``) each op by the floor, raft_polars and DuckDB."""
    default = OPS_WRITERS if args.ops and args.writers is None else "all"
    cases = []
    for writer in writers.select(args.writers or default, size):
        root = writers.ensure(args.data, size, writer)
        files = writers.paths(root, writer)
        source = "long" if writer.layout == "long" else "nested"
        shape = _shape(datagen.ensure(args.data, size, source), source)
        shape["bytes"] = sum(writers._files(root).values())
        warmed, seconds = _warm(root)
        for op in args.ops or [None]:
            label = f"{size}/{writer.name}" + (f"/{op}" if op else "")
            print(
                f"\n== {label}: {shape['tokens']:,} tokens, {shape['candidates']:,} "
                f"candidates, {warmed / 2**20:,.0f} MiB ({root}; {writer.note}); page "
                f"cache warmed in {seconds:.1f} s",
                flush=True,
            )
            known = list(ops.OPS[op]) if op else [*WRITER_METHODS, "pandas"]
            pandas_ok = writer.fmt == "parquet" and writer.layout != "wide"
            skipped, methods = [], []
            for method in args.methods:
                if method not in known:
                    continue
                if method == "pandas" and not pandas_ok:
                    reason = "skipped: the pandas method reads Parquet in the long or nested layout"
                    skipped.append({"method": method, "skipped": reason})
                else:
                    methods.append(method)
            order = [m for m in args.methods if m in known]
            cases.append(
                _measure(
                    args,
                    label,
                    shape=shape,
                    files=files,
                    layout=writer.layout,
                    methods=methods,
                    order=order,
                    skipped=skipped,
                    op=op,
                )
            )
        if args.drop_data:
            writers.drop(args.data, size, writer)
    return cases


def list_case(args: argparse.Namespace) -> dict[str, Any]:
    shape = datagen.LIST_SHAPE
    tokens = (
        shape["stages"]
        * shape["prompts"]
        * shape["k"]
        * (shape["min_tokens"] + shape["max_tokens"])
        // 2
    )
    print(
        f"\n== list API: {shape} (~{tokens:,} tokens, nested Python lists), seed {datagen.SEED}",
        flush=True,
    )
    specs = [
        {
            "method": method,
            "layout": "list",
            "reps": args.reps,
            "shape": shape,
            "seed": datagen.SEED,
        }
        for method in args.methods
        if method in LIST_METHODS
    ]
    rows = run_rounds(args, specs)
    for res in rows:
        if "failed" in res:
            print(f"   {res['method']:<14} FAILED {res['failed']}", flush=True)
        else:
            print(
                f"   {res['method']:<14} median {_median(res['times']):8.4f} s  seed example "
                f"{res['seed_call_s'] * 1e6:8.1f} us/call",
                flush=True,
            )
    return {"case": "list", "shape": {"tokens": tokens}, "rows": rows}


# --- checks and tables ----------------------------------------------------------------


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _differences(got: dict[str, Any], ref: dict[str, Any]) -> list[str]:
    """How two answers ``{key: [value, ...]}`` differ (``stage_losses``: ``{stage:
    [loss, tokens]}``): floats rounded to 4 decimals (equal within 1e-9 also passes,
    for values on a rounding edge), integers exactly, where both have a value (a
    method that does not count tokens gives None). Empty when they agree."""
    if sorted(got) != sorted(ref):
        return [f"keys {sorted(got)} vs {sorted(ref)}"]
    out = []
    for key, values in ref.items():
        other = got[key]
        if len(other) != len(values):
            out.append(f"{key}: {other!r} vs {values!r}")
            continue
        for i, (mine, theirs) in enumerate(zip(other, values, strict=True)):
            if mine is None or theirs is None or (_nan(mine) and _nan(theirs)):
                continue  # not counted by one of them, or NaN on both sides
            if isinstance(mine, float) or isinstance(theirs, float):
                same = round(mine, 4) == round(theirs, 4) or abs(mine - theirs) <= 1e-9
            else:
                same = mine == theirs
            if not same:
                out.append(f"{key}, value {i}: {mine!r} vs {theirs!r}")
    return out


def check(case: dict[str, Any]) -> list[str]:
    """Every method's per-stage losses equal the reference's when rounded to 4 decimals
    (and its selected token counts, where it reports them)."""
    answers = [r for r in case["rows"] if r.get("result")]
    if not answers:
        return []
    ref = next((r for r in answers if r["method"] in ("raft_polars", "numpy_loop")), answers[0])
    problems = []
    for row in answers:
        if row.get("result_changed"):
            problems.append(
                f"MISMATCH {case['case']}: {row['method']} gave different "
                "answers (rounded to 4 decimals) in different runs"
            )
        if row.get("seed_mismatch"):
            problems.append(
                f"MISMATCH {case['case']}: {row['method']} gives "
                f"{row['seed_mismatch']} on the seed example"
            )
        if row is ref:
            continue
        problems.extend(
            f"MISMATCH {case['case']}: {row['method']} vs {ref['method']}: {d}"
            for d in _differences(row["result"], ref["result"])
        )
    return problems


def table(case: dict[str, Any]) -> str:
    rows = case["rows"]
    is_list = case["case"] == "list"
    base_name = "numpy_loop" if is_list else "floor"
    timed = {r["method"]: _median(r["times"]) for r in rows if "times" in r}
    base = timed.get(base_name)
    ours = timed.get("raft_alignment" if is_list else "raft_polars")
    head = (
        f"{'method':<15}{'median s':>10}{'min s':>9}{'x ' + base_name:>13}"
        f"{'peer / ours':>13}{'cpu s':>8}{'peak RSS MiB':>14}{'anon MiB':>10}"
        f"{'after import':>14}{'other load':>12}"
    )
    if is_list:
        head += f"{'seed us/call':>14}"
    lines = [f"### {case['case']}  ({case['shape']['tokens']:,} tokens)", "", head, "-" * len(head)]
    for r in rows:
        name = r["method"]
        if name not in timed:
            lines.append(f"{name:<15}{r.get('skipped') or 'FAILED ' + r.get('failed', '')}")
            continue
        med = timed[name]
        x_base = f"{med / base:.2f}x" if base else "-"
        peer = (
            f"{med / ours:.2f}x"
            if ours and name not in ("raft_polars", "raft_alignment", "floor")
            else "-"
        )
        line = (
            f"{name:<15}{med:>10.3f}{min(r['times']):>9.3f}{x_base:>13}{peer:>13}"
            f"{_median(r['cpu']):>8.2f}"
            f"{r['peak_rss_kib'] / 1024:>14,.0f}{r['sampled_anon_kib'] / 1024:>10,.0f}"
            f"{r['rss_import_kib'] / 1024:>14,.0f}{r['foreign_cores']:>11.2f}c"
        )
        if is_list:
            line += f"{r['seed_call_s'] * 1e6:>14.1f}"
        lines.append(line)
    return "\n".join(lines)


def summary(cases: list[dict[str, Any]]) -> str:
    """Every case in one Markdown table: each method's median seconds, its ratio to
    the floor, raft_polars against its peers, and the peak RSS of each."""
    names = [m for m in WRITER_METHODS if any(r["method"] == m for c in cases for r in c["rows"])]
    head = ["case", "tokens", "MiB"] + [
        f"{m} s" + (" (x floor)" if m != "floor" else "") for m in names
    ]
    head += [f"{m} / ours" for m in names if m not in ("floor", "raft_polars")]
    head += ["peak RSS MiB " + " / ".join(names)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
    for case in cases:
        by = {r["method"]: r for r in case["rows"] if "times" in r}
        med = {m: _median(r["times"]) for m, r in by.items()}
        floor, ours = med.get("floor"), med.get("raft_polars")
        cells = [case["case"], f"{case['shape']['tokens'] / 1e6:,.0f} M"]
        cells.append(f"{case['shape']['bytes'] / 2**20:,.0f}")
        for m in names:
            if m not in med:
                cells.append("-")
                continue
            ratio = f" ({med[m] / floor:.2f}x)" if floor and m != "floor" else ""
            bold = "**" if m == "raft_polars" else ""
            cells.append(f"{bold}{med[m]:.3f}{bold}{ratio}")
        for m in names:
            if m not in ("floor", "raft_polars"):
                cells.append(f"{med[m] / ours:.2f}x" if m in med and ours else "-")
        cells.append(
            " / ".join(f"{by[m]['peak_rss_kib'] / 1024:,.0f}" if m in by else "-" for m in names)
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size",
        choices=["small", "large", "list", "all"],
        default="all",
        help="all = small, then list, then large",
    )
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per method")
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="fresh processes per method, interleaved; times are pooled",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        help="before each run, wait up to this many seconds for the "
        "other processes on the machine to go idle (0: never)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=Path("/work/bench_data"),
        help="where the generated data lives (outside the repository)",
    )
    parser.add_argument(
        "--methods",
        default=None,
        help="comma-separated subset of: "
        + ",".join(FILE_METHODS + LIST_METHODS)
        + f" (default: all of them; with --writers {','.join(WRITER_METHODS)}, "
        f"with --ops {','.join(OPS_METHODS)})",
    )
    parser.add_argument(
        "--layouts", default=None, help="comma-separated subset of: long, nested, long_str"
    )
    parser.add_argument(
        "--writers",
        default=None,
        help="run the writer cases of bench/writers.py instead: 'all', or names or "
        "globs, comma-separated (long_*,nested_snappy); JSON lines only at --size small",
    )
    parser.add_argument(
        "--ops",
        default=None,
        help="time these operations instead of stage_losses: 'all' or a subset of "
        f"{','.join(ops.OPS)}, on the writer cases of --writers (default: {OPS_WRITERS})",
    )
    parser.add_argument(
        "--drop-data",
        action="store_true",
        help="remove each converted writer case once measured (bounds the disk used)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write every measurement here")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.ops is not None:
        args.ops = list(ops.OPS) if args.ops == "all" else args.ops.split(",")
        unknown = sorted(set(args.ops) - set(ops.OPS))
        if unknown:
            parser.error(f"unknown --ops {unknown}; known: {', '.join(ops.OPS)}")
    by_writer = args.writers is not None or args.ops is not None
    if args.methods is None:
        default = OPS_METHODS if args.ops else WRITER_METHODS if by_writer else None
        args.methods = default or FILE_METHODS + LIST_METHODS
    else:
        args.methods = args.methods.split(",")
    if by_writer and args.size == "list":
        parser.error("--writers and --ops run at --size small, large or all")
    sizes = ["small", "list", "large"] if args.size == "all" else [args.size]
    if by_writer:
        sizes = [size for size in sizes if size != "list"]
    info = machine()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    print(
        f"{args.rounds} rounds x {args.reps} reps per method (median of all reported), "
        "each run a fresh process, rounds interleaved; peak RSS = VmHWM of the "
        "child (its kernel high-water mark), anon = peak RssAnon sampled every 10 ms",
        flush=True,
    )
    cases = []
    for size in sizes:
        if by_writer:
            cases.extend(writer_cases(args, size))
            continue
        if size == "list":
            cases.append(list_case(args))
            continue
        layouts = CASES[size]
        if args.layouts:
            layouts = [lay for lay in layouts if lay in args.layouts.split(",")]
        cases.extend(file_case(args, size, layout) for layout in layouts)
    problems = [p for case in cases for p in check(case)]
    failed = [
        f"FAILED {case['case']}: {r['method']}: {r['failed']}"
        for case in cases
        for r in case["rows"]
        if "failed" in r
    ]
    print()
    for case in cases:
        print(table(case) + "\n")
    if by_writer:
        print(summary(cases) + "\n")
    for line in problems + failed:
        print(line)
    if not problems and not failed:
        print("all methods agree to 4 decimals")
    if args.json:
        args.json.write_text(
            json.dumps({"machine": info, "reps": args.reps, "cases": cases}, indent=1) + "\n"
        )
    return 1 if problems or failed else 0


if __name__ == "__main__":
    sys.exit(main())
