"""One harness for every entry point of the engine, checked against the reference.

A :class:`Case` is a stage log as nested lists (``lps``, ``rws``) plus how to lay
it out as frames and files: stage ids, prompt ids, candidate ids, row shuffling,
float32 log-probs, the user's own column names, an extra payload column. An
:class:`Entry` is one way into the engine (``raft_alignment``, ``lists_losses``,
``stage_losses`` / ``select_best`` on a DataFrame, LazyFrame, Arrow table, Parquet
file, glob, list of paths, directory or Hive directory, in the nested or long
layout, on the dense integer path or the hash-join fallback).

:func:`check_losses` and :func:`check_selection` run a case through an entry and
compare with ``tests/reference.py``: losses exactly after ``round(x, 4)`` (and
close before), counts and the selection exactly.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import dask_cluster
import numpy as np
import polars as pl
from hypothesis import strategies as st
from reference import (
    best_index,
    long_frames,
    nested_frame,
    reference_losses,
    reference_stats,
    write_split,
)
from strategies import prompt_ids, ragged_logs, stage_ids

import raft_polars
import raft_polars._engine.dense

# the columns of stage_losses / lists_losses, in this order (issue 2, the lead's brief)
LOSS_COLUMNS = (
    "stage",
    "loss",
    "prompts",
    "candidates",
    "selected",
    "tokens",
    "reward_best_mean",
    "reward_mean",
    "reward_lift",
    "ties",
    "below_min",
)
FRAME_KINDS = ("DataFrame", "LazyFrame", "Arrow")
FILE_KINDS = ("file", "glob", "paths", "dir", "hive")


@dataclass(frozen=True)
class Case:
    """A stage log as nested lists, and how to lay it out as frames and files.

    ``stage_ids[t]`` / ``prompt_ids[i]`` name stage ``t`` / prompt ``i`` (default:
    positions); candidate ``j`` gets id ``cand_offset + cand_step * j`` (increasing,
    so the first of tied candidates keeps the smallest id); ``shuffle`` permutes
    the rows with that seed; ``float32`` stores log-probs as float32 (the reference
    then sees the float32-rounded values); ``rename`` maps canonical column names
    to the user's own (passed as ``columns=``); ``payload`` adds the extra columns
    ``response`` (text) and ``note`` (int) to the candidate rows.
    """

    lps: Sequence[Any]
    rws: Sequence[Any]
    stage_ids: Sequence[int] | None = None
    prompt_ids: Sequence[Any] | None = None
    cand_step: int = 1
    cand_offset: int = 0
    shuffle: int | None = None
    float32: bool = False
    rename: Mapping[str, str] = field(default_factory=dict)
    payload: bool = True

    # --- what the reference says --------------------------------------------------

    def values(self) -> list[Any]:
        """The log-probs the engine should see (float32-rounded if ``float32``)."""
        if not self.float32:
            return list(self.lps)
        return [
            [[[float(np.float32(v)) for v in resp] for resp in prompt] for prompt in stage]
            for stage in self.lps
        ]

    def stage_id(self, t: int) -> int:
        return self.stage_ids[t] if self.stage_ids else t

    def prompt_id(self, i: int) -> Any:
        return self.prompt_ids[i] if self.prompt_ids else i

    def cand_id(self, j: int) -> int:
        return self.cand_offset + self.cand_step * j

    def stage_order(self, *, ids: bool = True) -> list[int]:
        """Stage positions in the order of the output: sorted by stage id, or by
        position when the entry point knows no ids (``ids=False``, nested lists)."""
        if not ids:
            return list(range(len(self.lps)))
        return sorted(range(len(self.lps)), key=self.stage_id)

    def expected_losses(self, reduction: str = "token", *, ids: bool = True) -> list[float]:
        """Unrounded reference losses, in output order."""
        ref = reference_losses(self.values(), self.rws, reduction=reduction)
        return [ref[t] for t in self.stage_order(ids=ids)]

    def expected_table(self, *, ids: bool = True) -> list[dict[str, Any]]:
        """Reference per-stage statistics, in output order."""
        stats = reference_stats(self.values(), self.rws)
        rows = []
        for t in self.stage_order(ids=ids):
            row = dict(stats[t], stage=self.stage_id(t) if ids else t)
            row["candidates"] = sum(len(r) for r in self.rws[t])
            row["selected"] = row["prompts"]
            rows.append(row)
        return rows

    def expected_selection(self) -> list[dict[str, Any]]:
        """The rows ``select_best`` should return, sorted by stage, prompt, cand."""
        rows = []
        for t, stage in enumerate(self.rws):
            for i, rewards in enumerate(stage):
                j = best_index(rewards)
                row = {
                    "stage": self.stage_id(t),
                    "prompt": self.prompt_id(i),
                    "cand": self.cand_id(j),
                    "reward": float(rewards[j]),
                    "tokens": len(self.lps[t][i][j]),
                }
                if self.payload:
                    row.update(payload(t, i, j))
                rows.append(row)
        return sorted(rows, key=lambda r: (r["stage"], r["prompt"], r["cand"]))

    # --- the frames ---------------------------------------------------------------

    def _layout_kwargs(self) -> dict[str, Any]:
        return {
            "stage_ids": self.stage_ids,
            "prompt_ids": self.prompt_ids,
            "shuffle": self.shuffle,
            "float32": self.float32,
        }

    def _cand(self, frame: pl.DataFrame) -> pl.DataFrame:
        return frame.with_columns(pl.col("cand") * self.cand_step + self.cand_offset)

    def _payload(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Add the payload columns, computed from the positions of each row."""
        if not self.payload:
            return frame
        pos = self.positions()
        keys = frame.select("stage", "prompt", "cand").rows()
        extras = [payload(*pos[key]) for key in keys]
        return frame.with_columns(
            pl.Series("response", [e["response"] for e in extras], pl.String),
            pl.Series("note", [e["note"] for e in extras], pl.Int64),
        )

    def positions(self) -> dict[tuple[Any, Any, int], tuple[int, int, int]]:
        """(stage id, prompt id, cand id) -> (t, i, j)."""
        return {
            (self.stage_id(t), self.prompt_id(i), self.cand_id(j)): (t, i, j)
            for t, stage in enumerate(self.rws)
            for i, prompt in enumerate(stage)
            for j in range(len(prompt))
        }

    def nested(self) -> pl.DataFrame:
        """Nested layout: one row per candidate (canonical column names)."""
        return self._payload(
            self._cand(nested_frame(self.values(), self.rws, **self._layout_kwargs()))
        )

    def long(self) -> tuple[pl.DataFrame, pl.DataFrame]:
        """Long layout: (token rows, reward rows) (canonical column names)."""
        tokens, rewards = long_frames(self.values(), self.rws, **self._layout_kwargs())
        if self.float32:
            tokens = tokens.with_columns(pl.col("logprob").cast(pl.Float32))
        return self._cand(tokens), self._payload(self._cand(rewards))

    def user(self, frame: pl.DataFrame) -> pl.DataFrame:
        """``frame`` with the user's own column names."""
        return frame.rename({k: v for k, v in self.rename.items() if k in frame.columns})

    @property
    def columns(self) -> dict[str, str] | None:
        return dict(self.rename) or None


def payload(t: int, i: int, j: int) -> dict[str, Any]:
    """The extra columns of candidate (t, i, j)."""
    return {"response": f"resp {t}/{i}/{j}", "note": 1000 * t + 10 * i + j}


# --- laying frames out as sources ------------------------------------------------------


def _as_source(  # noqa: PLR0911 - one return per source kind
    frame: pl.DataFrame, kind: str, directory: Path, stage_col: str
) -> Any:
    """``frame`` as a source of the given kind; files are written under ``directory``."""
    if kind == "DataFrame":
        return frame
    if kind == "LazyFrame":
        return frame.lazy()
    if kind == "Arrow":
        return frame.to_arrow()
    if kind == "file":
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "log.parquet"
        frame.write_parquet(path)
        return str(path)
    # the candidates of one prompt end up in several files (rows dealt round-robin)
    parts = 1 if frame.height == 0 else 3
    if kind == "glob":
        write_split(frame, directory, parts)
        return str(directory / "part-*.parquet")
    if kind == "paths":
        return write_split(frame, directory, parts)
    if kind == "dir":
        write_split(frame, directory / "nested" / "deeper", parts)
        return str(directory)
    if kind == "hive":
        directory.mkdir(parents=True, exist_ok=True)
        for (sid,), part in frame.partition_by(stage_col, as_dict=True).items():
            write_split(part.drop(stage_col), directory / f"{stage_col}={sid}", 2)
        return directory
    raise AssertionError(kind)


def to_long(
    nested: pl.DataFrame,
    *,
    ids: Sequence[str] = ("stage", "prompt", "cand"),
    logprobs: str = "logprobs",
    logprob: str = "logprob",
    token: str = "token",
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A nested-layout frame as (token rows, reward rows) of the long layout.

    The reward rows keep every column but the log-probs (extras included); a
    response with no tokens (or a null list) gets no token row.
    """
    tokens = (
        nested.select(*ids, logprobs)
        .with_columns(pl.int_ranges(pl.col(logprobs).list.len()).alias(token))
        .explode([logprobs, token])
        .drop_nulls(token)
        .rename({logprobs: logprob})
    )
    return tokens, nested.drop(logprobs)


@dataclass(frozen=True)
class Entry:
    """One way into the engine.

    ``layout`` is ``"lists"``, ``"nested"`` or ``"long"``; ``kind`` the source kind
    (one of :data:`FRAME_KINDS` / :data:`FILE_KINDS`, or the function name for
    lists); ``fallback`` forces the long layout's hash-join path; ``engine`` is
    the executor (``"dask"``: the shared local cluster of ``tests/dask_cluster.py``).
    """

    layout: str
    kind: str
    fallback: bool = False
    engine: str = "polars"

    @property
    def name(self) -> str:
        suffix = "-fallback" if self.fallback else ""
        prefix = "dask-" if self.engine == "dask" else ""
        if self.layout == "lists":
            return self.kind
        return f"{prefix}{self.layout}-{self.kind}{suffix}"

    def options(self) -> dict[str, Any]:
        """``engine=`` for this entry."""
        return {"engine": dask_cluster.engine()} if self.engine == "dask" else {}

    @property
    def writes_files(self) -> bool:
        return self.kind in FILE_KINDS

    def __str__(self) -> str:
        return self.name

    @contextlib.contextmanager
    def path(self) -> Iterator[None]:
        """Force the hash-join fallback of the long layout when asked."""
        if self.fallback:
            with mock.patch.object(raft_polars._engine.dense, "MAX_BOX", 0):
                yield
        else:
            yield

    def lay_out(
        self,
        directory: Path,
        nested: pl.DataFrame | None = None,
        *,
        long: tuple[pl.DataFrame, pl.DataFrame] | None = None,
        columns: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Keyword arguments (``source``, ``rewards``, ``columns``) of the engine for a
        log given as a nested frame (converted with :func:`to_long` for the long
        layout) or as ``long=(tokens, rewards)``, in the user's column names."""
        columns = dict(columns or {})
        stage_col = columns.get("stage", "stage")
        if self.layout == "nested":
            assert nested is not None
            return {
                "source": _as_source(nested, self.kind, directory / "n", stage_col),
                "columns": columns or None,
            }
        if long is None:
            assert nested is not None
            long = to_long(
                nested,
                ids=[columns.get(c, c) for c in ("stage", "prompt", "cand")],
                logprobs=columns.get("logprobs", "logprobs"),
                logprob=columns.get("logprob", "logprob"),
                token=columns.get("token", "token"),
            )
        tokens, rewards = long
        return {
            "source": _as_source(tokens, self.kind, directory / "t", stage_col),
            "rewards": _as_source(rewards, self.kind, directory / "r", stage_col),
            "columns": columns or None,
        }

    def sources(self, case: Case, directory: Path) -> dict[str, Any]:
        """The keyword arguments (``source``, ``rewards``, ``columns``) for ``case``."""
        if self.layout == "nested":
            return self.lay_out(directory, case.user(case.nested()), columns=case.columns)
        tokens, rewards = case.long()
        return self.lay_out(
            directory, long=(case.user(tokens), case.user(rewards)), columns=case.columns
        )

    def stage_losses(self, kwargs: dict[str, Any], **options: Any) -> pl.DataFrame:
        """``stage_losses`` on laid-out sources (see :meth:`lay_out`)."""
        kwargs = dict(kwargs)
        with self.path():
            return raft_polars.stage_losses(
                kwargs.pop("source"), **kwargs, **options, **self.options()
            )

    def select_best(self, kwargs: dict[str, Any]) -> pl.DataFrame:
        """``select_best`` on laid-out sources, collected."""
        kwargs = dict(kwargs)
        with self.path():
            lazy = raft_polars.select_best(kwargs.pop("source"), **kwargs, **self.options())
            assert isinstance(lazy, pl.LazyFrame)
            return lazy.collect()

    def losses(self, case: Case, directory: Path, **options: Any) -> pl.DataFrame | list[float]:
        """The engine's answer: the per-stage table, or the rounded list of
        ``raft_alignment``."""
        if self.kind == "raft_alignment":
            assert not options, options
            return raft_polars.raft_alignment(case.values(), case.rws)
        if self.kind == "lists_losses":
            return raft_polars.lists_losses(case.values(), case.rws, **options)
        return self.stage_losses(self.sources(case, directory), **options)

    def select(self, case: Case, directory: Path) -> pl.DataFrame:
        """``select_best`` on ``case``, collected."""
        return self.select_best(self.sources(case, directory))


LIST_ENTRIES = (Entry("lists", "raft_alignment"), Entry("lists", "lists_losses"))
FRAME_ENTRIES = tuple(
    [Entry("nested", k) for k in (*FRAME_KINDS, *FILE_KINDS)]
    + [Entry("long", k) for k in (*FRAME_KINDS, *FILE_KINDS)]
    + [Entry("long", "DataFrame", fallback=True), Entry("long", "hive", fallback=True)]
)
# the same entries on the Dask executor (the hash-join fallback is forced in this
# process only, so it has no Dask twin)
DASK_ENTRIES = tuple(
    Entry(e.layout, e.kind, engine="dask") for e in FRAME_ENTRIES if not e.fallback
)
FRAME_ENTRIES = FRAME_ENTRIES + DASK_ENTRIES
ENTRIES = LIST_ENTRIES + FRAME_ENTRIES
# the entries that take reduction= (raft_alignment is the seed: token mean only)
REDUCTION_ENTRIES = tuple(e for e in ENTRIES if e.kind != "raft_alignment")


@contextlib.contextmanager
def workdir(directory: Path | None = None) -> Iterator[Path]:
    """``directory``, or a fresh temporary one (inside hypothesis tests)."""
    if directory is not None:
        yield directory
        return
    with tempfile.TemporaryDirectory(prefix="raft-engine-") as tmp:
        yield Path(tmp)


# --- the comparisons ----------------------------------------------------------------


def rounding_is_ambiguous(x: float) -> bool:
    """Whether ``x`` sits so close to a half-way point of the 4th decimal that the
    last-bit differences of another summation order could flip ``round(x, 4)``
    (exact half-way points such as 0.03125 included; hand-made cases check those)."""
    return round(x * (1 - 1e-12), 4) != round(x * (1 + 1e-12), 4)


def check_losses(
    entry: Entry,
    case: Case,
    directory: Path | None = None,
    *,
    reduction: str = "token",
) -> None:
    """Run ``case`` through ``entry`` and compare with the reference."""
    ids = entry.layout != "lists"
    expected = case.expected_losses(reduction, ids=ids)
    options = {} if reduction == "token" else {"reduction": reduction}
    with workdir(directory) as where:
        result = entry.losses(case, where, **options)
    if isinstance(result, list):
        assert result == [round(x, 4) for x in expected]
        assert all(type(x) is float for x in result)
        return
    check_table(result, case, expected, ids=ids)


def check_table(
    table: pl.DataFrame, case: Case, expected: Sequence[float], *, ids: bool = True
) -> None:
    """Compare a per-stage table with the reference (``ids``: with the case's ids;
    otherwise stages are numbered by position)."""
    assert table.columns == list(LOSS_COLUMNS)
    assert table.schema["loss"] == pl.Float64
    for name in ("stage", "prompts", "candidates", "selected", "tokens", "ties"):
        assert table.schema[name].is_integer(), (name, table.schema[name])
    want = case.expected_table(ids=ids)
    assert table["stage"].to_list() == [row["stage"] for row in want]
    losses = table["loss"].to_list()
    assert [round(x, 4) for x in losses] == [round(x, 4) for x in expected]
    for got, ref in zip(losses, expected, strict=True):
        assert math.isclose(got, ref, rel_tol=1e-9, abs_tol=1e-12), (got, ref)
    for name in ("prompts", "candidates", "selected", "tokens", "ties"):
        assert table[name].to_list() == [row[name] for row in want], name
    for name in ("reward_best_mean", "reward_mean"):
        for got, ref in zip(table[name].to_list(), (row[name] for row in want), strict=True):
            assert math.isclose(got, ref, rel_tol=1e-9, abs_tol=1e-9), (name, got, ref)
    lift = table["reward_lift"].to_list()
    for got, row in zip(lift, want, strict=True):
        ref = row["reward_best_mean"] - row["reward_mean"]
        assert math.isclose(got, ref, rel_tol=1e-9, abs_tol=1e-9), ("reward_lift", got, ref)
    assert table["below_min"].to_list() == [0] * len(want)


def check_selection(entry: Entry, case: Case, directory: Path | None = None) -> None:
    """``select_best`` gives one row per (stage, prompt): the reference's candidate,
    its reward, its token count and its payload, sorted by stage, prompt, cand."""
    with workdir(directory) as where:
        got = entry.select(case, where)
    want = case.expected_selection()
    columns = ["stage", "prompt", "cand", "reward", "tokens"]
    if case.payload:
        columns += ["response", "note"]
    assert got.columns[:5] == columns[:5]
    assert sorted(got.columns) == sorted(columns)
    assert got.select(pl.struct("stage", "prompt").is_unique().all()).item()
    assert got.select(columns).to_dicts() == want


# --- random cases (hypothesis) ---------------------------------------------------------

RENAMES: tuple[Mapping[str, str], ...] = (
    {},
    {"prompt": "prompt_id", "logprobs": "token_logprobs", "logprob": "token_logprob"},
    {"stage": "round", "cand": "candidate", "reward": "score", "token": "position"},
)


@st.composite
def cases(draw: st.DrawFn, /, **log_options: object) -> Case:
    """A random valid log with random ids, candidate numbering, row order and
    column names (``log_options`` go to :func:`strategies.ragged_logs`)."""
    lps, rws = draw(ragged_logs(**log_options))  # type: ignore[arg-type]
    n_prompts = max(len(stage) for stage in rws)
    return Case(
        lps,
        rws,
        stage_ids=draw(st.none() | stage_ids(len(rws))),
        prompt_ids=draw(st.none() | prompt_ids(n_prompts)),
        cand_step=draw(st.sampled_from([1, 1, 2, 1000])),
        cand_offset=draw(st.sampled_from([0, 0, 5, -3, 10**9])),
        shuffle=draw(st.none() | st.integers(0, 2**16)),
        float32=log_options.get("float32", False) is True,
        rename=draw(st.sampled_from(RENAMES)),
        payload=draw(st.booleans()),
    )
