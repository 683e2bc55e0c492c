"""Faults found from outside (issue 12), each as a class of cases on every executor:
paths that look like globs, Hive directories above the source root or disagreeing
with the file, temporary files of interrupted writes, non-finite JSON output.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask_cluster
import polars as pl
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from reference import long_frames, nested_frame, reference_rounded
from strategies import ragged_logs

import raft_polars as rp
from raft_polars import RaftInputError
from raft_polars._export import clean_stale, write_atomically

LPS = [[[[-1.0], [-2.0, -4.0]], [[-0.5, -0.5], [-3.0]]], [[[-0.25], [-1.0]]]]
RWS = [[[0.1, 0.9], [0.7, 0.2]], [[1.0, 0.0]]]
EXPECTED = reference_rounded(LPS, RWS)


def engines() -> list[Any]:
    return ["polars", pytest.param("dask", id="dask")]


def _engine(name: str) -> Any:
    return dask_cluster.engine() if name == "dask" else "polars"


def _losses(source: Any, engine: str) -> list[float]:
    table = rp.stage_losses(source, engine=_engine(engine))
    return [round(x, 4) for x in table["loss"].to_list()]


# --- 1. an existing path is a path, whatever characters it holds ------------------------


@pytest.mark.parametrize("engine", engines())
@pytest.mark.parametrize("name", ["log[1].parquet", "log*.parquet", "log?.parquet", "[ab].parquet"])
def test_existing_path_with_glob_characters_is_a_path(
    tmp_path: Path, engine: str, name: str
) -> None:
    frame = nested_frame(LPS, RWS)
    frame.write_parquet(tmp_path / name)
    # a file the same name would match as a pattern, with other numbers in it
    decoy = nested_frame([[[[-9.0], [-9.0]]]], [[[0.0, 1.0]]])
    for other in ("log1.parquet", "logx.parquet", "a.parquet"):
        decoy.write_parquet(tmp_path / other)
    assert _losses(str(tmp_path / name), engine) == EXPECTED


def test_missing_path_is_tried_as_a_pattern_and_says_so(tmp_path: Path) -> None:
    with pytest.raises(RaftInputError, match=r"no file .*nope\[1\]\.parquet.*glob pattern"):
        rp.stage_losses(str(tmp_path / "nope[1].parquet"))


# --- 2. Hive keys only below the source root, and never against the file -----------------


@pytest.mark.parametrize("engine", engines())
def test_directory_above_the_root_is_not_a_hive_key(tmp_path: Path, engine: str) -> None:
    folder = tmp_path / "stage=7"
    folder.mkdir()
    nested_frame(LPS, RWS).write_parquet(folder / "log.parquet")
    for source in (folder / "log.parquet", folder, str(folder / "*.parquet")):
        table = rp.stage_losses(str(source), engine=_engine(engine))
        assert table["stage"].to_list() == [0, 1]
        assert [round(x, 4) for x in table["loss"].to_list()] == EXPECTED


@pytest.mark.parametrize("engine", engines())
def test_hive_key_that_disagrees_with_the_file_is_an_error(tmp_path: Path, engine: str) -> None:
    folder = tmp_path / "log" / "stage=7"
    folder.mkdir(parents=True)
    nested_frame(LPS, RWS).write_parquet(folder / "part.parquet")
    with pytest.raises(RaftInputError, match=r"stage=7.*own column 'stage' holds '0', '1'"):
        rp.stage_losses(str(tmp_path / "log"), engine=_engine(engine))


@pytest.mark.parametrize("engine", engines())
def test_hive_key_that_agrees_with_the_file_is_fine(tmp_path: Path, engine: str) -> None:
    frame = nested_frame(LPS, RWS)
    for stage in (0, 1):
        folder = tmp_path / "log" / f"stage={stage}"
        folder.mkdir(parents=True)
        frame.filter(pl.col("stage") == stage).write_parquet(folder / "part.parquet")
    assert _losses(str(tmp_path / "log"), engine) == EXPECTED


# --- 3. interrupted writes leave nothing a glob picks up -----------------------------------


@settings(max_examples=10, deadline=None)
@given(name=st.text(alphabet="abcxyz019._-[]", min_size=1, max_size=20))
def test_temp_names_are_short_and_match_no_data_glob(name: str) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / (name.lstrip(".") + "x.parquet")
        seen: list[Path] = []

        def write(path: Path) -> None:
            seen.append(path)
            path.write_bytes(b"partial")
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            write_atomically(out, write, force=False)
        assert not seen[0].exists()
        assert not out.exists()
        assert seen[0].suffix not in (".parquet", ".pq", ".jsonl", ".ndjson", ".json")
        assert len(seen[0].name) < 40


def test_longest_legal_output_name_works(tmp_path: Path) -> None:
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    out = tmp_path / ("b" * (limit - len(".parquet")) + ".parquet")
    assert rp.write_selected(nested_frame(LPS, RWS), out) == 3
    assert pl.read_parquet(out).height == 3


def test_stale_temp_files_of_dead_processes_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(dead.stdout)
    stale = tmp_path / f".raft-tmp-{pid}-0123456789ab"
    stale.write_bytes(b"PAR1 partial")
    alive = tmp_path / f".raft-tmp-{os.getppid()}-0123456789ab"  # a live process's
    alive.write_bytes(b"in progress")
    # a user's names that only begin like a temporary file's stay, files or folders
    names = ["notes.txt", "my-backup", "0123456789abc", ""]
    theirs = [tmp_path / f".raft-tmp-{pid}-{name}".rstrip("-") for name in names]
    theirs[0].write_text("precious")
    for folder in theirs[1:]:
        folder.mkdir()
        (folder / "weights.bin").write_text("precious")
    assert clean_stale(tmp_path) == [stale]
    assert not stale.exists()
    assert alive.exists()
    assert all(path.exists() for path in theirs)


_HOLD_SCRIPT = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_SH)  # as a write of the package holds OUT's directory
print("holding", flush=True)
sys.stdin.read()
"""


def test_a_live_writer_the_pid_check_cannot_see_keeps_its_temp(tmp_path: Path) -> None:
    """A writer in another PID namespace sharing OUT's directory: its process id
    is dead from here. While it holds the directory (as every write does), a
    write beside it leaves its temporary file alone; once it is gone, the next
    write removes the file."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    theirs = tmp_path / f".raft-tmp-{int(dead.stdout)}-0123456789ab"
    theirs.write_bytes(b"PAR1 being written")
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_SCRIPT, str(tmp_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "holding\n"
        assert rp.write_selected(nested_frame(LPS, RWS), tmp_path / "a.parquet") == 3
        assert theirs.exists()
    finally:
        holder.communicate("")
    assert rp.write_selected(nested_frame(LPS, RWS), tmp_path / "b.parquet") == 3
    assert not theirs.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.parquet", "b.parquet"]


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
@pytest.mark.parametrize("command", ["select", "report", "stats"])
def test_an_output_directory_that_takes_no_files_is_named(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """OUT in a directory where no file can be made (/proc, even for root): one
    error line naming the directory as the output's, not the source as unreadable;
    nothing read first."""
    from raft_polars.cli import main

    out = "/proc/out.html" if command == "report" else "/proc/out.parquet"
    args = [command, str(Path(__file__).parents[2] / "data" / "synthetic"), "-o", out]
    assert main([*args, "--per-prompt"] if command == "stats" else args) == 2
    err = capsys.readouterr().err
    assert "cannot write in the output directory '/proc'" in err, err
    with pytest.raises(RaftInputError, match="cannot write in the output directory"):
        rp.write_selected(nested_frame(LPS, RWS), "/proc/out.parquet")


def test_an_output_directory_that_is_a_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(RaftInputError, match="output directory is not a directory"):
        rp.write_selected(nested_frame(LPS, RWS), tmp_path / "f" / "out.parquet")


_KILL_SCRIPT = """
import sys, raft_polars as rp
rp.write_selected(sys.argv[1], sys.argv[2], prompt_column="prompt_text",
                  response_column="response", force=True)
"""


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_kill_9_during_select_leaves_out_whole_or_absent(tmp_path: Path, suffix: str) -> None:
    """``kill -9`` at moments spread over a write: OUT is absent or whole, and the
    next write (and a user's glob over the directory) is not disturbed."""
    source = tmp_path / "log"
    from raft_polars.synth import generate

    generate(
        source, layout="nested", stages=4, prompts=2000, k=4, max_tokens=64, seed=3, payload=True
    )
    outdir = tmp_path / "out"
    outdir.mkdir()
    out = outdir / f"batch{suffix}"
    expected = rp.select_best(str(source)).collect().height
    for delay in (0.3, 0.6, 0.9, 1.2, 1.6):
        proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(source), str(out)])
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        data = [p for p in outdir.iterdir() if p.suffix in (".parquet", ".jsonl")]
        assert data in ([], [out])
        if out.exists():  # whole: it reads back with every row
            frame = pl.read_parquet(out) if suffix == ".parquet" else pl.read_ndjson(out)
            assert frame.height == expected
        glob = pl.scan_parquet if suffix == ".parquet" else pl.scan_ndjson
        if data:
            assert glob(str(outdir / f"*{suffix}")).select(pl.len()).collect().item() == expected
    # the next write cleans up what the killed ones left and succeeds
    assert rp.write_selected(str(source), out, force=True) == expected
    assert [p.name for p in outdir.iterdir()] == [out.name]


# --- 4. JSON never holds a bare NaN or infinity -----------------------------------------------


def test_losses_json_with_an_infinite_loss(capsys: pytest.CaptureFixture[str]) -> None:
    from raft_polars.cli import main

    frame = nested_frame([[[[-1e308, -1e308]]]], [[[1.0]]])
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.parquet"
        frame.write_parquet(path)
        assert rp.stage_losses(str(path))["loss"].to_list() == [float("inf")]
        assert main(["losses", str(path), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["loss"] == "inf"


# --- 6. a corrupted page: the answer is right, or validate says what is wrong ----------------

_FLIP_SCRIPT = """
import json, sys
import raft_polars as rp
from raft_polars._engine.validate import strict_read
path, expected = sys.argv[1], json.loads(sys.argv[2])
# pyarrow's strict read first: Polars may abort the process on some corrupted pages
print(json.dumps({"strict": strict_read(path)}), flush=True)
out = {}
try:
    losses = rp.stage_losses(path)["loss"].to_list()
    out["same"] = [None if x is None else round(x, 4) for x in losses] == expected
except rp.RaftPolarsError as exc:
    out["error"] = type(exc).__name__
print(json.dumps(out), flush=True)
try:
    out["validate_ok"] = rp.validate(path).ok
except rp.RaftPolarsError as exc:
    out["validate_error"] = type(exc).__name__
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def checksummed(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, list[float]]:
    """A nested log written by the package (page checksums on) and its losses."""
    from raft_polars._export import sink_parquet

    lps = [[[[-0.5 - 0.01 * (i + j + k) for k in range(20)] for j in range(4)]
            for i in range(30)] for _ in range(2)]  # fmt: skip
    rws = [[[float((i * 7 + j * 3) % 5) for j in range(4)] for i in range(30)] for _ in range(2)]
    path = tmp_path_factory.mktemp("flip") / "log.parquet"
    sink_parquet(nested_frame(lps, rws), path)
    return path.read_bytes(), reference_rounded(lps, rws)


@settings(max_examples=12, deadline=None)
@given(position=st.floats(0.0, 1.0), bits=st.integers(1, 255), truncate=st.booleans())
def test_flipped_or_truncated_bytes(
    checksummed: tuple[bytes, list[float]], position: float, bits: int, truncate: bool
) -> None:
    """Every outcome is a RaftPolarsError or the reference's answer; where the
    default path answers differently, validate reports a problem. Each case runs
    in a subprocess with a timeout: no crash, no hang."""
    import json
    import tempfile

    raw, expected = checksummed
    at = int(position * (len(raw) - 1))
    if truncate:
        broken = raw[:at]
    else:
        flipped = bytearray(raw)
        flipped[at] ^= bits
        broken = bytes(flipped)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "log.parquet"
        path.write_bytes(broken)
        done = subprocess.run(
            [sys.executable, "-c", _FLIP_SCRIPT, str(path), json.dumps(expected)],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    strict = lines[0]["strict"] if lines else None
    if done.returncode != 0:
        # a known limit of Polars 2.1: some corrupted page headers make its decoder
        # try an impossible allocation, and Rust aborts the process; the strict
        # read that validate runs first names the file as corrupt
        assert done.returncode == -6, done.stderr[-2000:]
        assert "memory allocation of" in done.stderr, done.stderr[-2000:]
        assert strict is not None, "Polars aborted on a file pyarrow reads"
        return
    out = lines[-1]
    if out.get("same") is False:  # a silently different answer: validate must see it
        assert out.get("validate_ok") is False or "validate_error" in out, out
    assert "same" in out or "error" in out


def _flip_one_logprob(path: Path, value: float) -> None:
    raw = bytearray(path.read_bytes())
    at = raw.index(bytes(pl.Series([value]).to_numpy().tobytes()))
    raw[at + 3] ^= 0x01  # a low mantissa byte of one log-prob
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("engine", engines())
def test_validate_catches_a_page_that_polars_decodes(tmp_path: Path, engine: str) -> None:
    """A flipped byte among the log-prob values of an uncompressed page: Polars
    decodes the file (to other values); validate's strict read rejects it by its
    page checksum."""
    import pyarrow.parquet as pq

    lps = [[[[-0.5 - 0.001 * k for k in range(400)] for _ in range(2)] for _ in range(3)]]
    rws = [[[0.0, 1.0] for _ in range(3)]]
    path = tmp_path / "log.parquet"
    pq.write_table(nested_frame(lps, rws).to_arrow(), path, compression="none",
                   write_page_checksum=True)  # fmt: skip
    _flip_one_logprob(path, -0.5 - 0.001 * 200)
    rp.stage_losses(str(path))  # the default path decodes it
    report = rp.validate(str(path), engine=_engine(engine))
    corrupt = [p for p in report.problems if p.kind == "corrupt_file"]
    assert corrupt, report.format()
    assert corrupt[0].locations[0]["file"] == str(path)
    assert "checksum" in corrupt[0].locations[0]["error"].lower()


@pytest.mark.parametrize("engine", engines())
def test_validate_reads_on_after_a_corrupt_token_page(tmp_path: Path, engine: str) -> None:
    """The long layout's token rows are checked and strictly decoded in one read: a
    page that pyarrow rejects (in the second of three row groups) names the file,
    and Polars reads the file on from there, so every row is still counted."""
    import pyarrow.parquet as pq

    n = 3000
    tokens = pl.DataFrame(
        {
            "stage": [0] * n,
            "prompt": [i // 1000 for i in range(n)],
            "cand": [0] * n,
            "token": [i % 1000 for i in range(n)],
            "logprob": [-0.5 - 0.001 * (i % 1000) - (i // 1000) for i in range(n)],
        }
    )
    rewards = pl.DataFrame({"stage": [0] * 3, "prompt": [0, 1, 2], "cand": [0] * 3})
    path = tmp_path / "tokens.parquet"
    pq.write_table(tokens.to_arrow(), path, compression="none", write_page_checksum=True,
                   row_group_size=1000)  # fmt: skip
    rewards.with_columns(pl.lit(1.0).alias("reward")).write_parquet(tmp_path / "rewards.parquet")
    _flip_one_logprob(path, -0.5 - 0.001 * 200 - 1)
    report = rp.validate(
        str(path), rewards=str(tmp_path / "rewards.parquet"), engine=_engine(engine)
    )
    assert [p.kind for p in report.problems] == ["corrupt_file"]
    assert report.problems[0].locations[0]["file"] == str(path)
    assert "checksum" in report.problems[0].locations[0]["error"].lower()
    assert report.summary["tokens"] == n
    # the text report's place is the file (no ids to put before it)
    assert f"\n    file {str(path)!r}, error " in report.format()


def test_validate_reports_a_file_that_makes_polars_abort(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a page pyarrow rejects, Polars reads the file on in a child process:
    some corrupted page headers make Polars 2.1 abort its process (here the child
    aborts on purpose), and validate still reports the file, leaving out the rows
    it could not read, instead of dying with it."""
    import pyarrow.parquet as pq

    from raft_polars._engine import validate as kernels

    lps = [[[[-0.5 - 0.001 * k for k in range(400)] for _ in range(2)] for _ in range(3)]]
    rws = [[[1.0, 0.0] for _ in range(3)]]
    path = tmp_path / "log.parquet"
    pq.write_table(nested_frame(lps, rws).to_arrow(), path, compression="none",
                   write_page_checksum=True, row_group_size=1)  # fmt: skip
    _flip_one_logprob(path, -0.5 - 0.001 * 300)
    monkeypatch.setattr(kernels, "_REST", "import os; os.abort()")
    report = rp.validate(str(path))
    assert "corrupt_file" in [p.kind for p in report.problems]
    assert not report.ok


def test_strict_reader_row_ranges_and_polars_after_an_error(tmp_path: Path) -> None:
    """StrictParquet gives the rows of a range of row groups as Polars reads them;
    after a page pyarrow rejects, the rest comes from Polars and the file is named."""
    import pyarrow.parquet as pq

    from raft_polars._engine.validate import StrictParquet

    frame = pl.DataFrame({"a": range(50), "x": [-0.5 - 0.01 * i for i in range(50)]})
    path = tmp_path / "f.parquet"
    pq.write_table(frame.to_arrow(), path, compression="none", write_page_checksum=True,
                   row_group_size=10)  # fmt: skip
    schema = dict(frame.schema)
    for rows in [None, (0, 10), (10, 20), (40, 10), (20, 0)]:
        reader = StrictParquet()
        got = reader.scan([str(path)], schema, rows).collect()
        want = frame if rows is None else frame.slice(*rows)
        assert got.equals(want), rows
        assert reader.errors == {}
    _flip_one_logprob(path, -0.5 - 0.01 * 25)
    for rows in [None, (20, 30)]:
        reader = StrictParquet()
        got = reader.scan([str(path)], schema, rows).collect()
        polars = pl.read_parquet(path)
        assert got.equals(polars if rows is None else polars.slice(*rows))
        assert list(reader.errors) == [str(path)]
        assert "checksum" in reader.errors[str(path)].lower()


@pytest.mark.parametrize("engine", engines())
def test_a_decoder_panic_is_an_error_never_a_truncated_read(
    data_dir: Path, tmp_path: Path, engine: str
) -> None:
    """Polars' decoder panics on a corrupted version-2 page header of the last row
    group's log-probs, in a thread of its streaming engine, and its
    ``collect_batches`` then ends quietly, as if the file ended there: the
    reduction got the first row groups for the whole file and ``select`` wrote
    an export of 0 rows, exit 0. Every entry point now raises RaftInputError
    naming the file; validate reports it."""
    import pyarrow.parquet as pq

    path = data_dir / "v2_page_polars_panics.parquet"
    with pytest.raises(Exception, match="Unexpected end of stream"):
        pq.read_table(path)  # the strict reader rejects it: no answer is right
    on = _engine(engine)
    calls: list[Callable[[], object]] = [
        lambda: rp.stage_losses(str(path), engine=on),
        lambda: rp.stage_stats(str(path), engine=on),
        lambda: rp.collect(rp.select_best(str(path), engine=on)),
    ]
    for call in calls:
        with pytest.raises(RaftInputError, match="v2_page_polars_panics"):
            call()
    # validate reads the candidates strictly past the panic, in process and on
    # the workers (which read them with Polars first), and gives one report
    report = rp.validate(str(path), engine=on)
    assert "corrupt_file" in [p.kind for p in report.problems], report.format()
    assert report.format() == rp.validate(str(path)).format()
    out = tmp_path / "out.parquet"
    with pytest.raises(RaftInputError, match="v2_page_polars_panics"):
        rp.write_selected(str(path), out, engine=on)
    assert list(tmp_path.iterdir()) == []


# --- 5. read errors of the lazy batch: RaftInputError through rp.collect ---------------------


def test_collect_names_the_file_a_lazy_batch_cannot_read(tmp_path: Path) -> None:
    """The selected batch is lazy: the payload is read at collect. A payload page
    that cannot be decoded then raises RaftInputError naming the file through
    rp.collect, and the written export names it too."""
    frame = nested_frame(LPS, RWS).with_columns(pl.lit("x" * 50).alias("response"))
    path = tmp_path / "log.parquet"
    frame.write_parquet(path)
    lazy = rp.select_best(str(path))
    path.write_bytes(path.read_bytes()[:100])  # truncated after select_best ranked it
    with pytest.raises(RaftInputError, match=r"log\.parquet"):
        rp.collect(lazy)
    with pytest.raises(RaftInputError):
        rp.collect(lazy.filter(pl.col("stage") == 0))  # derived frames: the source


# --- 7. JSON lines ids that mix numbers and strings ------------------------------------------


def _json_lines(frame: pl.DataFrame, path: Path, numbered: set[int]) -> None:
    """``frame`` as JSON lines, the text prompt id of rows ``numbered`` spelled as a
    JSON number (``0`` for ``"0"``)."""
    rows = frame.to_dicts()
    for i in numbered:
        rows[i]["prompt"] = int(rows[i]["prompt"])
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@settings(max_examples=15, deadline=None)
@given(
    log=ragged_logs(max_stages=2, max_prompts=4, zero_tokens=False),
    layout=st.sampled_from(["nested", "long rewards", "long tokens"]),
    data=st.data(),
)
def test_json_ids_of_numbers_and_strings_are_reported(
    tmp_path_factory: pytest.TempPathFactory, log: Any, layout: str, data: st.DataObject
) -> None:
    """Polars reads a JSON id column of numbers and strings as text: the number 0
    and the string "0" become one prompt. Where a file mixes them, validate names
    the file and the column; where every id is one type, the log is clean and
    the losses are the reference's."""
    lps, rws = log
    names = [str(i) for i in range(max(len(stage) for stage in rws))]
    tmp = tmp_path_factory.mktemp("json")
    if layout == "nested":
        frames = {"log.jsonl": nested_frame(lps, rws, prompt_ids=names)}
    else:
        tokens, rewards = long_frames(lps, rws, prompt_ids=names)
        frames = {"tokens.jsonl": tokens, "rewards.jsonl": rewards}
    mixed = "rewards.jsonl" if layout == "long rewards" else next(iter(frames))
    numbered = data.draw(st.sets(st.integers(0, frames[mixed].height - 1)), label="numbered")
    for name, frame in frames.items():
        _json_lines(frame, tmp / name, numbered if name == mixed else set())
    kwargs: dict[str, Any] = {"rewards": str(tmp / "rewards.jsonl")} if layout != "nested" else {}
    if len(numbered) == frames[mixed].height and kwargs:  # integer ids against text ones
        with pytest.raises(RaftInputError, match="prompt"):
            rp.validate(str(tmp / next(iter(frames))), **kwargs)
        return
    report = rp.validate(str(tmp / next(iter(frames))), **kwargs)
    if 0 < len(numbered) < frames[mixed].height:
        assert [p.kind for p in report.problems] == ["corrupt_file"], report.format()
        (where,) = report.problems[0].locations
        assert where["file"] == str(tmp / mixed)
        assert "column prompt holds JSON numbers beside strings" in where["error"]
    elif not numbered:
        assert report.ok, report.format()
        table = rp.stage_losses(str(tmp / next(iter(frames))), **kwargs)
        assert [round(x, 4) for x in table["loss"].to_list()] == reference_rounded(lps, rws)


@settings(max_examples=15, deadline=None)
@given(
    log=ragged_logs(max_stages=2, max_prompts=4, zero_tokens=False),
    layout=st.sampled_from(["nested", "long rewards", "long tokens"]),
    key=st.sampled_from(["stage", "prompt", "cand", "reward", "logprobs", "note"]),
    data=st.data(),
)
def test_a_key_given_twice_in_a_json_line_is_reported(
    tmp_path_factory: pytest.TempPathFactory, log: Any, layout: str, key: str, data: st.DataObject
) -> None:
    """Polars keeps the first value of a key given twice in a JSON line, Python's
    json the last: validate reports the file, naming the key, when the key is
    one the answer reads; a repeated key it does not read (``note``) is clean,
    and so is every file where no line repeats a key (the reference's losses)."""
    lps, rws = log
    tmp = tmp_path_factory.mktemp("twice")
    if layout == "nested":
        frames = {"log.jsonl": nested_frame(lps, rws)}
    else:
        tokens, rewards = long_frames(lps, rws)
        frames = {"tokens.jsonl": tokens, "rewards.jsonl": rewards}
    bad = "rewards.jsonl" if layout == "long rewards" else next(iter(frames))
    if key != "note" and key not in frames[bad].columns:  # the long layout's other file
        key = "logprob" if "logprob" in frames[bad].columns else "reward"
    lines = data.draw(st.sets(st.integers(0, frames[bad].height - 1), max_size=3), label="lines")
    for name, frame in frames.items():
        rows = frame.to_dicts()
        text = []
        for i, row in enumerate(rows):
            line = json.dumps(row)
            if name == bad and i in lines:  # the same value again: only the key repeats
                line = line[:-1] + f", {json.dumps(key)}: {json.dumps(row.get(key))}}}"
            text.append(line + "\n")
        (tmp / name).write_text("".join(text))
    kwargs: dict[str, Any] = {"rewards": str(tmp / "rewards.jsonl")} if layout != "nested" else {}
    report = rp.validate(str(tmp / next(iter(frames))), **kwargs)
    if lines and key != "note":
        assert [p.kind for p in report.problems] == ["corrupt_file"], report.format()
        (where,) = report.problems[0].locations
        assert where["file"] == str(tmp / bad)
        assert f"the key {key} twice" in where["error"]
    else:
        assert report.ok, report.format()
        table = rp.stage_losses(str(tmp / next(iter(frames))), **kwargs)
        assert [round(x, 4) for x in table["loss"].to_list()] == reference_rounded(lps, rws)


@pytest.mark.parametrize("engine", engines())
def test_a_key_given_twice_on_every_executor(tmp_path: Path, engine: str) -> None:
    row = {"stage": 0, "prompt": 0, "cand": 0, "reward": 0.1, "logprobs": [-1.0]}
    good = json.dumps(row) + "\n" + json.dumps({**row, "cand": 1, "reward": 0.5}) + "\n"
    (tmp_path / "a.jsonl").write_text(good)
    twice = json.dumps({**row, "stage": 1})[:-1] + ', "reward": 0.9}\n'
    (tmp_path / "b.jsonl").write_text(twice)
    report = rp.validate(str(tmp_path), engine=_engine(engine))
    assert [p.kind for p in report.problems] == ["corrupt_file"], report.format()
    assert [w["file"] for w in report.problems[0].locations] == [str(tmp_path / "b.jsonl")]


@pytest.mark.parametrize("engine", engines())
def test_json_ids_of_numbers_and_strings_on_every_executor(tmp_path: Path, engine: str) -> None:
    frame = nested_frame(LPS, RWS, prompt_ids=["0", "1"])
    _json_lines(frame, tmp_path / "a.jsonl", set())
    later = frame.with_columns(pl.col("stage") + 2)
    _json_lines(later, tmp_path / "b.jsonl.gz", {1})
    raw = (tmp_path / "b.jsonl.gz").read_bytes()
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(raw))
    report = rp.validate(str(tmp_path), engine=_engine(engine))
    assert [p.kind for p in report.problems] == ["corrupt_file"], report.format()
    assert [w["file"] for w in report.problems[0].locations] == [str(tmp_path / "b.jsonl.gz")]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize(
    ("child", "want"),
    [
        ("import os; os.abort()", "Polars' reader ended its process on it (signal SIGABRT)"),
        (
            "print('raft-polars refuses it: parquet: bad page')",
            "Polars' reader refuses it: parquet: bad page",
        ),
        ("print('raft-polars read')", None),  # Polars read the file
        # a word printed at the child's start (a sitecustomize, say) is no refusal
        ("print('hello'); print('raft-polars read')", None),
        ("raise SystemExit(3)", None),  # the child failed, not Polars: nothing to say
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", None),  # the OOM killer
    ],
)
def test_the_polars_check_of_a_suspect_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, child: str, want: str | None
) -> None:
    """What validate makes of its child's read of a file whose page headers are
    suspect: Rust aborts its process on some (a failed allocation), Polars
    refuses others; a child that fails on its own accuses no file."""
    from raft_polars._engine import pages
    from raft_polars._engine import validate as vk

    monkeypatch.setattr(vk, "_POLARS_READ", child)
    monkeypatch.setattr(pages, "suspect", lambda path: True)
    assert vk.polars_refusal(str(tmp_path / "log.parquet")) == want


@pytest.mark.parametrize("engine", engines())
@pytest.mark.parametrize("layout", ["nested", "long"])
def test_text_that_is_not_utf8_is_reported(tmp_path: Path, engine: str, layout: str) -> None:
    """A text id whose bytes are not UTF-8 (pyarrow writes and reads them without
    a check; Polars refuses them, and may crash on them): the default path raises
    naming the file, and validate, which reads such files through pyarrow,
    reports the file instead of passing it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def texts(values: list[bytes]) -> pa.Array:
        return pa.array(values, pa.binary()).view(pa.string())

    bad = b"p\xff1"  # 0xff is never UTF-8
    if layout == "nested":
        table = pa.table({
            "stage": [0, 0, 0, 0], "prompt": texts([b"p0", b"p0", bad, bad]),
            "cand": [0, 1, 0, 1], "reward": [0.1, 0.9, 0.5, 0.2],
            "logprobs": [[-1.0], [-2.0], [-3.0], [-4.0]],
        })  # fmt: skip
        kwargs: dict[str, Any] = {"source": str(tmp_path / "log.parquet")}
        pq.write_table(table, kwargs["source"])
    else:
        tokens = pa.table({
            "stage": [0, 0, 0], "prompt": texts([b"p0", b"p0", bad]), "cand": [0, 1, 0],
            "token": [0, 0, 0], "logprob": [-1.0, -2.0, -3.0],
        })  # fmt: skip
        rewards = pa.table({"stage": [0, 0, 0], "prompt": ["p0", "p0", "p1"],
                            "cand": [0, 1, 0], "reward": [0.1, 0.9, 0.5]})  # fmt: skip
        kwargs = {"source": str(tmp_path / "tokens.parquet"),
                  "rewards": str(tmp_path / "rewards.parquet")}  # fmt: skip
        pq.write_table(tokens, kwargs["source"])
        pq.write_table(rewards, kwargs["rewards"])
    on = _engine(engine)
    with pytest.raises(RaftInputError, match="UTF-8"):
        rp.stage_losses(**kwargs, engine=on)
    report = rp.validate(**kwargs, engine=on)
    corrupt = [p for p in report.problems if p.kind == "corrupt_file"]
    assert corrupt, report.format()
    assert "UTF-8" in corrupt[0].locations[0]["error"], report.format()


def _write_lines(path: Path, rows: list[dict[str, Any]]) -> None:
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def _python_losses(rows: list[dict[str, Any]]) -> list[float]:
    """The plain reference over rows as Python's json reads them: best reward per
    (stage, prompt), ties to the smallest candidate, pooled NLL per stage."""
    best: dict[tuple[Any, Any], dict[str, Any]] = {}
    for row in rows:
        key = (row["stage"], row["prompt"])
        old = best.get(key)
        if old is None or (row["reward"], -row["cand"]) > (old["reward"], -old["cand"]):
            best[key] = row
    out = []
    for stage in sorted({s for s, _ in best}):
        chosen = [r for (s, _), r in best.items() if s == stage]
        nll = -sum(x for r in chosen for x in r["logprobs"])
        out.append(round(nll / sum(len(r["logprobs"]) for r in chosen), 4))
    return out


@pytest.mark.parametrize("engine", engines())
@pytest.mark.parametrize("name", ["log.jsonl", "log.jsonl.gz"])
@pytest.mark.parametrize("ids", [("\ud83d", "\ud83e"), ("p\udc00", "p\udc01"), ("\ud83d", "x")])
def test_a_lone_surrogate_in_a_json_id_is_refused(
    tmp_path: Path, engine: str, name: str, ids: tuple[str, str]
) -> None:
    """Prompt ids that are (or hold) lone surrogates (``json.dumps`` escapes them
    as ``"\\ud83d"``): Polars reads a high one as NUL, so two prompts became one
    and the loss another answer; a low one failed with InvalidUnicodeCodepoint.
    Both are now refused on every entry point, naming the file, line and column;
    Python's json (the reference here) tells the prompts apart."""
    rows = [
        {"stage": 0, "prompt": ids[0], "cand": 0, "reward": 0.5, "logprobs": [-1.0]},
        {"stage": 0, "prompt": ids[1], "cand": 1, "reward": 0.7, "logprobs": [-3.0]},
    ]
    path = tmp_path / name
    _write_lines(path, rows)
    assert len({r["prompt"] for r in rows}) == 2
    on = _engine(engine)
    for call in (rp.stage_losses, rp.validate, rp.select_best):
        with pytest.raises(RaftInputError, match=r"line 1.*'prompt'.*lone surrogate"):
            call(str(path), engine=on)


@pytest.mark.parametrize("engine", engines())
def test_a_lone_surrogate_in_a_long_layout_id_is_refused(tmp_path: Path, engine: str) -> None:
    """The long layout: a lone surrogate in the rewards' prompt ids (line 2), and in
    the token rows' (line 3), each refused naming its file."""
    rewards = [
        {"stage": 0, "prompt": "a", "cand": 0, "reward": 0.5},
        {"stage": 0, "prompt": "\ud83d", "cand": 0, "reward": 0.7},
    ]
    tokens = [
        {"stage": 0, "prompt": p, "cand": 0, "token": 0, "logprob": -1.0}
        for p in ("a", "b", "\udbff")
    ]
    _write_lines(tmp_path / "rewards.jsonl", rewards)
    _write_lines(tmp_path / "tokens.jsonl", tokens)
    _write_lines(tmp_path / "rewards_ok.jsonl", [rewards[0], {**rewards[1], "prompt": "b"}])
    _write_lines(tmp_path / "tokens_ok.jsonl", tokens[:2])
    on = _engine(engine)
    with pytest.raises(RaftInputError, match=r"rewards\.jsonl': line 2: the prompt id"):
        rp.stage_losses(str(tmp_path / "tokens_ok.jsonl"), rewards=str(tmp_path / "rewards.jsonl"),
                        engine=on)  # fmt: skip
    with pytest.raises(RaftInputError, match=r"tokens\.jsonl': line 3: the prompt id"):
        rp.validate(str(tmp_path / "tokens.jsonl"), rewards=str(tmp_path / "rewards_ok.jsonl"),
                    engine=on)  # fmt: skip


@pytest.mark.parametrize("engine", engines())
def test_surrogates_that_do_not_change_an_id_are_read(tmp_path: Path, engine: str) -> None:
    """Pairs (an emoji escaped as ``\\ud83d\\ude00``), an escaped backslash before
    ``ud83d`` (the text, not an escape), and a lone surrogate in a text column
    that is no id: the answer is the plain reference's."""
    rows = [
        {"stage": 0, "prompt": "\U0001f600", "cand": 0, "reward": 0.5, "logprobs": [-1.0]},
        {"stage": 0, "prompt": "\U0001f601", "cand": 0, "reward": 0.7, "logprobs": [-3.0]},
        {"stage": 0, "prompt": "\\ud83d", "cand": 0, "reward": 0.1, "logprobs": [-0.5, -1.5]},
        {"stage": 0, "prompt": "\\ud83e", "cand": 0, "reward": 0.2, "logprobs": [-0.25]},
        {"stage": 1, "prompt": "q", "cand": 0, "reward": 0.2, "logprobs": [-2.0], "text": "\ud800"},
        {"stage": 1, "prompt": "q", "cand": 1, "reward": 0.1, "logprobs": [-1.0], "text": "ok"},
    ]
    path = tmp_path / "log.jsonl"
    _write_lines(path, rows)
    assert _losses(str(path), engine) == _python_losses(rows)
    # validate tells that the text column is not read as written
    report = rp.validate(str(path), engine=_engine(engine))
    assert [p.kind for p in report.problems] == ["corrupt_file"], report.format()
    assert "text read and exported" in report.problems[0].locations[0]["error"]
    del rows[4]["text"]
    _write_lines(path, rows)
    report = rp.validate(str(path), engine=_engine(engine))
    assert report.ok, report.format()


_TEXT = st.text(
    alphabet=st.sampled_from(["a", "\\", "u", "d", "8", "\ud83d", "\ude00", "\U0001f600", "\n"]),
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(st.dictionaries(st.sampled_from(["a", "b", "c"]), _TEXT, max_size=3), min_size=1,
                  max_size=6),
    chunk=st.sampled_from([7, 64, 1 << 24]),
    compressed=st.booleans(),
)  # fmt: skip
# the text \ud83d (an escaped backslash, no escape) before a lone low surrogate
@example(rows=[{"a": "\\ud83d\udc00"}, {"b": "\udc00"}], chunk=1 << 24, compressed=False)
@example(rows=[{"a": "\\\\\ud83d"}], chunk=7, compressed=True)
def test_lone_surrogates_against_python_json(
    tmp_path_factory: pytest.TempPathFactory,
    rows: list[dict[str, str]],
    chunk: int,
    compressed: bool,
) -> None:
    """The byte scan finds exactly the keys whose values hold a lone surrogate as
    Python's json reads the lines, with the first line of each, whatever the
    decompressed chunks' size."""
    from raft_polars._engine import sources

    path = tmp_path_factory.mktemp("lone") / ("log.jsonl.gz" if compressed else "log.jsonl")
    _write_lines(path, rows)
    expected: dict[str, int] = {}  # as Python's json reads the lines: pairs joined
    read = [json.loads(json.dumps(row)) for row in rows]
    for number, row in enumerate(read, 1):
        for key, value in row.items():
            if any(0xD800 <= ord(ch) <= 0xDFFF for ch in value):
                expected.setdefault(key, number)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sources, "_CHUNK", chunk)
        found = {key: line for key, _, line in sources.lone_surrogates(str(path))}
    assert found == expected


@pytest.mark.parametrize("suffix", [".zst", ".zstd", ".gz"])
def test_lone_surrogates_in_compressed_files_and_keys_given_twice(
    tmp_path: Path, suffix: str
) -> None:
    """A ``.jsonl.zstd`` was scanned as its compressed bytes (pyarrow's detection
    knows ``.zst``, not ``.zstd``): two prompts merged. A key given twice holds
    Polars' value first: each of its values is looked at."""
    import pyarrow as pa

    lines = [
        '{"stage": 0, "prompt": "\\ud83d", "cand": 0, "reward": 1.0, "logprobs": [-1.0]}',
        '{"stage": 0, "prompt": "\\ud83e", "cand": 1, "reward": 2.0, "logprobs": [-2.0]}',
    ]
    twice = '{"stage": 0, "prompt": "\\ud83d", "prompt": "x", "cand": 0, "reward": 1.0}'
    for name, text in (("log", lines), ("twice", [twice])):
        path = tmp_path / f"{name}.jsonl{suffix}"
        codec = "gzip" if suffix == ".gz" else "zstd"
        with pa.CompressedOutputStream(str(path), codec) as stream:
            stream.write(("\n".join(text) + "\n").encode())
        with pytest.raises(RaftInputError, match=r"line 1: the prompt id.*lone surrogate"):
            rp.stage_losses(str(path))


@pytest.mark.parametrize("which", ["source", "part of a directory", "rewards", "a link"])
def test_an_output_that_is_an_input_is_refused(tmp_path: Path, which: str) -> None:
    """``select SRC -o SRC --force`` replaced the log being read (the rewards file,
    a part of a directory, through a link): refused on the API and the CLI
    (``select``, ``stats --per-prompt``), the input left as it was."""
    from raft_polars.cli import main

    nested = tmp_path / "log"
    nested.mkdir()
    nested_frame(LPS, RWS).write_parquet(nested / "part-0.parquet")
    tokens, cands = long_frames(LPS, RWS)
    tokens.write_parquet(tmp_path / "tokens.parquet")
    cands.write_parquet(tmp_path / "rewards.parquet")
    (tmp_path / "link.parquet").symlink_to(nested / "part-0.parquet")
    source: list[str] = [str(nested)]
    out = nested / "part-0.parquet"
    if which == "source":
        source = [str(out)]
    elif which == "rewards":
        source = [str(tmp_path / "tokens.parquet"), "--rewards", str(tmp_path / "rewards.parquet")]
        out = tmp_path / "rewards.parquet"
    elif which == "a link":
        out = tmp_path / "link.parquet"
    before = {p: p.read_bytes() for p in tmp_path.rglob("*.parquet") if not p.is_symlink()}
    for argv in (["select", *source, "-o", str(out), "--force"],
                 ["stats", *source, "--per-prompt", "-o", str(out), "--force"]):  # fmt: skip
        assert main(argv) == 2
    kwargs: dict[str, Any] = {}
    if which == "rewards":
        kwargs["rewards"] = source[2]
    with pytest.raises(RaftInputError, match="is a file of the log being read"):
        rp.write_selected(source[0], out, force=True, **kwargs)
    after = {p: p.read_bytes() for p in tmp_path.rglob("*.parquet") if not p.is_symlink()}
    assert after == before
    assert _losses(str(nested), "polars") == EXPECTED


def test_an_output_that_is_a_link_to_nothing_needs_force(tmp_path: Path) -> None:
    """A dangling link as OUT was replaced by a file without ``force``: it exists
    as a name, so it is refused as any existing OUT is."""
    out = tmp_path / "out.parquet"
    out.symlink_to(tmp_path / "nowhere.parquet")
    with pytest.raises(RaftInputError, match="exists; pass force=True"):
        rp.write_selected(nested_frame(LPS, RWS), out)
    assert out.is_symlink()
    assert rp.write_selected(nested_frame(LPS, RWS), out, force=True) == 3


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_terminated_during_select_leaves_nothing(tmp_path: Path, sig: str) -> None:
    """SIGTERM (kill, timeout, Slurm, docker stop) or SIGHUP while select writes:
    the temporary file is removed, as on Ctrl-C (it stayed until the next write
    into the directory), and the exit code is 128 + the signal's number."""
    from raft_polars.synth import generate

    generate(tmp_path / "log", layout="nested", stages=4, prompts=20000, k=4, seed=1,
             payload=True)  # fmt: skip
    outdir = tmp_path / "out"
    outdir.mkdir()
    number = getattr(signal, sig)
    hit = 0
    for _ in range(5):  # a loaded machine can finish the write between two looks
        proc = subprocess.Popen(
            [sys.executable, "-m", "raft_polars", "select", str(tmp_path / "log"), "-o",
             str(outdir / "batch.parquet"), "--force"],
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while not any(p.name.startswith(".raft-tmp") for p in outdir.iterdir()):
            if proc.poll() is not None:
                break
            assert time.monotonic() < deadline
            time.sleep(0.0005)
        proc.send_signal(signal.SIGSTOP)  # delivered while the temporary file exists
        proc.send_signal(number)
        proc.send_signal(signal.SIGCONT)
        code = proc.wait(timeout=120)
        left = sorted(p.name for p in outdir.iterdir())
        assert left in ([], ["batch.parquet"])  # never the temporary file
        if left:  # the signal came after OUT was replaced: OUT is whole
            assert pl.read_parquet(outdir / "batch.parquet").height == 80000
            assert code in (0, 128 + number)
            continue
        assert code == 128 + number
        hit += 1
        break
    assert hit, "no signal arrived while select wrote"


@pytest.mark.parametrize("blob", ["bytes", "list-of-bytes", "struct-with-bytes"])
def test_bytes_written_as_json_lines_are_named(tmp_path: Path, blob: str) -> None:
    """A payload column of bytes (at any depth) selected into JSON lines: an
    error naming the output and the column (it blamed reading the source,
    with Polars' "not yet implemented"); nothing is left; Parquet takes it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raft_polars.cli import main

    blobs = {
        "bytes": pa.array([b"\x00\xff", b"ab"]),
        "list-of-bytes": pa.array([[b"x"], []], type=pa.list_(pa.binary())),
        "struct-with-bytes": pa.array([{"raw": b"x"}, {"raw": None}]),
    }
    table = pa.table({"stage": [0, 0], "prompt": [0, 0], "cand": [0, 1], "reward": [0.1, 0.2],
                      "logprobs": [[-1.0], [-2.0]], "blob": blobs[blob]})  # fmt: skip
    pq.write_table(table, tmp_path / "log.parquet")
    out = tmp_path / "out.jsonl"
    with pytest.raises(RaftInputError, match=r"out\.jsonl.*column 'blob' holds bytes"):
        rp.write_selected(tmp_path / "log.parquet", out)
    assert main(["select", str(tmp_path / "log.parquet"), "-o", str(out)]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.parquet"]
    assert rp.write_selected(tmp_path / "log.parquet", tmp_path / "out.parquet") == 1


_SWALLOWED = """
import os, signal, sys
import polars as pl
import raft_polars._engine.validate as vk
from raft_polars import _export

command, where = sys.argv[1], sys.argv[2:]


def swallowed(real):
    def call(*args, **kwargs):
        try:  # the handler's SystemExit lands here, as in pyarrow's Cython code
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(100_000):
                pass
        except BaseException:
            pass
        return real(*args, **kwargs)
    return call


if command == "validate":
    vk.check_candidates = swallowed(vk.check_candidates)
else:
    _export.sink_parquet = swallowed(_export.sink_parquet)
sys.argv = ["raft-polars", command, *where]
from raft_polars.cli import entrypoint
entrypoint()
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("command", ["validate", "select"])
def test_a_stop_whose_exit_is_swallowed_still_ends_the_command(
    tmp_path: Path, command: str
) -> None:
    """SIGTERM where a compiled library swallows what a handler raises (pyarrow's
    Cython code, importing pandas on first use, swallowed a ``SystemExit``): the
    command ends with 143 all the same, and select writes nothing (it ran on,
    wrote OUT and exited 0); the handler now raises nothing, the process ends."""
    from raft_polars.synth import generate

    generate(tmp_path / "log", layout="long", stages=2, prompts=50, k=2, seed=1)
    outdir = tmp_path / "out"
    outdir.mkdir()
    where = [str(tmp_path / "log" / "tokens"), "--rewards", str(tmp_path / "log" / "rewards")]
    if command == "select":
        where += ["-o", str(outdir / "batch.parquet")]
    done = subprocess.run(
        [sys.executable, "-c", _SWALLOWED, command, *where],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    assert "Traceback" not in done.stderr
    assert list(outdir.iterdir()) == []


_LATER = """
import os, signal, sys
import raft_polars._engine.validate as vk
from raft_polars import cli

print("main", cli.main(["validate", *sys.argv[1:]]), flush=True)
print("defaults", signal.getsignal(signal.SIGTERM) == signal.SIG_DFL,
      signal.getsignal(signal.SIGINT) is signal.default_int_handler, flush=True)
real = vk.check_candidates


def terminated(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    return real(*args, **kwargs)


vk.check_candidates = terminated
sys.argv = ["raft-polars", "validate", *sys.argv[1:]]
try:
    cli.entrypoint()
except BaseException as end:
    print("went on after", repr(end), flush=True)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_signals_are_the_entry_points_only(tmp_path: Path) -> None:
    """A command run through ``main`` (a test, a notebook calling it) leaves the
    signals' handlers as they were; the entry point ends its process on SIGTERM
    with 143, at once: the stop no longer travels as an exception (a library
    swallowed it, or turned it into another error)."""
    from raft_polars.synth import generate

    generate(tmp_path / "log", layout="long", stages=2, prompts=50, k=2, seed=1)
    where = [str(tmp_path / "log" / "tokens"), "--rewards", str(tmp_path / "log" / "rewards")]
    done = subprocess.run(
        [sys.executable, "-c", _LATER, *where],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    assert lines[-1] == "defaults True True", done.stdout
    assert "main 0" in lines, done.stdout


@pytest.mark.parametrize(
    ("call", "option"),
    [
        ("write_selected", {"format": "dpo", "min_margin": "x"}),
        ("write_selected", {"format": "dpo", "min_margin": True}),
        ("write_selected", {"output": None}),
        ("validate", {"limit": "a"}),
        ("validate", {"limit": -1}),
        ("validate", {"limit": 2.7}),
    ],
)
def test_option_values_of_the_wrong_kind_are_named(
    tmp_path: Path, call: str, option: dict[str, Any]
) -> None:
    """Options of the wrong type or range: a RaftInputError naming the option (a
    plain TypeError or ValueError, or ``limit=-1`` accepted, before)."""
    frame = nested_frame(LPS, RWS)
    name = list(option)[-1]  # the option of the wrong kind, given last
    kwargs = option if call == "validate" else {"output": tmp_path / "out.jsonl", **option}
    function: Any = rp.validate if call == "validate" else rp.write_selected
    with pytest.raises(RaftInputError, match=name):
        function(frame, **kwargs)
    assert list(tmp_path.iterdir()) == []
    assert rp.validate(frame, limit=0).ok
