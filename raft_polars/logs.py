"""Step 1 of RAFT: read stage logs into one canonical frame.

Every source (Parquet files, globs, Hive directories, data frames, Arrow tables,
nested Python lists) becomes a :class:`StageLog`: a lazy candidate-level frame
``stage, prompt, cand, reward`` (plus ``logprobs`` in the nested layout, plus any
extra columns) and, in the long layout, a lazy token-level frame
``stage, prompt, cand, logprob``. Nothing is read here beyond file metadata: the
frames are scanned when a query on them is collected, through :func:`collect`,
which turns read failures into :class:`~raft_polars.errors.RaftInputError`.

Examples
--------
>>> import polars as pl
>>> from raft_polars.logs import read_log
>>> df = pl.DataFrame({"stage": [0, 0], "prompt": ["a", "a"], "cand": [0, 1],
...                    "reward": [0.2, 0.4], "logprobs": [[-2.0, -1.8], [-1.5, -1.6]]})
>>> log = read_log(df)
>>> log.layout, log.extras
('nested', ())
"""

from __future__ import annotations

import glob as _glob
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeAlias

import polars as pl
import pyarrow as pa

from raft_polars.errors import RaftInputError

if TYPE_CHECKING:
    from polars._typing import PolarsDataType

__all__ = [
    "CANDIDATE_COLUMNS",
    "CANONICAL_COLUMNS",
    "ID_COLUMNS",
    "Layout",
    "Source",
    "StageLog",
    "canonical_ids",
    "collect",
    "read_log",
]

Layout: TypeAlias = Literal["nested", "long"]
PathLike: TypeAlias = str | Path
Source: TypeAlias = (
    PathLike | Sequence[PathLike] | pl.DataFrame | pl.LazyFrame | pa.Table
)

ID_COLUMNS = ("stage", "prompt", "cand")
# parts written by different tools may differ in integer / float width
_UPCAST = pl.ScanCastOptions(integer_cast=["upcast", "allow-float"], float_cast="upcast",
                             categorical_to_string="allow")
CANDIDATE_COLUMNS = (*ID_COLUMNS, "reward")
_REWARD = pl.col("reward").cast(pl.Float64)
# every name columns= may map
CANONICAL_COLUMNS = (*CANDIDATE_COLUMNS, "logprobs", "token", "logprob")


@dataclass(frozen=True)
class StageLog:
    """A stage log in canonical form, still lazy.

    Attributes
    ----------
    layout
        ``"nested"``: ``candidates`` holds a ``logprobs`` list column.
        ``"long"``: the log-probs are token rows in ``tokens``.
    candidates
        One row per candidate: ``stage``, ``prompt``, ``cand``, ``reward``
        (float64), ``logprobs`` (nested layout only), then the extra columns.
    tokens
        Long layout only: ``stage``, ``prompt``, ``cand``, ``logprob`` and, when
        the source has it, ``token``.
    extras
        Candidate-level columns beyond the canonical ones (response text, ids).
    origin, token_origin
        Human-readable names of the candidate and token sources, for messages.
    files
        The Parquet files behind the log, to find an unreadable one.
    raw_tokens
        Long layout: ``stage, prompt, cand, logprob`` with the ids in the source's
        own integer types (narrow ids make the token pass cheaper than Int64 ones).
    token_files, token_ids
        Long layout read from Parquet files (not Hive partitions): the token
        files and what they call ``stage, prompt, cand``, so that their footers'
        statistics can prove the ids' bounds (see :mod:`raft_polars._dense`).
    raw_keys
        ``stage, prompt, cand, reward`` of the candidate rows, the ids in the
        source's own types (half the memory of Int64 ones for Int32 ids) and the
        reward as float64; :func:`canonical_ids` makes them canonical.
    """

    layout: Layout
    candidates: pl.LazyFrame
    tokens: pl.LazyFrame | None
    extras: tuple[str, ...]
    origin: str
    token_origin: str
    files: tuple[Path, ...] = field(default=())
    raw_tokens: pl.LazyFrame | None = None
    raw_keys: pl.LazyFrame | None = None
    token_files: tuple[Path, ...] = ()
    token_ids: tuple[str, ...] = ID_COLUMNS

    @property
    def keys(self) -> pl.LazyFrame:
        """The candidate keys ``stage, prompt, cand, reward``, ids in the source's
        own types when known (``raw_keys``), canonical otherwise."""
        if self.raw_keys is not None:
            return self.raw_keys
        return self.candidates.select(*CANDIDATE_COLUMNS)


def read_log(
    source: Source,
    *,
    rewards: Source | None = None,
    columns: Mapping[str, str] | None = None,
) -> StageLog:
    """Read a stage log, in either layout, into a canonical :class:`StageLog`.

    Parameters
    ----------
    source
        A Parquet path, a glob, a directory (Hive partitions such as
        ``stage=3/part-0.parquet`` included), a list of paths, a polars
        ``DataFrame`` / ``LazyFrame`` or a ``pyarrow.Table``. Without ``rewards``
        it is in the nested layout (one row per candidate with a ``logprobs``
        list); with ``rewards`` it holds the token rows of the long layout.
    rewards
        Long layout: the candidate rows ``stage, prompt, cand, reward``, as any
        of the source kinds above.
    columns
        Maps canonical names to the user's own, e.g.
        ``{"prompt": "prompt_id", "logprobs": "token_logprobs"}``.

    Returns
    -------
    StageLog

    Raises
    ------
    RaftInputError
        A file is missing or unreadable, a column is missing or of the wrong type.
    """
    mapping = _check_mapping(columns)
    main, main_origin, main_files = _scan(source, "source")
    main_names = set(_schema(main, main_origin))
    main = _rename(main, mapping, main_origin)
    if rewards is None:
        _check_mapped(mapping, (*CANDIDATE_COLUMNS, "logprobs"), main_names, main_origin)
        schema = _require(main, (*CANDIDATE_COLUMNS, "logprobs"), main_origin,
                          hint_long="logprob")
        _check_types(schema, main_origin, nested=True)
        extras = tuple(c for c in schema if c not in CANONICAL_COLUMNS)
        candidates = main.select(
            *canonical_ids(schema),
            _REWARD,
            _as_list(schema["logprobs"]),
            *extras,
        )
        return StageLog("nested", candidates, None, extras, main_origin, main_origin,
                        main_files, raw_keys=main.select(*ID_COLUMNS, _REWARD))
    cands, cand_origin, cand_files = _scan(rewards, "rewards")
    _check_mapped(mapping, (*ID_COLUMNS, "token", "logprob"), main_names, main_origin)
    _check_mapped(mapping, CANDIDATE_COLUMNS, set(_schema(cands, cand_origin)), cand_origin)
    cands = _rename(cands, mapping, cand_origin)
    cschema = _require(cands, CANDIDATE_COLUMNS, cand_origin)
    _check_types(cschema, cand_origin, nested=False)
    tschema = _require(main, (*ID_COLUMNS, "logprob"), main_origin)
    _check_types(tschema, main_origin, nested=False)
    for name in ID_COLUMNS:
        if _id_kind(cschema[name]) != _id_kind(tschema[name]):
            msg = (
                f"column {name!r} has type {tschema[name]} in the token rows "
                f"({main_origin}) but {cschema[name]} in the rewards ({cand_origin}); "
                "ids must be of the same kind in both"
            )
            raise RaftInputError(msg)
    extras = tuple(c for c in cschema if c not in CANONICAL_COLUMNS)
    candidates = cands.select(*canonical_ids(cschema), _REWARD, *extras)
    hive = any("=" in part for path in main_files for part in path.parts[:-1])
    keep = [*canonical_ids(tschema), "logprob"] + (["token"] if "token" in tschema else [])
    return StageLog("long", candidates, main.select(keep), extras, cand_origin,
                    main_origin, main_files + cand_files,
                    raw_tokens=main.select(*ID_COLUMNS, "logprob"),
                    raw_keys=cands.select(*ID_COLUMNS, _REWARD),
                    token_files=() if hive else main_files,
                    token_ids=tuple(mapping.get(name, name) for name in ID_COLUMNS))


def _as_list(dtype: pl.DataType) -> pl.Expr:
    """The ``logprobs`` column as a List (fixed-size Arrays are cast)."""
    if isinstance(dtype, pl.Array):
        return pl.col("logprobs").cast(pl.List(dtype.inner))
    return pl.col("logprobs")


def canonical_ids(schema: pl.Schema) -> list[pl.Expr]:
    """Ids as Int64 (stage, cand, integer prompts) or String (other prompts), so
    that the token rows and the rewards always join."""
    prompt = pl.Int64 if schema["prompt"].is_integer() else pl.String
    return [pl.col("stage").cast(pl.Int64), pl.col("prompt").cast(prompt),
            pl.col("cand").cast(pl.Int64)]


def collect(log: StageLog, query: pl.LazyFrame) -> pl.DataFrame:
    """Run ``query`` on the streaming engine; report unreadable input clearly."""
    try:
        return query.collect(engine="streaming")
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise _read_error(log.files, f"{log.origin}", exc) from exc


def _read_error(files: Sequence[Path], origin: str, exc: BaseException) -> RaftInputError:
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    for path in files:
        try:
            import pyarrow.parquet as pq

            pq.read_metadata(path)
        except Exception as bad:  # any failure to read the footer names the culprit
            msg = f"cannot read Parquet file {str(path)!r}: {bad}"
            return RaftInputError(msg)
    msg = f"cannot read stage log {origin}: {detail}"
    return RaftInputError(msg)


def _parquet_files(directory: Path) -> list[Path]:
    """Parquet files below ``directory``, leaving out hidden and temporary ones
    (``.name``, ``_name``: ``_temporary/`` of Spark, ``_SUCCESS``, ``.crc``)."""
    return sorted(
        path for path in directory.rglob("*")
        if path.suffix in (".parquet", ".pq") and path.is_file()
        and not any(part[0] in "._" for part in path.relative_to(directory).parts)
    )


def _merged_schema(files: Sequence[Path], origin: str) -> pl.Schema | None:
    """The common schema of files whose column types differ only in width or
    nullness (parts written by different tools), or None when they all agree.

    Without it, the first file's types would win and a wider one later would fail.
    """
    if len(files) < 2:
        return None
    try:
        schemas = [pl.read_parquet_schema(f) for f in files]
    except (pl.exceptions.PolarsError, OSError):
        return None  # the scan names the unreadable file
    if all(schema == schemas[0] for schema in schemas):
        return None
    first = schemas[0]
    for path, schema in zip(files, schemas, strict=True):
        if set(schema) != set(first):
            msg = (f"{origin}: file {str(path)!r} has columns {list(schema)}, but "
                   f"{str(files[0])!r} has {list(first)}")
            raise RaftInputError(msg)
        for name, dtype in schema.items():
            if _family(dtype) != _family(first[name]) and pl.Null not in (dtype, first[name]):
                msg = (f"{origin}: column {name!r} is {dtype} in {str(path)!r} but "
                       f"{first[name]} in {str(files[0])!r}")
                raise RaftInputError(msg)
    try:
        return pl.concat([pl.DataFrame(schema=s) for s in schemas], how="vertical_relaxed").schema
    except pl.exceptions.PolarsError:
        return None  # the scan reports it


def _family(dtype: PolarsDataType) -> str:
    """Types that files may mix and still be read as one column."""
    if dtype.is_numeric():
        return "number"
    if isinstance(dtype, pl.String | pl.Categorical | pl.Enum):
        return "string"
    if isinstance(dtype, pl.List | pl.Array):
        return "list of " + _family(dtype.inner)
    return str(dtype)


def _check_mapping(columns: Mapping[str, str] | None) -> dict[str, str]:
    if columns is not None and not isinstance(columns, Mapping):
        msg = (f"columns= must map canonical names to yours, like {{'prompt': 'prompt_id'}}; "
               f"got {type(columns).__name__}")
        raise RaftInputError(msg)
    mapping = dict(columns or {})
    targets = list(mapping.values())
    repeated = sorted({t for t in targets if targets.count(t) > 1})
    if repeated or not all(isinstance(t, str) for t in targets):
        msg = f"columns= must map each canonical name to a different column name, got {mapping}"
        raise RaftInputError(msg)
    unknown = sorted(set(mapping) - set(CANONICAL_COLUMNS))
    if unknown:
        msg = (f"columns= maps unknown canonical names {unknown}; "
               f"canonical names are {list(CANONICAL_COLUMNS)}")
        raise RaftInputError(msg)
    return mapping


def _check_mapped(
    mapping: dict[str, str], used: Sequence[str], present: set[str], origin: str
) -> None:
    """Every name ``columns=`` maps a ``used`` canonical name to must exist: a typo
    must not go unnoticed (``token`` is optional, so it may be absent)."""
    absent = sorted(theirs for canon, theirs in mapping.items()
                    if canon in used and canon != "token" and theirs not in present)
    if absent:
        msg = (f"columns= maps to {absent}, not found in {origin}; columns present: "
               f"{sorted(present)}")
        raise RaftInputError(msg)


def _rename(lf: pl.LazyFrame, mapping: dict[str, str], origin: str) -> pl.LazyFrame:
    schema = _schema(lf, origin)
    renames = {theirs: canon for canon, theirs in mapping.items()
               if theirs in schema and theirs != canon}
    clash = sorted(c for c in renames.values() if c in schema and c not in renames)
    if clash:
        msg = (f"{origin}: column(s) {clash} exist and another column is mapped onto "
               "the same name by columns=; rename one of them first")
        raise RaftInputError(msg)
    return lf.rename(renames) if renames else lf


def _schema(lf: pl.LazyFrame, origin: str) -> pl.Schema:
    try:
        return lf.collect_schema()
    except (pl.exceptions.PolarsError, OSError) as exc:
        msg = f"cannot read the schema of {origin}: {str(exc).strip().splitlines()[0]}"
        raise RaftInputError(msg) from exc


def _require(lf: pl.LazyFrame, names: Sequence[str], origin: str,
             hint_long: str | None = None) -> pl.Schema:
    schema = _schema(lf, origin)
    missing = [c for c in names if c not in schema]
    if missing:
        msg = (f"{origin}: missing column(s) {missing}; columns present: "
               f"{list(schema)}")
        if hint_long is not None and hint_long in schema:
            msg += ("; this looks like token rows of the long layout: pass the "
                    "rewards table with rewards=")
        else:
            msg += "; map your own names with columns={'canonical': 'yours'}"
        raise RaftInputError(msg)
    return schema


def _id_kind(dtype: pl.DataType) -> str:
    return "integer" if dtype.is_integer() else "string"


def _check_types(schema: pl.Schema, origin: str, *, nested: bool) -> None:
    def bad(name: str, expected: str) -> RaftInputError:
        return RaftInputError(
            f"{origin}: column {name!r} must be {expected}, found {schema[name]}"
        )

    for name in ("stage", "cand", "token"):
        if name in schema and not schema[name].is_integer():
            raise bad(name, "an integer")
    if "prompt" in schema and not (
        schema["prompt"].is_integer()
        or isinstance(schema["prompt"], pl.String | pl.Categorical | pl.Enum)
    ):
        raise bad("prompt", "an integer or a string")
    numeric = ("reward", "logprob")
    for name in numeric:
        if name in schema and not schema[name].is_numeric():
            raise bad(name, "numeric")
    if nested:
        dtype = schema["logprobs"]
        if not (isinstance(dtype, pl.List | pl.Array) and dtype.inner.is_numeric()):
            raise bad("logprobs", "a list of numbers")


def _scan(source: Source, role: str) -> tuple[pl.LazyFrame, str, tuple[Path, ...]]:
    if isinstance(source, pl.LazyFrame):
        return source, f"the {role} LazyFrame", ()
    if isinstance(source, pl.DataFrame):
        return source.lazy(), f"the {role} DataFrame", ()
    if isinstance(source, pa.Table):
        frame = pl.from_arrow(source)
        assert isinstance(frame, pl.DataFrame)
        return frame.lazy(), f"the {role} Arrow table", ()
    if isinstance(source, str | Path):
        paths = [source]
    elif isinstance(source, Sequence) and all(isinstance(p, str | Path) for p in source):
        paths = list(source)
    else:
        msg = (f"{role} must be a path, a glob, a list of paths, a polars DataFrame or "
               f"LazyFrame or a pyarrow Table; got {type(source).__name__}")
        raise RaftInputError(msg)
    if not paths:
        msg = f"{role}: the list of paths is empty"
        raise RaftInputError(msg)
    files: list[Path] = []
    hive = False
    for raw in paths:
        text = str(raw)
        if Path(text).is_dir():
            found = _parquet_files(Path(text))
            if not found:
                msg = f"{role}: directory {text!r} holds no *.parquet or *.pq files"
                raise RaftInputError(msg)
            base = Path(text)
        elif any(ch in text for ch in "*?["):
            found = sorted(p for p in map(Path, _glob.glob(text, recursive=True)) if p.is_file())
            if not found:
                msg = f"{role}: no files match the glob {text!r}"
                raise RaftInputError(msg)
            base = Path(text[: min(text.find(ch) % (len(text) + 1) for ch in "*?[")]).parent
        elif Path(text).is_file():
            found = [Path(text)]
            base = Path(Path(text).anchor)
        else:
            msg = f"{role}: file not found: {text!r}"
            raise RaftInputError(msg)
        files.extend(found)
        # Hive partitions (stage=3/) below the directory or the glob's fixed part
        hive = hive or any("=" in part for f in found for part in f.relative_to(base).parts[:-1])
    origin = repr(str(paths[0])) if len(paths) == 1 else f"{len(paths)} paths"
    origin = f"{role} {origin}"
    try:
        lf = pl.scan_parquet([str(f) for f in files], hive_partitioning=hive or None,
                             schema=_merged_schema(files, origin), cast_options=_UPCAST)
        lf.collect_schema()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise _read_error(files, origin, exc) from exc
    return lf, origin, tuple(files)
