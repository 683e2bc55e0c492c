"""Source resolution: one function turns any source into what is read.

A source is a Parquet path, a glob, a list of paths, a directory (read
recursively), a polars ``DataFrame`` / ``LazyFrame`` or a ``pyarrow.Table``.
:func:`resolve` turns it into a :class:`Resolved`: the data files (each with the
Hive ``key=value`` pairs of the directories between the source root and the
file) and the schema they are read with, or the in-memory frame. Every executor
reads through :meth:`Resolved.scan`: the in-process one the whole source, the
Dask one a :class:`Piece` of it (some files, or a row range of one file).

Rules, the same for every executor:

- an existing path is a path, whatever characters it holds; only a path that
  does not exist may be a glob pattern;
- a directory is read recursively; files and directories whose name starts with
  ``.`` or ``_`` (``.hidden/``, Spark's ``_temporary/`` and ``_SUCCESS``, ``.crc``)
  are skipped; ``*.parquet`` and ``*.pq`` files count;
- Hive keys come only from directories below the root the user gave (the
  directory, or a glob's fixed part), never from the path above it; a Hive key
  that is also a column of the file must agree with it;
- Parquet parts must have the same columns (their widths may differ); the parts
  of a JSON lines source may differ in their keys: a key that a part lacks is
  null there, as it is in a line of a single file.
"""

from __future__ import annotations

import errno
import fnmatch
import heapq
import io
import json
import math
import os
import re
import stat
import sys
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeAlias

import polars as pl
import pyarrow as pa

from raft_polars._engine.checks import beyond_int64
from raft_polars.errors import RaftInputError

if TYPE_CHECKING:
    from polars._typing import PolarsDataType

__all__ = [
    "READ_ERRORS",
    "DataFile",
    "Piece",
    "Resolved",
    "Source",
    "StrictReader",
    "file_kind",
    "file_schema",
    "local_files",
    "lone_surrogates",
    "reading",
    "resolve",
    "summing",
    "write_failure",
]

PathLike: TypeAlias = str | Path
Source: TypeAlias = PathLike | Sequence[PathLike] | pl.DataFrame | pl.LazyFrame | pa.Table

PARQUET = (".parquet", ".pq")
JSON_LINES = (".jsonl", ".ndjson", ".json")
COMPRESSED = (".gz", ".zst", ".zstd")
_OTHER_COMPRESSED = (".bz2", ".xz", ".lz4", ".lzma", ".zip", ".7z", ".tar", ".tgz", ".br")
SUFFIXES = (*PARQUET, *JSON_LINES)
# what a read of a bad file raises: Polars' errors, the OS's, and the panics of
# Polars' Rust code on some malformed files (a BaseException, not an Exception)
READ_ERRORS: tuple[type[BaseException], ...] = (
    pl.exceptions.PolarsError,
    pl.exceptions.PanicException,
    OSError,
)
_KINDS_READ = (
    "Parquet (.parquet, .pq) and JSON lines (.jsonl, .ndjson, .json; compressed .gz or .zst)"
)
_GLOB_CHARS = "*?["
# the characters of an object store prefix that Polars' glob listing takes as they are
_LISTED_AS_IS = re.compile(r"[A-Za-z0-9_.\-/= ]*")
_HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
# parts written by different tools may differ in integer / float width
_UPCAST = pl.ScanCastOptions(
    integer_cast=["upcast", "allow-float"], float_cast="upcast", categorical_to_string="allow"
)


def _literal(path: str) -> str:
    """A local file's path as Polars' JSON lines scan takes it literally: that
    scan expands any path with glob characters (it has no ``glob=False``), so
    ``j[1].jsonl`` read ``j1.jsonl``; each such character is escaped as a class
    of itself (``[[]``)."""
    return "".join(f"[{ch}]" if ch in _GLOB_CHARS else ch for ch in path)


@dataclass(frozen=True)
class DataFile:
    """One data file and the Hive ``key=value`` pairs of the directories between
    the source root and it (values as written; None for Hive's null)."""

    path: str
    partitions: tuple[tuple[str, str | None], ...] = ()


@dataclass(frozen=True, eq=False)
class Piece:
    """A part of a source to read: some of its files, or ``rows = (offset,
    count)`` of one file (a range of its row groups)."""

    files: tuple[int, ...]
    rows: tuple[int, int] | None = None
    offsets: pl.DataFrame | None = None  # numbered candidates: each prompt's first id here


class StrictReader(Protocol):
    """Reads local Parquet files in place of Polars' reader (``validate``'s strict
    read, :class:`raft_polars._engine.validate.StrictParquet`)."""

    def scan(
        self, paths: Sequence[str], schema: Mapping[str, pl.DataType], rows: tuple[int, int] | None
    ) -> pl.LazyFrame:
        """The rows of ``paths`` in order, with ``schema``; ``rows = (offset, count)``
        of a single file, when given."""
        ...


@dataclass(frozen=True)
class Resolved:
    """A source, resolved: files or an in-memory frame, and its schema.

    Attributes
    ----------
    role
        ``"source"`` or ``"rewards"``, for messages.
    origin
        A human-readable name (``source 'logs/'``, ``the source DataFrame``).
    files
        The data files, in reading order; empty for a frame.
    schema
        The columns as read: the files' columns (widths merged across files)
        followed by the Hive columns.
    hive
        Hive key names and their types (columns that come from directory names).
    frame
        The in-memory source, or None.
    strict
        A reader of the local Parquet files in place of Polars' (``validate``).
    """

    role: str
    origin: str
    files: tuple[DataFile, ...]
    schema: tuple[tuple[str, pl.DataType], ...]
    hive: tuple[tuple[str, pl.DataType], ...] = ()
    frame: pl.LazyFrame | None = None
    kind: str = "parquet"
    summed: tuple[str, ...] = ()  # a ``reward`` column added as the sum of these
    # object store paths (s3://, gs://, az://, hf://): read by Polars' cloud readers
    storage_options: tuple[tuple[str, str], ...] | None = None
    strict: StrictReader | None = None

    @property
    def remote(self) -> bool:
        return self.storage_options is not None

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(f.path for f in self.files)

    def scan(self, piece: Piece | None = None) -> pl.LazyFrame:
        """The source (or one piece of it) as a lazy frame with :attr:`schema`."""
        if self.frame is not None:
            if piece is None or piece.rows is None:
                return self.frame
            return self.frame.slice(*piece.rows)
        chosen = self.files if piece is None else tuple(self.files[i] for i in piece.files)
        added = {*dict(self.hive), *(["reward"] if self.summed else [])}
        file_schema = {name: dtype for name, dtype in self.schema if name not in added}
        groups: dict[tuple[tuple[str, str | None], ...], list[str]] = {}
        for f in chosen:
            groups.setdefault(f.partitions, []).append(f.path)
        strict = self.strict if self.kind == "parquet" and not self.remote else None
        frames = []
        for partitions, paths in groups.items():
            if self.remote:  # globs and prefixes expand in the store
                options = dict(self.storage_options or ())
                lf = (
                    pl.scan_ndjson(paths, storage_options=options or None, schema=file_schema)
                    if self.kind == "ndjson"
                    else pl.scan_parquet(
                        paths,
                        storage_options=options or None,
                        cast_options=_UPCAST,
                        hive_partitioning=False,
                    )
                )
            elif self.kind == "ndjson":
                lf = pl.scan_ndjson([_literal(p) for p in paths], schema=file_schema)
            elif strict is not None:  # a row range is the reader's to cut
                lf = strict.scan(paths, file_schema, None if piece is None else piece.rows)
            else:
                lf = pl.scan_parquet(
                    paths,
                    schema=file_schema,
                    cast_options=_UPCAST,
                    hive_partitioning=False,
                    glob=False,
                )
            if piece is not None and piece.rows is not None and strict is None:
                lf = lf.slice(*piece.rows)
            values = dict(partitions)
            frames.append(
                lf.with_columns(
                    pl.lit(values.get(name), pl.String).cast(dtype).alias(name)
                    for name, dtype in self.hive
                )
            )
        if not frames:
            return pl.LazyFrame(schema=dict(self.schema))
        lf = frames[0] if len(frames) == 1 else pl.concat(frames, how="vertical")
        if self.summed:
            lf = lf.with_columns(summed_reward(self.summed))
        return lf


REMOTE = ("s3://", "s3a://", "gs://", "gcs://", "az://", "abfs://", "abfss://", "hf://")


def is_remote(path: str) -> bool:
    """Whether ``path`` names an object in a store Polars reads (S3, GCS, Azure,
    Hugging Face)."""
    return path.lower().startswith(REMOTE)


def _file_identity(path: str) -> object:
    """What makes two names one local file (a link, ``dir/../a``): its device and
    inode, or its name when it cannot be looked at (the read names the problem)."""
    try:
        found = os.stat(path)
    except OSError:
        return path
    return (found.st_dev, found.st_ino)


def _once_each(
    files: Sequence[DataFile], origin: str, *, identity: Callable[[str], object]
) -> None:
    """Each data file is named once: a file listed twice (``a.parquet a.parquet``,
    a directory and a file in it, two overlapping globs) would be read twice, its
    candidates duplicates or, without candidate ids, silently doubled."""
    if len(files) < 2:
        return
    seen: dict[object, str] = {}
    for file in files:
        key = identity(file.path)
        if key in seen:
            msg = (
                f"{origin}: the file {file.path!r} is named twice (also as {seen[key]!r}): "
                "its rows would be read twice; name each file once"
            )
            raise RaftInputError(msg)
        seen[key] = file.path


def resolve(
    source: Source, role: str = "source", storage_options: Mapping[str, str] | None = None
) -> Resolved:
    """Resolve ``source`` into what is read.

    Raises
    ------
    RaftInputError
        Not a source kind, a path that does not exist and matches nothing, a
        directory without data files, an unreadable file, files whose columns
        disagree.
    """
    if isinstance(source, pl.LazyFrame | pl.DataFrame | pa.Table):
        return _resolve_frame(source, role)
    if isinstance(source, str | Path):
        paths = [source]
    elif isinstance(source, Sequence) and all(isinstance(p, str | Path) for p in source):
        paths = list(source)
    else:
        given = type(source)
        package = given.__module__.split(".")[0]
        msg = (
            f"{role} must be a path, a glob, a list of paths, a polars DataFrame or "
            f"LazyFrame or a pyarrow Table; got {given.__module__}.{given.__qualname__}"
        )
        if package == "pandas":
            msg += " (convert it with polars.from_pandas(...))"
        elif package == "pyarrow":
            msg += " (make it a table: pyarrow.Table.from_batches([...]), or .read_all())"
        elif isinstance(source, Sequence):
            msg += " (a list of paths holds only str or pathlib.Path)"
        raise RaftInputError(msg)
    if not paths:
        msg = f"{role}: the list of paths is empty"
        raise RaftInputError(msg)
    blank = next((p for p in paths if isinstance(p, str) and not p.strip()), None)
    if blank is not None:  # it read the working directory, as "." does
        msg = f"{role}: an empty path ({blank!r}) names no file (an unset variable?)"
        raise RaftInputError(msg)
    if any(is_remote(str(p)) for p in paths):
        return _resolve_remote([str(p) for p in paths], role, storage_options)
    files: list[DataFile] = []
    for raw in paths:
        files.extend(_utf8_path(f, role) for f in _expand(str(raw), role))
    origin = repr(str(paths[0])) if len(paths) == 1 else f"{len(paths)} paths"
    origin = f"{role} {origin}"
    _once_each(files, origin, identity=_file_identity)
    kind = _one_kind(files, origin)
    file_schema = _file_schema([f.path for f in files], origin, kind)
    for name, dtype in file_schema.items():  # a type Polars names but cannot hold
        try:
            pl.Series(name, [], dtype=dtype)
        except READ_ERRORS as exc:
            msg = f"{origin}: column {name!r} is of a type Polars cannot read ({_first_line(exc)})"
            raise RaftInputError(msg) from exc
    hive = _hive_columns(files, file_schema, origin)
    schema = tuple(file_schema.items()) + tuple(
        (name, dtype) for name, dtype in hive if name not in file_schema
    )
    hive = tuple((name, dtype) for name, dtype in hive if name not in file_schema)
    return Resolved(role, origin, tuple(files), schema, hive, kind=kind)


def _one_kind(files: Sequence[DataFile], origin: str) -> str:
    """The kind (:func:`file_kind`) all ``files`` share: a source of Parquet and
    JSON lines both is an error naming one file of each."""
    kinds = {f.path: file_kind(f.path) for f in files}
    if len(set(kinds.values())) > 1:
        parquet = next(p for p, k in kinds.items() if k == "parquet")
        other = next(p for p, k in kinds.items() if k != "parquet")
        msg = (
            f"{origin} mixes Parquet ({parquet!r}) and JSON lines ({other!r}); "
            "give one kind of file per source"
        )
        raise RaftInputError(msg)
    return next(iter(kinds.values()))


# an escaped UTF-16 surrogate (\\ud800 .. \\udfff) that is not half of a pair,
# high then low, as JSON writers that escape non-ASCII text give the characters
# beyond U+FFFF (the lookbehind is 9 bytes: a high surrogate and "\\ud")
_LONE_ESCAPE = re.compile(
    rb"\\u[dD](?:[89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F])"
    rb"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD])[c-fC-F][0-9a-fA-F]{2})"
)
# the same, exactly, where an escaped backslash may be followed by "u" (the text
# "\\ud83d", no escape, which fools the lookbehind): every backslash escape is a
# token, an escaped backslash or a pair skipped, a lone surrogate captured
_ESCAPES = re.compile(
    rb"\\(?:\\|u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"
    rb"|(u[dD][89a-fA-F][0-9a-fA-F]{2}))"
)
_CHUNK = 1 << 24  # bytes of a compressed file decompressed at a time
_LONE = re.compile("[\ud800-\udfff]")


def _decompressed(path: str) -> Any:
    """A local file's bytes as a stream, decompressed by its suffix (pyarrow's
    detection knows ``.gz`` and ``.zst``, not ``.zstd``)."""
    name = path.lower()
    if name.endswith(".gz"):
        return pa.input_stream(path, compression="gzip")
    if name.endswith((".zst", ".zstd")):
        return pa.input_stream(path, compression="zstd")
    return open(path, "rb", buffering=0)


def lone_surrogates(path: str) -> list[tuple[str, str, int]]:
    """The top-level keys of a JSON lines file whose text holds an escaped lone
    surrogate (``"\\ud83d"`` alone: half of a character; JavaScript's string
    slicing makes them of emoji), each with its first line. Polars reads a
    lone high surrogate as NUL, so that two different texts read as one.

    One regular expression over the bytes, read (or decompressed) 16 MiB at a
    time; only a line it matches is parsed, by Python's json, which also tells
    an escaped backslash followed by ``ud83d`` from a surrogate.
    """
    found: dict[str, tuple[str, str, int]] = {}
    try:
        with _decompressed(path) as stream:
            tail, number = b"", 0
            while chunk := stream.read(_CHUNK):
                data = tail + chunk if tail else chunk
                cut = data.rfind(b"\n") + 1
                number = _scan_lines(data, cut, number, path, found)
                tail = data[cut:]
            _scan_lines(tail, len(tail), number, path, found)
    except (OSError, ValueError, pa.ArrowException):  # the read that follows reports it
        return []
    return list(found.values())


def _scan_lines(
    data: bytes, stop: int, number: int, path: str, found: dict[str, tuple[str, str, int]]
) -> int:
    """:func:`lone_surrogates` over the whole lines of ``data[:stop]``, the first
    of them line ``number + 1``; returns the number of the last."""
    seen, end = 0, -1
    if data.find(b"\\\\u", 0, stop) < 0:
        matches = _LONE_ESCAPE.finditer(data, 0, stop)
    else:
        matches = (m for m in _ESCAPES.finditer(data, 0, stop) if m.group(1) is not None)
    for match in matches:
        if match.start() < end:  # this line is done
            continue
        begin = data.rfind(b"\n", 0, match.start()) + 1
        end = data.find(b"\n", match.end(), stop)
        end = stop if end < 0 else end
        number += data.count(b"\n", seen, begin)
        seen = begin
        try:  # as pairs: a key given twice has both its values (Polars reads the first)
            row = json.loads(data[begin:end], object_pairs_hook=list)
        except ValueError:  # the read that follows reports the line
            continue
        if isinstance(row, list):
            for key, value in row:
                if key not in found and _LONE.search(json.dumps(value, ensure_ascii=False)):
                    found[key] = (key, path, number + 1)
    return number + data.count(b"\n", seen, stop)


def local_specs(source: Source | None) -> list[str]:
    """The local paths a source is given as (files, directories, globs; frames
    and object store paths: none)."""
    if source is None or isinstance(source, pl.LazyFrame | pl.DataFrame | pa.Table):
        return []
    paths = [source] if isinstance(source, str | Path) else list(source)
    return [p for p in map(str, paths) if not is_remote(p)]


def local_files(source: Source | None) -> list[str]:
    """The local data files a source names (a file, a directory, a glob; frames
    and object store paths: none), without reading them."""
    return [f.path for p in local_specs(source) for f in _expand(p, "source")]


def would_read(spec: str, target: str) -> str | None:
    """How (in words) a read of the local path ``spec``, made once ``target``
    exists, would take ``target`` as one of its data files; None if it would
    not. As the file itself, as a data file below the directory, as a file the
    glob matches or a data file below a directory it matches; names that the
    read leaves out (hidden, ``.`` and ``_``, below a directory or a glob's
    fixed part) are left out. A read follows linked directories by their names
    (``logs/st1`` linked from another disk): ``target`` is found by the name the
    read gives it, whether it is named through a link, by its real path, or
    with ``..`` after a link (which the OS takes from the link's target)."""
    path = Path(spec)
    if path.is_dir():
        below = _read_as(target, path)
        if below is None or not _data_name(below):
            return None
        return f"lies in the source directory {spec!r} (which leaves out names beginning with '_')"
    if path.exists():
        same = os.path.realpath(spec) == os.path.realpath(target)
        return f"is the source file {spec!r}" if same else None
    if not any(ch in spec for ch in _GLOB_CHARS):
        return None
    fixed = _fixed_part(spec)
    root = (fixed if fixed.endswith(("/", "\\")) else os.path.dirname(fixed)) or "."
    pattern = PurePath(spec).parts[len(PurePath(root).parts) :]  # as written: '..' kept
    directories = spec.endswith(("/", "\\"))
    for names in _glob_names(spec, root, target, pattern):
        if _glob_takes(pattern, names, directories=directories):
            return f"matches the source glob {spec!r}"
    return None


def os_path(path: str | os.PathLike[str]) -> str:
    """The absolute name of ``path`` as the OS finds it: its directory resolved
    (``link/..`` is the directory above the link's target, where ``abspath``
    drops both as text), its own name kept (a link stays a link)."""
    name = os.fspath(path)
    return os.path.join(os.path.realpath(os.path.dirname(name) or "."), os.path.basename(name))


def _read_as(target: str, directory: Path) -> tuple[str, ...] | None:
    """The parts of the name a read of ``directory`` (:func:`_walk`, through
    linked directories) gives the file ``target``: the directory it walks that is
    ``target``'s (the same one, under whatever name), and ``target``'s own name;
    None if it walks no such directory. A directory below the source's own
    (real) one is found without a walk."""
    try:
        home = os.stat(os.path.dirname(target) or ".")  # as the OS resolves it
    except OSError:  # no such directory: nothing is written there
        return None
    name = os.path.basename(target)
    real = _parts_below(os.path.dirname(os_path(target)), os.path.realpath(directory))
    if real is not None and not any(map(_hidden_name, real)):
        return (*real, name)
    for _, parts, here, _ in _walk(directory):
        if os.path.samestat(here, home):
            return (*parts, name)
    return None


def _glob_names(
    spec: str, root: str, target: str, pattern: Sequence[str]
) -> Iterator[tuple[str, ...]]:
    """The names (parts below the glob's fixed part ``root``) a read of the glob
    ``spec`` could give the file ``target``: by its name as given (without
    ``..``, which the OS takes through links) and by its real path; through the
    directories the glob's parent parts match (any of them ``target``'s
    directory under another name, a link on another disk); and below the
    directories the glob itself matches, as a read walks them."""
    if ".." not in Path(target).parts and ".." not in Path(root).parts:  # as text, then
        yield from _found(_parts_below(os.path.abspath(target), os.path.abspath(root)))
    yield from _found(_parts_below(os.path.realpath(target), os.path.realpath(root)))
    try:
        home = os.stat(os.path.dirname(target) or ".")
    except OSError:  # no such directory: nothing is written there
        return
    whole = spec.rstrip("/\\")
    parent = os.path.dirname(whole)
    spelled = [part for part in pattern if _hidden_name(part)]  # parts below root
    for match in _glob(os.path.join(parent, ""), spelled) if parent else ["."]:
        if os.path.samestat(os.stat(match), home):
            yield from _found(_parts_below(match, root), os.path.basename(target))
    for match in _glob(os.path.join(whole, ""), spelled):
        below = _read_as(target, Path(match))
        if below is not None:
            yield from _found(_parts_below(match, root), *below)


def _found(parts: tuple[str, ...] | None, *more: str) -> Iterator[tuple[str, ...]]:
    """``parts`` and ``more`` as one name, if ``parts`` is one."""
    if parts is not None:
        yield (*parts, *more)


def _parts_below(path: str | PurePath, directory: str | PurePath) -> tuple[str, ...] | None:
    """The parts of ``path`` below ``directory``, both as written (absolute, real,
    or as a glob gave them: ``..`` kept, the OS takes it through links, as the read
    does); None if it is not below it."""
    parts, top = PurePath(path).parts, PurePath(directory).parts
    return parts[len(top) :] if parts[: len(top)] == top else None


def _glob_takes(pattern: Sequence[str], names: Sequence[str], *, directories: bool) -> bool:
    """Whether a glob ``pattern`` takes the file at ``names`` (both in parts below
    the pattern's fixed part) as a local glob does (:func:`_matched_files`): as a
    file it matches (not where it ends in ``/``, ``directories`` only), or as a
    data file below a directory it matches."""
    return any(
        _glob_matches(pattern, names[:end], directory=end < len(names))
        and (end == len(names) or _data_name(names[end:]))
        for end in range(len(names) + 1 - directories)
    )


def _glob_matches(pattern: Sequence[str], names: Sequence[str], *, directory: bool) -> bool:
    """Whether the path ``names`` (a ``directory``, or a file) matches the glob
    ``pattern`` (both in parts below the glob's fixed part) as
    :func:`_matched_files` matches: ``**`` any number of parts, but none at the
    end of a file's (Python's glob matches the parts before a last ``**`` to
    directories only: ``run/*/**`` takes no ``run/README.txt``), a hidden name
    only where a part of the pattern spells out its first character."""
    spelled = [part for part in pattern if _hidden_name(part)]

    def matches(parts: Sequence[str], rest: Sequence[str]) -> bool:
        if not parts:
            return not rest
        if parts[0] == "**":  # no name beginning with "." (Python's glob)
            return any(
                matches(parts[1:], rest[skip:])
                for skip in range(len(rest) + 1)
                if not any(name.startswith(".") for name in rest[:skip])
                and (skip or len(parts) > 1 or directory or not names)
            )
        return (
            bool(rest)
            and fnmatch.fnmatchcase(rest[0], parts[0])
            and (parts[0].startswith(".") or not rest[0].startswith("."))
            and matches(parts[1:], rest[1:])
        )

    return matches(pattern, names) and not any(_hidden(name, spelled) for name in names)


def _resolve_remote(
    paths: list[str], role: str, storage_options: Mapping[str, str] | None
) -> Resolved:
    """Object store paths, globs or prefixes: listed and read by Polars' cloud
    readers (credentials from ``storage_options`` or the usual environment
    variables, e.g. ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``)."""
    local = [p for p in paths if not is_remote(p)]
    if local:
        msg = f"{role}: mixes object store paths and local ones ({local[0]!r}); give one kind"
        raise RaftInputError(msg)
    options = dict(storage_options or {})
    origin = f"{role} {paths[0]!r}" if len(paths) == 1 else f"{role} {len(paths)} paths"
    files: list[DataFile] = []
    for path in paths:  # globs and prefixes are listed as local globs and directories are
        if any(ch in path for ch in _GLOB_CHARS):  # 'run/*/' too: a glob of "directories"
            files.extend(_globbed(path, role, options))
        elif path.endswith("/"):
            files.extend(_listed(path, role, options))
        else:
            files.append(DataFile(path))
    _once_each(files, origin, identity=lambda path: path)
    kind = _one_kind(files, origin)
    names = [f.path for f in files]
    try:
        if kind == "ndjson":
            lf = pl.scan_ndjson(names, storage_options=options or None, infer_schema_length=None)
        else:
            lf = pl.scan_parquet(names, storage_options=options or None, hive_partitioning=False)
        file_schema = dict(lf.collect_schema())
    except READ_ERRORS as exc:
        msg = f"cannot read {origin}: {_first_line(exc)}"
        raise RaftInputError(msg) from exc
    hive = _hive_columns(files, file_schema, origin, options)
    hive = tuple((name, dtype) for name, dtype in hive if name not in file_schema)
    return Resolved(
        role, origin, tuple(files), tuple(file_schema.items()) + hive, hive, kind=kind,
        storage_options=tuple(sorted(options.items())),
    )  # fmt: skip


def _listed(prefix: str, role: str, options: Mapping[str, str]) -> list[DataFile]:
    """The data files under an object store prefix (``s3://bucket/run/``), chosen
    as below a local directory (:func:`_data_name`, Hive ``key=value`` parts)."""
    try:
        keys = _store_keys(prefix, options)
    except READ_ERRORS as exc:
        msg = f"{role}: cannot list prefix {prefix!r}: {_first_line(exc)}"
        raise RaftInputError(msg) from exc
    if keys is None:  # a Polars without the listing: the prefix as a Parquet directory
        return [DataFile(prefix)]
    found = []
    for key in keys:
        below = PurePosixPath(key.removeprefix(prefix))
        if key.startswith(prefix) and _data_name(below.parts):
            found.append(DataFile(key, _partitions(below, PurePosixPath(), key)))
    if not found:
        msg = (
            f"{role}: prefix {prefix!r} holds no *.parquet or *.pq files (nor JSON "
            f"lines){_unlisted(prefix)}"
        )
        raise RaftInputError(msg)
    return found


def _listable(prefix: str) -> str:
    """The deepest prefix of ``prefix`` (itself, or one above, the bucket at most)
    without a character beyond ``_LISTED_AS_IS``: one Polars lists below."""
    bucket = prefix.find("/", prefix.find("://") + 3) + 1 or len(prefix)
    root = prefix
    while len(root) > bucket and not _LISTED_AS_IS.fullmatch(root, bucket):
        root = root[: root.rstrip("/").rfind("/") + 1]
    return root


def _unlisted(prefix: str) -> str:
    """Why a prefix with a character Polars does not list below may look empty."""
    if _listable(prefix) == prefix:
        return ""
    return (
        " as listed (Polars lists nothing below a name with '~', '%', '#' or a letter "
        "beyond ASCII, and a listing of the prefix above failed or found none): name "
        "its objects one by one"
    )


def _store_keys(prefix: str, options: Mapping[str, str]) -> list[str] | None:
    """The object store keys below ``prefix`` (ending in ``/``), sorted: Polars' own
    listing, with the same credentials (not public: guarded), None for a Polars
    without it. Raises Polars' error where the store cannot be listed.

    Polars lists a glob ``prefix**/*`` as nothing when ``prefix`` holds ``~``,
    ``%``, ``#`` or a letter beyond ASCII (``runs/café/``), though it reads the
    same keys: where such a listing is empty, it is made again from the deepest
    prefix above without a character beyond ``_LISTED_AS_IS`` (the bucket at
    most), keeping the keys below ``prefix``; where that listing fails (a key
    Polars cannot take, ``a//b.txt``, anywhere below it), the first stands."""
    try:
        from polars.io._expand_paths import _expand_paths
    except ImportError:
        return None

    def listing(root: str) -> list[str]:
        found = _expand_paths(f"{root}**/*", storage_options=dict(options) or None).collect()
        return sorted(key for key in found.to_series().to_list() if key.startswith(prefix))

    keys = listing(prefix)
    root = _listable(prefix)
    if keys or root == prefix:
        return keys
    try:
        return listing(root)
    except READ_ERRORS:  # a key there that Polars cannot take ('a//b.txt'): as listed
        return keys


def _fixed_part(pattern: str) -> str:
    """A glob pattern up to its first wildcard character."""
    return pattern[: min(pattern.find(ch) % (len(pattern) + 1) for ch in _GLOB_CHARS)]


def _globbed(pattern: str, role: str, options: Mapping[str, str]) -> list[DataFile]:
    """The objects an object store glob takes, chosen from those below its fixed
    part (Polars' own listing) as a local glob's files are (:func:`_glob_takes`):
    the objects it matches and the data files "below" (under a ``/``) the names
    it matches; a name below the fixed part that begins with ``.`` or ``_`` left
    out unless the pattern spells it, Hive ``key=value`` parts below the fixed
    part kept; the kind of file told by the objects' names, not the pattern's. A
    pattern ending in ``/`` takes the data files below the names it matches only,
    as a local one takes those of the directories it matches."""
    fixed = _fixed_part(pattern)
    root = fixed[: fixed.rfind("/") + 1]
    try:
        keys = _store_keys(root, options)
    except READ_ERRORS as exc:
        msg = f"cannot read {role} {pattern!r}: {_first_line(exc)}"
        raise RaftInputError(msg) from exc
    if keys is None:  # a Polars without the listing: the pattern as given, as before
        return [DataFile(pattern)]
    parts = pattern.removeprefix(root).rstrip("/").split("/")
    directories = pattern.endswith("/")
    found = []
    for key in keys:
        below = PurePosixPath(key.removeprefix(root))
        if key.startswith(root) and _glob_takes(parts, below.parts, directories=directories):
            found.append(DataFile(key, _partitions(below, PurePosixPath(), key)))
    if not found:
        msg = (
            f"cannot read {role} {pattern!r}: no object matches it as a glob pattern"
            f"{_unlisted(root)}"
        )
        raise RaftInputError(msg)
    return found


def _resolve_frame(source: pl.LazyFrame | pl.DataFrame | pa.Table, role: str) -> Resolved:
    if isinstance(source, pl.LazyFrame):
        lf, origin = source, f"the {role} LazyFrame"
    elif isinstance(source, pl.DataFrame):
        lf, origin = source.lazy(), f"the {role} DataFrame"
    else:
        origin = f"the {role} Arrow table"
        try:
            frame = pl.from_arrow(source)
        except READ_ERRORS as exc:  # e.g. two columns of one name, a type Polars lacks
            msg = f"cannot read {origin}{_arrow_column(source)}: {_first_line(exc)}"
            raise RaftInputError(msg) from exc
        assert isinstance(frame, pl.DataFrame)
        lf = frame.lazy()
    try:
        schema = lf.collect_schema()
    except READ_ERRORS as exc:
        msg = f"cannot read the schema of {origin}: {_first_line(exc)}"
        raise RaftInputError(msg) from exc
    return Resolved(role, origin, (), tuple(schema.items()), (), lf)


def _arrow_column(table: pa.Table) -> str:
    """``", column 'x' (its Arrow type)"``: the first column of ``table`` that
    Polars cannot take (a ``list_view``, say); empty when each one alone can be."""
    for at, name in enumerate(table.column_names):
        try:
            pl.from_arrow(table.select([at]))
        except READ_ERRORS:
            return f", column {name!r} ({table.schema.field(at).type})"
    return ""


def _utf8_path(file: DataFile, role: str) -> DataFile:
    """``file``, whose path Polars can open: a name holding bytes that are not
    UTF-8 (legal on Linux; Python gives them as surrogate escapes) it cannot."""
    try:
        file.path.encode("utf-8")
    except UnicodeEncodeError:
        raw = os.fsencode(file.path)
        shown = raw.decode("utf-8", "backslashreplace")
        if shown == raw.decode("utf-8", "replace"):  # UTF-8 after all: Python's locale
            msg = (
                f"{role}: cannot read {shown!r}: Python runs with the file system "
                f"encoding {sys.getfilesystemencoding()!r} (a C locale), which cannot "
                "name it; set PYTHONUTF8=1 or a UTF-8 locale (LC_ALL=C.UTF-8)"
            )
        else:
            msg = (
                f"{role}: cannot read {shown!r}: its name holds bytes that are not UTF-8, "
                "which Polars cannot open; rename it"
            )
        raise RaftInputError(msg) from None
    return file


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # "file:", "run:1", "C:" as a first name


def local_path(path: str | os.PathLike[str]) -> str:
    """``path``, a local one, as the readers and writers (Polars, pyarrow) take it
    for what it is: absolute where it begins like a URL (a directory named
    ``file:`` or ``run:1``), which they took for one: ``file:/tmp/x`` read
    ``/tmp/x``, not ``./file:/tmp/x``."""
    text = os.fspath(path)
    return os.path.abspath(text) if _SCHEME.match(text) else text


def _expand(text: str, role: str) -> list[DataFile]:
    """The data files of one path: a file, a directory or (when no such path
    exists) a glob pattern."""
    path = Path(text)
    if path.is_dir():
        found = _data_files(path)
        if not found:
            msg = f"{role}: directory {text!r} holds no *.parquet or *.pq files (nor JSON lines)"
            raise RaftInputError(msg)
        pairs: dict[tuple[str, ...], tuple[tuple[str, str | None], ...]] = {}
        return [DataFile(local_path(f), _hive_of(pairs, below[:-1], f)) for f, below in found]
    if path.exists():
        if not path.is_file():  # a FIFO waits for a writer forever; a device never ends
            msg = f"{role}: {text!r} is not a regular file or a directory"
            raise RaftInputError(msg)
        return [DataFile(local_path(text))]
    if any(ch in text for ch in _GLOB_CHARS):
        fixed = _fixed_part(text)
        root = Path(fixed) if fixed.endswith(("/", "\\")) else Path(fixed).parent
        matches = _matched_files(text, root)
        if not matches:
            msg = f"{role}: no file {text!r}, and no files match it as a glob pattern"
            raise RaftInputError(msg)
        pairs = {}  # the Hive pairs of the directories below the glob's fixed part
        return [
            DataFile(local_path(f), _hive_of(pairs, _below(f, root)[:-1], str(f))) for f in matches
        ]
    raise RaftInputError(f"{role}: {_missing(path, text)}")


def _missing(path: Path, text: str) -> str:
    """Why the path ``text`` names nothing, at its first component that fails:
    a loop of symbolic links, a link to nothing, a file where a directory
    should be, or a name that does not exist."""
    parts = path.parts
    for end in range(1, len(parts) + 1):
        at = Path(*parts[:end])
        last = end == len(parts)
        try:
            mode = at.stat().st_mode
        except OSError as exc:
            shown = text if last else str(at)
            if exc.errno == errno.ELOOP:
                return f"{shown!r} is a loop of symbolic links (it links back to itself)"
            if at.is_symlink():
                target = os.readlink(at)
                return f"{shown!r} is a symbolic link to {target!r}, which does not exist"
            if exc.errno != errno.ENOENT:  # too long a name, no permission, ...
                return f"cannot open {shown!r}: {os.strerror(exc.errno or 0)}"
            if last:
                break
            return f"file not found: {text!r} (there is no directory {shown!r})"
        if not last and not stat.S_ISDIR(mode):
            return f"file not found: {text!r} ({str(at)!r} is a file, not a directory)"
    return f"file not found: {text!r}"


def _matched_files(pattern: str, root: Path) -> list[Path]:
    """The files a glob pattern matches, and the data files of the directories it
    matches (a Spark or DuckDB "file" written as a directory of parts, read as
    the same paths given one by one read it), each file once (links give one
    several names: the first in order is kept; :func:`_glob` takes a directory
    once at each point of the pattern), in order. A name below ``root`` (the
    pattern's fixed part) that begins with ``.`` or ``_`` is left out, as below a
    source directory, unless the pattern part that matched it spells that first
    character out (``_tmp*``)."""
    # the parts below the fixed part: only those match a name that the glob lists
    spelled = [part for part in Path(pattern).parts[len(root.parts) :] if _hidden_name(part)]
    found: dict[tuple[int, int], Path] = {}
    for match in sorted(map(Path, _glob(pattern, spelled)), key=_in_order):
        if any(_hidden(part, spelled) for part in _below(match, root)):
            continue
        try:
            seen = os.stat(match)
        except FileNotFoundError:  # a link to nothing (or gone since the listing)
            if match.is_symlink():
                _data_files_linking(match)
            continue
        except OSError:  # as a read of it says: not a file taken
            continue
        if stat.S_ISDIR(seen.st_mode):
            for name, _ in _data_files(match):
                file = os.stat(name)
                found.setdefault((file.st_dev, file.st_ino), Path(name))
        elif stat.S_ISREG(seen.st_mode):
            found.setdefault((seen.st_dev, seen.st_ino), match)
    return sorted(found.values(), key=_in_order)


def _glob(pattern: str, spelled: Sequence[str] = ()) -> list[str]:
    """The paths a local glob ``pattern`` matches, as Python's ``glob(pattern,
    recursive=True)`` gives them (``**`` any number of directories, through
    linked ones; a wildcard takes no name beginning with ``.`` unless it begins
    with one itself; a pattern ending in ``/`` directories only), but each
    directory taken once at each point of the pattern, by the first of its
    names in order (``.`` parts aside, as ``Path`` orders them): a link back up
    does not make a recursive pattern grow without end (Python's glob follows
    it again and again, to 7 GB on a tree of a few directories). In a tree
    without such links, the files are the same, and the first name of each in
    order is among them. Names a read leaves out (hidden or temporary, ``.``
    and ``_``, unless a part of ``spelled`` matches them: :func:`_hidden`) are
    not taken, so that a directory's first name is one the read keeps."""
    fixed = _fixed_part(pattern)
    top = fixed if fixed.endswith("/") else os.path.dirname(fixed)
    parts = [part for part in pattern[len(top) :].split("/") if part]
    directories = pattern.endswith("/")
    last = len(parts) - 1
    matchers = [re.compile(fnmatch.translate(part)).match for part in parts]
    found: list[str] = []
    seen: set[tuple[int, int, int]] = set()
    listed: dict[tuple[int, int], tuple[list[str], list[str]]] = {}
    # (the names below top without "." parts, the names, the part at): popped in
    # order of the first, so that a directory is first reached by its first name
    waiting: list[tuple[tuple[str, ...], tuple[str, ...], int]] = [((), (), 0)]

    def push(names: tuple[str, ...], at: int) -> None:
        order = tuple(n for n in names if n != ".") if "." in names else names
        heapq.heappush(waiting, (order, names, at))

    def kept(name: str) -> bool:
        return name[0] not in "._" or not _hidden(name, spelled)

    while waiting:
        _, names, at = heapq.heappop(waiting)
        path = os.path.join(top, *names)
        try:
            here = os.stat(path or ".")
        except OSError:
            continue
        if not stat.S_ISDIR(here.st_mode) or (here.st_dev, here.st_ino, at) in seen:
            continue
        seen.add((here.st_dev, here.st_ino, at))
        if at > last:  # the pattern ends at this directory
            found.append(path)
            continue
        part = parts[at]
        if not any(ch in part for ch in _GLOB_CHARS):
            if at < last or directories:
                push((*names, part), at + 1)
            elif os.path.lexists(os.path.join(path, part)):
                found.append(os.path.join(path, part))
            continue
        key = (here.st_dev, here.st_ino)
        if key not in listed:
            listed[key] = _entries(path or ".")
        if part == "**":  # any number of directories, none too
            push(names, at + 1)
        dirs, files = _taken(
            listed[key] if at == last else (listed[key][0], []), part, matchers[at], kept
        )
        for name in dirs:
            push((*names, name), at if part == "**" else at + 1)
        if at == last and not directories:
            found.extend(os.path.join(path, name) for name in files)
    return [path for path in found if path]  # not "" (a relative "**" at "."), as Python's


def _taken(
    entries: tuple[list[str], list[str]],
    part: str,
    match: Callable[[str], object],
    kept: Callable[[str], bool],
) -> tuple[list[str], list[str]]:
    """The directories and other names of ``entries`` that a pattern ``part``
    takes: ``**`` any name but a hidden one, a wildcard part those it matches,
    a name beginning with ``.`` only where the part does; ``kept`` ones only."""
    shown = part.startswith(".") and part != "**"
    every = part == "**"
    dirs, files = (
        [n for n in names if (every or match(n)) and (shown or n[0] != ".") and kept(n)]
        for names in entries
    )
    return dirs, files


def _entries(directory: str) -> tuple[list[str], list[str]]:
    """The names in ``directory``: of directories (through a link) and of the
    rest; none where it cannot be listed (as Python's glob)."""
    dirs: list[str] = []
    files: list[str] = []
    try:
        with os.scandir(directory) as listing:
            for entry in listing:
                (dirs if _is_dir(entry) else files).append(entry.name)
    except OSError:
        pass
    return dirs, files


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _below(path: Path, root: Path) -> tuple[str, ...]:
    """The parts of ``path`` below ``root`` (:func:`_parts_below`; none where it
    is not below)."""
    return _parts_below(path, root) or ()


def _in_order(path: Path) -> tuple[str, ...]:
    """The order of paths (by their parts, as ``sorted`` orders paths)."""
    return path.parts


def _hidden(name: str, spelled: Sequence[str]) -> bool:
    """Whether a name matched by a glob is hidden (``.``, ``_``) and no part of the
    pattern that begins with its first character matches it."""
    return _hidden_name(name) and not any(fnmatch.fnmatchcase(name, p) for p in spelled)


def _hidden_name(name: str) -> bool:
    """A hidden or temporary name (``.git``, ``_temporary``, ``_SUCCESS``): left
    out of a source directory, and of what a glob's wildcards match."""
    return name[:1] in (".", "_")


def _data_files_linking(path: Path) -> list[Path]:
    """A name that links to nothing: an error when it names a data file (a
    git-annex or DVC checkout whose data was not fetched), nothing otherwise."""
    if _uncompressed(path.name).endswith(SUFFIXES):
        target = os.readlink(path)
        msg = f"cannot read {str(path)!r}: a symbolic link to {target!r}, which does not exist"
        raise RaftInputError(msg)
    return []


def _data_files(directory: Path) -> list[tuple[str, tuple[str, ...]]]:
    """Data files below ``directory``, each with its parts below it, leaving out
    hidden and temporary ones, in the order of those parts; a data file's name
    that links to nothing (a git-annex or DVC checkout whose data was not
    fetched) is an error, not a part left out. One ``lstat`` a file (and a
    ``stat`` for a link): a tree of 100,000 parts is listed in a fraction of a
    second."""
    found: list[tuple[tuple[str, ...], str]] = []
    for root, parts, _, files in _walk(directory):
        for name in files:
            below = (*parts, name)
            if not _data_name(below):
                continue
            path = os.path.join(root, name)
            try:
                mode = os.lstat(path).st_mode
                if stat.S_ISLNK(mode):
                    mode = os.stat(path).st_mode
            except FileNotFoundError:  # a link to nothing, or gone since the listing
                if os.path.islink(path):
                    _data_files_linking(Path(path))
                continue
            except OSError as exc:  # a directory listed but not searchable: not left out
                msg = f"cannot read {path!r}: {exc.strerror or exc}"
                raise RaftInputError(msg) from exc
            if stat.S_ISREG(mode):
                found.append((below, path))
    found.sort()
    return [(path, below) for below, path in found]


def _walk(directory: Path) -> Iterator[tuple[str, tuple[str, ...], os.stat_result, list[str]]]:
    """The directories below ``directory`` (and it), each with its parts below
    ``directory``, its ``os.stat`` and the names of its files, through linked directories too (a
    run's stage directory linked from another disk), each directory once (a
    link back up is not followed again); hidden and temporary ones (``.``,
    ``_``) left out with what they hold. A directory that cannot be listed is an
    error, not a part of the log left out."""

    def refused(exc: OSError) -> None:
        msg = f"cannot list directory {exc.filename!r}: {exc.strerror or exc}"
        raise RaftInputError(msg)

    top = os.fspath(directory)
    seen: set[tuple[int, int]] = set()
    for root, dirs, files in os.walk(top, onerror=refused, followlinks=True):
        here = os.stat(root)
        if (here.st_dev, here.st_ino) in seen:
            dirs.clear()
            continue
        seen.add((here.st_dev, here.st_ino))
        dirs[:] = [d for d in dirs if not _hidden_name(d)]
        rest = root[len(top) :].lstrip(os.sep)  # os.walk joins its names to the top
        parts = tuple(rest.split(os.sep)) if rest else ()
        yield root, parts, here, [f for f in files if not _hidden_name(f)]


def _data_name(parts: Sequence[str]) -> bool:
    """Whether the file at ``parts`` below a source directory (or object store
    prefix) is one of its data files: no part hidden or temporary (``.``, ``_``),
    and a data file's extension (:data:`SUFFIXES`, compressed or not; the kind
    is :func:`file_kind`'s)."""
    return (
        bool(parts)
        and not any(map(_hidden_name, parts))
        and (parts[-1].lower().endswith(SUFFIXES) or _uncompressed(parts[-1]).endswith(SUFFIXES))
    )


def _uncompressed(name: str) -> str:
    """A file's name in lower case without a compression suffix (one it reads or
    not: a ``.jsonl.bz2`` part is refused by name, not left out)."""
    name = name.lower()
    for suffixes in (COMPRESSED, _OTHER_COMPRESSED):  # at most one of each, as file_kind
        name = next((name.removesuffix(s) for s in suffixes if name.endswith(s)), name)
    return name


def _partitions(
    path: PurePath, root: PurePath, shown: str | None = None
) -> tuple[tuple[str, str | None], ...]:
    """Hive ``key=value`` pairs of the directories between ``root`` and ``path``
    (``shown``: the file's name in messages, when not ``path``)."""
    try:
        parts = path.relative_to(root).parts[:-1]
    except ValueError:
        return ()
    return _hive(parts, shown or str(path))


def _hive_of(
    known: dict[tuple[str, ...], tuple[tuple[str, str | None], ...]],
    parts: tuple[str, ...],
    shown: str,
) -> tuple[tuple[str, str | None], ...]:
    """:func:`_hive` of a directory's ``parts``, kept in ``known`` for its other files."""
    if parts not in known:
        known[parts] = _hive(parts, shown)
    return known[parts]


def _hive(parts: Sequence[str], shown: str) -> tuple[tuple[str, str | None], ...]:
    """Hive ``key=value`` pairs of the directories ``parts`` (below the source
    root) of the file ``shown``."""
    pairs: list[tuple[str, str | None]] = []
    for at, part in enumerate(parts):
        if "=" in part:
            key, value = part.split("=", 1)
            if any(key == k for k, _ in pairs):
                first = next(p for p in parts[:at] if p.split("=", 1)[0] == key)
                msg = (
                    f"cannot read {shown!r}: its directories {first!r} and {part!r} "
                    f"give the Hive key {key!r} twice; keep one"
                )
                raise RaftInputError(msg)
            text = urllib.parse.unquote(value)
            pairs.append((key, None if text == _HIVE_NULL else text))
    return tuple(pairs)


def file_kind(path: str) -> str:
    """``"parquet"`` or ``"ndjson"`` by the file's extension (a compression
    suffix aside); a file of another known kind is an error that says which
    kinds are read; an unknown extension is taken as Parquet."""
    name = path.lower()
    packed = next((s for s in COMPRESSED if name.endswith(s)), None)
    name = name.removesuffix(packed) if packed else name
    if packed and name.endswith(PARQUET):
        msg = (
            f"cannot read {path!r}: a Parquet file compressed whole ({packed}), which "
            "Polars does not read; decompress it (Parquet compresses its own pages)"
        )
        raise RaftInputError(msg)
    other = next((s for s in _OTHER_COMPRESSED if name.endswith(s)), None)
    if other is not None:
        msg = (
            f"cannot read {path!r}: a {other} file, which raft_polars does not read; "
            "extract or decompress it, and compress the JSON lines with gzip or zstd "
            f"if need be (it reads {_KINDS_READ})"
        )
        raise RaftInputError(msg)
    if name.endswith(JSON_LINES):
        return "ndjson"
    if name.endswith((".csv", ".tsv", ".txt", ".arrow", ".feather", ".ipc", ".avro", ".orc")):
        msg = f"cannot read {path!r}: raft_polars reads {_KINDS_READ}"
        raise RaftInputError(msg)
    return "parquet"


def file_schema(path: str) -> pl.Schema:
    """The columns and types of one local data file, as its reader reads them."""
    return _schema_of(path, file_kind(path))


def _schema_of(path: str, kind: str) -> pl.Schema:
    if kind == "parquet":
        try:
            # read_parquet_schema globs: a directory 'run[0]' matched nothing
            return pl.scan_parquet(path, hive_partitioning=False, glob=False).collect_schema()
        except READ_ERRORS as exc:
            raise parquet_error(path, exc) from exc
    try:
        # every line: a key, or a float beside integers, first seen on line 1001
        # was dropped, or failed the read (JSON lines hold no schema but their lines')
        schema = pl.scan_ndjson(_literal(path), infer_schema_length=None).collect_schema()
    except READ_ERRORS as exc:
        if "empty" in str(exc) or _blank(path):  # no rows: its columns come from the others
            return pl.Schema()
        raise json_lines_error(path, exc) from exc
    return schema


def _blank(path: str) -> bool:
    """Whether a JSON lines file holds nothing but blank lines (decompressed)."""
    try:
        with _decompressed(path) as stream:
            while chunk := stream.read(1 << 20):
                if chunk.strip():
                    return False
    except (OSError, pa.ArrowException):
        return False
    return True


def _tail(path: str) -> bytes:
    """A file's last 64 bytes; none if it cannot be read."""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, os.fstat(handle.fileno()).st_size - 64))
            return handle.read(64)
    except OSError:
        return b""


def _text_head(path: str) -> bytes:
    """A local file's first 64 bytes decompressed (by its suffix, as Polars
    reads it); none if it cannot be read."""
    try:
        with _decompressed(path) as stream:
            return bytes(stream.read(64))
    except (OSError, ValueError, pa.ArrowException):
        return b""


def _file_schema(paths: Sequence[str], origin: str, kind: str) -> dict[str, pl.DataType]:
    """The common schema of the files: types that differ only in width or
    nullness (parts written by different tools) are merged to the widest.

    The schemas of JSON lines files are inferred from every line (a parse of the
    whole file, one thread a file in Polars): as many files at a time as Polars
    has threads (8 files of 773 MiB: 2.65 -> 1.40 s on 2 cores). An error is
    the first file's, in order."""
    if kind == "ndjson" and len(paths) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(len(paths), pl.thread_pool_size())) as pool:
            schemas = list(pool.map(lambda path: _schema_of(path, kind), paths))
        found = list(zip(paths, schemas, strict=True))
    else:
        found = [(path, _schema_of(path, kind)) for path in paths]
    if kind == "ndjson":  # parts without rows say nothing of the columns
        found = [(path, schema) for path, schema in found if schema] or found[:1]
        if not found[0][1]:
            msg = f"{origin}: the JSON lines files hold no JSON objects"
            raise RaftInputError(msg)
    paths = [path for path, _ in found]
    schemas = [schema for _, schema in found]
    first = schemas[0]
    if all(schema == first for schema in schemas[1:]):
        return dict(first)
    # JSON lines hold no schema but their lines': a key that no line of a part holds
    # is null there, as it is in a line of a single file. Parquet parts must agree.
    union = kind == "ndjson"
    seen: dict[str, tuple[str, PolarsDataType]] = {}  # column -> first file, its type
    for path, schema in zip(paths, schemas, strict=True):
        if not union and set(schema) != set(first):
            msg = (
                f"{origin}: file {path!r} has columns {list(schema)}, but "
                f"{paths[0]!r} has {list(first)}"
            )
            raise RaftInputError(msg)
        for name, dtype in schema.items():
            where, known = seen.setdefault(name, (path, dtype))
            if not _compatible(dtype, known):
                msg = f"{origin}: column {name!r} is {dtype} in {path!r} but {known} in {where!r}"
                raise RaftInputError(msg)
    if not union:  # columns are read by name: their order in a file says nothing
        schemas = [pl.Schema({name: schema[name] for name in first}) for schema in schemas]
    how: Literal["diagonal_relaxed", "vertical_relaxed"] = (
        "diagonal_relaxed" if union else "vertical_relaxed"
    )
    try:
        merged = pl.concat([pl.DataFrame(schema=s) for s in schemas], how=how)
    except pl.exceptions.PolarsError as exc:
        msg = f"{origin}: the files' column types cannot be read as one: {_first_line(exc)}"
        raise RaftInputError(_clash(origin, paths, schemas) or msg) from exc
    target = dict(merged.schema)
    if not union:  # a part Polars' reader cannot cast (another decimal scale, a
        # fixed-size list beside lists): asked of a row of nulls of its types, so
        # that no page of a file is read before validate's walk has seen it
        for path, schema in zip(paths, schemas, strict=True):
            if dict(schema) == target:
                continue
            probe = io.BytesIO()
            pl.DataFrame([pl.Series(n, [None], dtype=t) for n, t in schema.items()]).write_parquet(
                probe
            )
            try:
                pl.scan_parquet(probe.getvalue(), schema=target, cast_options=_UPCAST).collect()
            except READ_ERRORS as exc:
                msg = (
                    f"{origin}: the files' column types cannot be read as one: {path!r}: "
                    f"{_first_line(exc)}; rewrite the parts with one type"
                )
                raise RaftInputError(msg) from exc
    return target


def _clash(origin: str, paths: Sequence[str], schemas: Sequence[pl.Schema]) -> str | None:
    """The column whose types in two of the files Polars cannot read as one
    (Categorical and Enum), naming both files; None if no one column is."""
    for name in dict.fromkeys(n for schema in schemas for n in schema):
        typed = [(p, s[name]) for p, s in zip(paths, schemas, strict=True) if name in s]
        for path, dtype in typed[1:]:
            try:
                pl.concat(
                    [pl.DataFrame(schema={name: t}) for t in (typed[0][1], dtype)],
                    how="vertical_relaxed",
                )
            except pl.exceptions.PolarsError:
                return (
                    f"{origin}: column {name!r} is {dtype} in {path!r} but {typed[0][1]} in "
                    f"{typed[0][0]!r}, which cannot be read as one type; write them alike"
                )
    return None


def _compatible(a: PolarsDataType, b: PolarsDataType) -> bool:
    """Whether two files' types of a column can be read as one (nulls, as JSON
    gives an empty list or a missing value, go with anything)."""
    if pl.Null in (a, b):
        return True
    if isinstance(a, pl.List | pl.Array) and isinstance(b, pl.List | pl.Array):
        return _compatible(a.inner, b.inner)
    return _family(a) == _family(b)


def _family(dtype: PolarsDataType) -> str:
    """Types that files may mix and still be read as one column (Polars' reader
    widens integers and floats across files, not decimals to floats)."""
    if isinstance(dtype, pl.Decimal):
        return "decimal"
    if dtype.is_numeric():
        return "number"
    if isinstance(dtype, pl.String | pl.Categorical | pl.Enum):
        return "string"
    if isinstance(dtype, pl.List | pl.Array):
        return "list of " + _family(dtype.inner)
    return str(dtype)


def hive_values(files: Sequence[DataFile], key: str) -> pl.Series:
    """The values of the Hive key ``key`` in the files' directories, as text
    (null for a file without it)."""
    return pl.Series([dict(f.partitions).get(key) for f in files], dtype=pl.String)


def hive_not_integer(values: pl.Series) -> pl.Series:
    """Which of a Hive key's :func:`hive_values` are not 64-bit integers: the
    key is read as integers when none is, as text otherwise."""
    return values.is_not_null() & values.cast(pl.Int64, strict=False).is_null()


def _hive_columns(
    files: Sequence[DataFile],
    file_schema: dict[str, pl.DataType],
    origin: str,
    storage_options: Mapping[str, str] | None = None,
) -> tuple[tuple[str, pl.DataType], ...]:
    """The Hive keys of the files and their types (Int64 when every value is a
    whole number, String otherwise). Every file must have the same keys; a key
    that is also a column of the files must agree with it in every file."""
    keys = {tuple(k for k, _ in f.partitions) for f in files}
    if len(keys) > 1:
        msg = (
            f"{origin}: the files sit under different Hive keys {sorted(keys)}; "
            "every file needs the same key=value directories"
        )
        raise RaftInputError(msg)
    names = keys.pop() if keys else ()
    out = []
    for name in names:
        texts = hive_values(files, name)
        integers = texts.drop_nulls().len() > 0 and not hive_not_integer(texts).any()
        dtype: pl.DataType = pl.Int64() if integers else pl.String()
        if name in file_schema:
            _check_agreement(files, name, origin, storage_options)
        out.append((name, dtype))
    return tuple(out)


def _check_agreement(
    files: Sequence[DataFile],
    name: str,
    origin: str,
    storage_options: Mapping[str, str] | None = None,
) -> None:
    """A Hive key that is also a column of the file must hold the same value
    (``storage_options``: of object store files)."""
    for f in files:
        value = dict(f.partitions)[name]
        options = None if storage_options is None else dict(storage_options) or None
        try:
            found = (
                (
                    pl.scan_ndjson(
                        f.path if is_remote(f.path) else _literal(f.path),
                        storage_options=options,
                    )
                    if file_kind(f.path) == "ndjson"
                    else pl.scan_parquet(
                        f.path, hive_partitioning=False, glob=False, storage_options=options
                    )
                )
                .select(pl.col(name).cast(pl.String).unique().sort())
                .collect()[name]
                .to_list()
            )
        except READ_ERRORS as exc:
            raise parquet_error(f.path, exc) from exc
        if found != [value]:
            shown = ", ".join(map(repr, found[:5])) + (", ..." if len(found) > 5 else "")
            msg = (
                f"{origin}: file {f.path!r} sits in the Hive directory {name}={value} but "
                f"its own column {name!r} holds {shown}; move the file or drop the column"
            )
            raise RaftInputError(msg)


# a panic of an engine task, as the task waiting on it passes it on
_JOINED = re.compile(
    r"^called `Result::unwrap\(\)` on an `Err` value: "
    r'JoinError::Panic\(Id\(\d+\), "(.*)", \.\.\.\)$',
    re.S,
)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, pl.exceptions.PanicException):  # the panic a task of the engine passed on
        while joined := _JOINED.match(text):
            text = joined.group(1).encode().decode("unicode_escape").strip()
        text = f"Polars' reader failed on it ({text.splitlines()[0] if text else 'a panic'})"
    return text.splitlines()[0] if text else type(exc).__name__


def parquet_error(path: str, exc: BaseException) -> RaftInputError:
    """The error for a data file that cannot be read."""
    return RaftInputError(f"cannot read Parquet file {path!r}: {_first_line(exc)}")


def json_lines_error(path: str, exc: BaseException) -> RaftInputError:
    """The error for a JSON lines file that cannot be read."""
    hint, head = "", _text_head(path)
    if head.startswith(b"\xef\xbb\xbf"):
        hint = "; it begins with a UTF-8 byte order mark (BOM): save it as UTF-8 without one"
    elif head.lstrip().startswith(b"["):
        hint = "; it holds one JSON array, not JSON lines (one object per line)"
    elif (
        "invalid gzip header" in str(exc)
        and path.lower().endswith(".gz")
        and _tail(path).endswith(b"\0" * 8)
    ):
        hint = (
            "; it ends in zero bytes after its gzip data (padding, which gzip -d "
            "ignores): recompress it, e.g. gzip -dc FILE | gzip > NEW"
        )
    elif "InvalidUnicodeCodepoint" in str(exc) and (lone := lone_surrogates(path)):
        key, _, line = min(lone, key=lambda found: found[2])
        hint = (
            f"; line {line}, key {key!r}, holds an escaped lone surrogate (such as \\udc00, "
            "half of a character); replace it (with \\ufffd, say)"
        )
    found = None if hint else _first_bad_line(path)
    if found is not None:
        return RaftInputError(f"cannot read JSON lines file {path!r}, {found}")
    return RaftInputError(f"cannot read JSON lines file {path!r}: {_first_line(exc)}{hint}")


class _Pairs(list[tuple[str, Any]]):
    """A JSON object as Python's json gives it with ``object_pairs_hook``: its
    pairs in order, a key given twice twice (Polars reads the first)."""


class _Constant(str):
    """``NaN``, ``Infinity`` or ``-Infinity``: Python's json reads (and
    ``json.dumps`` writes) them, JSON and Polars do not."""

    __slots__ = ()


# JSON kinds that Polars cannot read as one column (or list item, or field); a
# string goes with any of them (the column is read as text) and null with all
_KIND: dict[type, str] = {
    bool: "a boolean (true or false)",
    int: "a number",
    float: "a number",
    str: "a string",
    list: "a list",
    _Pairs: "an object",
}
_STRING = _KIND[str]
_DECODER = json.JSONDecoder(object_pairs_hook=_Pairs, parse_constant=_Constant)


class _Found(Exception):
    """The first offending line of a JSON lines file, as its message says it."""


def _first_bad_line(path: str) -> str | None:
    """Where and why a local JSON lines file that Polars failed to read is not
    JSON lines: the first line that is not UTF-8, not valid JSON (``NaN``
    included), not one JSON object, or whose value for a key (or an item or
    field in it) is of another JSON kind than before; None when no line is.

    Only on the error path: the file is streamed (decompressed) and its lines
    parsed by Python's json, up to the first offending one."""
    seen: dict[tuple[str, ...], tuple[str, int]] = {}
    lines = _json_lines(path)
    try:
        line = next(lines, None)
        number = 1
        while line is not None:
            after = next(lines, None)
            _check_line(line, number, seen, last=after is None)
            line, number = after, number + 1
    except _Found as found:
        return str(found)
    except (OSError, ValueError, pa.ArrowException):  # unreadable: today's message
        return None
    return None


def _json_lines(path: str) -> Iterator[bytes]:
    """The lines of a local file, decompressed; a gzip file whose data is cut
    off or followed by other bytes raises :class:`_Found` after its last line."""
    if path.lower().endswith(".gz"):
        yield from _gzip_lines(path)
        return
    with _decompressed(path) as stream:
        tail = b""
        while chunk := stream.read(_CHUNK):
            lines = (tail + chunk).split(b"\n")
            tail = lines.pop()
            yield from lines
        if tail:
            yield tail


def _gzip_lines(path: str) -> Iterator[bytes]:
    """:func:`_json_lines` of a gzip file, by zlib, which tells where the gzip
    data ends (pyarrow's stream fails as a whole on bytes after it)."""
    import zlib

    number, tail, started = 0, b"", False
    inflate = zlib.decompressobj(wbits=31)
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            started = True
            while chunk:
                try:
                    data = inflate.decompress(chunk)
                except zlib.error as exc:
                    msg = f"after line {number}: its gzip data cannot be decompressed ({exc})"
                    raise _Found(msg) from None
                lines = (tail + data).split(b"\n")
                tail = lines.pop()
                number += len(lines)
                yield from lines
                chunk = inflate.unused_data if inflate.eof else b""
                if chunk and not b"\x1f\x8b".startswith(chunk[:2]):
                    msg = (
                        f"after line {number + bool(tail)}: its gzip data is followed by "
                        "bytes that are not gzip (trailing garbage?); recompress it, e.g. "
                        "gzip -dc FILE | gzip > NEW"
                    )
                    raise _Found(msg)
                if chunk:  # another gzip member
                    inflate = zlib.decompressobj(wbits=31)
        if started and not inflate.eof:
            msg = f"after line {number}: its gzip data is cut off (an incomplete file?)"
            raise _Found(msg)
    if tail:
        yield tail


def _check_line(
    raw: bytes, number: int, seen: dict[tuple[str, ...], tuple[str, int]], *, last: bool
) -> None:
    """Raise :class:`_Found` when line ``number`` (the ``last`` of its file, or
    not) is not one JSON object whose values are of the kinds ``seen`` on
    earlier lines (which it adds to)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        msg = (
            f"line {number} is not UTF-8: byte {raw[exc.start]:#04x} at byte {exc.start + 1} "
            "of the line; save the file as UTF-8"
        )
        raise _Found(msg) from None
    indent = len(text) - len(text.lstrip())  # positions count from the line's start
    text = text.strip()
    if not text:
        return
    try:
        row, end = _DECODER.raw_decode(text)
    except json.JSONDecodeError as exc:
        ends = exc.pos >= len(text) or exc.msg.startswith("Unterminated string")
        if text.startswith(("{", "[")) and ends and last:
            msg = f"line {number}, the last, ends inside its JSON object (the file cut off?)"
        elif text.startswith(("{", "[")) and ends:
            msg = (
                f"line {number} is not one JSON object per line: the object spans "
                "several lines (pretty-printed JSON?); write one object per line"
            )
        else:
            what = exc.msg.removesuffix(" at")  # "Invalid control character at"
            msg = f"line {number} is not valid JSON: {what} at character {indent + exc.pos + 1}"
        raise _Found(msg) from None
    if end < len(text):
        rest = text[end:].lstrip()
        msg = (
            f"line {number} is not one JSON object per line: another JSON value follows "
            "the first (objects without a newline between them?)"
            if rest.startswith(("{", "["))
            else f"line {number} holds text after its JSON object: {rest[:20]!r}"
        )
        raise _Found(msg)
    if not isinstance(row, _Pairs):
        found = "null" if row is None else _KIND.get(type(row), repr(row))
        msg = f"line {number} holds {found}, not a JSON object (one object per line)"
        raise _Found(msg)
    for key, value in row:
        _check_value(value, (key,), number, seen)


def _check_value(
    value: Any, where: tuple[str, ...], number: int, seen: dict[tuple[str, ...], tuple[str, int]]
) -> None:
    """:func:`_check_line` for one value at ``where`` (a key, then ``[]`` for
    the items of a list, or a field's name)."""
    if value is None:
        return
    if isinstance(value, _Constant):
        msg = f"line {number}, {_place(where)}: {value} is not JSON (write null, or a number)"
        raise _Found(msg)
    if isinstance(value, float) and math.isinf(value):  # 1e400: Python reads it as inf
        msg = f"line {number}, {_place(where)}: a number beyond the range of a 64-bit float"
        raise _Found(msg)
    kind = _KIND[type(value)]
    if any(seen.get(where[:i], ("",))[0] == _STRING for i in range(1, len(where))):
        return  # inside a value read as text
    known, line = seen.setdefault(where, (kind, number))
    if _STRING in (kind, known):
        seen[where] = (_STRING, line)
        return
    if kind != known:
        before = "earlier lines hold" if line < number else "the line also holds"
        msg = f"line {number}, {_place(where)}: {kind} where {before} {known}"
        raise _Found(msg)
    if isinstance(value, _Pairs):
        for field, inner in value:
            _check_value(inner, (*where, field), number, seen)
    elif isinstance(value, list):
        items = (*where, "[]")
        kinds = set(map(type, value))
        if kinds & {list, _Pairs, _Constant}:
            for item in value:
                _check_value(item, items, number, seen)
        else:  # scalars: one of each type stands for all
            for item_type in kinds:
                _check_value(next(v for v in value if type(v) is item_type), items, number, seen)


def _place(where: tuple[str, ...]) -> str:
    """``key 'logprobs', in its list`` for a path of :func:`_check_value`."""
    parts = [f"key {where[0]!r}"]
    parts += ["in a list" if part == "[]" else f"field {part!r}" for part in where[1:]]
    return ", ".join(parts)


# what only a write raises: no space, a file size limit, a quota, a read-only
# file system (Polars words them "... (os error 28)", Python "[Errno 28] ...")
_WRITE_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS)
_WRITE_ERROR = re.compile(
    r"os error (?:{0})\b|\[Errno (?:{0})\]".format("|".join(map(str, _WRITE_ERRNOS)))
)


def write_failure(exc: BaseException) -> str | None:
    """The reason, when ``exc`` is an error only a write raises (the disk is
    full, ...), else None."""
    if isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS:
        return os.strerror(exc.errno)
    match = _WRITE_ERROR.search(str(exc))
    if match is None:
        return None
    number = int(re.sub(r"\D", "", match.group(0)))
    return os.strerror(number)


@contextmanager
def reading(paths: Sequence[str], origin: str) -> Iterator[None]:
    """Turn a failure while reading ``paths`` into a RaftInputError naming the
    file that cannot be read, else the source. A Parquet file is checked by its
    footer, a JSON lines file by parsing every line: its schema came from its
    first lines, so a line further on may be the one that fails, and the error of
    a read over several files (parts, or token rows beside rewards) must say
    which."""
    try:
        yield
    except READ_ERRORS as exc:
        if write_failure(exc) is not None:  # the output's, for the writer to name
            raise
        import pyarrow.parquet as pq

        # values that failed to parse (true for a number) under a schema that was
        # inferred: a JSON lines file is then parsed whole, alone (natively, 2-3x
        # faster than Python's json), else only its schema is inferred (all lines)
        values = isinstance(exc, pl.exceptions.ComputeError | pl.exceptions.SchemaError)
        for path in paths:
            if is_remote(path):
                continue
            if file_kind(path) == "parquet":
                try:
                    pq.read_metadata(path)
                except Exception as bad:  # any failure to read the footer names the culprit
                    from raft_polars._engine.pages import wide_integers

                    if not wide_integers(path):  # not pyarrow's limit: Polars' 128-bit ints
                        raise parquet_error(path, bad) from exc
                continue
            failure = _json_lines_failure(path, values)
            if failure is not None:
                raise json_lines_error(path, failure) from exc
        beyond = beyond_int64(str(exc))
        if isinstance(exc, pl.exceptions.InvalidOperationError) and beyond is not None:
            # an id beyond Int64, worded as the ranking words it (canonical_keys)
            msg = f"{origin}: the ids must fit a 64-bit signed integer: {beyond}"
            raise RaftInputError(msg) from exc
        culprit = _page_culprit(paths, exc)
        if culprit is not None:
            raise parquet_error(culprit, exc) from exc
        msg = f"cannot read stage log {origin}: {_first_line(exc)}"
        raise RaftInputError(msg) from exc


def _page_culprit(paths: Sequence[str], exc: BaseException) -> str | None:
    """The first local Parquet file of ``paths`` whose sound footer hides a page
    that Polars fails on with the error of the read (``exc``): each decoded
    alone, in order (the read decoded them in that order, so the first to fail
    is the one it failed on), on an error of the data only."""
    from polars.exceptions import PanicException

    if not isinstance(exc, pl.exceptions.ComputeError):
        return None
    said = _first_line(exc)
    for path in paths:
        if is_remote(path) or file_kind(path) != "parquet":
            continue
        scan = pl.scan_parquet(path, hive_partitioning=False, glob=False)
        try:
            scan.sink_batches(lambda _: None, engine="streaming")
        except pl.exceptions.ComputeError as again:
            if _first_line(again) == said:
                return path
        except (Exception, PanicException):  # another failure: not the one read
            continue
    return None


def _json_lines_failure(path: str, values: bool) -> BaseException | None:
    """Polars' error reading a local JSON lines file alone, its schema inferred
    from all its lines, and with ``values`` every value parsed too (on the
    streaming engine); None when it reads, or holds no rows (read as none)."""
    scan = pl.scan_ndjson(_literal(path), infer_schema_length=None)
    try:
        if values:
            scan.select(pl.all().null_count()).collect(engine="streaming")
        else:
            scan.collect_schema()
    except READ_ERRORS as bad:
        return None if _blank(path) else bad
    return None


def summed_reward(columns: Sequence[str]) -> pl.Expr:
    """``reward``, the sum of ``columns`` as TRL's GRPO trainer sums its reward
    functions' (``nansum``): a null or NaN counts as 0."""
    return pl.sum_horizontal(pl.col(c).cast(pl.Float64).fill_nan(None) for c in columns).alias(
        "reward"
    )


def summing(source: Resolved, columns: tuple[str, ...]) -> Resolved:
    """``source`` read with a ``reward`` column, the sum of ``columns``."""
    from dataclasses import replace

    schema = (*source.schema, ("reward", pl.Float64()))
    return replace(source, schema=schema, summed=columns)
