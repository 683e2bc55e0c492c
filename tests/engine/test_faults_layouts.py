"""Fault injection in every layout (issue 12): byte flips and truncations of small
Parquet and JSON lines logs, nested, long and wide, each case run in a subprocess
with a timeout, so that a crash or a hang fails the case rather than the suite.

Parquet files carry their own integrity (page checksums, when the writer stored
them), so the answer is checked against the log as written: the outcome is a
``RaftPolarsError`` or the reference's losses, and where the default path answers
otherwise ``validate`` reports a problem. One exception: a file written without
page checksums that pyarrow decodes, without complaint, into another valid log may
give that log's losses (no reader can tell those bytes from a log written so); and
whatever pyarrow decodes, ``validate`` (which reads through pyarrow) must report a
problem where the decoded rows are invalid.

JSON lines have no checksum: the reference is computed from the corrupted file
itself, each line parsed by Python's json module, by a plain loop over the rows
(:func:`rows_losses`, which ends in ``reference.reference_losses``). A line that
Python cannot parse: the package raises ``RaftInputError`` naming the file. Rows
that parse: the package's answer is the reference's, or ``RaftInputError`` where
docs/semantics.md calls the rows invalid (*Bad input* and *Identifiers*: a missing
column or one of the wrong type, a null id, a duplicate candidate, a bad reward, a
token row of no candidate, a selected response with a bad or null log-prob or no
list, a stage without selected tokens). A key that some lines (or a whole part)
lack is null there: JSON lines hold no schema. A source whose files hold no line
at all has no columns: missing columns.
"""

from __future__ import annotations

import gzip
import json
import math
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from reference import best_index, long_frames, nested_frame, reference_losses

# 2 stages, 150 prompts, 4 candidates of 1 to 6 tokens; rewards with ties. Every
# JSON lines file the token rows are cut into holds more than 1,000 lines, past the
# rows Polars infers a JSON schema from.
LPS = [
    [
        [[-0.05 - 0.01 * ((t + i + 3 * j + k) % 37) for k in range(1 + (i + j) % 6)]
         for j in range(4)]
        for i in range(150)
    ]
    for t in range(2)
]  # fmt: skip
RWS = [[[0.5 * ((i + j * j + t) % 3) for j in range(4)] for i in range(150)] for t in range(2)]
EXPECTED = dict(enumerate(reference_losses(LPS, RWS)))
TIMEOUT = 120


# --- the logs, in every layout and format ------------------------------------------------


@dataclass(frozen=True)
class Log:
    """A log as files: ``kwargs`` of ``stage_losses`` (paths relative to the log's
    directory), ``files`` (relative path -> bytes) and how the rows are laid out
    (``"nested"``, ``"long"``: ``source`` holds the token rows, ``"wide"``)."""

    layout: str
    kind: str  # "parquet" or "jsonl"
    kwargs: dict[str, str]
    files: dict[str, bytes]


def _texts(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.with_columns(pl.format("response {} of {}", "cand", "prompt").alias("response"))


def _frames(layout: str) -> dict[str, pl.DataFrame]:
    """The log's tables: ``source`` (and ``rewards``) as a pipeline writes them."""
    if layout == "nested":
        return {"source": _texts(nested_frame(LPS, RWS))}
    if layout == "long":
        tokens, rewards = long_frames(LPS, RWS)
        return {"source": tokens, "rewards": _texts(rewards)}
    wide = (
        _texts(nested_frame(LPS, RWS))
        .group_by("stage", "prompt", maintain_order=True)
        .agg(pl.col("reward").alias("rewards"), "logprobs", pl.col("response").alias("responses"))
        .with_columns(pl.format("prompt {}", "prompt").alias("prompt"))
    )
    return {"source": wide}


def _write_parquet(frame: pl.DataFrame, path: Path, writer: str) -> None:
    import pyarrow.parquet as pq

    from raft_polars._export import sink_parquet

    if writer == "package":  # zstd, page checksums
        sink_parquet(frame, path)
    elif writer == "pyarrow":  # snappy, dictionary pages, no checksums
        pq.write_table(frame.to_arrow(), path)
    elif writer == "v2":  # zstd, version 2 data pages (levels outside the codec), no checksums
        pq.write_table(
            frame.to_arrow(), path, compression="zstd", data_page_version="2.0",
            use_dictionary=False,
        )  # fmt: skip
    else:  # "plain": no compression, no dictionary, no checksums
        pq.write_table(frame.to_arrow(), path, compression="none", use_dictionary=False)


def _build(layout: str, kind: str, writer: str, root: Path) -> Log:
    kwargs: dict[str, str] = {}
    for role, frame in _frames(layout).items():
        if kind == "parquet":
            kwargs[role] = f"{role}.parquet"
            _write_parquet(frame, root / kwargs[role], writer)
        elif role == "source" and layout != "wide":  # two parts, the second > 1,000 lines
            kwargs[role] = role
            (root / role).mkdir()
            cut = 100 if layout == "nested" else 2000
            first = frame.head(cut).write_ndjson().encode()
            if layout == "nested":  # gzip-compressed (its CRC is checked)
                (root / role / "part-0.jsonl.gz").write_bytes(gzip.compress(first, mtime=0))
            else:
                (root / role / "part-0.jsonl").write_bytes(first)
            frame.slice(cut).write_ndjson(root / role / "part-1.jsonl")
        else:
            kwargs[role] = f"{role}.jsonl"
            frame.write_ndjson(root / kwargs[role])
    files = {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }
    return Log(layout, kind, kwargs, files)


class Logs(dict[str, Log]):
    """The logs by name, shown by their names (hypothesis prints a failing case's
    arguments, a dataclass field by field, and the files are large)."""

    def __repr__(self) -> str:
        return f"Logs({sorted(self)})"


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Logs:
    """Every log to corrupt, by ``layout-kind[-writer]``."""
    out = Logs()
    for layout in ("nested", "long", "wide"):
        for writer in ("package", "pyarrow", "plain", "v2"):
            root = tmp_path_factory.mktemp(f"{layout}-{writer}")
            out[f"{layout}-parquet-{writer}"] = _build(layout, "parquet", writer, root)
        root = tmp_path_factory.mktemp(f"{layout}-jsonl")
        out[f"{layout}-jsonl"] = _build(layout, "jsonl", "", root)
    return out


# --- corruptions ------------------------------------------------------------------------


def _footer(raw: bytes) -> int:
    """Where a Parquet file's footer starts (its length is stored before the
    closing magic), or a JSON lines file's last line."""
    if raw[:4] == b"PAR1" and len(raw) >= 12:
        return max(0, len(raw) - 8 - int.from_bytes(raw[-8:-4], "little"))
    return raw.rstrip(b"\n").rfind(b"\n") + 1


def corrupt(raw: bytes, *, end: bool, position: float, bits: int, truncate: bool) -> bytes:
    """``raw`` with one byte flipped (xor ``bits``) or cut there; the position is
    a fraction of the whole file, or (``end``) of the footer / the last line."""
    start = _footer(raw) if end else 0
    at = start + int(position * (len(raw) - 1 - start))
    if truncate:
        return raw[:at]
    flipped = bytearray(raw)
    flipped[at] ^= bits
    return bytes(flipped)


def page_headers(raw: bytes) -> list[tuple[int, int]]:
    """Where the page headers of a Parquet file lie, ``(start, end)`` each."""
    import io

    import pyarrow.parquet as pq

    from raft_polars._engine.pages import _Thrift

    meta = pq.ParquetFile(io.BytesIO(raw)).metadata
    spans = []
    for group in range(meta.num_row_groups):
        for column in range(meta.num_columns):
            chunk = meta.row_group(group).column(column)
            at = chunk.dictionary_page_offset if chunk.has_dictionary_page else None
            at = chunk.data_page_offset if at is None else at
            stop = at + chunk.total_compressed_size
            while at < stop:
                header, length = _Thrift(raw[at:]).struct()
                spans.append((at, at + length))
                at += length + header[3]  # the page's stored bytes follow
    return spans


def cut(raw: bytes, where: str) -> bytes:
    """``raw`` cut to nothing, to its header (Parquet's magic; a JSON lines file's
    first line) or in the middle of its footer (a JSON lines file's last line)."""
    if where == "empty":
        return b""
    if where == "header":
        return raw[:4] if raw[:4] == b"PAR1" else raw[: raw.index(b"\n") + 1]
    start = _footer(raw)
    return raw[: start + (len(raw) - start) // 2]


# --- the run, in a subprocess -------------------------------------------------------------

_SCRIPT = """
import json, sys
import raft_polars as rp
kwargs, parquet = json.loads(sys.argv[1]), json.loads(sys.argv[2])
out = {}
if parquet:  # pyarrow's strict read first: Polars may abort on some corrupted pages
    from raft_polars._engine.validate import strict_read
    out["strict"] = {path: strict_read(path) for path in parquet}
    print(json.dumps(out), flush=True)
    if not any(out["strict"].values()):  # what pyarrow decodes, for a reference
        import pyarrow.parquet as pq
        try:
            rows = {}
            for path in parquet:
                names = pq.read_schema(path).names
                keep = [n for n in names if not n.startswith("response")]
                rows[path] = pq.read_table(path, columns=keep).to_pylist()
            out["rows"] = rows
            print(json.dumps(out), flush=True)
        except Exception:  # no rows, no reference of what pyarrow decodes
            pass
try:
    table = rp.stage_losses(**kwargs)
    out["losses"] = dict(zip(table["stage"].to_list(), table["loss"].to_list()))
except rp.RaftPolarsError as exc:
    out["error"] = [type(exc).__name__, isinstance(exc, rp.RaftInputError), str(exc)]
print(json.dumps(out), flush=True)
try:
    out["validate_ok"] = rp.validate(**kwargs).ok
except rp.RaftPolarsError as exc:
    out["validate_error"] = [type(exc).__name__, isinstance(exc, rp.RaftInputError), str(exc)]
out.pop("rows", None)
print(json.dumps(out), flush=True)
if len(sys.argv) > 3:  # the same calls on a Dask cluster
    from distributed import Client
    import raft_polars.dask as rd
    client = Client(sys.argv[3], set_as_default=False, timeout=60)
    engine = rd.DaskEngine(client)
    try:
        table = rp.stage_losses(**kwargs, engine=engine)
        out["dask_losses"] = dict(zip(table["stage"].to_list(), table["loss"].to_list()))
    except rp.RaftPolarsError as exc:
        out["dask_error"] = [type(exc).__name__, isinstance(exc, rp.RaftInputError), str(exc)]
    try:
        out["dask_validate_ok"] = rp.validate(**kwargs, engine=engine).ok
    except rp.RaftPolarsError as exc:
        out["dask_validate_error"] = [type(exc).__name__, isinstance(exc, rp.RaftInputError)]
    client.close()
    print(json.dumps(out))
"""


@dataclass
class Outcome:
    returncode: int
    stderr: str
    lines: list[dict[str, Any]]
    paths: dict[str, str]  # relative -> absolute

    @property
    def last(self) -> dict[str, Any]:
        return self.lines[-1] if self.lines else {}

    def show(self) -> str:
        shown = {k: v for k, v in self.last.items() if k != "rows"}
        return f"{shown}\n{self.stderr[-2000:]}"


def run(log: Log, changed: dict[str, bytes], dask: str | None = None) -> Outcome:
    """``stage_losses`` and ``validate`` on ``log`` with ``changed`` files in a
    subprocess (and, for Parquet, pyarrow's strict read of every file first);
    with ``dask`` (a scheduler's address), then both on that cluster too."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = {}
        for rel, raw in log.files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(changed.get(rel, raw))
            paths[rel] = str(path)
        kwargs = {role: str(root / rel) for role, rel in log.kwargs.items()}
        parquet = list(paths.values()) if log.kind == "parquet" else []
        done = subprocess.run(
            [sys.executable, "-X", "faulthandler", "-c", _SCRIPT, json.dumps(kwargs),
             json.dumps(parquet), *([dask] if dask else [])],
            capture_output=True, text=True, timeout=TIMEOUT, check=False,
        )  # fmt: skip
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return Outcome(done.returncode, done.stderr, lines, paths)


# --- a plain reference over rows ------------------------------------------------------


class InvalidRows(Exception):
    """Rows that docs/semantics.md calls invalid input (a RaftInputError)."""


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _numbers(value: object) -> bool:
    return isinstance(value, list) and all(v is None or _number(v) for v in value)


def _check_columns(rows: list[dict[str, Any]], checks: dict[str, Callable[[Any], bool]]) -> None:
    """Semantics, *Bad input*: a missing column, a column of the wrong type."""
    for name, check in checks.items():
        if not any(name in row for row in rows):
            raise InvalidRows(f"missing column {name!r}")
        for row in rows:
            if row.get(name) is not None and not check(row[name]):
                raise InvalidRows(f"column {name!r} holds {row[name]!r}")


def _numbered(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Semantics, *Selection*: candidate rows without a ``stage`` column are one
    stage, 0; without a ``cand`` column, candidates are numbered from 0 within
    their ``(stage, prompt)`` in row order (a flipped footer byte can rename a
    column, and the file then reads as such a log)."""
    if rows and not any("stage" in row for row in rows):
        rows = [{**row, "stage": 0} for row in rows]
    if rows and not any("cand" in row for row in rows):
        seen: dict[tuple[Any, Any], int] = {}
        out = []
        for row in rows:
            key = (row.get("stage"), row.get("prompt"))
            seen[key] = seen.get(key, -1) + 1
            out.append({**row, "cand": seen[key]})
        rows = out
    return rows


def _id_kind(rows: list[dict[str, Any]]) -> set[bool]:
    return {_integer(row["prompt"]) for row in rows if row.get("prompt") is not None}


def _unwide(rows: list[dict[str, Any]], *, scored: bool = True) -> list[dict[str, Any]]:
    """Wide rows (one per prompt, lists of candidates) as candidate rows, the
    candidate id its list position (without log-probs when not ``scored``)."""
    out = []
    for row in rows:
        rewards, lps = row.get("rewards"), row.get("logprobs")
        if not isinstance(rewards, list) or not rewards:  # a prompt without candidates
            raise InvalidRows(f"rewards {rewards!r}")
        if not scored:
            lps = [None] * len(rewards)
        elif not isinstance(lps, list) or len(lps) != len(rewards):
            raise InvalidRows(f"{len(rewards)} rewards, log-probs {lps!r}")
        for j, (reward, lp) in enumerate(zip(rewards, lps, strict=True)):
            ids = {"prompt": row.get("prompt"), "cand": j}
            if "stage" in row:
                ids["stage"] = row["stage"]
            out.append({**ids, "reward": reward, "logprobs": lp})
    return out


def rows_losses(
    cands: list[dict[str, Any]], tokens: list[dict[str, Any]] | None = None, *, wide: bool = False
) -> dict[int, float | None]:
    """Per-stage losses of a log given as rows (``cands``: nested or wide rows, or
    the long layout's rewards with its ``tokens``), by a plain loop after
    docs/semantics.md, ending in ``reference_losses``. Raises InvalidRows where
    the default path must raise RaftInputError: a missing column or one of the
    wrong type, a null id, the same candidate twice, a bad reward, a token row of
    no candidate, a selected response with a null, non-finite or positive
    log-prob (or no list), a stage whose selected responses hold no tokens. What
    only ``validate`` checks (token positions, unselected log-probs) is not."""
    # semantics, *Selection*: rows without a log-probs column are a rewards-only
    # log (a flipped footer byte can rename the column): no loss, same checks
    scored = tokens is not None or any("logprobs" in row for row in cands)
    if wide:
        lists = {"logprobs": lambda v: isinstance(v, list)} if scored else {}
        _check_columns(cands, {"rewards": _numbers, **lists})
        cands = _unwide(cands, scored=scored)
    ids: dict[str, Callable[[Any], bool]] = {
        "stage": _integer,
        "prompt": lambda v: _integer(v) or isinstance(v, str),
        "cand": _integer,
    }
    cands = _numbered(cands)
    _check_columns(cands, {**ids, "reward": _number})
    if tokens is not None:
        _check_columns(tokens, {**ids, "logprob": _number, "token": _integer})
    elif scored:
        _check_columns(cands, {"logprobs": _numbers})
    kinds = _id_kind(cands) | _id_kind(tokens or [])
    if len(kinds) > 1:  # integer prompt ids beside string ones
        raise InvalidRows("prompt ids of two kinds")
    table: dict[tuple[Any, ...], tuple[float, list[Any] | None]] = {}
    for row in cands:
        key = (row.get("stage"), row.get("prompt"), row.get("cand"))
        reward = row.get("reward")
        if None in key or key in table:
            raise InvalidRows(f"null or duplicate id {key}")
        if reward is None or not math.isfinite(reward):
            raise InvalidRows(f"reward {reward!r} at {key}")
        table[key] = (float(reward), row.get("logprobs") if tokens is None else [])
    for row in tokens or []:
        key = (row.get("stage"), row.get("prompt"), row.get("cand"))
        if key not in table:
            raise InvalidRows(f"token row of no candidate {key}")
        found = table[key][1]
        assert found is not None
        found.append(row.get("logprob"))
    stages: dict[Any, dict[Any, list[tuple[Any, float, list[Any] | None]]]] = {}
    for (stage, prompt, cand), (reward, lps) in table.items():
        stages.setdefault(stage, {}).setdefault(prompt, []).append((cand, reward, lps))
    all_lps, all_rws = [], []
    for stage in sorted(stages):
        stage_lps, stage_rws = [], []
        for prompt in sorted(stages[stage]):
            group = sorted(stages[stage][prompt])
            rewards = [reward for _, reward, _ in group]
            chosen = group[best_index(rewards)][2]
            if scored and (
                chosen is None
                or not all(v is not None and math.isfinite(v) and v <= 0 for v in chosen)
            ):
                raise InvalidRows(f"selected log-probs {chosen!r} at {stage}, {prompt}")
            stage_lps.append([lps or [] for _, _, lps in group])
            stage_rws.append(rewards)
        if scored and not sum(
            len(p[best_index(r)]) for p, r in zip(stage_lps, stage_rws, strict=True)
        ):
            raise InvalidRows(f"no selected tokens in stage {stage}")
        all_lps.append(stage_lps)
        all_rws.append(stage_rws)
    if not scored:
        return dict.fromkeys(sorted(stages))
    return dict(zip(sorted(stages), reference_losses(all_lps, all_rws), strict=True))


def parse_jsonl(raw: bytes, *, gz: bool = False) -> list[dict[str, Any]] | None:
    """The objects of a JSON lines file, one a line (blank lines skipped), or None
    when a line is not a JSON object Python's json module reads (or, ``gz``, when
    Python's gzip cannot decompress the file)."""
    if gz:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error):  # a bad CRC, a cut or corrupt stream
            return None
    rows = []
    for line in raw.split(b"\n"):
        if not line.strip(b" \t\r"):
            continue
        try:
            row = json.loads(line.decode("utf-8"))
        except ValueError:  # UnicodeDecodeError and JSONDecodeError among them
            return None
        if not isinstance(row, dict):
            return None
        rows.append(row)
    return rows


def _log_rows(log: Log, rows: dict[str, list[dict[str, Any]]]) -> dict[int, float | None]:
    """``rows_losses`` of a log's files' rows (relative path -> rows)."""

    def of(role: str) -> list[dict[str, Any]]:
        root = log.kwargs[role]
        return [r for rel in sorted(rows) if rel == root or rel.startswith(root + "/")
                for r in rows[rel]]  # fmt: skip

    if log.layout == "long":
        return rows_losses(of("rewards"), of("source"))
    return rows_losses(of("source"), wide=log.layout == "wide")


def reference(log: Log, rows: dict[str, list[dict[str, Any]]]) -> dict[int, float | None] | str:
    """:func:`_log_rows`, or why the rows are invalid."""
    try:
        return _log_rows(log, rows)
    except InvalidRows as why:
        return str(why)


def same(got: dict[str, float | None], want: Mapping[int, float | None]) -> bool:
    """The package's losses (JSON keys are strings) against a reference's (null
    where a rewards-only log has no loss)."""

    def agree(value: float | None, other: float | None) -> bool:
        if value is None or other is None:
            return value is other
        return math.isclose(value, other, rel_tol=1e-9, abs_tol=1e-12)

    return sorted(map(int, got)) == sorted(want) and all(
        agree(value, want[int(stage)]) for stage, value in got.items()
    )


def _flagged(out: dict[str, Any]) -> bool:
    """validate reported a problem or raised a RaftInputError."""
    return out.get("validate_ok") is False or bool(out.get("validate_error", [0, False])[1])


# --- the checks -------------------------------------------------------------------------


def check_parquet(log: Log, changed: dict[str, bytes], dask: str | None = None) -> None:
    """A RaftPolarsError, or the reference's losses; a different answer is
    flagged by validate (or, without checksums, is what pyarrow decodes)."""
    outcome = run(log, changed, dask)
    strict = outcome.lines[0].get("strict") if outcome.lines else None
    rows = next((line["rows"] for line in outcome.lines if "rows" in line), None)
    if outcome.returncode != 0:
        # a known limit of Polars 2.1: some corrupted page headers make its decoder
        # try an impossible allocation, and Rust aborts the process; the strict
        # read that validate runs first names the file as corrupt
        assert outcome.returncode == -6, outcome.show()
        assert "memory allocation of" in outcome.stderr, outcome.show()
        assert strict is not None, outcome.show()
        assert any(strict.values()), "Polars aborted on a file pyarrow reads"
        return
    out = outcome.last
    assert "losses" in out or "error" in out, outcome.show()
    # where the default path refuses the files, validate reports them: pyarrow
    # skips some page header faults that Polars refuses
    assert "error" not in out or _flagged(out), f"validate passes a refused log: {outcome.show()}"
    decoded: dict[int, float | None] | str | None = None
    if rows is not None:  # pyarrow decoded every file without complaint
        decoded = reference(log, {rel: rows[path] for rel, path in outcome.paths.items()})
        # validate reads through pyarrow: rows it decodes as invalid are reported
        if isinstance(decoded, str):
            assert _flagged(out), f"validate misses {decoded} in pyarrow's rows: {outcome.show()}"
    if "losses" in out and not same(out["losses"], EXPECTED):
        quiet = isinstance(decoded, dict) and same(out["losses"], decoded)
        assert quiet or _flagged(out), f"a different answer validate misses: {outcome.show()}"
    if dask:
        check_dask(outcome)


def check_jsonl(log: Log, changed: dict[str, bytes], dask: str | None = None) -> None:
    """The reference of the corrupted files themselves, or RaftInputError naming
    the file Python's json cannot parse, or RaftInputError for invalid rows."""
    outcome = run(log, changed, dask)
    if dask:
        check_dask(outcome)
    assert outcome.returncode == 0, outcome.show()
    out = outcome.last
    rows = {
        rel: parse_jsonl(changed.get(rel, raw), gz=rel.endswith(".gz"))
        for rel, raw in log.files.items()
    }
    unparsed = [rel for rel, parsed in rows.items() if parsed is None]
    if unparsed:
        path = outcome.paths[unparsed[0]]
        assert "error" in out, outcome.show()
        assert out["error"][1], outcome.show()  # a RaftInputError
        assert path in out["error"][2], f"the message does not name {path}: {outcome.show()}"
        assert _flagged(out), outcome.show()
        return
    want = reference(log, {rel: parsed or [] for rel, parsed in rows.items()})
    if isinstance(want, str):
        # semantics, *Bad input*: every such case raises RaftInputError; a file cut
        # to nothing (no JSON object in any part) leaves no columns, missing ones
        assert "error" in out, f"{want}: {outcome.show()}"
        assert out["error"][1], f"{want}: {outcome.show()}"  # a RaftInputError
        assert _flagged(out), f"{want}: {outcome.show()}"
        return
    assert "losses" in out, f"the reference gives {want}: {outcome.show()}"
    assert same(out["losses"], want), f"the reference gives {want}: {outcome.show()}"


def check_dask(outcome: Outcome) -> None:
    """The Dask executor answers as the in-process one did: validate flags the
    same logs, and on a log it passes, the same losses or a RaftInputError where
    the in-process one raised one. On a flagged log (a page whose checksum
    fails) the answer is not defined: the values Polars decodes from a damaged
    page depend on the rows a reader asks for, and a Dask shard asks for fewer."""
    out = outcome.last
    assert "dask_losses" in out or "dask_error" in out, outcome.show()
    dask_flagged = out.get("dask_validate_ok") is False or bool(
        out.get("dask_validate_error", [0, False])[1]
    )
    assert dask_flagged == _flagged(out), outcome.show()
    # a file Polars cannot decode is reported, not raised, on the workers as in
    # process (they read the candidates with Polars first, then strictly)
    assert ("dask_validate_error" in out) == ("validate_error" in out), outcome.show()
    if dask_flagged:
        return
    if "losses" in out:
        assert "dask_losses" in out, outcome.show()
        assert out["dask_losses"].keys() == out["losses"].keys(), outcome.show()
        for stage, loss in out["losses"].items():
            other = out["dask_losses"][stage]
            assert (loss is None) == (other is None), outcome.show()
            assert loss is None or math.isclose(loss, other, rel_tol=1e-9), outcome.show()
    else:
        assert "dask_error" in out, outcome.show()
        assert out["dask_error"][1] == out["error"][1], outcome.show()


def check(log: Log, changed: dict[str, bytes], dask: str | None = None) -> None:
    (check_parquet if log.kind == "parquet" else check_jsonl)(log, changed, dask)


# --- the cases ---------------------------------------------------------------------------

corruptions = {
    "end": st.booleans(),
    "position": st.floats(0.0, 1.0),
    "bits": st.integers(1, 255),
    "truncate": st.booleans(),
}


def _case(logs: Logs, name: str, which: int, dask: str | None = None, **corruption: Any) -> None:
    log = logs[name]
    rel = sorted(log.files)[which % len(log.files)]
    check(log, {rel: corrupt(log.files[rel], **corruption)}, dask)


def _scheduler() -> str:
    """The address of the shared local Dask cluster (127.0.0.1)."""
    pytest.importorskip("distributed")
    import dask_cluster

    address: str = dask_cluster.client().scheduler.address
    return address


def test_the_logs_as_written(logs: Logs, tmp_path: Path) -> None:
    """Unchanged, every log gives the reference (and so does the rows reference of
    its JSON lines); in this process, the faults below each in its own."""
    import raft_polars as rp

    for name, log in logs.items():
        for rel, raw in log.files.items():
            (tmp_path / name / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name / rel).write_bytes(raw)
        kwargs: dict[str, Any] = {r: str(tmp_path / name / rel) for r, rel in log.kwargs.items()}
        table = rp.stage_losses(**kwargs)
        losses = dict(zip(map(str, table["stage"]), table["loss"], strict=True))
        assert same(losses, EXPECTED), name
        assert rp.validate(**kwargs).ok, name
        if log.kind == "jsonl":
            parsed = {
                rel: parse_jsonl(raw, gz=rel.endswith(".gz")) or []
                for rel, raw in log.files.items()
            }
            assert reference(log, parsed) == pytest.approx(EXPECTED, rel=1e-9), name


@settings(max_examples=15, deadline=None)
@given(writer=st.sampled_from(["package", "pyarrow", "plain"]), which=st.integers(0, 1),
       **corruptions)  # fmt: skip
# token ids out of the candidates' range that the footer statistics do not show
# crashed the compiled token loop: a plain prompt id whose high byte flipped
# (pyarrow reads it), and a zstd page whose checksum pyarrow rejects and Polars
# decodes into garbage ids
@example(writer="plain", which=1, end=False, position=0.2944927770994724, bits=180,
         truncate=False)  # fmt: skip
@example(writer="package", which=1, end=False, position=0.07237455142027838, bits=243,
         truncate=False)  # fmt: skip
def test_long_parquet(logs: Logs, writer: str, which: int, **corruption: Any) -> None:
    """Token rows and rewards as two Parquet files; either one corrupted."""
    _case(logs, f"long-parquet-{writer}", which, **corruption)


@settings(max_examples=12, deadline=None)
@given(writer=st.sampled_from(["package", "pyarrow", "plain"]), **corruptions)
# a byte of the prompt ids' dictionary made not UTF-8: pyarrow reads it unchecked,
# Polars refuses it (validate passed a log the default path refused)
@example(writer="pyarrow", end=False, position=0.060546875, bits=128, truncate=False)
def test_wide_parquet(logs: Logs, writer: str, **corruption: Any) -> None:
    """One row per prompt, list columns of candidates, as Parquet."""
    _case(logs, f"wide-parquet-{writer}", 0, **corruption)


@settings(max_examples=20, deadline=None)
@given(writer=st.sampled_from(["pyarrow", "plain", "v2"]), which=st.integers(0, 1),
       layout=st.sampled_from(["nested", "long", "wide"]), header=st.integers(0, 1 << 16),
       position=st.floats(0.0, 1.0),
       bits=st.one_of(st.sampled_from([1 << b for b in range(8)]), st.integers(1, 255)),
       )  # fmt: skip
# pyarrow reads on past these, Polars refuses them (the default path raised where
# validate found nothing): a statistics field of another type, a zstd frame's
# header where the page's statistics end, a field id past the header's
@example(writer="v2", which=0, layout="nested", header=0, position=24.25 / 72, bits=8)
@example(writer="v2", which=0, layout="nested", header=0, position=26.25 / 72, bits=32)
@example(writer="v2", which=0, layout="nested", header=4, position=26.25 / 73, bits=16)
def test_page_header_flips(  # noqa: PLR0917 - hypothesis passes its draws by keyword
    logs: Logs, writer: str, which: int, layout: str, header: int, position: float, bits: int
) -> None:
    """A byte of a page header flipped, in files without checksums (the files
    pyarrow decodes for validate): the checks above, and validate reports a file
    the default path refuses."""
    log = logs[f"{layout}-parquet-{writer}"]
    rel = sorted(log.files)[which % len(log.files)]
    raw = log.files[rel]
    spans = page_headers(raw)
    low, high = spans[header % len(spans)]
    flipped = bytearray(raw)
    flipped[low + int(position * (high - low - 1))] ^= bits
    check(log, {rel: bytes(flipped)})


def test_a_page_header_polars_refuses_on_dask(logs: Logs) -> None:
    """The first case above on the Dask executor: its workers report the file too."""
    log = logs["nested-parquet-v2"]
    rel = sorted(log.files)[0]
    raw = log.files[rel]
    low, high = page_headers(raw)[0]
    flipped = bytearray(raw)
    flipped[low + int(24.25 / 72 * (high - low - 1))] ^= 8
    check(log, {rel: bytes(flipped)}, _scheduler())


@pytest.mark.parametrize("layout", ["nested", "long", "wide"])
@settings(max_examples=10, deadline=None)
@given(which=st.integers(0, 2), **corruptions)
# the last file cut in its last line: for a part past the first (or the token rows
# beside the rewards) the message named the source (or the rewards), not the file
@example(which=-1, end=True, position=0.5, bits=1, truncate=True)
# long: the key "token" of a line of the second part flipped to "tokdn": that part
# has a column the first lacks, which JSON lines allow (null where a line lacks a
# key); the parts' columns had to match, as Parquet files' must
@example(which=2, end=False, position=0.25, bits=1, truncate=False)
# wide: the key "responses" of a line flipped to "resplnses": a null list in a
# candidate-level column, which the explode of the wide rows refused (a read error)
@example(which=0, end=False, position=0.3414589220728672, bits=3, truncate=False)
def test_jsonl(logs: Logs, layout: str, which: int, **corruption: Any) -> None:
    """JSON lines in every layout (nested and long token rows in two parts, the
    second past the rows Polars infers the schema from; the nested first part
    gzip-compressed)."""
    _case(logs, f"{layout}-jsonl", which, **corruption)


@settings(max_examples=6, deadline=None)
@given(writer=st.sampled_from(["package", "pyarrow", "plain", "v2"]), which=st.integers(0, 1),
       layout=st.sampled_from(["long", "nested"]), **corruptions)  # fmt: skip
# a footer's level histogram of the wrong length: pyarrow ended the process (CI)
# when the strict read asked for the chunks of the text column
@example(writer="v2", which=0, layout="nested", end=True, position=0.5179879006485638, bits=64,
         truncate=False)  # fmt: skip
def test_parquet_on_dask(
    logs: Logs, writer: str, which: int, layout: str, **corruption: Any
) -> None:
    """The same corruptions through the Dask executor: the answers of the
    in-process one, which the cases above check against the reference."""
    _case(logs, f"{layout}-parquet-{writer}", which, _scheduler(), **corruption)


@pytest.mark.parametrize("layout", ["nested", "long"])
@settings(max_examples=4, deadline=None)
@given(which=st.integers(0, 2), **corruptions)
def test_jsonl_on_dask(logs: Logs, layout: str, which: int, **corruption: Any) -> None:
    """JSON lines through the Dask executor, as through the in-process one."""
    _case(logs, f"{layout}-jsonl", which, _scheduler(), **corruption)


def test_jsonl_parts_whose_keys_differ(logs: Logs, tmp_path: Path) -> None:
    """A key that one line of one part holds (a flipped key name, say) is a column
    the other parts lack: null there, as in a line of a single file; types must
    still agree between the parts."""
    import raft_polars as rp
    from raft_polars import RaftInputError

    log = logs["nested-jsonl"]
    for rel, raw in log.files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(raw)
    second = tmp_path / "source" / "part-1.jsonl"
    second.write_bytes(second.read_bytes().replace(b'"response"', b'"responsf"', 1))
    table = rp.stage_losses(str(tmp_path / "source"))
    assert same(dict(zip(map(str, table["stage"]), table["loss"], strict=True)), EXPECTED)
    second.write_bytes(b'{"stage":0,"prompt":0,"cand":"x"}\n')
    with pytest.raises(RaftInputError, match=r"column 'cand' is String in .*part-1\.jsonl"):
        rp.stage_losses(str(tmp_path / "source"))


def test_wide_row_without_a_list() -> None:
    """A wide row whose candidate-level list is null: null for each of its
    candidates (a payload, then a log-probs list, which is bad when selected)."""
    import raft_polars as rp
    from raft_polars import RaftInputError

    frame = pl.DataFrame(
        {
            "prompt": ["a", "b"],
            "rewards": [[0.1, 0.9], [0.5, 0.2]],
            "logprobs": [[[-1.0], [-2.0, -2.0]], [[-0.5], [-3.0]]],
            "responses": [["x", "y"], None],
        }
    )
    assert rp.stage_losses(frame)["loss"].to_list() == [1.5]
    assert rp.select_best(frame).collect()["responses"].to_list() == ["y", None]
    lacking = frame.with_columns(pl.Series("logprobs", [[[-1.0], [-2.0, -2.0]], None]))
    with pytest.raises(RaftInputError, match=r"logprobs is null .* prompt 'b', candidate 0"):
        rp.stage_losses(lacking)
    assert [p.kind for p in rp.validate(lacking).problems] == ["null_logprobs"]


CUTS = [
    ("nested-parquet-package", "source.parquet"),
    ("long-parquet-package", "source.parquet"),
    ("long-parquet-plain", "rewards.parquet"),
    ("wide-parquet-pyarrow", "source.parquet"),
    ("nested-jsonl", "source/part-1.jsonl"),
    ("long-jsonl", "source/part-1.jsonl"),
    ("long-jsonl", "rewards.jsonl"),
    ("wide-jsonl", "source.jsonl"),
]


@pytest.mark.parametrize("where", ["empty", "header", "footer"])
@pytest.mark.parametrize(("name", "rel"), CUTS)
def test_cut(logs: Logs, name: str, rel: str, where: str) -> None:
    """Cut to nothing, to the header, in the middle of the footer."""
    log = logs[name]
    check(log, {rel: cut(log.files[rel], where)})


def test_token_id_beyond_the_footer_statistics(logs: Logs) -> None:
    """A prompt id of the token rows (plain, uncompressed, no checksums) raised by
    2**40 in its data page: the footer still says 0..149. The compiled token loop
    indexed its table with it unchecked (the footers "proved" the ids inside the
    box) and crashed the process, or wrote elsewhere; now an orphan row."""
    import pyarrow.parquet as pq

    log = logs["long-parquet-plain"]
    raw = bytearray(log.files["source.parquet"])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "source.parquet"
        path.write_bytes(raw)
        chunk = pq.read_metadata(path).row_group(0).column(1)
    assert chunk.path_in_schema == "prompt"
    assert chunk.statistics.max == 149
    end = chunk.data_page_offset + chunk.total_compressed_size  # plain values end the page
    raw[end - 8 * 10 + 5] ^= 0x01  # the 10th last prompt id, + 2**40
    outcome = run(log, {"source.parquet": bytes(raw)})
    assert outcome.returncode == 0, outcome.show()
    assert outcome.last["error"][1], outcome.show()
    assert "1 token row(s) have no reward row" in outcome.last["error"][2], outcome.show()
    assert outcome.last["validate_ok"] is False, outcome.show()


def _raised_id(raw: bytes, column: str, *, step: int) -> bytes:
    """``raw`` (a plain, uncompressed Parquet file) with the 10th last value of
    ``column``'s first page raised by ``2 ** (8 * step)``: the footer's statistics
    no longer bound the data."""
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "log.parquet"
        path.write_bytes(raw)
        meta = pq.read_metadata(path)
    group = meta.row_group(0)
    chunk = next(
        group.column(i) for i in range(group.num_columns)
        if group.column(i).path_in_schema == column
    )  # fmt: skip
    width = {"INT64": 8, "INT32": 4}[chunk.physical_type]
    assert chunk.dictionary_page_offset is None
    assert chunk.compression == "UNCOMPRESSED"
    end = chunk.data_page_offset + chunk.total_compressed_size  # plain values end the page
    out = bytearray(raw)
    out[end - width * 10 + step] ^= 0x01
    return bytes(out)


@pytest.mark.parametrize(
    ("name", "rel", "step"),
    [
        ("nested-parquet-plain", "source.parquet", 2),  # a new prompt, one candidate
        ("long-parquet-plain", "rewards.parquet", 2),  # a candidate without tokens
        ("long-parquet-plain", "source.parquet", 2),  # token rows of no candidate
        ("long-parquet-plain", "source.parquet", 5),
    ],
)
def test_ids_beyond_the_footer_statistics_on_dask(
    logs: Logs, name: str, rel: str, step: int
) -> None:
    """An id a page holds outside its footer's statistics: the Dask plan isolates
    shards and cuts the ranking by those statistics, and lost the row (a prompt
    raised by 2**16 in a nested log gave the loss of the log without it, validate
    silent). Now the bounds are measured on the rows read: Dask answers as the
    in-process executor does, and both as the reference over pyarrow's rows."""
    log = logs[name]
    check(log, {rel: _raised_id(log.files[rel], "prompt", step=step)}, _scheduler())
