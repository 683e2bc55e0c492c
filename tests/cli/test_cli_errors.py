"""Bad usage and bad input: exit 2 and one line on stderr, never a traceback; --help."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from cli_helpers import Result, assert_one_line_error, run

import raft_polars

COMMANDS = ("losses", "select", "validate", "report", "generate")
DATA_COMMANDS = ("losses", "select", "validate", "report")


def _log() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "stage": [0, 0, 0, 1, 1],
            "prompt": [0, 0, 1, 0, 0],
            "cand": [0, 1, 0, 0, 1],
            "reward": [0.1, 0.9, 0.3, 0.2, 0.4],
            "logprobs": [[-1.0], [-0.5, -0.25], [-2.0], [-1.0, -1.0], [-0.1]],
        }
    )


def _long(frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    tokens = (
        frame.select("stage", "prompt", "cand", pl.col("logprobs").alias("logprob"))
        .explode("logprob")
        .drop_nulls("logprob")
        .with_columns(pl.int_range(pl.len()).over("stage", "prompt", "cand").alias("token"))
    )
    return tokens, frame.drop("logprobs")


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of broken logs, each named after what is wrong with it."""
    root = tmp_path_factory.mktemp("broken")
    good = _log()
    good.write_parquet(root / "good.parquet")
    data = (root / "good.parquet").read_bytes()
    (root / "truncated.parquet").write_bytes(data[: len(data) // 2])
    (root / "text.parquet").write_text("stage,prompt,cand,reward\n0,0,0,0.5\n")
    (root / "empty.parquet").write_bytes(b"")
    good.drop("reward").write_parquet(root / "no_reward.parquet")
    good.with_columns(pl.col("reward").cast(pl.String)).write_parquet(root / "str_reward.parquet")
    good.with_columns(reward=pl.Series([0.1, float("nan"), 0.3, 0.2, 0.4])).write_parquet(
        root / "nan_reward.parquet"
    )
    good.with_columns(
        logprobs=pl.Series([[-1.0], [-0.5, 0.25], [-2.0], [-1.0], [-0.1]])
    ).write_parquet(root / "positive_logprob.parquet")
    pl.concat([good, good.head(1)]).write_parquet(root / "dup_cand.parquet")
    good.with_columns(
        logprobs=pl.Series([[-1.0], [-0.5], [-2.0], [-1.0], []], dtype=pl.List(pl.Float64))
    ).write_parquet(root / "empty_stage.parquet")
    tokens, rewards = _long(good)
    tokens.write_parquet(root / "tokens.parquet")
    rewards.write_parquet(root / "rewards.parquet")
    pl.concat([tokens, tokens.head(1).with_columns(prompt=pl.lit(9, pl.Int64))]).write_parquet(
        root / "orphan_tokens.parquet"
    )
    rewards.with_columns(pl.col("prompt").cast(pl.String)).write_parquet(
        root / "str_prompt_rewards.parquet"
    )
    (root / "no_parquet_dir").mkdir()
    (root / "no_parquet_dir" / "notes.txt").write_text("nothing here")
    return root


# (argv after the command, fragment of the message); {d} is the broken directory
INPUT_CASES = {
    "missing file": (["{d}/nope.parquet"], "file not found: '{d}/nope.parquet'"),
    "truncated": (["{d}/truncated.parquet"], "cannot read Parquet file '{d}/truncated.parquet'"),
    "not parquet": (["{d}/text.parquet"], "cannot read Parquet file"),
    "empty file": (["{d}/empty.parquet"], "empty.parquet"),
    "missing column": (["{d}/no_reward.parquet"], "missing column(s) ['reward']"),
    "wrong type": (["{d}/str_reward.parquet"], "column 'reward' must be numeric, found String"),
    "long without --rewards": (["{d}/tokens.parquet"], "pass the rewards table with --rewards"),
    "missing rewards": (
        ["{d}/tokens.parquet", "--rewards", "{d}/nope.parquet"],
        "rewards: file not found",
    ),
    "directory without parquet": (["{d}/no_parquet_dir"], "holds no *.parquet or *.pq files"),
    "id kinds differ": (
        ["{d}/tokens.parquet", "--rewards", "{d}/str_prompt_rewards.parquet"],
        "ids must be of the same kind",
    ),
    "mapped column missing": (
        ["{d}/no_reward.parquet", "--column", "reward=score"],
        "columns= maps to ['score'], not found",
    ),
}

CONTENT_CASES = {  # bad values: errors for losses/select/report, problems for validate
    "nan reward": (["{d}/nan_reward.parquet"], "reward must be a finite number, found nan"),
    "duplicate candidate": (["{d}/dup_cand.parquet"], "duplicate candidate: stage 0, prompt 0"),
}

LOSS_CASES = {  # checked on the loss path (losses, report)
    "positive selected log-prob": (
        ["{d}/positive_logprob.parquet"],
        "log-prob of a selected response must be finite and <= 0, found 0.25",
    ),
    "stage without tokens": (
        ["{d}/empty_stage.parquet"],
        "stage 1: the 1 selected response(s) hold no tokens at all",
    ),
    "orphan tokens": (
        ["{d}/orphan_tokens.parquet", "--rewards", "{d}/rewards.parquet"],
        "1 token row(s) have no reward row",
    ),
}

USAGE_CASES = {
    "column syntax": (["{d}/good.parquet", "--column", "prompt"], "expected CANONICAL=THEIRS"),
    "column unknown": (
        ["{d}/good.parquet", "--column", "text=body"],
        "unknown canonical column 'text'",
    ),
    "column twice": (
        ["{d}/good.parquet", "--column", "prompt=a", "--column", "prompt=b"],
        "--column prompt= is given twice",
    ),
    "one column for two names": (
        ["{d}/good.parquet", "--column", "prompt=reward", "--column", "reward=reward"],
        "--column prompt=reward and --column reward=reward name the same column 'reward'",
    ),
    "global without fraction": (
        ["{d}/good.parquet", "--strategy", "global"],
        "--strategy global needs --fraction",
    ),
    "fraction without global": (
        ["{d}/good.parquet", "--fraction", "0.5"],
        "--fraction applies to --strategy global only",
    ),
    "n without top_n": (["{d}/good.parquet", "--n", "3"], "--n applies to --strategy top_n only"),
    "n zero": (
        ["{d}/good.parquet", "--strategy", "top_n", "--n", "0"],
        "argument --n: expected a whole number >= 1, got '0'",
    ),
    "fraction out of range": (
        ["{d}/good.parquet", "--strategy", "global", "--fraction", "1.5"],
        "expected a share in (0, 1]",
    ),
    "min reward not finite": (
        ["{d}/good.parquet", "--min-reward", "inf"],
        "expected a finite number, got 'inf'",
    ),
    "unknown strategy": (["{d}/good.parquet", "--strategy", "worst"], "invalid choice: 'worst'"),
    "no path": ([], "the following arguments are required: PATH"),
    "unknown option": (["{d}/good.parquet", "--verbose"], "unrecognized arguments: --verbose"),
}


def _run(
    capsys: pytest.CaptureFixture[str], command: str, argv: list[str], d: Path, tmp_path: Path
) -> Result:
    args = [a.format(d=d) for a in argv]
    if command == "select":
        args += ["-o", str(tmp_path / "out.parquet")]
    elif command == "report":
        args += ["-o", str(tmp_path / "out.png")]
    return run(capsys, command, *args)


def _check(result: Result, fragment: str, d: Path, tmp_path: Path) -> None:
    assert_one_line_error(result, fragment.format(d=d))
    assert not list(tmp_path.iterdir())  # no output file, no temporary


@pytest.mark.parametrize("command", DATA_COMMANDS)
@pytest.mark.parametrize("name", list(INPUT_CASES) + list(USAGE_CASES))
def test_bad_input_and_usage(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, broken: Path, command: str, name: str
) -> None:
    argv, fragment = {**INPUT_CASES, **USAGE_CASES}[name]
    _check(_run(capsys, command, argv, broken, tmp_path), fragment, broken, tmp_path)


@pytest.mark.parametrize("command", ["losses", "select", "report"])
@pytest.mark.parametrize("name", list(CONTENT_CASES))
def test_bad_values(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, broken: Path, command: str, name: str
) -> None:
    argv, fragment = CONTENT_CASES[name]
    _check(_run(capsys, command, argv, broken, tmp_path), fragment, broken, tmp_path)


@pytest.mark.parametrize("command", ["losses", "report"])
@pytest.mark.parametrize("name", list(LOSS_CASES))
def test_bad_values_on_the_loss_path(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, broken: Path, command: str, name: str
) -> None:
    argv, fragment = LOSS_CASES[name]
    _check(_run(capsys, command, argv, broken, tmp_path), fragment, broken, tmp_path)


@pytest.mark.parametrize("name", list(CONTENT_CASES) + list(LOSS_CASES))
def test_validate_reports_bad_values(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, broken: Path, name: str
) -> None:
    """What the other commands refuse, validate reports (exit 1)."""
    argv, _ = {**CONTENT_CASES, **LOSS_CASES}[name]
    result = _run(capsys, "validate", argv, broken, tmp_path)
    assert result.code == 1, result
    assert "kind(s) of problem found" in result.out


def test_dask_options_need_the_dask_engine(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, broken: Path
) -> None:
    for command in ("losses", "select"):
        result = _run(capsys, command, ["{d}/good.parquet", "--workers", "2"], broken, tmp_path)
        _check(result, "--scheduler and --workers need --engine dask", broken, tmp_path)


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        ([], "the following arguments are required: COMMAND"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["--frobnicate"], "the following arguments are required: COMMAND"),
    ],
)
def test_bad_commands(capsys: pytest.CaptureFixture[str], argv: list[str], fragment: str) -> None:
    assert_one_line_error(run(capsys, *argv), fragment)


@pytest.mark.parametrize(
    "argv",
    [
        ["select", "data.parquet", "-o", ""],
        ["report", "data.parquet", "-o", ""],
        ["stats", "data.parquet", "--per-prompt", "-o", ""],
    ],
)
def test_an_empty_output_path_is_named_so(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """An unset variable as OUT: said to be empty, not taken for '.'."""
    assert_one_line_error(run(capsys, *argv), "-o/--output: an empty path")


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help(capsys: pytest.CaptureFixture[str], command: str | None) -> None:
    result = run(capsys, *([command] if command else []), "--help")
    assert result.code == 0
    assert result.err == ""
    assert result.out.startswith(f"usage: raft-polars{' ' + command if command else ''} ")
    if command in DATA_COMMANDS:
        for option in ("--rewards", "--column", "--strategy", "--n", "--fraction", "--min-reward"):
            assert option in result.out
    if command in ("losses", "select"):
        for option in ("--engine", "--scheduler", "--workers"):
            assert option in result.out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import raft_polars

    result = run(capsys, "--version")
    assert result.code == 0
    assert result.out == f"raft-polars {raft_polars.__version__}\n"


def test_a_bug_is_not_hidden(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, broken: Path
) -> None:
    """Only user errors become exit 2; a bug in raft_polars keeps its traceback."""
    import raft_polars.api

    def boom(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("bug")

    monkeypatch.setattr(raft_polars.api, "stage_losses", boom)
    with pytest.raises(ZeroDivisionError):
        run(capsys, "losses", broken / "good.parquet")


SEED = Path(__file__).resolve().parents[2] / "data" / "seed" / "nested.parquet"


def _command(
    *argv: object, closed: int | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m raft_polars ARGV`` in a child process, its descriptor ``closed``
    (1: standard output, 2: standard error) closed before it starts."""
    return subprocess.run(
        [sys.executable, "-m", "raft_polars", *map(str, argv)],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, **(env or {})},
        preexec_fn=None if closed is None else lambda: os.close(closed),
    )  # fmt: skip


def test_standard_output_closed_is_one_error_line() -> None:
    """``raft-polars losses X >&-``: one error line and exit 2, not a traceback
    (sys.stdout is None) and exit 1, which means validate found problems."""
    done = _command("losses", SEED, closed=1)
    lines = done.stderr.splitlines()
    assert done.returncode == 2, done.stderr
    assert lines == ["raft-polars: error: standard output is closed: nothing could be printed"]


def test_standard_error_closed_still_answers() -> None:
    """``raft-polars losses X 2>&-`` (a cron job, a daemon): the table on standard
    output and exit 0 (sys.stderr is None: it printed nothing and exited 1)."""
    done = _command("losses", SEED, closed=2)
    assert done.returncode == 0
    assert done.stdout.splitlines()[0].split()[:2] == ["stage", "loss"]


def test_a_terminal_that_shows_only_ascii(tmp_path: Path) -> None:
    """Standard output that can encode only ASCII and a path that is not: validate
    reports a sound log (exit 0), the path escaped; it crashed with exit 1."""
    import shutil

    folder = tmp_path / "logs é 日本"
    folder.mkdir()
    shutil.copy(SEED, folder)
    done = _command("validate", folder, env={"PYTHONIOENCODING": "ascii"})
    assert done.returncode == 0, done.stderr
    assert "no problems found" in done.stdout


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("command", ["losses", "select", "report"])
def test_standard_output_on_a_full_disk(tmp_path: Path, command: str) -> None:
    """Standard output on a full disk (``> /dev/full``): exit 2 and one error line
    that says what failed, and, once OUT is complete, that it was written (it
    printed only "[Errno 28] No space left on device")."""
    out = tmp_path / ("out.html" if command == "report" else "out.parquet")
    argv = ("losses", SEED) if command == "losses" else (command, SEED, "-o", out)
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "raft_polars", *map(str, argv)],
            stdout=full, stderr=subprocess.PIPE, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    if command == "losses":
        assert lines == [
            "raft-polars: error: cannot write to standard output: No space left on device"
        ]
    else:
        assert lines == [
            f"raft-polars: error: wrote {out}, but cannot write to standard output: "
            "No space left on device"
        ]
        assert out.stat().st_size > 0
        if command == "select":
            assert (
                pl.read_parquet(out).height == raft_polars.select_best(str(SEED)).collect().height
            )


@pytest.mark.skipif(sys.platform == "win32", reason="resource limits")
@pytest.mark.parametrize(
    "command",
    ["select .parquet", "select .jsonl", "stats .jsonl", "report .html", "generate"],
)
def test_an_output_that_outgrows_the_disk_is_named(tmp_path: Path, command: str) -> None:
    """Writing OUT fails for want of room (here a 20 KiB file size limit, as a full
    disk or a quota does): one error line naming OUT (it said 'cannot read stage
    log source', or gave the bare errno), exit 2, nothing left behind."""
    import resource

    name, _, suffix = command.partition(" ")
    out = tmp_path / "out" / f"result{suffix}"
    out.parent.mkdir()
    log = Path(__file__).resolve().parents[2] / "data" / "synthetic"
    argv = {
        "select": ["select", log, "-o", out],
        "stats": ["stats", log, "--per-prompt", "-o", out],
        "report": ["report", log, "-o", out],
        "generate": ["generate", out, "--prompts", "2000"],
    }[name]

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (20 << 10, 20 << 10))

    done = subprocess.run(
        [sys.executable, "-m", "raft_polars", *map(str, argv)],
        capture_output=True, text=True, timeout=120, check=False, preexec_fn=limit,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        f"raft-polars: error: cannot write {str(out)!r}: File too large"
    ]
    assert list(out.parent.iterdir()) == []


def test_validate_json_with_the_loops_uncompiled() -> None:
    """NUMBA_DISABLE_JIT=1 (numba's debugging switch): the loops run as Python and
    return numpy integers, which made ``validate --json`` end in a traceback (not
    JSON serializable). The report is the compiled run's."""
    seed = SEED.parent
    argv = ("validate", seed / "tokens.parquet", "--rewards", seed / "rewards.parquet", "--json")
    plain = _command(*argv, env={"NUMBA_DISABLE_JIT": "1"})
    assert plain.returncode == 0, plain.stderr
    compiled = _command(*argv)
    assert json.loads(plain.stdout) == json.loads(compiled.stdout)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX locales")
def test_a_c_locale_names_the_locale_not_the_file(tmp_path: Path) -> None:
    """LC_ALL=C without UTF-8 mode gives Python an ASCII file system encoding: a
    UTF-8 file name was refused as "not UTF-8 ... rename it"; the error now says
    how to run Python (the name is fine)."""
    import shutil

    folder = tmp_path / "logs 日本"
    folder.mkdir()
    shutil.copy(SEED, folder / "seed.parquet")
    done = _command("losses", folder, env={"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0"})
    assert done.returncode == 2
    assert "PYTHONUTF8=1" in done.stderr, done.stderr
    assert "rename it" not in done.stderr
