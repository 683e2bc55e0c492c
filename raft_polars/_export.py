"""Writing the selected batch: the columns trainers read, written atomically.

A write goes to a temporary file in OUT's directory, renamed onto OUT at the
end: an interrupted run (an error, Ctrl-C, ``kill -9``) never leaves a partial
OUT. The temporary name is ``.raft-tmp-<pid>-<random>`` (short whatever OUT's
name, and ending in no data file extension, so that a user's ``*.parquet`` or
``*.jsonl`` glob never picks it up); ones left by processes that died are
removed by the next write into the same directory.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeAlias

import polars as pl

from raft_polars.errors import RaftInputError

__all__ = [
    "JSONL",
    "PARQUET",
    "StagePick",
    "check_target",
    "json_value",
    "output_format",
    "pick_stage",
    "rows_written",
    "sft_columns",
    "write_atomically",
]

PARQUET = (".parquet", ".pq")
JSONL = (".jsonl", ".ndjson")
StagePick: TypeAlias = int | Literal["last"] | None
_TMP_PREFIX = ".raft-tmp-"


def output_format(out: Path) -> Literal["parquet", "jsonl"]:
    """The format asked for by OUT's extension."""
    suffix = out.suffix.lower()
    if suffix in PARQUET:
        return "parquet"
    if suffix in JSONL:
        return "jsonl"
    msg = (
        f"cannot tell the output format of {str(out)!r}: name it *.parquet (or .pq) "
        "for Parquet, *.jsonl (or .ndjson) for JSON lines"
    )
    raise RaftInputError(msg)


def check_target(out: Path, *, force: bool) -> None:
    """OUT's directory exists, and OUT does not unless ``force``."""
    if not out.parent.is_dir():
        msg = f"output directory does not exist: {str(out.parent)!r}"
        raise RaftInputError(msg)
    if out.exists() and not force:
        msg = f"{str(out)!r} exists; pass force=True to replace it"
        raise RaftInputError(msg)


def pick_stage(
    frame: pl.LazyFrame, stages: pl.Series, stage: StagePick, origin: str
) -> pl.LazyFrame:
    """``frame`` restricted to one stage (a stage id, or ``"last"``), checked
    against the ``stages`` present."""
    if stage is None:
        return frame
    stages = stages.drop_nulls()
    if stages.is_empty():
        msg = f"{origin} holds no stages"
        raise RaftInputError(msg)
    if stage == "last":
        return frame.filter(pl.col("stage") == stages.max())
    if stage not in stages:
        shown = stages.head(20).to_list()
        more = ", ..." if stages.len() > 20 else ""
        msg = (
            f"option stage={stage}: no such stage in {origin}; stages present: "
            f"{str(shown)[:-1]}{more}]"
        )
        raise RaftInputError(msg)
    return frame.filter(pl.col("stage") == stage)


def sft_columns(
    frame: pl.LazyFrame, prompt_col: str | None, response_col: str | None
) -> pl.LazyFrame:
    """Add ``prompt`` / ``completion`` copies of payload columns for SFT trainers.

    With ``prompt_col`` the prompt id column is renamed ``prompt_id``, since
    ``prompt`` then holds the text.
    """
    if prompt_col is None and response_col is None:
        return frame
    present = list(frame.collect_schema())
    wanted = {"prompt": prompt_col, "completion": response_col}
    added = {name: col for name, col in wanted.items() if col is not None}
    for option, col in (
        ("option prompt_column=", prompt_col),
        ("option response_column=", response_col),
    ):
        if col is not None and col not in present:
            msg = (
                f"{option}{col!r}: no such column in the selected batch; columns present: {present}"
            )
            raise RaftInputError(msg)
    names = {c: ("prompt_id" if c == "prompt" and prompt_col is not None else c) for c in present}
    # a payload column already named like its copy is kept once, at the end
    kept = [c for c in present if not (names[c] in added and added[names[c]] == c)]
    for c in kept:
        if names[c] in added or (names[c] == "prompt_id" and c != "prompt"):
            msg = (
                f"the selected batch already has a column {names[c]!r}, which the "
                "prompt_column=/response_column= output needs; rename it with columns= "
                "or in the log"
            )
            raise RaftInputError(msg)
    return frame.select(
        *(pl.col(c).alias(names[c]) for c in kept),
        *(pl.col(col).alias(name) for name, col in added.items()),
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def clean_stale(directory: Path) -> list[Path]:
    """Remove the temporary files that dead processes left in ``directory``."""
    removed = []
    for path in directory.glob(f"{_TMP_PREFIX}*"):
        pid = path.name[len(_TMP_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            _remove(path)
            removed.append(path)
    return removed


def write_atomically(out: Path, write: Callable[[Path], None], *, force: bool) -> None:
    """Call ``write(tmp)`` on a temporary path in OUT's directory, then rename it
    onto OUT. The temporary path is removed on any failure, so OUT is either the
    complete result or untouched."""
    clean_stale(out.parent)
    tmp = out.parent / f"{_TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
    try:
        write(tmp)
        if out.exists():
            if not force:
                msg = f"{str(out)!r} appeared while writing; pass force=True to replace it"
                raise RaftInputError(msg)
            if out.is_dir() and not tmp.is_dir():
                msg = f"{str(out)!r} is a directory; not replacing it with a file"
                raise RaftInputError(msg)
            if out.is_dir():
                shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        _remove(tmp)
        raise


def json_value(value: Any) -> Any:
    """``value`` as strict JSON allows: NaN and infinities as the strings
    ``"nan"``, ``"inf"`` and ``"-inf"``."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def rows_written(out: Path) -> int:
    """Rows in a written Parquet or JSON lines file."""
    if out.suffix.lower() in PARQUET:
        import pyarrow.parquet as pq

        return int(pq.read_metadata(out).num_rows)
    lines = 0
    with out.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            lines += chunk.count(b"\n")
    return lines
