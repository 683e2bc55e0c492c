"""The page walk that lets ``validate`` skip the strict decode of a Parquet file.

:func:`pages.verified` vouches for a file only when every page's bytes match
the CRC its header carries and the headers agree with the footer. The contract
checked here, against the readers themselves: a file it vouches for decodes, in
Polars, to exactly what was written; a corrupted byte anywhere before the footer
(page headers and page bytes) either is caught or changes nothing Polars
decodes. Files without checksums, and data pages of version 2 (their level
lengths lie outside the CRC), are left to the strict reader. ``validate`` on a
file the walk vouches for but Polars cannot decode reports it, as it reports a
file pyarrow rejects.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import dask_cluster
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.exceptions import PanicException

import raft_polars as rp
from raft_polars._engine import pages
from raft_polars.synth import generate


def _table(rows: int = 300) -> pa.Table:
    rng = np.random.default_rng(0)
    logprob = -rng.random(rows)
    return pa.table({
        "stage": np.repeat([0, 1], rows // 2).astype(np.int32),
        "prompt": rng.integers(0, 5, rows).astype(np.int64),
        "cand": rng.integers(0, 3, rows).astype(np.int16),
        "token": pa.array(np.arange(rows, dtype=np.int32), mask=np.arange(rows) % 97 == 5),
        "logprob": logprob.astype(np.float32),
        "name": [f"p{i % 7}" for i in range(rows)],
    })  # fmt: skip


def _nested() -> pa.Table:
    return pa.table({
        "stage": [0, 0, 1, 1],
        "prompt": ["a", "b", "a", "b"],
        "cand": [0, 0, 0, 1],
        "reward": [0.5, None, 1.0, 2.0],
        "logprobs": [[-0.1, -0.2], None, [-0.3, None, -0.5], []],
    })  # fmt: skip


WRITERS: dict[str, tuple[Any, dict[str, Any]]] = {
    "zstd, dictionary": (_table, {"compression": "zstd", "row_group_size": 120}),
    "snappy, small pages": (_table, {"compression": "snappy", "data_page_size": 256}),
    "gzip, plain": (_table, {"compression": "gzip", "use_dictionary": False}),
    "uncompressed": (_table, {"compression": "none", "row_group_size": 100}),
    "nested lists": (_nested, {"compression": "zstd"}),
}


def _write(path: Path, table: pa.Table, **options: Any) -> bytes:
    pq.write_table(table, path, write_page_checksum=True, **options)
    return path.read_bytes()


def _footer_start(data: bytes) -> int:
    return len(data) - 8 - int.from_bytes(data[-8:-4], "little")


@pytest.mark.parametrize("writer", list(WRITERS))
def test_checksummed_files_are_vouched_for(tmp_path: Path, writer: str) -> None:
    make, options = WRITERS[writer]
    path = tmp_path / "log.parquet"
    _write(path, make(), **options)
    assert pages.verified(str(path))


def test_files_without_checksums_or_with_v2_pages_are_not(tmp_path: Path) -> None:
    table = _table()
    plain, v2, polars, empty, text = (tmp_path / f"{n}.parquet" for n in "abcde")
    pq.write_table(table, plain)  # no checksums
    pq.write_table(table, v2, write_page_checksum=True, data_page_version="2.0")
    pl.from_arrow(table).write_parquet(polars)  # type: ignore[union-attr]
    empty.write_bytes(b"")
    text.write_text("stage,prompt\n0,1\n")
    for path in (plain, v2, polars, empty, text, tmp_path / "missing.parquet"):
        assert not pages.verified(str(path)), path.name


@pytest.mark.parametrize("checksums", [False, True])
@pytest.mark.parametrize("version", ["1.0", "2.0"])
def test_sound_files_of_other_writers_are_not_suspect(
    tmp_path: Path, checksums: bool, version: str
) -> None:
    """Files a writer wrote as it should are never suspect (a suspect file costs
    validate a second decode): a list of required items holding empty and null
    lists (their count in the item's null count), a dictionary page the footer
    names PLAIN_DICTIONARY or RLE_DICTIONARY (DuckDB), version-2 pages. With
    checksums and version-1 pages, they are vouched for."""
    import duckdb

    items = pa.list_(pa.field("item", pa.float64(), nullable=False))
    table = pa.table({
        "stage": [0, 0, 0, 0], "prompt": [0, 0, 1, 1], "cand": [0, 1, 0, 1],
        "reward": [1.0, 2.0, 0.5, 0.1],
        "logprobs": pa.array([[-1.0], None, [], [-0.5, -0.2]], items),
    })  # fmt: skip
    path = tmp_path / "log.parquet"
    pq.write_table(table, path, write_page_checksum=checksums, data_page_version=version)
    assert not pages.suspect(str(path))
    assert pages.verified(str(path)) == (checksums and version == "1.0")
    duck = tmp_path / "duck.parquet"
    con = duckdb.connect()
    con.register("t", _table())
    con.execute(f"COPY t TO '{duck}' (FORMAT parquet, PARQUET_VERSION v{version[0]})")
    assert not pages.suspect(str(duck))


def test_verdicts_are_remembered_for_the_file_as_it_is(tmp_path: Path) -> None:
    """validate walks each file once (``pages.remembering``), but a verdict is
    for the file as it was: rewritten, it is walked again, and blocks opened
    and closed by other threads in between neither drop nor mix them up."""
    import os
    import threading

    path = tmp_path / "log.parquet"
    pq.write_table(_table(), path, write_page_checksum=True)
    raw = path.read_bytes()
    with pages.remembering():
        assert pages.verified(str(path))

        def block() -> None:
            with pages.remembering():
                assert pages.verified(str(path))

        other = threading.Thread(target=block)  # opened and closed in another thread
        other.start()
        other.join()
        flipped = bytearray(raw)
        flipped[len(raw) // 3] ^= 0x10  # within a page: its CRC no longer matches
        path.write_bytes(bytes(flipped))
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        assert not pages.verified(str(path))
    assert pages._REMEMBERING == [0]  # every block closed: nothing is kept
    assert not pages._REMEMBERED


def test_a_view_of_the_map_held_elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Dask worker's sampling profiler can hold a frame, and with it a view of
    the mapped file, past the walk: closing the map then raised BufferError out
    of validate (CI, the Dask executor). The walk answers; the map closes with
    its last view."""
    path = tmp_path / "log.parquet"
    _write(path, _table())
    held: list[Any] = []
    crc32 = pages.crc32  # type: ignore[attr-defined]

    def holding(buffer: Any) -> int:
        held.append(buffer)  # a slice of the map, kept
        return crc32(buffer)

    monkeypatch.setattr(pages, "crc32", holding)
    assert pages.verified(str(path))
    assert held
    assert bytes(held[0]) in path.read_bytes()  # the map is still open under the view
    held.clear()


def test_an_empty_table_is_vouched_for(tmp_path: Path) -> None:
    path = tmp_path / "empty.parquet"
    _write(path, _table().slice(0, 0))
    assert pages.verified(str(path))


@pytest.mark.parametrize("writer", list(WRITERS))
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_a_flipped_bit_before_the_footer_is_caught_or_changes_nothing(
    tmp_path_factory: pytest.TempPathFactory, writer: str, data: st.DataObject
) -> None:
    make, options = WRITERS[writer]
    path = tmp_path_factory.mktemp("flip") / "log.parquet"
    written = _write(path, make(), **options)
    truth = pl.read_parquet(io.BytesIO(written))
    at = data.draw(st.integers(4, _footer_start(written) - 1), label="byte")
    bit = data.draw(st.integers(0, 7), label="bit")
    flipped = bytearray(written)
    flipped[at] ^= 1 << bit
    path.write_bytes(bytes(flipped))
    if pages.verified(str(path)):  # then Polars decodes what was written, or fails
        try:  # a header field outside the CRC that the walk cannot check against the
            got = pl.read_parquet(path)  # footer (a string dictionary's value count):
        except (pl.exceptions.ComputeError, PanicException):  # Polars rejects it, and
            return  # validate reads the file strictly (the test below)
        assert got.rows() == truth.rows()


def test_every_flip_in_the_footer_gives_an_answer(tmp_path: Path) -> None:
    """The footer is read by the walk itself (pyarrow's reader aborts the
    process on some corrupted footers): every flip gives True or False."""
    path = tmp_path / "log.parquet"
    written = _write(path, _nested(), compression="zstd")
    answers = set()
    for at in range(_footer_start(written), len(written)):
        for bit in range(8):
            flipped = bytearray(written)
            flipped[at] ^= 1 << bit
            path.write_bytes(bytes(flipped))
            answers.add(pages.verified(str(path)))
    assert answers == {True, False}


# --- the footer's compiled reader against a plain one ------------------------------------------


def _reference_chunks(data: bytes) -> tuple[Any, Any]:
    """The column chunks of a footer, read by the plain Thrift reader
    (``pages._Thrift``, dicts of fields) and checked field by field: the
    reference for the compiled reader behind :func:`pages._chunks`."""
    size = len(data)
    if size < 12 or data[-4:] != b"PAR1":
        raise pages._Malformed("not a Parquet file")
    length = int.from_bytes(data[-8:-4], "little")
    if length > size - 12:
        raise pages._Malformed("a footer longer than the file")
    meta, _ = pages._Thrift(data[size - 8 - length : size - 8]).struct()
    leaves = pages._leaves(meta[2])
    rows: list[tuple[int, ...]] = []
    stated: list[int] = []
    for group in meta[4]:
        columns = group[1]
        if len(columns) != len(leaves):
            raise pages._Malformed("a row group without a chunk for each column")
        for chunk, (flat, element, defs, _) in zip(columns, leaves, strict=True):
            if chunk.get(1) is not None:
                raise pages._Malformed("a column chunk in another file")
            column = chunk[3]
            wanted = {1: pages._I32, 2: pages._LIST, 4: pages._I32}
            wanted.update(dict.fromkeys((5, 6, 7, 9), pages._I64))
            pages._typed(column, wanted)
            if element.get(1) != column[1]:
                raise pages._Malformed("the schema and a column chunk differ on the type")
            if not column[3] or element.get(4) != column[3][-1]:
                raise pages._Malformed("the schema and a column chunk differ on the name")
            # Parquet counts a leaf's nulls at every level: a required one under an
            # optional or repeated field counts the null (and empty) lists above it
            if element.get(3) == 0 and defs == 0 and (column.get(12) or {}).get(3, 0):
                raise pages._Malformed("nulls in a required column")
            start = column.get(11) or column[9]
            known = sum(1 << code for code in set(column[2]) if 0 <= code < 63)
            width = pages._VALUE_BYTES.get(column[1], -1)
            if column[1] == 7:
                width = element.get(2, -1)
            counts = column.get(13)
            for stat in counts or ():
                stated.extend([len(rows) << 16 | stat[1] << 8 | stat[2]] * stat[3])
            rows.append((
                start, start + column[7], column[6], column[5], group[3] if flat else -1,
                known | pages._LEVELS, width, counts is not None, column[4],
            ))  # fmt: skip
    return np.array(rows, dtype=np.int64).reshape(len(rows), 9), np.array(stated, dtype=np.int64)


def _both_chunks(data: bytes) -> tuple[Any, Any]:
    """Each reader's table and page keys, or None where it refuses the footer."""
    answers: list[Any] = []
    for read in (pages._chunks, _reference_chunks):
        try:
            table, keys = read(data)
        except Exception:  # the reference fails on any field it cannot use
            answers.append(None)
        else:
            answers.append((table, np.sort(keys)))
    return answers[0], answers[1]


def _same_chunks(compiled: Any, reference: Any) -> None:
    """The compiled reader refuses every footer the reference refuses and reads
    the others as it does, or refuses them too (it is the stricter one: a field
    it keeps in another type, or negative, is a footer it does not vouch for)."""
    if reference is None:
        assert compiled is None
    elif compiled is not None:
        assert np.array_equal(compiled[0], reference[0])
        assert np.array_equal(compiled[1], reference[1])


@pytest.mark.parametrize("writer", list(WRITERS))
def test_the_compiled_footer_reader_reads_what_the_plain_one_does(
    tmp_path: Path, writer: str
) -> None:
    make, options = WRITERS[writer]
    written = _write(tmp_path / "log.parquet", make(), **options)
    compiled, reference = _both_chunks(written)
    assert compiled is not None
    assert reference is not None
    _same_chunks(compiled, reference)
    assert len(compiled[0]) >= 5  # a chunk a column at least


def test_a_required_item_counts_the_null_lists_above_it(tmp_path: Path) -> None:
    """A list whose items are required, in a file with a null and an empty list:
    the item's null count (2) counts them, and both readers take the footer (the
    plain one refused it, so that a flipped bit read as such a count failed the
    comparison)."""
    item = pa.field("item", pa.float64(), nullable=False)
    table = pa.table({"lp": pa.array([[-1.0], None, []], type=pa.list_(item))})
    pq.write_table(table, tmp_path / "log.parquet")
    meta = pq.ParquetFile(tmp_path / "log.parquet").metadata
    assert meta.row_group(0).column(0).statistics.null_count == 2
    compiled, reference = _both_chunks((tmp_path / "log.parquet").read_bytes())
    assert compiled is not None
    assert reference is not None
    _same_chunks(compiled, reference)


@pytest.mark.parametrize("writer", list(WRITERS))
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_a_corrupted_footer_is_refused_or_read_as_the_plain_reader_reads_it(
    tmp_path_factory: pytest.TempPathFactory, writer: str, data: st.DataObject
) -> None:
    make, options = WRITERS[writer]
    written = _write(tmp_path_factory.mktemp("footer") / "log.parquet", make(), **options)
    start = _footer_start(written)
    flipped = bytearray(written)
    for _ in range(data.draw(st.integers(1, 3), label="flips")):
        at = data.draw(st.integers(start, len(written) - 9), label="byte")
        flipped[at] ^= 1 << data.draw(st.integers(0, 7), label="bit")
    _same_chunks(*_both_chunks(bytes(flipped)))
    cut = data.draw(st.integers(start, len(written) - 9), label="cut")  # a footer cut short
    shorter = len(written) - 8 - cut
    short = written[:cut] + shorter.to_bytes(4, "little") + b"PAR1"
    _same_chunks(*_both_chunks(short))


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


@pytest.mark.parametrize(
    "footer",
    [
        bytes([0x68]) + _varint(2**64 - 11),  # a binary's length that wraps to -11
        bytes([0x69]) + bytes([0xF5]) + _varint(2**64 - 1),  # a list's count that wraps
        bytes([0x16]) + _varint(2**64 - 1),  # an integer of 64 bits
    ],
    ids=["binary-length", "list-count", "integer"],
)
def test_a_varint_past_63_bits_is_refused_at_once(tmp_path: Path, footer: bytes) -> None:
    """Lengths are read as unsigned varints; one of 2**63 or more wrapped to a
    negative int64 and stepped the reader back over the same bytes forever."""
    import subprocess
    import sys

    path = tmp_path / "log.parquet"
    path.write_bytes(b"PAR1" + footer + len(footer).to_bytes(4, "little") + b"PAR1")
    assert _both_chunks(path.read_bytes())[1] is None  # the plain reader refuses it too
    code = "import sys; from raft_polars._engine import pages; print(pages.verified(sys.argv[1]))"
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def _footer_flip_polars_rejects(path: Path, written: bytes) -> bytes:
    """A flip in the footer that the walk cannot see (no checksum covers the
    footer), that leaves the schema as it was but keeps Polars from decoding
    the file's pages."""
    schema = pl.read_parquet_schema(io.BytesIO(written))
    for at in range(_footer_start(written), len(written)):
        for bit in range(8):
            flipped = bytearray(written)
            flipped[at] ^= 1 << bit
            path.write_bytes(bytes(flipped))
            if not pages.verified(str(path)):
                continue
            try:
                if pl.read_parquet_schema(path) != schema:
                    continue
            except pl.exceptions.PolarsError:
                continue
            try:
                pl.read_parquet(path, columns=["stage", "prompt", "cand", "token", "logprob"])
            except (pl.exceptions.PolarsError, PanicException):
                return bytes(flipped)
    pytest.fail("no flip of the footer found that the walk accepts and Polars rejects")


ENGINES = ["polars", "dask"]


def _engine(name: str) -> Any:
    return dask_cluster.engine() if name == "dask" else "polars"


@pytest.mark.parametrize("engine", ENGINES)
def test_validate_reports_a_vouched_file_polars_cannot_decode(tmp_path: Path, engine: str) -> None:
    root = tmp_path / "log"
    generate(root, layout="long", stages=2, prompts=6, k=2, max_tokens=12)
    tokens = sorted((root / "tokens").glob("*.parquet"))
    assert all(pages.verified(str(p)) for p in tokens)  # the package writes checksums
    source, rewards = str(root / "tokens"), str(root / "rewards")
    assert rp.validate(source, rewards=rewards, engine=_engine(engine)).ok
    bad = tokens[0]
    bad.write_bytes(_footer_flip_polars_rejects(bad, bad.read_bytes()))
    report = rp.validate(source, rewards=rewards, engine=_engine(engine))
    assert not report.ok
    assert "corrupt_file" in {problem.kind for problem in report.problems}


@pytest.mark.parametrize("engine", ENGINES)
def test_validate_reports_a_corrupted_page(tmp_path: Path, engine: str) -> None:
    root = tmp_path / "log"
    generate(root, layout="long", stages=2, prompts=6, k=2, max_tokens=12)
    bad = sorted((root / "tokens").glob("*.parquet"))[1]
    written = bytearray(bad.read_bytes())
    written[_footer_start(bytes(written)) - 1] ^= 0x10  # the last page's last byte
    bad.write_bytes(bytes(written))
    assert not pages.verified(str(bad))
    report = rp.validate(
        source=str(root / "tokens"), rewards=str(root / "rewards"), engine=_engine(engine)
    )
    assert "corrupt_file" in {problem.kind for problem in report.problems}


_FOOTER_FLIPS = """
import io, sys
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
from raft_polars._engine import pages
path = sys.argv[1]
tables = [
    pa.table({"stage": np.arange(300, dtype=np.int32) // 150, "logprob": -np.arange(300.0),
              "name": [f"p{i % 7}" for i in range(300)]}),
    pa.table({"reward": [0.5, None, 1.0], "logprobs": [[-0.1, -0.2], None, [-0.3, None, -0.5]]}),
]
refused = 0
for table in tables:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, write_page_checksum=True)
    written = buffer.getvalue()
    start = len(written) - 8 - int.from_bytes(written[-8:-4], "little")
    for at in range(start, len(written)):
        for bit in range(8):
            flipped = bytearray(written)
            flipped[at] ^= 1 << bit
            open(path, "wb").write(flipped)
            if not pages.footer_readable(path):
                refused += 1
                continue
            try:
                meta = pq.read_metadata(path)
                for group in range(meta.num_row_groups):
                    for column in range(meta.num_columns):
                        meta.row_group(group).column(column).statistics
            except Exception:
                pass
print(refused)
"""


def test_pyarrow_is_asked_only_for_footers_it_reads_without_aborting(tmp_path: Path) -> None:
    """pyarrow's footer reader aborts the process on some corrupted column chunk
    metadata (a type that is not the schema's, level histograms of the wrong
    length). Every bit of two footers flipped, in a child process: pyarrow is
    asked for the column chunks only where ``footer_readable`` says so, and
    never aborts."""
    assert _refused_in_child(_FOOTER_FLIPS, tmp_path) > 0  # some footers are refused


def _refused_in_child(script: str, tmp_path: Path) -> int:
    """The count a flip script prints, run in a child process (pyarrow may end
    the process it runs in), which must end normally."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "f.parquet")],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout)


def test_a_footer_pyarrow_refuses_is_not_vouched_for(tmp_path: Path) -> None:
    """Every page's checksum matches, but one byte of the footer's stored Arrow
    schema is flipped (no checksum covers the footer): pyarrow, the strict
    reader, refuses the file, so validate reports it (the walk had vouched)."""
    table = pa.table({"stage": [0, 0], "prompt": [0, 0], "cand": [0, 1], "reward": [0.5, 0.25],
                      "logprobs": [[-1.0, -0.5], [-2.0]]})  # fmt: skip
    path = tmp_path / "log.parquet"
    pq.write_table(table, path, write_page_checksum=True)
    data = bytearray(path.read_bytes())
    data[data.index(b"ARROW:schema") + 40] ^= 0x04
    path.write_bytes(bytes(data))
    with pytest.raises(Exception):  # noqa: B017, PT011 - pyarrow's own refusal, any type
        pq.read_table(path)
    report = rp.validate(str(path)).to_dict()
    assert [p["kind"] for p in report["problems"]] == ["corrupt_file"]
    assert report["problems"][0]["locations"][0]["file"] == str(path)


_STRICT_FOOTER_FLIPS = """
import io, sys
import pyarrow as pa, pyarrow.parquet as pq
from raft_polars._engine.validate import strict_read
path = sys.argv[1]
table = pa.table({"stage": [0, 0, 1], "reward": [0.5, None, 1.0],
                  "logprobs": [[-0.1, -0.2], None, [-0.3, None, -0.5]],
                  "response": ["a", None, "bc"]})
buffer = io.BytesIO()
pq.write_table(table, buffer, compression="zstd", data_page_version="2.0", use_dictionary=False)
written = buffer.getvalue()
start = len(written) - 8 - int.from_bytes(written[-8:-4], "little")
refused = 0
for at in range(start, len(written) - 8):
    for bit in range(8):
        flipped = bytearray(written)
        flipped[at] ^= 1 << bit
        open(path, "wb").write(flipped)
        refused += strict_read(path) is not None
print(refused)
"""


def test_the_strict_read_never_aborts_on_a_flipped_footer(tmp_path: Path) -> None:
    """pyarrow ends its process when asked for a column chunk whose level
    histograms do not have the lengths the schema gives them (a bit flipped in
    a footer of version 2 pages; CI found one). The strict read checks the
    footer first: every bit of a nested file's footer flipped, in a child
    process, gives an error or nothing, never an abort. (The text column: the
    strict read asks for its chunks, to read dictionary-encoded text as such.)"""
    assert _refused_in_child(_STRICT_FOOTER_FLIPS, tmp_path) > 0  # some flips are refused


def _histogram_flipped(path: Path) -> None:
    """A nested file of version 2 pages with a bit of its footer flipped that
    makes a level histogram's length wrong (pyarrow would abort), while Polars
    still reads the file's schema (so only the strict read stands between)."""
    table = pa.table({"stage": [0, 0], "prompt": [0, 0], "cand": [0, 1], "reward": [0.5, 0.25],
                      "logprobs": [[-1.0, -0.5], [-2.0]]})  # fmt: skip
    pq.write_table(table, path, compression="zstd", data_page_version="2.0")
    data = path.read_bytes()
    schema = pl.scan_parquet(path).collect_schema()
    for at in range(_footer_start(data), len(data) - 8):
        for bit in range(8):
            flipped = bytearray(data)
            flipped[at] ^= 1 << bit
            path.write_bytes(bytes(flipped))
            if pages.footer_agrees(str(path)) is not False:
                continue
            try:
                if pl.scan_parquet(path).collect_schema() == schema:
                    return
            except pl.exceptions.ComputeError:
                pass
    raise AssertionError("no flip makes a histogram's length wrong and keeps the schema")


@pytest.mark.parametrize("walked", [True, False], ids=["walk", "child"])
def test_validate_reports_a_footer_pyarrow_would_abort_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, walked: bool
) -> None:
    """Such a footer is a corrupt file in validate's report, not the end of the
    process; where the walk cannot read the footer (``child``), a child process
    asks pyarrow for the column chunks, and a sound file still passes."""
    path = tmp_path / "log.parquet"
    _histogram_flipped(path)
    if not walked:
        monkeypatch.setattr(pages, "footer_agrees", lambda path: None)
    report = rp.validate(str(path)).to_dict()
    kinds = [p["kind"] for p in report["problems"]]
    assert "corrupt_file" in kinds, report
    corrupt = report["problems"][kinds.index("corrupt_file")]
    assert corrupt["locations"][0]["file"] == str(path)
    assert "footer is corrupt" in json.dumps(corrupt)
    sound = tmp_path / "sound.parquet"
    pq.write_table(pa.table({"stage": [0], "prompt": [0], "cand": [0], "reward": [0.5],
                             "logprobs": [[-1.0]]}), sound, data_page_version="2.0")  # fmt: skip
    assert rp.validate(str(sound)).ok
