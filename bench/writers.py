"""Writer variety (issue 13): the same log content, written by other tools and ways.

The package's generator (``bench/datagen.py``) writes one way: Polars, zstd, its own
row-group sizes, int32 ids. Logs in the wild come from pyarrow, DuckDB, Spark or
JSON dumps, with other codecs, row groups, id widths and string keys. Each *writer
case* here rewrites the data set of ``datagen`` (same stages, prompts, candidates,
rewards and log-probs) one way, by streaming the source files batch by batch (memory
stays bounded at any size), one output file per source file:

    python bench/writers.py --size small --writers all      # convert (or reuse)
    python bench/writers.py --list                          # the cases

Layout of the data root::

    writers/<size>/<case>/tokens/*.parquet + rewards/*.parquet    long layout
    writers/<size>/<case>/*.parquet                               nested, wide
    writers/<size>/<case>/*.jsonl                                 JSON lines

``long_polars`` and ``nested_polars`` are the package's own files
(``<size>/long``, ``<size>/nested``), used where they are. Each converted case has
a ``manifest.json`` written last, like ``datagen``'s: a case is reused only when
the manifest matches the writer's spec and every file is still there with its size.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Literal

import datagen
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

_FORMAT = 1  # bump when the way a case is written changes
# JSON lines are ~3x the Parquet bytes and slow to write and read: only this size
JSONL_SIZES = ("small",)


@dataclass(frozen=True)
class Writer:
    """How one case writes the log.

    ``token_rows`` and ``cand_rows`` are the row-group sizes of the token rows and
    of the candidate rows (rewards, nested rows; wide rows hold ``cand_rows / K``
    prompts each). ``ids``: ``narrow`` is int16 ``cand`` and int32 ``stage``,
    ``prompt``, ``token``; ``int32`` keeps the source's types; ``int64`` widens all.
    ``prompt``: ``int``, or a 16-hex-digit hash string per prompt, dictionary-encoded
    (``str_dict``, pyarrow's default) or plain (``str_plain``, ``use_dictionary``
    without the prompt column)."""

    name: str
    layout: Literal["long", "nested", "wide"]
    tool: Literal["polars", "pyarrow", "duckdb"]
    fmt: Literal["parquet", "jsonl"] = "parquet"
    compression: str = "snappy"
    token_rows: int = 1 << 20
    cand_rows: int = 1 << 14
    ids: Literal["narrow", "int32", "int64"] = "narrow"
    prompt: Literal["int", "str_dict", "str_plain"] = "int"
    statistics: bool = True
    note: str = ""


WRITERS: dict[str, Writer] = {
    w.name: w
    for w in [
        Writer("long_polars", "long", "polars", compression="zstd", ids="int32",
               note="the package's generator: Polars, zstd, its row groups, int32 ids"),
        Writer("long_snappy", "long", "pyarrow",
               note="pyarrow, snappy, 1M token rows / 16K reward rows per group, int16 cand"),
        Writer("long_zstd_64k", "long", "pyarrow", compression="zstd", token_rows=1 << 16,
               cand_rows=1 << 10, note="pyarrow, zstd, 64K token rows / 1K reward rows per group"),
        Writer("long_int64", "long", "pyarrow", ids="int64",
               note="as long_snappy, every id int64"),
        Writer("long_str_dict", "long", "pyarrow", prompt="str_dict",
               note="as long_snappy, prompt ids 16-hex strings, dictionary-encoded"),
        Writer("long_str_plain", "long", "pyarrow", prompt="str_plain",
               note="as long_snappy, prompt ids 16-hex strings, plain encoding"),
        Writer("long_nostats", "long", "pyarrow", statistics=False,
               note="as long_snappy, no column statistics in the footers"),
        Writer("long_duckdb", "long", "duckdb", ids="int32",
               note="DuckDB COPY: snappy, its row groups (122,880 rows), int32 ids"),
        Writer("nested_polars", "nested", "polars", compression="zstd", ids="int32",
               note="the package's generator: Polars, zstd, 32K rows per group, int32 ids"),
        Writer("nested_snappy", "nested", "pyarrow",
               note="pyarrow, snappy, 16K rows per group, int16 cand"),
        Writer("nested_zstd_1k", "nested", "pyarrow", compression="zstd", cand_rows=1 << 10,
               note="pyarrow, zstd, 1K rows per group"),
        Writer("nested_int64", "nested", "pyarrow", ids="int64",
               note="as nested_snappy, every id int64"),
        Writer("nested_str_dict", "nested", "pyarrow", prompt="str_dict",
               note="as nested_snappy, prompt ids 16-hex strings, dictionary-encoded"),
        Writer("nested_str_plain", "nested", "pyarrow", prompt="str_plain",
               note="as nested_snappy, prompt ids 16-hex strings, plain encoding"),
        Writer("nested_duckdb", "nested", "duckdb", ids="int32",
               note="DuckDB COPY: snappy, its row groups, int32 ids"),
        Writer("wide_snappy", "wide", "pyarrow", cand_rows=1 << 14, ids="int32",
               note="one row per prompt, rewards list<double>, logprobs list<list<float>>; "
               "pyarrow, snappy, 2K prompts per group"),
        Writer("jsonl_nested", "nested", "polars", fmt="jsonl", compression="none",
               ids="int32", note="JSON lines, one candidate a line (Polars sink_ndjson)"),
        Writer("jsonl_wide", "wide", "polars", fmt="jsonl", compression="none", ids="int32",
               note="JSON lines, one prompt a line, as wide_snappy"),
    ]
}  # fmt: skip


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def select(spec: str, size: str) -> list[Writer]:
    """The writers named by ``spec``: ``all`` or comma-separated names or globs
    (``long_*``); JSON lines only at :data:`JSONL_SIZES` (a skipped name is logged)."""
    names: list[str] = []
    for part in spec.split(","):
        pattern = "*" if part.strip() == "all" else part.strip()
        found = [n for n in WRITERS if fnmatch(n, pattern)]
        if not found:
            msg = f"no writer case matches {part!r}; cases: {', '.join(WRITERS)}"
            raise SystemExit(msg)
        names += [n for n in found if n not in names]
    chosen = []
    for name in names:
        if WRITERS[name].fmt == "jsonl" and size not in JSONL_SIZES:
            _log(f"[writers] {name}: JSON lines only at size {', '.join(JSONL_SIZES)}; skipped")
            continue
        chosen.append(WRITERS[name])
    return chosen


# --- the files -----------------------------------------------------------------------


def _files(root: Path) -> dict[str, int]:
    return {
        str(p.relative_to(root)): p.stat().st_size
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix in (".parquet", ".jsonl")
    }


def paths(root: Path, writer: Writer) -> dict[str, str]:
    """Globs of a case's files, as ``queries`` takes them: ``tokens`` and
    ``rewards`` (long), ``nested`` or ``wide``."""
    ext = "jsonl" if writer.fmt == "jsonl" else "parquet"
    if writer.layout == "long":
        return {
            "tokens": str(root / "tokens" / "*.parquet"),
            "rewards": str(root / "rewards" / "*.parquet"),
        }
    return {writer.layout: str(root / f"*.{ext}")}


def ensure(data_root: Path, size: str, writer: Writer) -> Path:
    """The directory of one writer case, converted now unless a matching one exists."""
    if writer.tool == "polars" and writer.fmt == "parquet":
        return datagen.ensure(data_root, size, writer.layout)
    root = data_root / "writers" / size / writer.name
    spec = {"format": _FORMAT, "size": size, **datagen.SIZES[size], **asdict(writer)}
    spec.pop("note")
    manifest = root / "manifest.json"
    if manifest.is_file():
        try:
            found = json.loads(manifest.read_text())
        except ValueError:
            found = {}
        if found.get("spec") == spec and found.get("files") and found["files"] == _files(root):
            return root
    source = _source(data_root, size, writer)
    _log(f"[writers] writing {root} ({writer.note}) ...")
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    start = time.perf_counter()
    if writer.fmt == "jsonl":
        _jsonl(source, root)
    elif writer.tool == "duckdb":
        _duckdb(source, root)
    elif writer.layout == "long":
        for kind in ("tokens", "rewards"):
            (root / kind).mkdir()
            for part in sorted((source / kind).glob("*.parquet")):
                _pyarrow(part, root / kind / part.name, writer, kind, size)
    else:
        for part in sorted(source.glob("*.parquet")):
            _pyarrow(part, root / part.name, writer, writer.layout, size)
    seconds = time.perf_counter() - start
    files = _files(root)
    body = {
        "spec": spec,
        "files": files,
        "bytes": sum(files.values()),
        "written_in_s": round(seconds, 1),
    }
    tmp = root / "manifest.json.tmp"
    tmp.write_text(json.dumps(body, indent=1) + "\n")
    tmp.replace(manifest)
    _log(f"[writers] {root}: {sum(files.values()) / 2**20:,.0f} MiB in {seconds:.0f} s")
    return root


def drop(data_root: Path, size: str, writer: Writer) -> None:
    """Remove a converted case (never the package's own data sets)."""
    if writer.tool == "polars" and writer.fmt == "parquet":
        return
    root = data_root / "writers" / size / writer.name
    if root.exists():
        shutil.rmtree(root)
        _log(f"[writers] removed {root}")


def _source(data_root: Path, size: str, writer: Writer) -> Path:
    """What a case is converted from: the package's long or nested data set, or
    (JSON lines of wide rows) the wide Parquet case."""
    if writer.fmt == "jsonl" and writer.layout == "wide":
        return ensure(data_root, size, WRITERS["wide_snappy"])
    return datagen.ensure(data_root, size, "long" if writer.layout == "long" else "nested")


# --- converters ------------------------------------------------------------------------


def _jsonl(source: Path, root: Path) -> None:
    for part in sorted(source.glob("*.parquet")):
        pl.scan_parquet(part).sink_ndjson(root / (part.stem + ".jsonl"))


def _duckdb(source: Path, root: Path) -> None:
    import duckdb

    con = duckdb.connect()
    try:
        for part in sorted(source.rglob("*.parquet")):
            target = root / part.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            con.execute(
                f"COPY (SELECT * FROM read_parquet('{part}')) TO '{target}' "
                "(FORMAT parquet, COMPRESSION snappy)"
            )
    finally:
        con.close()


def _prompt_names(prompts: int) -> pa.Array:
    """A 16-hex-digit string per prompt id (splitmix64 of the id: distinct, and
    not ordered like the ids), as a pyarrow string array indexed by the id."""
    mask = (1 << 64) - 1
    names = []
    for p in range(prompts):
        z = (p + 0x9E3779B97F4A7C15) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        names.append(f"{z ^ (z >> 31):016x}")
    return pa.array(names, pa.string())


def _rechunk(path: Path, rows: int) -> Iterator[pa.Table]:
    """The rows of one Parquet file as tables of exactly ``rows`` rows (the last
    may be shorter), read batch by batch."""
    buf: list[pa.RecordBatch] = []
    held = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=min(rows, 1 << 16)):
        buf.append(batch)
        held += batch.num_rows
        while held >= rows:
            table = pa.Table.from_batches(buf)
            yield table.slice(0, rows)
            rest = table.slice(rows)
            buf, held = rest.to_batches(), rest.num_rows
    if held:
        yield pa.Table.from_batches(buf)


def _pyarrow(src: Path, dst: Path, writer: Writer, kind: str, size: str) -> None:
    """Rewrite one file with pyarrow: ids cast, prompts named, wide rows built;
    ``kind`` is ``tokens``, ``rewards``, ``nested`` or ``wide``."""
    shape = datagen.SIZES[size]
    k = shape["k"]
    names = _prompt_names(shape["prompts"]) if writer.prompt != "int" else None
    width = {"narrow": pa.int32(), "int32": pa.int32(), "int64": pa.int64()}[writer.ids]
    cand_type = pa.int16() if writer.ids == "narrow" else width

    def ids(table: pa.Table) -> pa.Table:
        for name in ("stage", "prompt", "cand", "token"):
            if name not in table.column_names:
                continue
            i = table.column_names.index(name)
            col = table.column(name)
            if name == "prompt" and names is not None:
                col = pc.take(names, col)
            else:
                col = col.cast(cand_type if name == "cand" else width)
            table = table.set_column(i, name, col)
        return table

    def widen(table: pa.Table) -> pa.Table:
        """K candidate rows of a prompt (contiguous, cand 0..K-1) into one row."""
        n = table.num_rows
        cand = table.column("cand").to_numpy()
        if n % k or not np.array_equal(cand, np.tile(np.arange(k, dtype=cand.dtype), n // k)):
            msg = f"{src}: the candidate rows are not K = {k} per prompt in cand order"
            raise ValueError(msg)
        offsets = pa.array(np.arange(0, n + 1, k, dtype=np.int32))
        rewards = table.column("reward").combine_chunks()
        logprobs = table.column("logprobs").combine_chunks().cast(pa.list_(pa.float32()))
        first = pa.array(np.arange(0, n, k))
        return pa.table(
            {
                "stage": table.column("stage").take(first),
                "prompt": table.column("prompt").take(first),
                "rewards": pa.ListArray.from_arrays(offsets, rewards),
                "logprobs": pa.ListArray.from_arrays(offsets, logprobs),
            }
        )

    rows = writer.token_rows if kind == "tokens" else writer.cand_rows
    out: pq.ParquetWriter | None = None
    try:
        for chunk in _rechunk(src, rows):
            table = ids(chunk)
            if kind == "nested":
                at = table.column_names.index("logprobs")
                lists = table.column("logprobs").cast(pa.list_(pa.float32()))
                table = table.set_column(at, "logprobs", lists)
            elif kind == "wide":
                table = widen(table)
            if out is None:
                dictionary: bool | list[str] = True
                if writer.prompt == "str_plain":
                    dictionary = [c for c in table.column_names if c != "prompt"]
                out = pq.ParquetWriter(
                    dst,
                    table.schema,
                    compression=writer.compression,
                    use_dictionary=dictionary,
                    write_statistics=writer.statistics,
                )
            out.write_table(table, row_group_size=table.num_rows)
    finally:
        if out is not None:
            out.close()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="convert (or reuse) the writer cases")
    parser.add_argument("--size", choices=sorted(datagen.SIZES), default="small")
    parser.add_argument("--data", type=Path, default=Path("/work/bench_data"))
    parser.add_argument("--writers", default="all", help="all, or names / globs, comma-separated")
    parser.add_argument("--list", action="store_true", help="print the cases and exit")
    args = parser.parse_args()
    if args.list:
        for w in WRITERS.values():
            print(f"{w.name:<18} {w.layout:<7} {w.note}")
        sys.exit(0)
    for w in select(args.writers, args.size):
        print(ensure(args.data, args.size, w))
