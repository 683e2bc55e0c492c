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

import zlib
from typing import Any

import numpy as np

from raft_polars._engine._jit import njit

__all__ = ["footer_readable", "largest_row_group", "verified"]

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
_WIDTH = 11  # three encodings from _ENC on: values, definition and repetition levels
_TOO_FEW = -2  # more pages than rows to hold them: the caller retries with more


def verified(path: str) -> bool:
    """Whether every page of a Parquet file carries a CRC that its bytes match,
    with headers that agree with the footer: then Polars may decode the file
    for ``validate``. False says only that this walk cannot vouch for the file
    (no checksums, a mismatch, a header it does not expect): the decoding strict
    reader then checks it and says what is wrong, if anything."""
    import mmap

    try:
        with open(path, "rb") as handle:
            mm = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):  # unreadable, or empty: the strict reader says what
        return False
    view = memoryview(mm)
    data = np.frombuffer(view, dtype=np.uint8)
    try:
        chunks, stated = _chunks(view)
        pages = np.empty((max(4 * len(chunks), 16), _WIDTH), dtype=np.int64)
        count = _walk_file(data, chunks, pages)
        while count == _TOO_FEW:
            pages = np.empty((4 * len(pages), _WIDTH), dtype=np.int64)
            count = _walk_file(data, chunks, pages)
        if count < 0 or not _as_stated(pages[:count], chunks, stated):
            return False
        spans = pages[:count][:, [_START, _COMPRESSED, _CRC]]
        spans[:, 1] += spans[:, 0]
        spans[:, 2] &= 0xFFFFFFFF
        return all(zlib.crc32(view[low:high]) == crc for low, high, crc in spans.tolist())
    except Exception:
        return False
    finally:
        del data
        try:
            view.release()
            mm.close()
        except BufferError:  # a view still held elsewhere (a sampling profiler's
            pass  # frame, as on a Dask worker): the map closes with its last view


# the columns of a column chunk for the walk
_FROM, _TO, _UNPACKED, _COUNT, _ROWS, _KNOWN, _SIZE, _STATED, _CODEC = range(9)
_UNCOMPRESSED_CODEC, _SNAPPY, _GZIP, _ZSTD = 0, 1, 2, 6
# bytes a value of each physical type takes in a PLAIN dictionary (0: a length first)
_VALUE_BYTES = {1: 4, 2: 8, 3: 12, 4: 4, 5: 8, 6: 0}


class _Malformed(Exception):
    """Bytes that are not the Thrift this walk expects."""


def _chunks(data: Any) -> tuple[Any, Any]:
    """The column chunks of a file's footer (read here, not by pyarrow, whose
    reader aborts the process on some corrupted footers), a row each: where
    their pages lie, their uncompressed size and values, the row group's rows
    for a flat column (-1 otherwise), the encodings the footer lists (a bit
    each), the bytes of a value in a PLAIN dictionary and whether the footer
    counts its pages; with the keys ``chunk << 16 | page type << 8 | encoding``
    of the pages it counts, one a page."""
    size = len(data)
    if size < 12 or bytes(data[-4:]) != b"PAR1":
        raise _Malformed("not a Parquet file")
    length = int.from_bytes(bytes(data[-8:-4]), "little")
    if length > size - 12:
        raise _Malformed("a footer longer than the file")
    meta, _ = _Thrift(bytes(data[size - 8 - length : size - 8])).struct()
    leaves = _leaves(meta[2])
    rows: list[tuple[int, ...]] = []
    stated: list[int] = []
    for group in meta[4]:
        columns = group[1]
        if len(columns) != len(leaves):
            raise _Malformed("a row group without a chunk for each column")
        for chunk, (flat, element, _, _) in zip(columns, leaves, strict=True):
            if chunk.get(1) is not None:  # pages in another file
                raise _Malformed("a column chunk in another file")
            column = chunk[3]
            _typed(column, {1: _I32, 2: _LIST, 4: _I32, 5: _I64, 6: _I64, 7: _I64, 9: _I64})
            _agree(element, column)
            start = column.get(11) or column[9]  # the dictionary page comes first
            known = sum(1 << code for code in column[2] if 0 <= code < 63)
            size = _VALUE_BYTES.get(column[1], -1)
            if column[1] == 7:
                size = element.get(2, -1)
            counts = column.get(13)  # pages per type and encoding, when the writer says
            for stat in counts or ():
                stated.extend([len(rows) << 16 | stat[1] << 8 | stat[2]] * stat[3])
            rows.append((
                start, start + column[7], column[6], column[5],
                group[3] if flat else -1, known | _LEVELS, size, counts is not None, column[4],
            ))  # fmt: skip
    return np.array(rows, dtype=np.int64).reshape(len(rows), 9), np.array(stated, dtype=np.int64)


def _as_stated(pages: Any, chunks: Any, stated: Any) -> bool:
    """Whether the pages of each chunk whose footer counts its pages per type and
    encoding are those: a second record of each page's encoding."""
    mine = pages[chunks[pages[:, _CHUNK], _STATED] == 1]
    keys = mine[:, _CHUNK] << 16 | mine[:, _KIND] << 8 | mine[:, _ENC]
    return bool(np.array_equal(np.sort(keys), np.sort(stated)))


def _agree(element: dict[int, Any], column: dict[int, Any]) -> None:
    """A footer holds a column's physical type and name twice (its schema
    element, its chunks' metadata) and says whether it may hold nulls: a
    corrupted byte in one is caught by the other."""
    if element.get(1) != column[1]:
        raise _Malformed("the schema and a column chunk differ on the type")
    if not column[3] or element.get(4) != column[3][-1]:
        raise _Malformed("the schema and a column chunk differ on the name")
    if element.get(3) == 0 and (column.get(12) or {}).get(3, 0):
        raise _Malformed("nulls in a required column")


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


def largest_row_group(path: str) -> int | None:
    """The most rows in one row group of a local Parquet file, from its
    footer; None when it cannot be read."""
    try:
        rows = [group[3] for group in _footer(path)[4]]
    except Exception:
        return None
    return max(rows) if rows and all(isinstance(n, int) for n in rows) else None


def footer_readable(path: str) -> bool:
    """Whether pyarrow may be asked for the column chunks of a Parquet file's
    footer. pyarrow aborts the process (an exception thrown where none may be)
    when a chunk's type is not its schema's, or its level histograms do not
    have the lengths the schema gives them; this reads the footer itself and
    checks them. False for anything it
    cannot read (the caller then leaves the footer's details out)."""
    try:
        meta = _footer(path)
        leaves = _leaves(meta[2])
        for group in meta[4]:
            for chunk, (_, element, defs, reps) in zip(group[1], leaves, strict=True):
                _typed(chunk, {3: _STRUCT})
                _typed(chunk[3], {1: _I32, 16: _STRUCT})
                if chunk[3][1] != element.get(1):
                    return False  # the chunk's type is not the schema's
                sizes = chunk[3].get(16)  # SizeStatistics
                if sizes is not None:
                    _typed(sizes, {1: _I64, 2: _LIST, 3: _LIST})
                for field, levels in ((2, reps), (3, defs)):
                    histogram = None if sizes is None else sizes.get(field)
                    if (histogram and len(histogram) != levels + 1) or (histogram == [] and levels):
                        return False  # none is written for a level that is always 0
    except Exception:
        return False
    return True


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
    does not exist, no CRC, a size out of bounds or past the chunk, an encoding
    the footer does not list, values that do not add up to the chunk's count or
    a flat column's rows)."""
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
            if kind not in (_DATA, _INDEX, _DICTIONARY) or pages[i, _HAS_CRC] != 1:
                return -1  # v2 data pages hold level lengths outside the CRC: not vouched for
            if size < 0 or size > chunks[c, _UNPACKED]:
                return -1
            if pages[i, _START] + pages[i, _COMPRESSED] > high:
                return -1
            pages[i, _CHUNK] = c
            if kind != _INDEX and not _size_agrees(data, pages[i], chunks[c, _CODEC]):
                return -1
            width = chunks[c, _SIZE]
            if kind == _DICTIONARY and width >= 0:  # a PLAIN dictionary's size
                entries = pages[i, _VALUES]
                if entries < 0 or (size != entries * width if width else size < 4 * entries):
                    return -1
            used = 3 if kind == _DATA else (0 if kind == _INDEX else 1)
            for e in range(_ENC, _ENC + used):
                code = pages[i, e]
                if code < 0 or code > 62 or not (chunks[c, _KNOWN] >> code) & 1:
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
    longer than 64 bits)."""
    value = shift = 0
    while True:
        if at >= data.shape[0] or shift > 63:
            return 0, -1
        byte = int(data[at])
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


@njit(inline="always")
def _size_agrees(data: Any, page: Any, codec: int) -> bool:  # noqa: PLR0911  # pragma: no cover
    """Whether a page's uncompressed size is the one its compressed bytes
    record (snappy's length, gzip's trailer, zstd's frame content size; none
    uncompressed): outside the CRC, the header's size is checked here."""
    start, size, stored = page[_START], page[_UNCOMPRESSED], page[_COMPRESSED]
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
def _expected(depth: int, outer: int, inner: int, field: int) -> int:  # pragma: no cover
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
    if depth == 3 and outer == 5 and inner == 5:  # Statistics
        if field in (1, 2, 5, 6):
            return _BINARY
        return _I64 if field in (3, 4) else (_TRUE if field in (7, 8) else -1)
    return -1


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
            if at >= data.shape[0]:
                return -1
            head = np.int64(data[at])
            at += 1
            kind = head & 0x0F
            if kind == _STOP:
                depth -= 1
                continue
            field = lasts[depth - 1] + (head >> 4)
            if head >> 4 == 0:  # the field id follows, a zigzag varint
                raw, at = _varint(data, at)
                if at < 0:
                    return -1
                field = (raw >> 1) ^ -(raw & 1)
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
        if page[_COMPRESSED] < 0:
            return -1
        page[_START] = at
        at += page[_COMPRESSED]
        count += 1
    return count
