"""Writing the selected batch: the columns trainers read, written atomically.

The formats (:data:`EXPORT_FORMATS`) are Polars expressions over the lazy
selected batch of an executor (``rows``, ``sft``, ``chat``, ``openrlhf``) and,
for ``dpo`` (the rejected response) and ``wide`` (every candidate's reward),
over the log's lazy candidate rows joined to it: no loop over rows, the same
on every executor. The prompt id is always written as ``prompt_id``: ``prompt``
is the trainers' key for the prompt text.

A write goes to a temporary file in OUT's directory, renamed onto OUT at the
end: an interrupted run (an error, Ctrl-C, ``kill -9``) never leaves a partial
OUT. The temporary name is ``.raft-tmp-<pid>-<random>`` (short whatever OUT's
name, and ending in no data file extension, so that a user's ``*.parquet`` or
``*.jsonl`` glob never picks it up); ones left by processes that died are
removed by the next write into the same directory. A write holds a shared
``flock`` on OUT's directory; the cleanup runs only when it can hold it alone,
so that a writer whose process it cannot see (another PID namespace sharing the
directory) keeps its temporary file. Where directories take no ``flock`` (NFS),
the process ids alone decide, and a live writer on another host is not seen.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeAlias

import polars as pl

from raft_polars._engine import _stream
from raft_polars._engine.sources import is_remote, os_path, would_read, write_failure
from raft_polars._signals import TMP_PREFIX, renaming, temporary, temporary_name
from raft_polars.errors import RaftInputError, RaftPolarsError
from raft_polars.selection import is_number, is_whole

__all__ = [
    "EXPORT_FORMATS",
    "JSONL",
    "PARQUET",
    "Export",
    "ExportFormat",
    "StagePick",
    "Written",
    "check_format",
    "check_not_input",
    "check_target",
    "export_frame",
    "json_lines",
    "json_value",
    "output_format",
    "pick_stage",
    "rows_written",
    "sft_columns",
    "sink_parquet",
    "text_columns",
    "write_atomically",
]

PARQUET = (".parquet", ".pq")
JSONL = (".jsonl", ".ndjson")
StagePick: TypeAlias = int | Literal["last"] | None


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
    """OUT's directory exists and takes new files, and OUT does not exist unless
    ``force``."""
    if not out.parent.is_dir():
        what = "is not a directory" if out.parent.exists() else "does not exist"
        msg = f"output directory {what}: {str(out.parent)!r}"
        raise RaftInputError(msg)
    try:  # a file without a name (O_TMPFILE): nothing is left behind
        with tempfile.TemporaryFile(dir=out.parent):
            pass
    except OSError as exc:
        msg = f"cannot write in the output directory {str(out.parent)!r}: {exc.strerror or exc}"
        raise RaftInputError(msg) from exc
    if (out.exists() or out.is_symlink()) and not force:  # a link to nothing too
        msg = f"{str(out)!r} exists; pass force=True to replace it"
        raise RaftInputError(msg)


def check_not_input(out: Path, paths: Sequence[str], specs: Sequence[str]) -> None:
    """OUT is none of the files being read (``--force`` replaced the log
    itself), nor a file that the log's paths as given (``specs``: directories,
    globs) would take in once written: the next read of the log would take the
    output for a part of it."""
    target = os.path.realpath(out)
    for path in paths:
        if not is_remote(path) and os.path.realpath(path) == target:
            msg = (
                f"{str(out)!r} is a file of the log being read ({path!r}); "
                "write the output elsewhere"
            )
            raise RaftInputError(msg)
    for spec in specs:
        if (how := would_read(spec, str(out))) is not None:
            msg = (
                f"{str(out)!r} would become a part of the log it is written from: it "
                f"{how}; write it elsewhere"
            )
            raise RaftInputError(msg)


def pick_stage(
    frame: pl.LazyFrame, stages: pl.Series, stage: StagePick, origin: str
) -> pl.LazyFrame:
    """``frame`` restricted to one stage (a stage id, or ``"last"``), checked
    against the ``stages`` present."""
    if stage is None:
        return frame
    if stage != "last" and not is_whole(stage):
        msg = f"option stage={stage!r}: give a stage id (an integer) or 'last'"
        raise RaftInputError(msg)
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
    """The ``rows`` format: the selected batch with the prompt id column named
    ``prompt_id`` (``prompt`` is the trainers' key for the prompt text), and
    ``prompt`` / ``completion`` copies of payload columns when asked for."""
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
    names = {c: ("prompt_id" if c == "prompt" else c) for c in present}
    # a payload column already named like its copy is kept once, at the end
    kept = [c for c in present if not (names[c] in added and added[names[c]] == c)]
    for c in kept:
        if names[c] in added or (names[c] == "prompt_id" and c != "prompt"):
            what = "prompt_column=/response_column= output" if names[c] in added else "export"
            msg = (
                f"the selected batch already has a column {names[c]!r}, which the {what} "
                "needs; rename it in the log (columns= and --column name only the canonical "
                "columns)"
            )
            raise RaftInputError(msg)
    return frame.select(
        *(pl.col(c).alias(names[c]) for c in kept),
        *(pl.col(col).alias(name) for name, col in added.items()),
    )


# --- the formats of trainers -----------------------------------------------------------

ExportFormat: TypeAlias = Literal["rows", "sft", "chat", "dpo", "openrlhf", "wide"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = ("rows", "sft", "chat", "dpo", "openrlhf", "wide")
# the formats that hold text, and the payload columns they look for, in order
TEXT_FORMATS = ("sft", "chat", "dpo", "openrlhf")
PROMPT_TEXT = ("prompt_text", "prompt", "input", "question")
RESPONSE_TEXT = ("response", "responses", "output", "completion", "text")
_IDS = ["stage", "prompt", "cand"]
_TEXT_TYPES = (pl.String, pl.Categorical, pl.Enum)


class Written(int):
    """The rows written by :func:`raft_polars.write_selected` (an ``int``), with
    what the format left out.

    Attributes
    ----------
    format
        The export format.
    skipped_equal
        ``dpo``: prompts whose selected best and worst rewards are equal (no pair).
    skipped_margin
        ``dpo``: pairs whose reward margin is below ``min_margin``.
    """

    format: ExportFormat
    skipped_equal: int
    skipped_margin: int

    def __new__(
        cls,
        rows: int,
        *,
        format: ExportFormat = "rows",
        skipped_equal: int = 0,
        skipped_margin: int = 0,
    ) -> Written:
        self = super().__new__(cls, rows)
        self.format = format
        self.skipped_equal = skipped_equal
        self.skipped_margin = skipped_margin
        return self

    @property
    def rows(self) -> int:
        return int(self)


@dataclass(frozen=True)
class Export:
    """A format's frame, lazy, and the counts of what it left out; for the
    formats of text, what the write finds null where text must be (raised by
    :meth:`check` once the frame is written)."""

    frame: pl.LazyFrame
    skipped_equal: int = 0
    skipped_margin: int = 0
    missing: _Missing | None = None

    def check(self, out: Path) -> None:
        """Raise where the write of :attr:`frame` met a null text."""
        if self.missing is not None:
            self.missing.check(out)


class _Missing:
    """The null texts of a text format's rows, counted batch by batch as the
    write streams past (in the same pass): a trainer fails on a null prompt or
    completion long after the export, or trains on it as text.

    ``roles`` maps each text (``"response"``) to the expression of the written
    columns that is true where it is null, and the column of the candidate it
    comes from; the first row (by stage, prompt, candidate) is kept for the
    message."""

    def __init__(
        self, fmt: str, columns: tuple[str, str], roles: Mapping[str, tuple[pl.Expr, str]]
    ):
        self.fmt, self.columns, self.roles = fmt, columns, dict(roles)
        self.counts: dict[str, int] = {}
        self.firsts: dict[str, list[pl.DataFrame]] = {}
        self.lock = threading.Lock()  # the batches may come from several threads

    def watched(self, frame: pl.LazyFrame) -> pl.LazyFrame:
        """``frame``, its ``stage`` column passed through a function that counts."""
        flags = [flag.alias(f"_null_{role}") for role, (flag, _) in self.roles.items()]
        cands = {cand for _, cand in self.roles.values()}
        dtype = frame.collect_schema()["stage"]

        def count(rows: pl.Series) -> pl.Series:
            batch = rows.struct.unnest()
            for role, (_, cand) in self.roles.items():
                found = batch.filter(pl.col(f"_null_{role}"))
                if found.height:
                    first = found.select("stage", "prompt_id", pl.col(cand).alias("cand"))
                    first = first.sort(pl.all()).head(1)
                    with self.lock:
                        self.counts[role] = self.counts.get(role, 0) + found.height
                        self.firsts.setdefault(role, []).append(first)
            return batch["stage"]

        watched = pl.struct("stage", "prompt_id", *sorted(cands), *flags).map_batches(
            count, return_dtype=dtype, is_elementwise=True
        )
        return frame.with_columns(watched.alias("stage"))

    def check(self, out: Path) -> None:
        for role in self.roles:
            if not (number := self.counts.get(role, 0)):
                continue
            first = pl.concat(self.firsts[role]).sort(pl.all(), nulls_last=True).row(0)
            column = self.columns[0] if role == "prompt" else self.columns[1]
            more = f" (and {number - 1} more)" if number > 1 else ""
            msg = (
                f"cannot write {str(out)!r} in format {self.fmt!r}: the {role} text (column "
                f"{column!r}) is null at stage {first[0]}, prompt {first[1]!r}, cand {first[2]}"
                f"{more}; fill the text, or drop those candidates from the log (format "
                "'rows' writes the selected batch as it is)"
            )
            raise RaftInputError(msg)


def check_format(
    fmt: str, min_margin: float | None, *, texts: tuple[str | None, str | None] = (None, None)
) -> ExportFormat:
    """``fmt`` is a format; ``min_margin`` goes with ``dpo`` and is >= 0; the
    text columns (``prompt_column=``, ``response_column=``) with a format that
    writes text."""
    for known in EXPORT_FORMATS:
        if fmt == known:
            if known == "wide" and texts != (None, None):
                msg = (
                    "prompt_column=/response_column= apply to formats that write text, "
                    "not format='wide' (ids and rewards, no text)"
                )
                raise RaftInputError(msg)
            if min_margin is not None:
                if known != "dpo":
                    msg = f"min_margin= applies to format='dpo' only, not {fmt!r}"
                    raise RaftInputError(msg)
                if not (is_number(min_margin) and math.isfinite(min_margin) and min_margin >= 0):
                    msg = f"option min_margin={min_margin!r}: must be a finite number >= 0"
                    raise RaftInputError(msg)
            return known
    msg = f"option format={fmt!r}: must be one of {', '.join(EXPORT_FORMATS)}"
    raise RaftInputError(msg)


def text_columns(
    schema: pl.Schema, fmt: str, prompt_col: str | None, response_col: str | None
) -> tuple[str, str]:
    """The columns holding the prompt and the response text, in ``schema`` (the
    selected batch's): those given, else the first payload column of
    :data:`PROMPT_TEXT` (else the prompt id when it is a string) and of
    :data:`RESPONSE_TEXT`."""
    present = list(schema)
    payload = [c for c in present if c not in (*_IDS, "reward", "tokens")]
    found: list[str] = []
    for role, given, names, option in (
        ("prompt", prompt_col, PROMPT_TEXT, "prompt_column="),
        ("response", response_col, RESPONSE_TEXT, "response_column="),
    ):
        if given is not None:
            if given not in present:
                msg = (
                    f"option {option}{given!r}: no such column in the selected batch; "
                    f"columns present: {present}"
                )
                raise RaftInputError(msg)
            col = given
        else:
            hits = [c for c in names if c in payload]
            if not hits and role == "prompt" and schema["prompt"] == pl.String:
                hits = ["prompt"]  # the prompt id is the text
            if not hits:
                looked = ", ".join(names) + (" or a string prompt id" if role == "prompt" else "")
                msg = (
                    f"format {fmt!r} needs the {role} text, and no column of the selected "
                    f"batch holds it (looked for {looked}); columns present: {present}; "
                    f"name the column with {option}COL"
                )
                raise RaftInputError(msg)
            col = hits[0]
        dtype = schema[col]
        if not isinstance(dtype, _TEXT_TYPES):
            how = f"option {option}{col!r}" if given is not None else f"the {role} column {col!r}"
            msg = (
                f"format {fmt!r}: {how} is of type {dtype}, not text; name a string "
                f"column with {option}COL"
            )
            raise RaftInputError(msg)
        found.append(col)
    return found[0], found[1]


def export_frame(
    fmt: ExportFormat,
    selected: pl.LazyFrame,
    candidates: pl.LazyFrame,
    *,
    prompt_column: str | None = None,
    response_column: str | None = None,
    min_margin: float | None = None,
    collect: Callable[[pl.LazyFrame], pl.DataFrame] | None = None,
) -> Export:
    """The frame of one export format.

    ``selected`` is the selected batch (``stage, prompt, cand, reward, tokens``
    and the payload, sorted by ``stage, prompt, cand``); ``candidates`` the
    canonical candidate rows of the same stages (``dpo`` takes the rejected
    response from them, ``wide`` every candidate's reward). Only ``dpo`` runs a
    query now (``collect``), on one row per prompt, to count the pairs it skips;
    every other frame stays lazy.
    """
    if fmt == "rows":
        return Export(sft_columns(selected, prompt_column, response_column))
    if fmt == "wide":
        return Export(_wide(selected, candidates))
    p, r = text_columns(selected.collect_schema(), fmt, prompt_column, response_column)
    prompt_text = pl.col(p).cast(pl.String)
    response_text = pl.col(r).cast(pl.String)
    ids = (pl.col("stage"), pl.col("prompt").alias("prompt_id"), pl.col("cand"))
    if fmt == "sft":
        frame = selected.select(
            prompt_text.alias("prompt"),
            response_text.alias("completion"),
            *ids,
            pl.col("reward").alias("cand_reward"),
            "tokens",
        )
        texts = {"prompt": pl.col("prompt"), "response": pl.col("completion")}
    elif fmt == "chat":
        messages = pl.concat_list(
            pl.struct(pl.lit("user").alias("role"), prompt_text.alias("content")),
            pl.struct(pl.lit("assistant").alias("role"), response_text.alias("content")),
        )
        frame = selected.select(
            messages.alias("messages"),
            *ids,
            pl.col("reward").alias("cand_reward"),
            "tokens",
        )
        content = pl.col("messages").list.get
        texts = {
            "prompt": content(0).struct.field("content"),
            "response": content(1).struct.field("content"),
        }
    elif fmt == "openrlhf":
        frame = selected.select(
            prompt_text.alias("input"),
            response_text.alias("output"),
            "reward",
            *ids,
            "tokens",
        )
        texts = {"prompt": pl.col("input"), "response": pl.col("output")}
    else:
        assert fmt == "dpo"
        assert collect is not None
        built = _dpo(
            selected,
            candidates,
            prompt_text=prompt_text,
            response_text=response_text,
            min_margin=min_margin,
            collect=collect,
        )
        roles = {
            "prompt": (pl.col("prompt").is_null(), "chosen_cand"),
            "chosen response": (pl.col("chosen").is_null(), "chosen_cand"),
            "rejected response": (pl.col("rejected").is_null(), "rejected_cand"),
        }
        missing = _Missing(fmt, (p, r), roles)
        return Export(
            missing.watched(built.frame), built.skipped_equal, built.skipped_margin, missing
        )
    missing = _Missing(
        fmt, (p, r), {role: (text.is_null(), "cand") for role, text in texts.items()}
    )
    return Export(missing.watched(frame), missing=missing)


def _dpo(
    selected: pl.LazyFrame,
    candidates: pl.LazyFrame,
    *,
    prompt_text: pl.Expr,
    response_text: pl.Expr,
    min_margin: float | None,
    collect: Callable[[pl.LazyFrame], pl.DataFrame],
) -> Export:
    """Chosen: the best selected candidate of each prompt; rejected: the prompt's
    lowest reward, ties to the smallest candidate id."""
    key = ["stage", "prompt"]
    best = selected.group_by(key).agg(
        pl.col("cand")
        .sort_by("reward", "cand", descending=[True, False])
        .first()
        .alias("chosen_cand"),
        pl.col("reward").max().alias("chosen_reward"),
    )
    worst = candidates.group_by(key).agg(
        pl.col("cand").sort_by("reward", "cand").first().alias("rejected_cand"),
        pl.col("reward").min().alias("rejected_reward"),
    )
    pairs = collect(best.join(worst, on=key, how="inner", nulls_equal=True))
    equal = pairs["chosen_reward"] == pairs["rejected_reward"]
    margin = pairs["chosen_reward"] - pairs["rejected_reward"]
    keep = ~equal
    if min_margin is not None:
        keep &= margin >= min_margin
    skipped_equal = int(equal.sum())
    skipped_margin = pairs.height - skipped_equal - int(keep.sum())
    pairs = pairs.filter(keep)
    text = candidates.select(*_IDS, prompt_text.alias("_prompt"), response_text.alias("_response"))
    chosen = text.select(
        *key, pl.col("cand").alias("chosen_cand"), "_prompt", pl.col("_response").alias("chosen")
    )
    rejected = text.select(
        *key, pl.col("cand").alias("rejected_cand"), pl.col("_response").alias("rejected")
    )
    frame = (
        pairs.lazy()
        .join(chosen, on=[*key, "chosen_cand"], how="inner", nulls_equal=True)
        .join(rejected, on=[*key, "rejected_cand"], how="inner", nulls_equal=True)
        .select(
            pl.col("_prompt").alias("prompt"),
            "chosen",
            "rejected",
            "chosen_reward",
            "rejected_reward",
            "stage",
            pl.col("prompt").alias("prompt_id"),
            "chosen_cand",
            "rejected_cand",
        )
        .sort("stage", "prompt_id")
    )
    return Export(frame, skipped_equal, skipped_margin)


def _wide(selected: pl.LazyFrame, candidates: pl.LazyFrame) -> pl.LazyFrame:
    """One row per prompt: the selected candidates' ids, rewards and token counts,
    and every candidate's id and reward, as lists in candidate order."""
    key = ["stage", "prompt"]
    every = (
        candidates.select(*_IDS, "reward")
        .sort(_IDS)
        .group_by(key, maintain_order=True)
        .agg(pl.col("cand").alias("cands"), pl.col("reward").alias("rewards"))
    )
    chosen = (
        selected.select(*_IDS, "reward", "tokens")
        .sort(_IDS)
        .group_by(key, maintain_order=True)
        .agg(
            pl.col("cand").alias("selected_cands"),
            pl.col("reward").alias("selected_rewards"),
            pl.col("tokens").alias("selected_tokens"),
        )
    )
    lists = ("selected_cands", "selected_rewards", "selected_tokens")
    return (
        every.join(chosen, on=key, how="left", nulls_equal=True)
        .with_columns(pl.col(c).fill_null([]) for c in lists)  # nothing selected
        .select(
            "stage",
            pl.col("prompt").alias("prompt_id"),
            *lists,
            "cands",
            "rewards",
        )
        .sort("stage", "prompt_id")
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


_TMP_NAME = re.compile(re.escape(TMP_PREFIX) + r"(\d+)-[0-9a-f]{12}")


def clean_stale(directory: Path) -> list[Path]:
    """Remove the temporary files that dead processes left in ``directory``:
    only names exactly as :func:`write_atomically` makes them (a user's
    ``.raft-tmp-1234-notes`` stays, file or directory)."""
    removed = []
    for path in directory.glob(f"{TMP_PREFIX}*"):
        match = _TMP_NAME.fullmatch(path.name)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid != os.getpid() and not _alive(pid):
            _remove(path)
            removed.append(path)
    return removed


@contextlib.contextmanager
def _writing_in(directory: Path) -> Iterator[None]:
    """Hold a shared lock on ``directory`` while the block writes in it; before,
    when no other writer holds it, remove the stale temporary files there."""
    try:
        import fcntl

        fd = os.open(directory, os.O_RDONLY)
    except (ImportError, OSError):  # no locks here: the process ids alone decide
        clean_stale(directory)
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another writer works here: its temp may be live
            fcntl.flock(fd, fcntl.LOCK_SH)
        except OSError:  # a file system without flock
            clean_stale(directory)
        else:
            clean_stale(directory)
            fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def write_atomically(
    out: Path,
    write: Callable[[Path], None],
    *,
    force: bool,
    appeared: str = "pass force=True to replace it",
) -> None:
    """Call ``write(tmp)`` on a temporary path in OUT's directory, then rename it
    onto OUT. The temporary path is removed on any failure, so OUT is either the
    complete result or untouched. ``appeared``: what to do, said where OUT
    appeared while writing."""
    with _writing_in(out.parent):
        _write_renamed(out, write, force=force, appeared=appeared)


def write_into(directory: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary directory inside the existing empty
    ``directory`` (hidden: reads leave it out), then move what it wrote into
    ``directory``: its owner, mode and mount stay, as does a shell's working
    directory that it is. The moves are done before a signal is acted on; on
    any failure the temporary directory is removed and ``directory`` is as it
    was. A name that appeared in ``directory`` meanwhile is not replaced."""

    def moved_in(tmp: Path) -> None:
        entries = sorted(tmp.iterdir())
        taken = [e.name for e in entries if (directory / e.name).exists()]
        if taken:
            msg = (
                f"{str(directory)!r} was written to while this process wrote "
                f"({taken[0]!r}); choose a new directory"
            )
            raise RaftInputError(msg)
        for entry in entries:
            os.rename(entry, Path(tmp.parent, entry.name))
        tmp.rmdir()

    with _writing_in(directory):
        _staged(directory, os.path.realpath(directory), write, moved_in)


def _staged(
    out: Path, home: str, write: Callable[[Path], None], finish: Callable[[Path], None]
) -> None:
    """``write(tmp)`` on a temporary path in the directory ``home``, then
    ``finish(tmp)`` before a signal is acted on; the temporary path is removed on
    any failure (and by the command line's ending on a signal)."""
    tmp = Path(temporary_name(home))
    with temporary(tmp):
        try:
            _written_or_failure(out, write, tmp)
            with renaming():
                finish(tmp)
        except BaseException:
            _remove(tmp)
            raise


def _written_or_failure(out: Path, write: Callable[[Path], None], tmp: Path) -> None:
    """``write(tmp)``; a full disk's failure (or another of the write's own) as an
    error naming OUT."""
    try:
        write(tmp)
    except (OSError, pl.exceptions.PolarsError) as exc:
        reason = write_failure(exc)
        if reason is None:
            raise
        msg = f"cannot write {str(out)!r}: {reason}"
        raise RaftPolarsError(msg) from exc


def _write_renamed(out: Path, write: Callable[[Path], None], *, force: bool, appeared: str) -> None:

    def renamed(tmp: Path) -> None:  # OUT replaced by the rename, or left alone
        if out.exists() or out.is_symlink():
            if not force:
                msg = f"{str(out)!r} appeared while writing; {appeared}"
                raise RaftInputError(msg)
            if out.is_dir() and not tmp.is_dir():
                msg = f"{str(out)!r} is a directory; not replacing it with a file"
                raise RaftInputError(msg)
            if out.is_dir():
                shutil.rmtree(out)
        os.replace(tmp, out)

    # absolute: pyarrow and Polars took a directory named like a URL ("run:1/",
    # "hdfs:/") for one; resolved as the OS resolves OUT ("link/.." is above the
    # link's target), not collapsed as text
    _staged(out, os.path.dirname(os_path(out)), write, renamed)


def check_json_columns(schema: Mapping[str, pl.DataType], out: Path) -> None:
    """Raise where a column holds what JSON lines cannot (bytes, at any depth):
    Polars' writer failed with "not yet implemented: Writing BinaryView to JSON",
    reported as a failure to read the source."""
    for name, dtype in schema.items():
        if _holds_bytes(dtype):
            msg = (
                f"cannot write {str(out)!r}: column {name!r} holds bytes ({dtype}), which "
                "JSON lines cannot; write Parquet (.parquet), or make the column text"
            )
            raise RaftInputError(msg)


def json_lines(frame: pl.LazyFrame, tmp: Path, out: Path) -> None:
    """Write ``frame`` to ``tmp`` as JSON lines, raising where a float (at any
    depth) is NaN or infinite: JSON has no such numbers, and Polars' writer made
    them null, silently. The floats are counted batch by batch as they stream
    past, in the same pass as the write."""
    found: dict[str, int] = {}
    lock = threading.Lock()  # the batches may come from several threads

    def counted(name: str) -> Callable[[pl.Series], pl.Series]:
        def count(values: pl.Series) -> pl.Series:
            bad = _not_finite(values)
            if bad:
                with lock:
                    found[name] = found.get(name, 0) + bad
            return values

        return count

    schema = frame.collect_schema()
    floats = [name for name, dtype in schema.items() if _holds_floats(dtype)]
    watched = frame.with_columns(
        pl.col(name).map_batches(counted(name), return_dtype=schema[name], is_elementwise=True)
        for name in floats
    )
    watched.sink_ndjson(tmp, engine="streaming")
    if found:
        named = ", ".join(f"{name!r} ({count})" for name, count in found.items())
        msg = (
            f"cannot write {str(out)!r}: JSON has no NaN or infinite numbers, and column(s) "
            f"{named} hold some; write Parquet (.parquet), or replace them (e.g. with nulls)"
        )
        raise RaftInputError(msg)


def _holds_floats(dtype: Any) -> bool:
    if isinstance(dtype, pl.List | pl.Array):
        return _holds_floats(dtype.inner)
    if isinstance(dtype, pl.Struct):
        return any(_holds_floats(field.dtype) for field in dtype.fields)
    return bool(dtype.is_float())


def _not_finite(values: pl.Series) -> int:
    """How many floats in ``values``, at any depth, are NaN or infinite."""
    dtype = values.dtype
    if isinstance(dtype, pl.List | pl.Array):
        inner = values.list.explode() if isinstance(dtype, pl.List) else values.arr.explode()
        return _not_finite(inner)
    if isinstance(dtype, pl.Struct):
        return sum(_not_finite(values.struct.field(f.name)) for f in dtype.fields)
    if not dtype.is_float():
        return 0
    return int((~values.is_finite()).sum())


def _holds_bytes(dtype: Any) -> bool:
    if isinstance(dtype, pl.List | pl.Array):
        return _holds_bytes(dtype.inner)
    if isinstance(dtype, pl.Struct):
        return any(_holds_bytes(field.dtype) for field in dtype.fields)
    return bool(dtype == pl.Binary)


def json_value(value: Any) -> Any:
    """``value`` as strict JSON allows: NaN and infinities as the strings
    ``"nan"``, ``"inf"`` and ``"-inf"``."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def table_cell(value: Any) -> str:
    """``value`` as a cell of the CLI's aligned tables and the HTML report's: a
    float to 4 decimals, from 1e15 on as ``1.2345e+15`` (4 decimals of 1e300 are
    305 digits); null as ``-``."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isfinite(value) and abs(value) >= 1e15:
            return f"{value:.4e}"
        return f"{round(value, 4):.4f}"
    return str(value)


def rows_written(out: Path) -> int:
    """Rows in a written Parquet or JSON lines file."""
    if out.suffix.lower() in PARQUET:
        import pyarrow.parquet as pq

        return int(pq.read_metadata(os_path(out)).num_rows)
    lines = 0
    with out.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            lines += chunk.count(b"\n")
    return lines


def write_parquet(frame: pl.DataFrame, path: Path) -> None:
    """Write ``frame`` to ``path`` as Parquet with page checksums, zstd-compressed,
    in one go (:func:`sink_parquet` streams), in row groups of 128 Ki rows; ids
    and text dictionary-encoded, not floats (log-probs and rewards rarely
    repeat: a dictionary only costs)."""
    import pyarrow.parquet as pq

    coded = [name for name, kind in frame.schema.items() if kind.is_integer() or kind == pl.String]
    pq.write_table(
        frame.to_arrow(),
        os.path.abspath(path),  # a directory named "run:1" is not a URL
        compression="zstd",
        write_page_checksum=True,
        use_dictionary=coded,
        row_group_size=_ROW_GROUP,
    )


# rows of a row group written in one go: readers decode a row group at once, so
# pyarrow's default (1 Mi rows) costs them memory and leaves a core idle
_ROW_GROUP = 1 << 17


def sink_parquet(frame: pl.LazyFrame | pl.DataFrame, path: Path) -> None:
    """Write ``frame`` to ``path`` as Parquet with page checksums (CRC32 of every
    page, so that a strict reader, ``raft-polars validate`` among them, catches a
    corrupted page), zstd-compressed, streaming batch by batch."""
    import pyarrow.parquet as pq

    lazy = frame.lazy()
    writer = None
    try:
        for batch in _stream.batches(lazy):
            table = batch.to_arrow()
            if writer is None:
                writer = pq.ParquetWriter(
                    os.path.abspath(path),
                    table.schema,
                    compression="zstd",
                    write_page_checksum=True,
                )
            writer.write_table(table)
        if writer is None:  # no rows: the schema alone
            empty = pl.DataFrame(schema=lazy.collect_schema()).to_arrow()
            writer = pq.ParquetWriter(
                os.path.abspath(path), empty.schema, compression="zstd", write_page_checksum=True
            )
            writer.write_table(empty)
    finally:
        if writer is not None:
            writer.close()
