"""Where ``validate``'s token pass spends its time, per token row, on one thread.

    python bench/validate_breakdown.py DATA [--files 8] [--reps 3]

DATA holds ``tokens/`` (the long layout, as ``bench/writers.py`` writes it). On
the first ``--files`` token files, warm, one thread, best of ``--reps``, in
nanoseconds per token row:

- ``polars read``: Polars decoding the same columns (the floor's decoder);
- ``pyarrow read``: pyarrow's strict decode alone (every page, checksums
  verified where stored), what ``validate`` needs for a file without checksums;
- ``page walk``: :func:`pages.verified`, which looks for those checksums;
- then ``validate``'s own steps on a unit of rows: ``decode`` (the strict read
  with its UTF-8 and dictionary checks), ``batch`` (dictionary ids as codes,
  :func:`_plain_batch`), ``to polars`` and ``cut`` (the compiled loop that cuts
  the rows into runs, :func:`_cut`).

The whole call runs these on two threads, with the candidate rows' checks beside
them; ``bench/validate_bench.py`` times it against the floor.
"""

from __future__ import annotations

import argparse
import glob
import time
from collections.abc import Callable
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="a directory with tokens/")
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()

    import polars as pl
    import pyarrow.parquet as pq

    files = sorted(glob.glob(f"{args.data}/tokens/*.parquet"))[: args.files]
    if not files:
        raise SystemExit(f"no token files under {args.data}/tokens")
    types = dict(pl.scan_parquet(files[0]).collect_schema())
    names = [n for n in ("stage", "prompt", "cand", "logprob", "token") if n in types]
    rows = sum(pq.read_metadata(f).num_rows for f in files)
    steps = _Steps(files, names, types)
    steps.run()  # the compiled loop loaded, the files in the page cache
    print(f"{len(files)} files, {rows:,} token rows; ns per row, one thread, best of {args.reps}")
    for name, took in _reads(files, names, args.reps).items():
        print(f"  {name:<14} {took / rows * 1e9:6.2f}")
    totals: dict[str, list[float]] = {name: [] for name in steps.times}
    for _ in range(args.reps):
        for name, took in steps.run().items():
            totals[name].append(took)
    for name, took in totals.items():
        print(f"  validate: {name:<10} {min(took) / rows * 1e9:6.2f}")
    whole = min(sum(t) for t in zip(*totals.values(), strict=True))
    print(f"  validate: {'all steps':<10} {whole / rows * 1e9:6.2f}")


def _best(call: Callable[[], None], reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def _reads(files: list[str], names: list[str], reps: int) -> dict[str, float]:
    """The best seconds of Polars' read, pyarrow's strict read and the page walk."""
    import polars as pl
    import pyarrow.parquet as pq

    from raft_polars._engine import pages

    def polars_read() -> None:
        for f in files:
            for _ in pl.scan_parquet(f).select(names).collect_batches():
                pass

    def pyarrow_read() -> None:
        for f in files:
            reader = pq.ParquetFile(f, memory_map=True, page_checksum_verification=True)
            for g in range(reader.metadata.num_row_groups):
                reader.read_row_group(g, columns=names, use_threads=False)

    def walk() -> None:
        with pages.remembering():
            for f in files:
                pages.verified(f)

    calls = {"polars read": polars_read, "pyarrow read": pyarrow_read, "page walk": walk}
    return {name: _best(call, reps) for name, call in calls.items()}


class _Steps:
    """validate's steps on the units of ``files``, each one timed."""

    def __init__(self, files: list[str], names: list[str], types: dict[str, Any]) -> None:
        self.files, self.names, self.types = files, names, types
        self.times = dict.fromkeys(("decode", "batch", "to polars", "cut"), 0.0)

    def _timed(self, name: str, call: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        got = call()
        self.times[name] += time.perf_counter() - start
        return got

    def run(self) -> dict[str, float]:
        import polars as pl

        from raft_polars._engine import validate as vk

        self.times = dict.fromkeys(self.times, 0.0)
        position = "token" in self.names
        names, types = self.names, self.types
        for f in self.files:
            for unit in vk._units(f, None):
                batches = self._timed("decode", lambda u=unit: vk._decode(u))
                frames: list[Any] = []
                for batch in batches:
                    wanted, texts = self._timed(
                        "batch",
                        lambda b=batch: vk._plain_batch(b.select(names), types, coded=True),
                    )
                    frame = self._timed("to polars", lambda w=wanted: pl.from_arrow(w))
                    frames.append(vk._Coded(frame, texts) if texts else frame)
                self._timed("cut", lambda fs=frames: vk._cut(fs, has_position=position))
        return dict(self.times)


if __name__ == "__main__":
    main()
