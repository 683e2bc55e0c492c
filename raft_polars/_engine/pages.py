"""The pages of a Parquet file, walked and checked without decoding them.

``validate`` must catch a file that a strict reader rejects. Where the writer
stored a CRC32 in every page header (the package's own files, and any writer
with page checksums on), this walk is that check at a fraction of a decode's
cost: it reads each column chunk's page headers (Thrift compact protocol), checks
every page's bytes against its CRC and the headers against the footer (the sizes
add up to the column chunk's, the values to its count and, for a flat column, to
the row group's rows, every encoding is one the footer lists), so that Polars can
decode the file, fast, with every byte it reads proven to be what the writer
wrote. A file without checksums on every page is left to the decoding strict
reader (:func:`raft_polars._engine.validate.strict_read`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from zlib_ng.zlib_ng import crc32

from raft_polars._engine._jit import njit

__all__ = [
    "footer_agrees",
    "footer_fault",
    "footer_readable",
    "largest_row_group",
    "remembering",
    "suspect",
    "verified",
]

# Thrift compact protocol types
_STOP, _TRUE, _FALSE, _BYTE, _I16, _I32, _I64, _DOUBLE, _BINARY, _LIST, _SET, _MAP, _STRUCT = (
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
)  # fmt: skip
_DATA, _INDEX, _DICTIONARY, _DATA_V2 = 0, 1, 2, 3  # PageType
_LEVELS = (1 << 3) | (1 << 4)  # RLE, BIT_PACKED: encodings of definition and repetition levels


# the columns of a walked page header (-1 where the header lacks the field)
_KIND, _UNCOMPRESSED, _COMPRESSED, _CRC, _HAS_CRC, _VALUES, _ENC, _START, _CHUNK = (
    0, 1, 2, 3, 4, 5, 6, 9, 10,
)  # fmt: skip
_V2_LEVELS, _V2_PACKED = (
    11,
    12,
)  # a v2 data page's level bytes, and whether its values are compressed
_WIDTH = 13  # three encodings from _ENC on: values, definition and repetition levels
_TOO_FEW = -2  # more pages than rows to hold them: the caller retries with more


def verified(path: str) -> bool:
    """Whether every page of a Parquet file carries a CRC that its bytes match,
    with headers that agree with the footer: then Polars may decode the file
    for ``validate``. False says only that this walk cannot vouch for the file
    (no checksums, a mismatch, a header it does not expect): the decoding strict
    reader then checks it and says what is wrong, if anything."""
    return _verdict(path) == _VOUCHED


def suspect(path: str) -> bool:
    """Whether the page headers of a Parquet file are not what a writer writes
    (a field Parquet does not define there or of another type, sizes the
    compressed bytes or the footer contradict), checksums aside. pyarrow skips
    some of those that Polars refuses: a file pyarrow decodes strictly is then
    decoded by Polars too (:func:`raft_polars._engine.validate.polars_refusal`).
    A file whose footer this walk cannot read is suspect too."""
    return _verdict(path) == _SUSPECT


_VOUCHED, _SOUND, _SUSPECT = "vouched", "sound", "suspect"
_REMEMBERED: dict[tuple[str, int, int, int], str] = {}  # while remembering: by file
_REMEMBERING = [0]  # the blocks open, in every thread
_LOCK = threading.Lock()


@contextmanager
def remembering() -> Iterator[None]:
    """Within the block, each file is walked once: ``validate`` asks whether a
    file is :func:`verified`, then whether it is :func:`suspect`. A verdict is
    kept for the file as it is (its size, change time and inode), and only while
    a block is open: a file rewritten within the clock's tick keeps its stat."""
    with _LOCK:
        _REMEMBERING[0] += 1
    try:
        yield
    finally:
        with _LOCK:
            _REMEMBERING[0] -= 1
            if not _REMEMBERING[0]:
                _REMEMBERED.clear()


def _verdict(path: str) -> str:
    """The walk's verdict on a file: :data:`_VOUCHED`, :data:`_SOUND` (headers
    sound, but not every page proven by a CRC) or :data:`_SUSPECT`."""
    import os

    try:
        stat = os.stat(path)
    except OSError:
        return _SUSPECT
    key = (path, stat.st_size, stat.st_mtime_ns, stat.st_ino)
    with _LOCK:
        known = _REMEMBERED.get(key) if _REMEMBERING[0] else None
    if known is not None:
        return known
    verdict = _with_pages(path, _judge, _SUSPECT)
    with _LOCK:
        if _REMEMBERING[0]:
            _REMEMBERED[key] = verdict
    return verdict


def _judge(path: str, view: memoryview, walked: Any) -> str:
    if walked is None:
        return _SUSPECT
    if np.any(walked[:, _HAS_CRC] != 1) or np.any(walked[:, _KIND] == _DATA_V2):
        return _SOUND  # v2 data pages hold level lengths outside the CRC: not vouched for
    spans = walked[:, [_START, _COMPRESSED, _CRC]]
    spans[:, 1] += spans[:, 0]
    spans[:, 2] &= 0xFFFFFFFF
    if not all(crc32(view[low:high]) == crc for low, high, crc in spans.tolist()):
        return _SOUND  # a mismatch: the strict reader says what is wrong
    return _VOUCHED if _footer_sound(path) else _SOUND


def _with_pages(path: str, then: Any, otherwise: str) -> str:
    """``then(path, view, pages)`` of a file's mapped bytes and its walked page headers
    (:func:`_walk_file`; None where they do not agree with its footer), or
    ``otherwise`` where the file cannot be mapped or its footer read."""
    import mmap

    try:
        with open(path, "rb") as handle:
            mm = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):  # unreadable, or empty: the strict reader says what
        return otherwise
    view = memoryview(mm)
    data = np.frombuffer(view, dtype=np.uint8)
    try:
        chunks, stated = _chunks(view)
        pages = np.empty((max(4 * len(chunks), 16), _WIDTH), dtype=np.int64)
        count = _walk_file(data, chunks, pages)
        while count == _TOO_FEW:
            pages = np.empty((4 * len(pages), _WIDTH), dtype=np.int64)
            count = _walk_file(data, chunks, pages)
        sound = count >= 0 and _as_stated(pages[:count], chunks, stated)
        return str(then(path, view, pages[:count] if sound else None))
    except Exception:
        return otherwise
    finally:
        del data
        try:
            view.release()
            mm.close()
        except BufferError:  # a view still held elsewhere (a sampling profiler's
            pass  # frame, as on a Dask worker): the map closes with its last view


def _footer_sound(path: str) -> bool:
    """Whether pyarrow, the strict reader, reads the footer and the Arrow schema
    stored in it: no checksum covers the footer, and the walk reads only what
    it needs of it (a flipped byte in the stored schema, or in a field the walk
    skips, was vouched for). Asked after the walk accepted the footer (pyarrow
    aborts the process on some footers it does not check)."""
    import pyarrow.parquet as pq

    try:
        with pq.ParquetFile(path) as file:
            file.schema_arrow  # noqa: B018 - parsed here, or raises
    except Exception:  # any refusal: the strict reader then says what is wrong
        return False
    return True


# the columns of a column chunk for the walk
_FROM, _TO, _UNPACKED, _COUNT, _ROWS, _KNOWN, _SIZE, _STATED, _CODEC = range(9)
_UNCOMPRESSED_CODEC, _SNAPPY, _GZIP, _ZSTD = 0, 1, 2, 6
# bytes a value of each physical type takes in a PLAIN dictionary (0: a length first)
_VALUE_BYTES = {1: 4, 2: 8, 3: 12, 4: 4, 5: 8, 6: 0}


class _Malformed(Exception):
    """Bytes that are not the Thrift this walk expects."""


def _chunks(data: Any) -> tuple[Any, Any]:
    """The column chunks of a file's footer (read here, by a compiled loop, not
    by pyarrow, whose reader aborts the process on some corrupted footers), a
    row each: where their pages lie, their uncompressed size and values, the
    row group's rows for a flat column (-1 otherwise), the encodings the footer
    lists (a bit each), the bytes of a value in a PLAIN dictionary and whether
    the footer counts its pages; with the keys ``chunk << 16 | page type << 8 |
    encoding`` of the pages it counts, one a page."""
    size = len(data)
    if size < 12 or bytes(data[-4:]) != b"PAR1":
        raise _Malformed("not a Parquet file")
    length = int.from_bytes(bytes(data[-8:-4]), "little")
    if length > size - 12:
        raise _Malformed("a footer longer than the file")
    raw = np.frombuffer(data, dtype=np.uint8)
    elements, chunks, stats, groups = _footer_tables(raw, size - 8 - length, size - 8)
    if not len(elements):
        raise _Malformed("a footer without a schema")
    schema = [  # a few elements: a dict each, as the schema's walk wants them, 0: the row
        {
            0: i,
            **{f + 1: v for f, v in enumerate(row[:_E_NAME_END]) if v >= 0 and f != _E_NAME},
            **({4: bytes(data[row[_E_NAME] : row[_E_NAME_END]])} if row[_E_NAME] >= 0 else {}),
        }
        for i, row in enumerate(elements.tolist())
    ]
    leaves = _leaves(schema)
    width = len(leaves)
    if not width or np.any(np.bincount(chunks[:, _C_GROUP], minlength=len(groups)) != width):
        raise _Malformed("a row group without a chunk for each column")
    if np.any(chunks[:, _C_PATH] != 0):
        raise _Malformed("a column chunk in another file")
    needed = [_C_TYPE, _C_KNOWN, _C_CODEC, _C_VALUES, _C_UNPACKED, _C_STORED]
    if np.any(chunks[:, needed] < 0) or np.any(chunks[:, [_C_META, _C_PARTS]] < 1):
        raise _Malformed("a column chunk without the metadata Parquet requires")
    leaf = np.arange(len(chunks)) % width  # the chunks of a row group, a leaf each in order
    kind = np.array([e.get(1, -1) for _, e, _, _ in leaves], dtype=np.int64)[leaf]
    # a required leaf under no optional or repeated field: no null at any level (a
    # required list item counts the empty and null lists above it in its nulls)
    required = np.array([e.get(3) == 0 and d == 0 for _, e, d, _ in leaves], dtype=np.bool_)[leaf]
    names = elements[[e[0] for _, e, _, _ in leaves]][:, [_E_NAME, _E_NAME_END]]
    if np.any(kind != chunks[:, _C_TYPE]):
        raise _Malformed("the schema and a column chunk differ on the type")
    if not _names_agree(raw, chunks, names):
        raise _Malformed("the schema and a column chunk differ on the name")
    if np.any(required & (chunks[:, _C_NULLS] > 0)):
        raise _Malformed("nulls in a required column")
    start = np.where(chunks[:, _C_DICTIONARY] > 0, chunks[:, _C_DICTIONARY], chunks[:, _C_DATA])
    if np.any(start < 0):
        raise _Malformed("a column chunk without where its pages begin")
    value_bytes = np.array([_VALUE_BYTES.get(t, -1) for t in range(8)], dtype=np.int64)
    fixed = np.array([e.get(2, -1) for _, e, _, _ in leaves], dtype=np.int64)[leaf]
    types = chunks[:, _C_TYPE]
    value_size = np.where(types == 7, fixed, value_bytes[np.minimum(types, 7)])
    flat = np.array([f for f, _, _, _ in leaves], dtype=np.bool_)[leaf]
    rows = groups[chunks[:, _C_GROUP]] if len(groups) else np.zeros(0, dtype=np.int64)
    if np.any(flat & (rows < 0)):
        raise _Malformed("a row group without its rows")
    if np.any(stats[:, 1:] < 0):
        raise _Malformed("a page count without its type, encoding or count")
    table = np.column_stack([
        start, start + chunks[:, _C_STORED], chunks[:, _C_UNPACKED], chunks[:, _C_VALUES],
        np.where(flat, rows, -1), chunks[:, _C_KNOWN] | _LEVELS, value_size,
        chunks[:, _C_STATED] == 1, chunks[:, _C_CODEC],
    ]).astype(np.int64).reshape(len(chunks), 9)  # fmt: skip
    keys = stats[:, _S_CHUNK] << 16 | stats[:, _S_KIND] << 8 | stats[:, _S_ENCODING]
    return table, np.repeat(keys, stats[:, _S_COUNT])


def _as_stated(pages: Any, chunks: Any, stated: Any) -> bool:
    """Whether the pages of each chunk whose footer counts its pages per type and
    encoding are those: a second record of each page's encoding."""
    mine = pages[chunks[pages[:, _CHUNK], _STATED] == 1]
    data = np.where(mine[:, _KIND] == _DATA_V2, _DATA, mine[:, _KIND])
    keys = mine[:, _CHUNK] << 16 | data << 8 | mine[:, _ENC]
    # a v2 data page is counted as a data page by some writers (pyarrow), as a
    # v2 one by others
    kinds = (stated >> 8) & 0xFF
    stated = np.where(kinds == _DATA_V2, stated & ~(0xFF << 8) | (_DATA << 8), stated)
    return bool(np.array_equal(np.sort(keys), np.sort(stated)))


def _leaves(schema: list[dict[int, Any]]) -> list[tuple[bool, dict[int, Any], int, int]]:
    """Each leaf column of a footer's schema (its elements depth first): whether
    no field above it or of it repeats, its element, and its largest definition
    and repetition levels."""
    leaves: list[tuple[bool, dict[int, Any], int, int]] = []

    def walk(at: int, defs: int, reps: int) -> int:
        if at >= len(schema):
            raise _Malformed("a schema shorter than its children")
        element = schema[at]
        _typed(element, {1: _I32, 2: _I32, 3: _I32, 4: _BINARY, 5: _I32, 6: _I32})
        repetition = element.get(3)  # 0 required, 1 optional, 2 repeated
        if repetition not in (0, 1, 2):
            raise _Malformed("a field neither required, optional nor repeated")
        defs, reps = defs + (repetition != 0), reps + (repetition == 2)
        children = element.get(5) or 0
        at += 1
        if not children:
            leaves.append((reps == 0, element, defs, reps))
        for _ in range(children):
            at = walk(at, defs, reps)
        return at

    at = 1
    for _ in range(schema[0].get(5) or 0):  # the fields of the root
        at = walk(at, 0, 0)
    return leaves


def _footer(path: str) -> Any:
    """A local Parquet file's footer (FileMetaData) as Thrift fields; raises
    on anything it cannot read."""
    with open(path, "rb") as handle:
        size = handle.seek(0, 2)
        if size < 12:
            raise _Malformed("too short for a Parquet file")
        handle.seek(size - 8)
        tail = handle.read(8)
        length = int.from_bytes(tail[:4], "little")
        if tail[4:] != b"PAR1" or length > size - 12:
            raise _Malformed("no Parquet footer")
        handle.seek(size - 8 - length)
        meta, _ = _Thrift(handle.read(length)).struct()
    return meta


def row_groups(path: str) -> list[int] | None:
    """The rows of each row group of a local Parquet file, from its footer;
    None when it cannot be read."""
    try:
        rows = [group[3] for group in _footer(path)[4]]
    except Exception:
        return None
    return rows if all(isinstance(n, int) for n in rows) else None


def largest_row_group(path: str) -> int | None:
    """The most rows in one row group of a local Parquet file, from its
    footer; None when it cannot be read."""
    rows = row_groups(path)
    return max(rows) if rows else None


def footer_readable(path: str) -> bool:
    """Whether pyarrow may be asked for the column chunks of a Parquet file's
    footer (:func:`footer_agrees`); False also where this walk cannot read the
    footer (the caller then leaves the footer's details out)."""
    return footer_agrees(path) is True


def footer_agrees(path: str) -> bool | None:
    """Whether pyarrow may be asked for the column chunks of a Parquet file's
    footer (:func:`footer_fault`); None where this walk cannot read the footer."""
    try:
        return footer_fault(path) is None
    except Exception:
        return None


ENCRYPTED = "a column chunk is encrypted, and no keys were given"
DISAGREES = (
    "its footer is corrupt: a column chunk does not agree with the schema "
    "(its type, or the length of a level histogram)"
)


def footer_fault(path: str) -> str | None:
    """Why pyarrow may not be asked for the column chunks of a Parquet file's
    footer: it ends the process (an exception thrown where none may be) when
    asked for a chunk that is encrypted (with no keys given), whose type is not
    its schema's, or whose level histograms do not have the lengths the schema
    gives them. This reads the footer itself and checks those: :data:`ENCRYPTED`,
    :data:`DISAGREES`, or None. Raises where it cannot read the footer."""
    meta = _footer(path)
    leaves = _leaves(meta[2])
    for group in meta[4]:
        for chunk, (_, element, defs, reps) in zip(group[1], leaves, strict=True):
            if 8 in chunk or 9 in chunk:  # crypto_metadata, encrypted_column_metadata
                return ENCRYPTED
            _typed(chunk, {3: _STRUCT})
            _typed(chunk[3], {1: _I32, 16: _STRUCT})
            if chunk[3][1] != element.get(1):
                return DISAGREES  # the chunk's type is not the schema's
            sizes = chunk[3].get(16)  # SizeStatistics
            if sizes is not None:
                _typed(sizes, {1: _I64, 2: _LIST, 3: _LIST})
            for field, levels in ((2, reps), (3, defs)):
                histogram = None if sizes is None else sizes.get(field)
                if (histogram and len(histogram) != levels + 1) or (histogram == [] and levels):
                    return DISAGREES  # none is written for a level that is always 0
    return None


def wide_integers(path: str) -> list[str]:
    """The columns (leaves) of a Parquet file that Polars wrote as 128-bit
    integers (``Int128``, ``UInt128``), read from the footer here: 16-byte
    values with no logical or converted type, in a file whose footer stores an
    Arrow schema (Polars' own, which names their type, and which makes pyarrow
    refuse the whole file). None where the footer is not sound
    (:func:`footer_fault`) or cannot be read."""
    try:
        if footer_fault(path) is not None:
            return []
        meta = _footer(path)
    except Exception:  # a footer the walk cannot read: not such a file
        return []
    stored = meta.get(5)
    if not isinstance(stored, list) or not any(
        isinstance(pair, dict) and pair.get(1) == b"ARROW:schema" for pair in stored
    ):
        return []
    return [
        bytes(element[4]).decode("utf-8", "replace")
        for _, element, _, _ in _leaves(meta[2])
        if element.get(1) == 7 and element.get(2) == 16 and not {6, 10} & element.keys()
    ]  # FIXED_LEN_BYTE_ARRAY(16), no converted (6) or logical (10) type


class _Struct(dict[int, Any]):
    """A Thrift struct's fields, with the wire type each came in (``kinds``): a
    reader that finds a field in another type than Parquet's skips it, so a
    corrupted type makes the field absent there."""

    def __init__(self) -> None:
        super().__init__()
        self.kinds: dict[int, int] = {}


def _typed(fields: dict[int, Any], wanted: dict[int, int]) -> None:
    """Raise unless each field of ``wanted`` present in ``fields`` came in its type."""
    kinds = getattr(fields, "kinds", {})
    if any(kinds.get(field, kind) != kind for field, kind in wanted.items()):
        raise _Malformed("a footer field in another type than Parquet's")


class _Thrift:
    """Thrift compact protocol, for a footer: structs as ``{field id: value}``,
    lists as lists, binaries as bytes. Written for CPython: a footer holds tens
    of thousands of values, most of them one-byte integers, read inline."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def varint(self, at: int) -> tuple[int, int]:
        data = self.data
        value = shift = 0
        while True:
            byte = data[at]
            at += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value, at
            shift += 7
            if shift > 63:
                raise _Malformed("a varint longer than 64 bits")

    def value(self, kind: int, at: int, depth: int) -> tuple[Any, int]:  # noqa: PLR0911
        data = self.data
        if _I16 <= kind <= _I64 or kind == _BINARY:
            raw = data[at]
            if raw < 0x80:
                at += 1
            else:
                raw, at = self.varint(at)
            if kind == _BINARY:
                if at + raw > len(data):
                    raise _Malformed("a binary past the footer")
                return data[at : at + raw], at + raw
            return (raw >> 1) ^ -(raw & 1), at
        if kind == _STRUCT:
            return self.struct(at, depth + 1)
        if kind in (_TRUE, _FALSE):
            return kind == _TRUE, at
        if kind == _BYTE:
            return data[at], at + 1
        if kind == _DOUBLE:
            return None, at + 8
        if kind in (_LIST, _SET):
            head = data[at]
            at += 1
            count, item = head >> 4, head & 0x0F
            if count == 15:
                count, at = self.varint(at)
            items = []
            if item in (_TRUE, _FALSE):
                for _ in range(count):
                    items.append(data[at] == 1)
                    at += 1
            else:
                for _ in range(count):
                    got, at = self.value(item, at, depth + 1)
                    items.append(got)
            return items, at
        raise _Malformed(f"Thrift type {kind} in a footer")

    def struct(self, at: int = 0, depth: int = 0) -> tuple[dict[int, Any], int]:
        if depth > 16:
            raise _Malformed("structs nested too deep")
        data = self.data
        fields = _Struct()
        kinds = fields.kinds
        last = 0
        while True:
            head = data[at]
            at += 1
            kind = head & 0x0F
            if kind == _STOP:
                return fields, at
            if head >> 4:
                last += head >> 4
            else:
                raw, at = self.varint(at)
                last = (raw >> 1) ^ -(raw & 1)
            if _I16 <= kind <= _I64:  # an integer, most often one byte
                raw = data[at]
                if raw < 0x80:
                    at += 1
                else:
                    raw, at = self.varint(at)
                fields[last] = (raw >> 1) ^ -(raw & 1)
            else:
                fields[last], at = self.value(kind, at, depth)
            kinds[last] = kind


@njit()
def _walk_file(data: Any, chunks: Any, pages: Any) -> int:  # noqa: PLR0911  # pragma: no cover - compiled
    """Walk the pages of every column chunk (:func:`_walk`) and check their
    headers against the footer: the pages' count, :data:`_TOO_FEW`, or -1 when
    a chunk lies outside the data or a header does not agree (a page type that
    does not exist, a size out of bounds or past the chunk or other than the
    compressed bytes record, an encoding the footer does not list, values that
    do not add up to the chunk's count or a flat column's rows). Whether each
    page has a CRC is the caller's to check."""
    count = 0
    for c in range(chunks.shape[0]):
        low, high = chunks[c, _FROM], chunks[c, _TO]
        if low < 4 or high < low or high > data.shape[0] - 8:  # before the footer
            return -1
        found = _walk(data, low, high, pages[count:])
        if found < 0:
            return found
        values = 0
        for i in range(count, count + found):
            kind, size = pages[i, _KIND], pages[i, _UNCOMPRESSED]
            if kind not in (_DATA, _INDEX, _DICTIONARY, _DATA_V2):
                return -1
            if size < 0 or size > chunks[c, _UNPACKED]:
                return -1
            start, stored = pages[i, _START], pages[i, _COMPRESSED]
            if start + stored > high:
                return -1
            pages[i, _CHUNK] = c
            codec = chunks[c, _CODEC]
            if kind == _DATA_V2:  # the levels come first, never compressed
                levels = pages[i, _V2_LEVELS]
                if levels < 0 or levels > min(size, stored):
                    return -1
                if pages[i, _V2_PACKED] == 0:
                    codec = _UNCOMPRESSED_CODEC
                start, size, stored = start + levels, size - levels, stored - levels
            if kind != _INDEX and not _size_agrees(data, start, size, stored, codec):
                return -1
            width = chunks[c, _SIZE]
            if kind == _DICTIONARY and width >= 0:  # a PLAIN dictionary's size
                entries = pages[i, _VALUES]
                if entries < 0 or (size != entries * width if width else size < 4 * entries):
                    return -1
            used = 3 if kind == _DATA else (0 if kind == _INDEX else 1)
            listed = chunks[c, _KNOWN]
            if kind == _DICTIONARY and listed & 0b1_0000_0101:  # PLAIN, PLAIN_ or RLE_DICTIONARY:
                listed |= 0b101  # the dictionary page's own, named any of these ways (DuckDB)
            for e in range(_ENC, _ENC + used):
                code = pages[i, e]
                if code < 0 or code > 62 or not (listed >> code) & 1:
                    return -1
            if kind in (_DATA, _DATA_V2):
                values += pages[i, _VALUES]
        rows = chunks[c, _ROWS]
        if values != chunks[c, _COUNT] or (rows >= 0 and values != rows):
            return -1
        count += found
    return count


@njit(inline="always")
def _varint(data: Any, at: int) -> tuple[int, int]:  # pragma: no cover - compiled
    """The unsigned varint at ``at`` and where it ends (-1: past the data, or
    2**63 or more: a value that would wrap to a negative int64, a length that
    would step back)."""
    value = shift = 0
    while True:
        if at >= data.shape[0] or shift > 63:
            return 0, -1
        byte = int(data[at])
        at += 1
        if shift == 63 and byte & 0x7F:
            return 0, -1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


@njit(inline="always")
def _size_agrees(data: Any, start: int, size: int, stored: int, codec: int) -> bool:  # noqa: PLR0911  # pragma: no cover
    """Whether the uncompressed size of a page's ``stored`` bytes from ``start``
    is the one they record (snappy's length, gzip's trailer, zstd's frame
    content size; none uncompressed): outside the CRC, the header's size is
    checked here."""
    if codec == _UNCOMPRESSED_CODEC:
        return bool(size == stored)
    if codec == _SNAPPY:
        length, end = _varint(data[: start + stored], start)
        return bool(end > 0 and length == size)
    if codec == _GZIP:
        if stored < 18:
            return False
        tail = start + stored - 4
        recorded = 0
        for k in range(4):
            recorded |= int(data[tail + k]) << (8 * k)
        return bool(size == recorded)
    if codec == _ZSTD:
        if stored < 6 or not (
            data[start] == 0x28
            and data[start + 1] == 0xB5
            and data[start + 2] == 0x2F
            and data[start + 3] == 0xFD
        ):
            return False
        head = np.int64(data[start + 4])
        single = (head >> 5) & 1
        fields = (0, 1, 2, 4)[head & 3] + (0 if single else 1)  # dictionary id, window
        width = (single, 2, 4, 8)[head >> 6]
        if width == 0:
            return True  # the frame does not record it
        at = start + 5 + fields
        if at + width > start + stored:
            return False
        content = 0
        for k in range(width):
            content |= int(data[at + k]) << (8 * k)
        return bool(size == content + (256 if width == 2 else 0))
    return True


@njit(inline="always")
def _expected(depth: int, outer: int, inner: int, field: int) -> int:  # noqa: PLR0911  # pragma: no cover
    """The Thrift type of a field of a page header (``depth`` 1), of its
    data or dictionary page header (2, in field ``outer``) or of the data page
    header's statistics (3): -1 for a field Parquet does not define there
    (a header this walk cannot vouch for: a newer writer's, or a flipped
    field id)."""
    if depth == 1:
        return _I32 if 1 <= field <= 4 else (_STRUCT if 5 <= field <= 8 else -1)
    if depth == 2 and outer == 5:  # DataPageHeader
        return _I32 if 1 <= field <= 4 else (_STRUCT if field == 5 else -1)
    if depth == 2 and outer == 7:  # DictionaryPageHeader
        return _I32 if field in (1, 2) else (_TRUE if field == 3 else -1)
    if depth == 2 and outer == 8:  # DataPageHeaderV2
        return (
            _I32 if 1 <= field <= 6 else (_TRUE if field == 7 else (_STRUCT if field == 8 else -1))
        )
    if depth == 3 and ((outer == 5 and inner == 5) or (outer == 8 and inner == 8)):  # Statistics
        if field in (1, 2, 5, 6):
            return _BINARY
        return _I64 if field in (3, 4) else (_TRUE if field in (7, 8) else -1)
    return -1


@njit(inline="always")
def _field_head(  # pragma: no cover - compiled
    data: Any, at: int, end: int, last: int
) -> tuple[int, int, int]:
    """The Thrift type and id of the struct field whose header is at ``at`` (the
    struct's field before: ``last``) and where its value begins; -1 for where
    when the header runs past ``end``. A stop has type :data:`_STOP`."""
    if at >= end:
        return _STOP, 0, -1
    head = int(data[at])
    at += 1
    kind = head & 0x0F
    if kind == _STOP:
        return _STOP, 0, at
    field = last + (head >> 4)
    if head >> 4 == 0:  # the field id follows, a zigzag varint
        raw, at = _varint(data[:end], at)
        field = (raw >> 1) ^ -(raw & 1)
    return kind, field, at


@njit()
def _walk(data: Any, at: int, end: int, pages: Any) -> int:  # noqa: PLR0911, PLR0915  # pragma: no cover - compiled
    """Read the page headers (Thrift compact protocol) of the column chunk in
    ``data[at:end]`` into the rows of ``pages`` (:data:`_KIND` ...): their count,
    :data:`_TOO_FEW` when ``pages`` has too few rows, -1 for bytes that are not
    page headers. Only integer fields of the header and of the structs in its
    fields are kept; binaries and deeper structs are skipped, and lists, sets
    and maps (no page header holds one) give -1."""
    outer = np.zeros(8, dtype=np.int64)  # the field id of each struct entered
    lasts = np.zeros(8, dtype=np.int64)  # the last field id read in each
    count = 0
    while at < end:
        if count == pages.shape[0]:
            return _TOO_FEW
        page = pages[count]
        page[:] = -1
        page[_HAS_CRC] = 0
        depth = 1
        outer[0] = lasts[0] = 0
        while depth > 0:
            kind, field, at = _field_head(data, at, data.shape[0], lasts[depth - 1])
            if at < 0:
                return -1
            if kind == _STOP:
                depth -= 1
                continue
            lasts[depth - 1] = field
            wanted = _expected(depth, outer[1], outer[2], field)
            if wanted < 0 or (kind != wanted and not (wanted == _TRUE and kind == _FALSE)):
                return -1  # a field Parquet does not define there, or of another type
            if kind in (_BYTE, _I16, _I32, _I64, _BINARY):
                raw, at = _varint(data, at)
                if at < 0:
                    return -1
                if kind == _BINARY:
                    at += raw
                    continue
                value = (raw >> 1) ^ -(raw & 1)
                if kind == _I32 and not -(1 << 31) <= value < 1 << 31:
                    return -1
                if kind == _I16 and not -(1 << 15) <= value < 1 << 15:
                    return -1
                if depth == 1 and 1 <= field <= 4:
                    page[field - 1] = value  # type, sizes, crc: _KIND ... _CRC
                    if field == 4:
                        page[_HAS_CRC] = 1
                elif depth == 2:
                    where = outer[1]
                    if field == 1 and where in (5, 7, 8):
                        page[_VALUES] = value
                    elif where == 5 and 2 <= field <= 4:
                        page[_ENC + field - 2] = value
                    elif (where == 7 and field == 2) or (where == 8 and field == 4):
                        page[_ENC] = value
                    elif where == 8 and field in (5, 6):  # level bytes
                        if value < 0:
                            return -1
                        page[_V2_LEVELS] = max(page[_V2_LEVELS], 0) + value
            elif kind == _STRUCT:
                if depth == outer.shape[0]:
                    return -1
                outer[depth] = field
                lasts[depth] = 0
                depth += 1
            elif kind == _DOUBLE:
                at += 8
            elif kind not in (_TRUE, _FALSE):
                return -1
            elif depth == 2 and outer[1] == 8 and field == 7:  # is_compressed
                page[_V2_PACKED] = 1 if kind == _TRUE else 0
        if page[_COMPRESSED] < 0:
            return -1
        page[_START] = at
        at += page[_COMPRESSED]
        count += 1
    return count


# --- the footer, read by a compiled loop -------------------------------------------------------

# what a container of the footer is (the frames of :func:`_read_footer`)
_ROOT, _SCHEMA, _ELEMENT, _GROUPS, _GROUP, _COLUMNS, _COLUMN, _META = 0, 1, 2, 3, 4, 5, 6, 7
_ENCODINGS, _PATH, _STATISTICS, _STATED_LIST, _STAT, _OTHER = 8, 9, 10, 11, 12, 13
# the columns of the tables it fills (-1 where the footer lacks the field)
_E_TYPE, _E_LENGTH, _E_REPETITION, _E_NAME, _E_CHILDREN, _E_CONVERTED, _E_NAME_END = range(7)
_E_WIDTH = 7
_C_GROUP, _C_PATH, _C_META, _C_TYPE, _C_KNOWN, _C_CODEC, _C_VALUES = range(7)
_C_UNPACKED, _C_STORED, _C_DATA, _C_DICTIONARY, _C_NAME, _C_NAME_END = range(7, 13)
_C_PARTS, _C_NULLS, _C_STATED = range(13, 16)
_C_WIDTH = 16
_S_CHUNK, _S_KIND, _S_ENCODING, _S_COUNT = range(4)
_FOOTER_DEPTH = 16


@njit(inline="always")
def _frame(parent: int, field: int, kind: int) -> int:  # noqa: PLR0911  # pragma: no cover
    """What the container a field of ``kind`` holds is, in a ``parent`` container
    (a field id for a struct's field, -1 for a list's item); -1: a type
    Parquet does not give it."""
    if parent == _ROOT:
        if field in (2, 4):
            return (_SCHEMA if field == 2 else _GROUPS) if kind == _LIST else -1
        return _OTHER
    if parent in (_SCHEMA, _GROUPS, _COLUMNS, _STATED_LIST):
        if kind != _STRUCT:
            return -1
        if parent == _SCHEMA:
            return _ELEMENT
        return _GROUP if parent == _GROUPS else (_COLUMN if parent == _COLUMNS else _STAT)
    if parent == _GROUP and field == 1:
        return _COLUMNS if kind == _LIST else -1
    if parent == _COLUMN and field == 3:
        return _META if kind == _STRUCT else -1
    if parent == _META and field in (2, 3, 13):
        if kind != _LIST:
            return -1
        return _ENCODINGS if field == 2 else (_PATH if field == 3 else _STATED_LIST)
    if parent == _META and field == 12:
        return _STATISTICS if kind == _STRUCT else -1
    if parent in (_ENCODINGS, _PATH):
        return -1  # lists of integers, of binaries
    return _OTHER


@njit(inline="always")
def _wanted(frame: int, field: int) -> int:  # noqa: PLR0911  # pragma: no cover - compiled
    """The Thrift type of a field the walk keeps (a field id, or -1 for a list's
    item), -1 for one it skips."""
    if frame == _ROOT:
        return _LIST if field in (2, 4) else -1
    if frame in (_SCHEMA, _GROUPS, _COLUMNS, _STATED_LIST):
        return _STRUCT
    if frame == _ELEMENT:
        return _BINARY if field == 4 else (_I32 if 1 <= field <= 6 else -1)
    if frame == _GROUP:
        return _LIST if field == 1 else (_I64 if field == 3 else -1)
    if frame == _COLUMN:
        return _BINARY if field == 1 else (_STRUCT if field == 3 else -1)
    if frame == _META:
        if field in (1, 4):
            return _I32
        if field in (2, 3, 13):
            return _LIST
        if field == 12:
            return _STRUCT
        return _I64 if field in (5, 6, 7, 9, 11) else -1
    if frame == _ENCODINGS:
        return _I32
    if frame == _STAT:
        return _I32 if 1 <= field <= 3 else -1
    if frame == _PATH:
        return _BINARY
    if frame == _STATISTICS:
        return _I64 if field == 3 else -1
    return -1


@njit()
def _read_footer(  # noqa: PLR0911, PLR0915, PLR0917  # pragma: no cover - compiled
    data: Any, at: int, end: int, elements: Any, chunks: Any, stats: Any, groups: Any
) -> tuple[int, int, int, int]:
    """Read a footer (FileMetaData, Thrift compact protocol, ``data[at:end]``)
    into tables: the schema's ``elements``, the column ``chunks`` (:data:`_C_GROUP`
    ...), the page counts the writer ``stats`` per chunk, type and encoding, and
    each row group's rows (``groups``). Returns the rows of each table; the
    first is -1 for bytes that are not such a footer (a kept field in another
    type, a negative value, a container too deep, data past the end, no row
    groups listed) and
    :data:`_TOO_FEW` when a table has too few rows."""
    kinds = np.zeros(_FOOTER_DEPTH, dtype=np.int64)  # what each open container is
    lasts = np.zeros(_FOOTER_DEPTH, dtype=np.int64)  # a struct's last field id
    items = np.zeros(_FOOTER_DEPTH, dtype=np.int64)  # a list's items left, or -1: a struct
    types = np.zeros(_FOOTER_DEPTH, dtype=np.int64)  # a list's item type
    seen = np.zeros(_FOOTER_DEPTH, dtype=np.int64)  # a struct's kept fields so far, a bit each
    n_elements = n_chunks = n_stats = n_groups = 0
    listed = False  # whether the footer lists its row groups (none, for an empty file)
    depth = 1
    kinds[0], lasts[0], items[0] = _ROOT, 0, -1
    while depth > 0:
        top = depth - 1
        frame = kinds[top]
        if items[top] >= 0:  # a list: its next item, or its end
            if items[top] == 0:
                depth -= 1
                continue
            items[top] -= 1
            kind, field, item = types[top], -1, True
        else:
            item = False
            kind, field, at = _field_head(data, at, end, lasts[top])
            if at < 0:
                return -1, 0, 0, 0
            if kind == _STOP:
                depth -= 1
                continue
            lasts[top] = field
        wanted = _wanted(frame, field)
        if wanted >= 0:
            if kind != wanted and not (wanted == _LIST and kind == _SET):
                return -1, 0, 0, 0  # a kept field in another type than Parquet's
            if not item:
                if (seen[top] >> field) & 1:
                    return -1, 0, 0, 0  # a kept field twice
                seen[top] |= np.int64(1) << field
        if kind in (_LIST, _SET, _STRUCT, _MAP):
            inner = _frame(frame, field, kind)
            if inner < 0 or kind == _MAP or depth == _FOOTER_DEPTH:
                return -1, 0, 0, 0
            if inner == _ELEMENT:
                if n_elements == elements.shape[0]:
                    return _TOO_FEW, 0, 0, 0
                elements[n_elements, :] = -1
                n_elements += 1
            elif inner == _GROUP:
                if n_groups == groups.shape[0]:
                    return _TOO_FEW, 0, 0, 0
                groups[n_groups] = -1
                n_groups += 1
            elif inner == _COLUMN:
                if n_chunks == chunks.shape[0]:
                    return _TOO_FEW, 0, 0, 0
                chunks[n_chunks, :] = -1
                chunks[n_chunks, _C_GROUP] = n_groups - 1
                chunks[n_chunks, _C_PATH] = chunks[n_chunks, _C_META] = 0
                chunks[n_chunks, _C_PARTS] = 0
                n_chunks += 1
            elif inner == _META:
                chunks[n_chunks - 1, _C_META] = 1
            elif inner == _ENCODINGS:
                chunks[n_chunks - 1, _C_KNOWN] = 0
            elif inner == _STAT:
                if n_stats == stats.shape[0]:
                    return _TOO_FEW, 0, 0, 0
                stats[n_stats, :] = -1
                stats[n_stats, _S_CHUNK] = n_chunks - 1
                n_stats += 1
            elif inner == _STATED_LIST:
                chunks[n_chunks - 1, _C_STATED] = 1
            elif inner == _GROUPS:
                listed = True
            kinds[depth] = inner
            if kind == _STRUCT:
                items[depth], lasts[depth], seen[depth] = -1, 0, 0
            else:
                if at >= end:
                    return -1, 0, 0, 0
                head = np.int64(data[at])
                at += 1
                count, inside = int(head >> 4), int(head & 0x0F)
                if count == 15:
                    count, at = _varint(data[:end], at)
                    if at < 0:
                        return -1, 0, 0, 0
                if count < 0 or inside in (_STOP, _MAP) or inside > _STRUCT:
                    return -1, 0, 0, 0
                listed_as = _wanted(inner, -1)  # the items of a kept list
                if listed_as >= 0 and inside != listed_as:
                    return -1, 0, 0, 0
                items[depth], types[depth] = count, inside
            depth += 1
            continue
        if kind in (_TRUE, _FALSE):
            if item:  # a list's booleans take a byte each
                at += 1
            continue
        if kind == _DOUBLE:
            at += 8
            continue
        if kind == _BYTE:
            at += 1
            continue
        if kind not in (_I16, _I32, _I64, _BINARY):
            return -1, 0, 0, 0
        raw, at = _varint(data[:end], at)
        if at < 0:
            return -1, 0, 0, 0
        if kind == _BINARY:
            if raw < 0 or raw > end - at:
                return -1, 0, 0, 0
            start, at = at, at + raw
            if wanted < 0:
                continue
            if frame == _ELEMENT:
                elements[n_elements - 1, _E_NAME] = start
                elements[n_elements - 1, _E_NAME_END] = at
            elif frame == _COLUMN:
                chunks[n_chunks - 1, _C_PATH] = 1  # pages in another file
            elif frame == _PATH:
                chunks[n_chunks - 1, _C_NAME] = start
                chunks[n_chunks - 1, _C_NAME_END] = at
                chunks[n_chunks - 1, _C_PARTS] += 1
            continue
        value = (raw >> 1) ^ -(raw & 1)
        if wanted < 0:
            continue
        if value < 0:
            return -1, 0, 0, 0  # no kept value of a sound footer is negative
        if frame == _ELEMENT:
            elements[n_elements - 1, field - 1] = value  # _E_TYPE ... _E_CONVERTED
        elif frame == _GROUP:
            groups[n_groups - 1] = value
        elif frame == _META:
            column = chunks[n_chunks - 1]
            if field == 1:
                column[_C_TYPE] = value
            elif field == 4:
                column[_C_CODEC] = value
            elif field <= 7:
                column[_C_VALUES + field - 5] = value  # values, unpacked, stored
            else:
                column[_C_DATA if field == 9 else _C_DICTIONARY] = value
        elif frame == _ENCODINGS:
            if value < 63:
                chunks[n_chunks - 1, _C_KNOWN] |= np.int64(1) << value
        elif frame == _STATISTICS:
            chunks[n_chunks - 1, _C_NULLS] = value
        elif frame == _STAT:
            stats[n_stats - 1, field] = value  # _S_KIND, _S_ENCODING, _S_COUNT
    if at != end or not listed:
        return -1, 0, 0, 0
    return n_elements, n_chunks, n_stats, n_groups


@njit()
def _names_agree(data: Any, chunks: Any, leaves: Any) -> bool:  # pragma: no cover - compiled
    """Whether each chunk's path ends in the name of its leaf (``leaves``: the
    ``start, end`` of each leaf's name in ``data``, the chunks of a row group
    in their order)."""
    width = leaves.shape[0]
    for c in range(chunks.shape[0]):
        low, high = chunks[c, _C_NAME], chunks[c, _C_NAME_END]
        start, end = leaves[c % width, 0], leaves[c % width, 1]
        if low < 0 or start < 0 or high - low != end - start:
            return False
        for k in range(high - low):
            if data[low + k] != data[start + k]:
                return False
    return True


def _footer_tables(data: Any, start: int, end: int) -> tuple[Any, Any, Any, Any]:
    """:func:`_read_footer`'s tables, grown until they hold the footer."""
    rows = max((end - start) // 64, 16)
    while True:
        elements = np.empty((rows, _E_WIDTH), dtype=np.int64)
        chunks = np.empty((rows, _C_WIDTH), dtype=np.int64)
        stats = np.empty((rows, 4), dtype=np.int64)
        groups = np.empty(rows, dtype=np.int64)
        counts = _read_footer(data, start, end, elements, chunks, stats, groups)
        if counts[0] == -1:
            raise _Malformed("a footer that is not Parquet's FileMetaData")
        if counts[0] != _TOO_FEW:
            break
        rows *= 4
    found, made, stated, grouped = counts
    return elements[:found], chunks[:made], stats[:stated], groups[:grouped]
