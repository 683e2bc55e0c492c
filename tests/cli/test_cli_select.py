"""``raft-polars select``: the selected batch on disk, row by row against the reference."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

import cli_helpers
import polars as pl
import pytest
from cli_helpers import (
    LogFiles,
    assert_one_line_error,
    keys_of,
    read_output,
    reference_strategy,
    run,
)
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from reference import reference_selection

import raft_polars
import raft_polars._export
from raft_polars._engine.sources import local_files

# the fixtures shared by the CLI tests (see cli_helpers)
any_log_files = cli_helpers.any_log_files
log_files = cli_helpers.log_files
out_dir = cli_helpers.out_dir
string_log_files = cli_helpers.string_log_files

LAYOUTS = ("nested", "long")
FORMATS = (".parquet", ".jsonl")


def _reference_keys(files: LogFiles) -> list[tuple[Any, ...]]:
    return [files.log.key(t, i, j) for t, i, j in reference_selection(files.log.rws)]


def _check_rows(files: LogFiles, frame: pl.DataFrame, prompt: str = "prompt_id") -> None:
    """Each row: the reward, token count and payload of that very candidate."""
    log = files.log
    index = {
        log.key(t, i, j): (t, i, j)
        for t, stage in enumerate(log.rws)
        for i, p in enumerate(stage)
        for j in range(len(p))
    }
    for row in frame.iter_rows(named=True):
        key = (row["stage"], row[prompt], row["cand"])
        t, i, j = index[key]
        assert row["reward"] == log.rws[t][i][j]
        assert row["tokens"] == len(log.lps[t][i][j])
        for name, value in log.payload(key).items():
            assert row[name] == value, name


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_best_of_k(
    capsys: pytest.CaptureFixture[str],
    out_dir: Path,
    any_log_files: LogFiles,
    suffix: str,
    layout: str,
) -> None:
    files = any_log_files
    out = out_dir / f"batch{suffix}"
    result = run(capsys, "select", *files.args(layout), "-o", out)
    assert result.code == 0, result.err
    assert result.err == ""
    frame = read_output(out)
    expected = _reference_keys(files)
    assert keys_of(frame, "prompt_id") == expected  # sorted by stage, prompt, cand
    assert frame.select("stage", "prompt_id").is_duplicated().sum() == 0  # one row per prompt
    # the prompt id is written as prompt_id, never as prompt (TRL's key of the text)
    assert frame.columns == [
        "stage",
        "prompt_id",
        "cand",
        "reward",
        "tokens",
        "prompt_text",
        "response",
        "uid",
    ]
    _check_rows(files, frame)
    assert f"wrote {len(expected)} selected response(s)" in result.out
    assert sorted(p.name for p in out_dir.iterdir()) == [out.name]  # no temporary left


@pytest.mark.parametrize("layout", LAYOUTS)
def test_one_stage(
    capsys: pytest.CaptureFixture[str], out_dir: Path, log_files: LogFiles, layout: str
) -> None:
    log = log_files.log
    expected = _reference_keys(log_files)
    stage = log.stage_ids[1]
    result = run(
        capsys, "select", *log_files.args(layout), "-o", out_dir / "s.parquet", "--stage", stage
    )
    assert result.code == 0, result.err
    assert keys_of(read_output(out_dir / "s.parquet"), "prompt_id") == [
        k for k in expected if k[0] == stage
    ]
    result = run(
        capsys, "select", *log_files.args(layout), "-o", out_dir / "last.jsonl", "--last-stage"
    )
    assert result.code == 0, result.err
    last = log.stage_ids[-1]
    assert keys_of(read_output(out_dir / "last.jsonl"), "prompt_id") == [
        k for k in expected if k[0] == last
    ]


def test_unknown_stage(
    capsys: pytest.CaptureFixture[str], out_dir: Path, log_files: LogFiles
) -> None:
    result = run(
        capsys, "select", *log_files.args("nested"), "-o", out_dir / "s.parquet", "--stage", "6"
    )
    assert_one_line_error(result, "--stage 6: no such stage")
    assert "5, 15, 25, 35" in result.err
    assert not any(out_dir.iterdir())
    both = run(
        capsys,
        "select",
        *log_files.args("nested"),
        "-o",
        out_dir / "s.parquet",
        "--stage",
        "5",
        "--last-stage",
    )
    assert_one_line_error(both, "not allowed with argument")


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_sft_columns(
    capsys: pytest.CaptureFixture[str], out_dir: Path, log_files: LogFiles, suffix: str, layout: str
) -> None:
    out = out_dir / f"sft{suffix}"
    result = run(
        capsys,
        "select",
        *log_files.args(layout),
        "-o",
        out,
        "--prompt-column",
        "prompt_text",
        "--response-column",
        "response",
    )
    assert result.code == 0, result.err
    frame = read_output(out)
    # the prompt id moves to prompt_id, prompt and completion hold the text
    assert frame.columns == [
        "stage",
        "prompt_id",
        "cand",
        "reward",
        "tokens",
        "prompt_text",
        "response",
        "uid",
        "prompt",
        "completion",
    ]
    assert keys_of(frame, "prompt_id") == _reference_keys(log_files)
    assert frame["prompt"].to_list() == frame["prompt_text"].to_list()
    assert frame["completion"].to_list() == frame["response"].to_list()
    _check_rows(log_files, frame)


def test_completion_only_keeps_prompt_ids(
    capsys: pytest.CaptureFixture[str], out_dir: Path, log_files: LogFiles
) -> None:
    out = out_dir / "c.parquet"
    result = run(
        capsys, "select", *log_files.args("nested"), "-o", out, "--response-column", "response"
    )
    assert result.code == 0, result.err
    frame = read_output(out)
    assert frame.columns[:3] == ["stage", "prompt_id", "cand"]
    assert frame["completion"].to_list() == frame["response"].to_list()


def test_sft_column_clashes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, out_dir: Path, log_files: LogFiles
) -> None:
    base = pl.read_parquet(log_files.nested)
    named = tmp_path / "named.parquet"
    base.rename({"response": "completion"}).write_parquet(named)
    # a payload column already called 'completion' is the completion: kept once
    result = run(
        capsys, "select", named, "-o", out_dir / "a.parquet", "--response-column", "completion"
    )
    assert result.code == 0, result.err
    frame = read_output(out_dir / "a.parquet")
    assert frame.columns.count("completion") == 1
    assert frame.columns[-1] == "completion"
    # ... but a different column cannot be copied onto it
    clash = run(capsys, "select", named, "-o", out_dir / "b.parquet", "--response-column", "uid")
    assert_one_line_error(clash, "already has a column 'completion'")
    ids = tmp_path / "ids.parquet"
    base.with_columns(pl.lit(1).alias("prompt_id")).write_parquet(ids)
    clash = run(
        capsys, "select", ids, "-o", out_dir / "c.parquet", "--prompt-column", "prompt_text"
    )
    assert_one_line_error(clash, "already has a column 'prompt_id'")
    missing = run(
        capsys,
        "select",
        log_files.nested,
        "-o",
        out_dir / "d.parquet",
        "--prompt-column",
        "question",
    )
    assert_one_line_error(missing, "--prompt-column 'question': no such column")
    assert not any(
        p.name.endswith((".parquet", ".jsonl")) and p.name != "a.parquet" for p in out_dir.iterdir()
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["--strategy", "top_n", "--n", "2"],
        ["--strategy", "global", "--fraction", "0.4"],
        ["--min-reward", "0.5"],
    ],
    ids=["top_n", "global", "min_reward"],
)
def test_strategies(
    capsys: pytest.CaptureFixture[str], out_dir: Path, string_log_files: LogFiles, argv: list[str]
) -> None:
    opts = dict(zip(argv[::2], argv[1::2], strict=True))
    expected, _ = reference_strategy(
        string_log_files.log,
        strategy=opts.get("--strategy", "best"),
        n=int(opts.get("--n", 1)),
        fraction=float(opts["--fraction"]) if "--fraction" in opts else None,
        min_reward=float(opts["--min-reward"]) if "--min-reward" in opts else None,
    )
    for layout in LAYOUTS:
        out = out_dir / f"{layout}.parquet"
        result = run(capsys, "select", *string_log_files.args(layout), "-o", out, *argv)
        assert result.code == 0, result.err
        frame = read_output(out)
        assert keys_of(frame, "prompt_id") == expected
        _check_rows(string_log_files, frame)


def test_refuses_to_overwrite(
    capsys: pytest.CaptureFixture[str], out_dir: Path, log_files: LogFiles
) -> None:
    out = out_dir / "batch.parquet"
    out.write_bytes(b"precious")
    result = run(capsys, "select", *log_files.args("nested"), "-o", out)
    assert_one_line_error(result, "exists; pass --force")
    assert out.read_bytes() == b"precious"
    result = run(capsys, "select", *log_files.args("nested"), "-o", out, "--force")
    assert result.code == 0, result.err
    assert keys_of(read_output(out), "prompt_id") == _reference_keys(log_files)
    assert sorted(p.name for p in out_dir.iterdir()) == ["batch.parquet"]


def test_bad_output_paths(
    capsys: pytest.CaptureFixture[str], out_dir: Path, log_files: LogFiles
) -> None:
    args = log_files.args("nested")
    assert_one_line_error(
        run(capsys, "select", *args, "-o", out_dir / "b.csv"), "cannot tell the output format"
    )
    assert_one_line_error(
        run(capsys, "select", *args, "-o", out_dir / "no" / "b.parquet"),
        "output directory does not exist",
    )
    (out_dir / "d.parquet").mkdir()
    assert_one_line_error(
        run(capsys, "select", *args, "-o", out_dir / "d.parquet", "--force"), "is a directory"
    )
    assert sorted(p.name for p in out_dir.iterdir()) == ["d.parquet"]
    assert not any((out_dir / "d.parquet").iterdir())


# --- a failed or interrupted run leaves nothing behind --------------------------------


def _failing_sink(exc: BaseException) -> Any:
    def sink(frame: Any, path: Any, **kwargs: Any) -> None:
        del frame, kwargs
        Path(path).write_bytes(b"PAR1 half a file")  # something was written already
        raise exc

    return sink


@pytest.mark.parametrize(
    "case",
    [(s, f) for s in FORMATS for f in (False, True)],
    ids=lambda c: f"{c[0][1:]}{'-force' if c[1] else ''}",
)
def test_interrupted_leaves_nothing(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    out_dir: Path,
    log_files: LogFiles,
    case: tuple[str, bool],
) -> None:
    suffix, force = case
    out = out_dir / f"batch{suffix}"
    if force:
        out.write_bytes(b"the previous batch")
    # Parquet goes through the package's checksummed writer, JSON lines through Polars
    owner: Any = raft_polars._export if suffix == ".parquet" else pl.LazyFrame
    method = "sink_parquet" if suffix == ".parquet" else "sink_ndjson"
    monkeypatch.setattr(owner, method, _failing_sink(KeyboardInterrupt()))
    result = run(
        capsys, "select", *log_files.args("long"), "-o", out, *(["--force"] if force else [])
    )
    assert result.code == 130
    assert result.err == "raft-polars: error: interrupted\n"
    if force:
        assert out.read_bytes() == b"the previous batch"  # untouched
        assert [p.name for p in out_dir.iterdir()] == [out.name]
    else:
        assert not any(out_dir.iterdir())


def test_failed_write_leaves_nothing(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    out_dir: Path,
    log_files: LogFiles,
) -> None:
    full = OSError(errno.ENOSPC, "No space left on device", "batch.parquet")
    monkeypatch.setattr(raft_polars._export, "sink_parquet", _failing_sink(full))
    result = run(capsys, "select", *log_files.args("nested"), "-o", out_dir / "batch.parquet")
    assert_one_line_error(result, "No space left on device")
    assert not any(out_dir.iterdir())
    # an unexpected error is a bug: it propagates, and still leaves nothing behind
    monkeypatch.setattr(raft_polars._export, "sink_parquet", _failing_sink(RuntimeError("bug")))
    with pytest.raises(RuntimeError, match="bug"):
        run(capsys, "select", *log_files.args("nested"), "-o", out_dir / "batch.parquet")
    assert not any(out_dir.iterdir())


@pytest.mark.parametrize("first", ["file:", "run:1", "C:", "hdfs:"])
def test_local_directories_named_like_urls(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first: str
) -> None:
    """A relative path whose first directory looks like a URL scheme is a local
    path: Polars and pyarrow took './file:/tmp/x' for '/tmp/x' (another log, read
    silently), 'run:1/' for a file system they do not know (validate: corrupt
    file; select -o and generate: tracebacks)."""
    monkeypatch.chdir(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    good = pl.DataFrame({"stage": [0, 0], "prompt": [0, 0], "cand": [0, 1], "reward": [0.1, 0.9],
                         "logprobs": [[-5.0], [-1.0]]})  # fmt: skip
    good.with_columns(pl.Series("reward", [0.9, 0.1])).write_parquet(elsewhere / "log.parquet")
    name = f"{first}{elsewhere}/log.parquet" if first == "file:" else f"{first}/log.parquet"
    (tmp_path / name).parent.mkdir(parents=True)
    good.write_parquet(tmp_path / name)  # absolute: Polars too reads "file:/..." as a URL
    result = run(capsys, "losses", name, "--format", "csv")
    assert result.code == 0, result.err
    assert result.out.splitlines()[1].split(",")[1] == "1.0"  # not 5.0, elsewhere's
    result = run(capsys, "validate", name)
    assert (result.code, result.out.strip().splitlines()[-1]) == (0, "no problems found")
    for out in (f"{first}/batch.parquet", f"{first}/batch.jsonl"):
        result = run(capsys, "select", name, "-o", out)
        assert result.code == 0, result.err
        assert read_output(tmp_path / out)["cand"].to_list() == [1]
    result = run(capsys, "generate", f"{first}/gen", "--stages", "1", "--prompts", "2")
    assert result.code == 0, result.err
    assert run(capsys, "losses", f"{first}/gen").code == 0


# --- an output the log would take in -------------------------------------------------------

# "ln": a directory on another disk linked into the tree, read through the link
_DIRS = ["", "a", "a/b", "_tmp", ".hid", "stage=1", "d.parquet", "d.parquet/_x", "ln"]
_PATTERNS = [
    "*", "*.parquet", "**/*.parquet", "**", "p?.parquet", "[op]*", "*/*", "_*/*", "**/_*", ".*/*",
    ".hid/*", "*/", "**/", "a/**", "*.parquet/*", "*/**", "_*/**",
]  # fmt: skip
_OUTS = ["out.parquet", "out.jsonl", "out.pq", "_out.parquet", ".out.parquet", "p1.parquet"]
# OUT's directory named otherwise: ".." after a link (the OS takes it from the link's
# target, "ln/.." is above the other disk), and from outside the tree ("@"): "@into"
# links to "a/b", "@st" is another link to the other disk, "@disk2" its real path
_OUT_DIRS = [*_DIRS, "ln/..", "@into/..", "@into", "@st", "@disk2"]


@settings(max_examples=80, deadline=None)
@given(
    logs=st.lists(st.sampled_from(_DIRS), min_size=1, max_size=3, unique=True),
    spec=st.tuples(st.sampled_from(_DIRS), st.one_of(st.none(), st.sampled_from(_PATTERNS))),
    out=st.tuples(st.sampled_from(_OUT_DIRS), st.sampled_from(_OUTS)),
)
@example(logs=[""], spec=("", None), out=("ln", "out.parquet"))
@example(logs=["a/b"], spec=("", None), out=("@into/..", "out.parquet"))  # is "a/out.parquet"
@example(logs=[""], spec=("", "*.parquet"), out=("ln/..", "out.parquet"))  # is not "out.parquet"
@example(logs=["ln"], spec=("", "*/*.parquet"), out=("@disk2", "out.parquet"))
@example(logs=["ln"], spec=("", "*/*.parquet"), out=("@st", "out.parquet"))
@example(logs=["ln"], spec=("", "*/*.parquet"), out=("ln", "out.parquet"))
@example(logs=["_tmp"], spec=("", "_*/**"), out=("", "_out.parquet"))  # "_*": directories only
def test_an_output_the_log_would_read_is_refused(
    tmp_path_factory: pytest.TempPathFactory,
    logs: list[str],
    spec: tuple[str, str | None],
    out: tuple[str, str],
) -> None:
    """``write_selected`` refuses an output that a later read of the source as
    given (a directory, a glob) would take for one of its parts, and only such
    an output: the oracle writes the file there and lists the source. A written
    output leaves the log's answer unchanged."""
    root = tmp_path_factory.mktemp("tree")
    log = pl.DataFrame(
        {"stage": [0, 0], "prompt": [0, 0], "cand": [0, 1], "reward": [0.1, 0.9],
         "logprobs": [[-1.0], [-2.0, -4.0]]}
    )  # fmt: skip
    disk2, outside = tmp_path_factory.mktemp("disk2"), tmp_path_factory.mktemp("outside")
    for where in _DIRS:
        if where == "ln":
            (root / where).symlink_to(disk2)
        else:
            (root / where).mkdir(parents=True, exist_ok=True)
    (outside / "into").symlink_to(root / "a" / "b")
    (outside / "st").symlink_to(disk2)
    for where in logs:
        log.write_parquet(root / where / "p0.parquet")
    source = str(root / spec[0]) + ("" if spec[1] is None else f"/{spec[1]}")
    named = {"@disk2": str(disk2)}.get(out[0], out[0].replace("@", f"{outside}/"))
    target = Path(str(root / named) + "/" + out[1])  # as written: no ".." dropped
    try:
        before = raft_polars.stage_losses(source)
    except raft_polars.RaftInputError:  # a glob matching no log file, a file it cannot read
        assume(False)
    if target.exists():
        assume(False)
    shutil.copy(root / logs[0] / "p0.parquet", target)  # the oracle: list the source with it
    try:
        taken = any(os.path.samefile(p, target) for p in local_files(source))
    except raft_polars.RaftInputError:
        taken = True  # the listing fails on it
    target.unlink()
    if taken:
        with pytest.raises(raft_polars.RaftInputError, match="would become a part of the log"):
            raft_polars.write_selected(source, target)
        assert not target.exists()
    else:
        assert raft_polars.write_selected(source, target) == 1
        assert raft_polars.stage_losses(source).equals(before)
        target.unlink()


@pytest.mark.parametrize(
    ("source", "out", "how"),
    [
        ("logs", "logs/batch.parquet", "lies in the source directory 'logs'"),
        ("logs/*.parquet", "logs/b.parquet", "matches the source glob 'logs/*.parquet'"),
        ("logs", "logs/deep/b.jsonl", "lies in the source directory 'logs'"),
    ],
)
def test_select_into_its_own_source_is_refused(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    source: str,
    out: str,
    how: str,
) -> None:
    """``select logs -o logs/batch.parquet`` (and ``stats --per-prompt``): one
    line naming the source, and the log still reads; ``logs/_batch.parquet`` is
    written."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "logs" / "deep").mkdir(parents=True)
    pl.DataFrame(
        {"stage": [0, 0], "prompt": [0, 0], "cand": [0, 1], "reward": [0.1, 0.9],
         "logprobs": [[-1.0], [-2.0]]}
    ).write_parquet(tmp_path / "logs" / "p0.parquet")  # fmt: skip
    for argv in (["select", source, "-o", out], ["stats", source, "--per-prompt", "-o", out]):
        result = run(capsys, *argv)
        assert_one_line_error(result, f"{out!r} would become a part of the log it is written from")
        assert how in result.err
        assert not Path(out).exists()
    ok = run(capsys, "select", source, "-o", "logs/_batch.parquet")
    assert ok.code == 0, ok.err
    assert run(capsys, "losses", source).code == 0


@pytest.mark.parametrize(
    ("source", "out", "how"),
    [
        ("logs", "logs/st1/batch.parquet", "lies in the source directory 'logs'"),
        ("logs", "disk2/st1/batch.parquet", "lies in the source directory 'logs'"),
        ("logs/*/*.parquet", "logs/st1/b.parquet", "matches the source glob 'logs/*/*.parquet'"),
        ("logs/**", "logs/st1/b.parquet", "matches the source glob 'logs/**'"),
    ],
)
def test_select_into_a_linked_directory_of_its_source_is_refused(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    source: str,
    out: str,
    how: str,
) -> None:
    """A stage directory linked into the log from another disk (``logs/st1 ->
    disk2/st1``) is read through the link: an output in it, named through the
    link or by its real path, is refused as one in the log itself (it was
    written, and the next read took it for a part of the log)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "logs").mkdir()
    (tmp_path / "disk2" / "st1").mkdir(parents=True)
    (tmp_path / "logs" / "st1").symlink_to(tmp_path / "disk2" / "st1")
    log = pl.DataFrame(
        {"stage": [0, 0], "prompt": [0, 0], "cand": [0, 1], "reward": [0.1, 0.9],
         "logprobs": [[-1.0], [-2.0]]}
    )  # fmt: skip
    log.write_parquet(tmp_path / "logs" / "p0.parquet")
    log.with_columns(stage=pl.lit(1)).write_parquet(tmp_path / "disk2" / "st1" / "p1.parquet")
    result = run(capsys, "select", source, "-o", out)
    assert_one_line_error(result, f"{out!r} would become a part of the log it is written from")
    assert how in result.err
    assert not Path(out).exists()
    ok = run(capsys, "select", source, "-o", "logs/st1/_batch.parquet")
    assert ok.code == 0, ok.err
    assert run(capsys, "losses", source).code == 0


@pytest.mark.parametrize("name", ["b.parquet", "b.jsonl"])
def test_select_to_a_name_with_dots_after_a_link(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """``-o ext/into/../b.parquet`` with ``ext/into -> logs/st1`` is the file
    ``logs/b.parquet``, as the OS resolves ``..`` after a link: written there,
    its rows counted from there (the command failed after writing it, reading
    back ``ext/b.parquet``), and nothing left in ``ext``."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "logs" / "st1").mkdir(parents=True)
    (tmp_path / "ext").mkdir()
    (tmp_path / "ext" / "into").symlink_to(tmp_path / "logs" / "st1")
    pl.DataFrame(
        {"stage": [0, 0, 1], "prompt": [0, 0, 0], "cand": [0, 1, 0], "reward": [0.1, 0.9, 0.5],
         "logprobs": [[-1.0], [-2.0], [-3.0]]}
    ).write_parquet(tmp_path / "src.parquet")  # fmt: skip
    result = run(capsys, "select", "src.parquet", "-o", f"ext/into/../{name}")
    assert result.code == 0, result.err
    assert "wrote 2 selected response(s)" in result.out
    assert read_output(tmp_path / "logs" / name)["cand"].to_list() == [1, 0]
    assert sorted(p.name for p in (tmp_path / "ext").iterdir()) == ["into"]


def test_a_glob_with_dots_after_a_link_is_read_where_the_os_reads_it(tmp_path: Path) -> None:
    """``run/link/../*`` with ``run/link -> other/st`` lists ``other/``: an OUT in
    ``run/`` is not taken by that read and is written (it was refused, the root
    collapsed as text to ``run/``); one in ``other/`` is refused."""
    (tmp_path / "run").mkdir()
    (tmp_path / "other" / "st").mkdir(parents=True)
    (tmp_path / "run" / "link").symlink_to(tmp_path / "other" / "st")
    pl.DataFrame(
        {"stage": [0, 0], "prompt": [0, 0], "cand": [0, 1], "reward": [0.1, 0.9],
         "logprobs": [[-1.0], [-2.0]]}
    ).write_parquet(tmp_path / "other" / "p0.parquet")  # fmt: skip
    source = str(tmp_path / "run" / "link" / ".." / "*.parquet")
    assert raft_polars.write_selected(source, tmp_path / "run" / "out.parquet") == 1
    with pytest.raises(raft_polars.RaftInputError, match="would become a part of the log"):
        raft_polars.write_selected(source, tmp_path / "other" / "out.parquet")
