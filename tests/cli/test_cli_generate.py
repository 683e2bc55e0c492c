"""``raft-polars generate``: deterministic synthetic logs, progress only on a terminal."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any, Literal

import polars as pl
import pytest
from cli_helpers import DATA, assert_one_line_error, run
from hypothesis import given, settings
from hypothesis import strategies as st

import raft_polars
import raft_polars.synth
from raft_polars.synth import generate

SHAPE = [
    "--stages",
    "3",
    "--prompts",
    "5",
    "--k",
    "3",
    "--min-tokens",
    "1",
    "--max-tokens",
    "6",
    "--seed",
    "42",
]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.parquet"))}


def test_nested_is_deterministic(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    first = run(capsys, "generate", tmp_path / "a", *SHAPE, "--payload")
    assert first.code == 0, first.err
    assert first.out == (
        f"wrote 3 file(s) to {tmp_path / 'a'} (nested layout: 3 stage(s) x "
        "5 prompt(s) x 3 candidate(s))\n"
    )
    assert first.err == ""  # stderr is not a terminal here: no progress bar
    assert run(capsys, "generate", tmp_path / "b", *SHAPE, "--payload").code == 0
    assert _files(tmp_path / "a") == _files(tmp_path / "b")  # byte-identical
    frame = pl.read_parquet(tmp_path / "a")
    assert frame.height == 3 * 5 * 3
    assert {"prompt_text", "response"} <= set(frame.columns)
    longest = frame["logprobs"].list.len().max()
    assert isinstance(longest, int)
    assert longest <= 6
    other = run(capsys, "generate", tmp_path / "c", *SHAPE[:-1], "43")
    assert other.code == 0
    assert _files(tmp_path / "c") != _files(tmp_path / "a")


def test_long_layout_is_the_same_log(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert run(capsys, "generate", tmp_path / "n", *SHAPE).code == 0
    result = run(capsys, "generate", tmp_path / "l", *SHAPE, "--layout", "long")
    assert result.code == 0, result.err
    assert sorted(p.name for p in (tmp_path / "l").iterdir()) == ["rewards", "tokens"]
    nested = run(capsys, "losses", tmp_path / "n", "--format", "json")
    long = run(
        capsys,
        "losses",
        tmp_path / "l" / "tokens",
        "--rewards",
        tmp_path / "l" / "rewards",
        "--format",
        "json",
    )
    assert nested.code == long.code == 0
    assert [r["loss"] for r in json.loads(long.out)] == [r["loss"] for r in json.loads(nested.out)]
    assert (
        run(
            capsys, "validate", tmp_path / "l" / "tokens", "--rewards", tmp_path / "l" / "rewards"
        ).code
        == 0
    )


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from raft_polars.cli import main

    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert main(["generate", str(tmp_path / "g"), *SHAPE, "--chunk-prompts", "2"]) == 0
    drawn = terminal.getvalue()
    assert drawn.count("\rgenerating [") == 3 * 3  # one redraw per chunk
    assert "100%" in drawn.splitlines()[-1]
    assert drawn.endswith("\n")


def test_refuses_a_non_empty_directory(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "old.parquet").write_bytes(b"old")
    assert_one_line_error(run(capsys, "generate", tmp_path / "g"), "is not empty")
    (tmp_path / "f").write_text("a file")
    assert_one_line_error(run(capsys, "generate", tmp_path / "f"), "is not a directory")
    assert run(capsys, "generate", tmp_path / "empty", "--stages", "1", "--prompts", "1").code == 0
    (tmp_path / "made").mkdir()  # an empty directory given: filled
    assert run(capsys, "generate", tmp_path / "made", "--stages", "1", "--prompts", "1").code == 0
    assert sorted(p.name for p in (tmp_path / "made").iterdir()) == ["part-s0000-c0000.parquet"]
    with pytest.raises(raft_polars.RaftInputError, match="is not empty"):  # the API alike
        generate(tmp_path / "g", stages=1, prompts=1)
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["old.parquet"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "f", "g", "made"]


def test_links_and_empty_names_as_out(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A link to an empty directory: the log is written into its target, the link
    kept (it was generated whole, then refused as 'appeared while writing'); a
    link to nothing and an empty name are refused before anything is written."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    result = run(capsys, "generate", "link", "--stages", "2", "--prompts", "3")
    assert result.code == 0, result.err
    assert (tmp_path / "link").is_symlink()
    assert sorted(p.name for p in (tmp_path / "real").iterdir()) == [
        "part-s0000-c0000.parquet",
        "part-s0001-c0000.parquet",
    ]
    assert raft_polars.stage_losses("link")["prompts"].to_list() == [3, 3]
    assert_one_line_error(run(capsys, "generate", "dangling"), "'dangling' is a symbolic link to")
    assert_one_line_error(run(capsys, "generate", ""), "OUT is an empty path")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "link", "real"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM"])
def test_a_killed_run_leaves_no_part_of_a_log(tmp_path: Path, sig: str) -> None:
    """``generate`` killed at moments spread over its writing: OUT is absent or
    the whole log (a part of it read as a whole log, without an error); what a
    ``kill -9`` left is hidden from reads of the parent and removed by the next
    write there, SIGTERM leaves nothing."""
    shape = ["--stages", "4", "--prompts", "30000", "--k", "4", "--max-tokens", "64",
             "--chunk-prompts", "4096"]  # fmt: skip
    killed = 0
    for number, delay in enumerate((0.3, 0.8, 1.5)):
        out = tmp_path / f"log{number}"
        proc = subprocess.Popen([sys.executable, "-m", "raft_polars", "generate", str(out), *shape])
        time.sleep(delay)
        proc.send_signal(getattr(signal, sig))
        code = proc.wait(timeout=120)
        if out.exists():  # done before the signal: the whole log
            assert code in (0, 128 + getattr(signal, sig), -getattr(signal, sig))
            assert raft_polars.stage_losses(str(out))["prompts"].to_list() == [30000] * 4
        left = [p.name for p in tmp_path.iterdir() if not p.name.startswith("log")]
        assert all(name.startswith(".raft-tmp-") for name in left)
        if sig == "SIGTERM":
            assert left == []
        killed += not out.exists()
    assert killed, "every run ended before its signal"
    assert run_generate(tmp_path / "next") == 0  # cleans up what a killed run left
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("log")) == ["next"]


def run_generate(out: Path) -> int:
    from raft_polars.cli import main

    return main(["generate", str(out), "--stages", "1", "--prompts", "1"])


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--k", "0"], "--k must be at least 1"),
        (
            ["--min-tokens", "5", "--max-tokens", "2"],
            "--max-tokens (2) must be at least --min-tokens",
        ),
        (["--layout", "wide"], "invalid choice: 'wide'"),
        (["--stages", "two"], "invalid int value: 'two'"),
        (["--max-tokens", str(10**19)], "--max-tokens must be at most 2,147,483,647"),
        (["--prompts", str(3 * 10**9)], "--prompts must be at most 2,147,483,647"),
        (["--chunk-prompts", "0"], "--chunk-prompts must be at least 1"),
        (["--min-tokens", "0"], "--min-tokens must be at least 1"),
    ],
)
def test_bad_shapes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], fragment: str
) -> None:
    assert_one_line_error(run(capsys, "generate", tmp_path / "g", *argv), fragment)
    assert not (tmp_path / "g").exists()


def test_a_negative_seed_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``generate --seed -1``: one error line and exit 2, nothing written (numpy's
    ValueError came through as a traceback, exit 1)."""
    out = tmp_path / "log"
    result = run(capsys, "generate", out, "--seed", "-1")
    assert_one_line_error(result, "--seed must be a non-negative integer")
    assert not out.exists()


@pytest.mark.parametrize("command", ["generate", "losses"])
def test_out_of_memory_is_one_error_line(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    command: str,
) -> None:
    """Options or an input that need more memory than the machine has (a response
    of 2 x 10^9 tokens: numpy cannot allocate it) end in one error line saying so,
    exit 2, nothing left behind; not a traceback."""
    import raft_polars.api
    import raft_polars.synth

    def too_big(*args: object, **kwargs: object) -> None:
        raise MemoryError("Unable to allocate 475. GiB for an array")

    monkeypatch.setattr(raft_polars.synth, "iter_chunks", too_big)
    monkeypatch.setattr(raft_polars.api, "stage_losses", too_big)
    if command == "generate":
        got = run(capsys, "generate", tmp_path / "g", "--max-tokens", "2000000000")
    else:
        got = run(capsys, "losses", "data/synthetic")
    assert_one_line_error(got, "out of memory (Unable to allocate 475. GiB")
    if command == "generate":  # the directory it made is gone
        assert list(tmp_path.iterdir()) == []


@settings(max_examples=30, deadline=None)
@given(
    shape=st.fixed_dictionaries(
        {
            "stages": st.integers(1, 2),
            "prompts": st.integers(1, 23),
            "k": st.integers(1, 3),
            "max_tokens": st.integers(1, 5),
            "seed": st.integers(0, 2**32),
        }
    ),
    chunk=st.integers(1, 30),
    small=st.fixed_dictionaries(
        {"BLOCK_PROMPTS": st.integers(1, 9), "PIECE_TOKENS": st.integers(1, 8)}
    ),
    layout=st.sampled_from(["nested", "long"]),
)
def test_the_log_does_not_depend_on_the_chunks(
    tmp_path_factory: pytest.TempPathFactory,
    shape: dict[str, Any],
    chunk: int,
    small: dict[str, int],
    layout: Literal["nested", "long"],
) -> None:
    """``chunk_prompts`` splits the files, nothing else: the rows are those of
    the log generated in one chunk, whatever the chunks and however they fall
    across the blocks of the random streams and the pieces the log-probs are
    drawn in (both made small here); one file per chunk of each stage."""
    root = tmp_path_factory.mktemp("gen")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in small.items():
            patch.setattr(raft_polars.synth, name, value)
        split = generate(root / "split", layout=layout, chunk_prompts=chunk, **shape)
        generate(root / "whole", layout=layout, chunk_prompts=shape["prompts"], **shape)
    chunks = -(-shape["prompts"] // chunk)
    assert len(split) == shape["stages"] * chunks * (2 if layout == "long" else 1)
    ids = ["stage", "prompt", "cand"]
    parts = {"tokens": [*ids, "token"], "rewards": ids} if layout == "long" else {".": ids}
    for part, keys in parts.items():
        got = pl.read_parquet(root / "split" / part).sort(keys)
        assert got.equals(pl.read_parquet(root / "whole" / part).sort(keys))


@pytest.mark.parametrize(
    ("block", "chunk"),
    [(4096, 16), (4096, 1000), (4096, 4096), (64, 200), (64, 1)],
)
def test_chunk_prompts_bounds_the_memory(
    monkeypatch: pytest.MonkeyPatch, block: int, chunk: int
) -> None:
    """A chunk's memory is its own tokens', not its blocks': the peak of what
    numpy allocates (traced) while the first chunk is generated is at most twice
    its log-probs, 128 bytes a candidate of the blocks it touches and a few
    pieces of float64 buffer. Each chunk was cut from whole blocks, each drawn
    in full in float64: 34 MB for a chunk of 16 prompts (26 kB of log-probs)."""
    monkeypatch.setattr(raft_polars.synth, "BLOCK_PROMPTS", block)
    k = 4
    tracemalloc.start()
    try:
        first = next(
            raft_polars.synth.iter_chunks(
                stages=1, prompts=4096, k=k, max_tokens=200, seed=0, chunk_prompts=chunk
            )
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(first.lengths) == chunk * k
    touched = -(-chunk // block) * block * k  # candidates of the blocks it touches
    pieces = 3 * raft_polars.synth.PIECE_TOKENS * 8
    assert peak <= 2 * first.logprob.nbytes + 128 * touched + pieces
    assert first.offsets is first.offsets  # computed once, not on every slice


@pytest.mark.parametrize("layout", ["nested", "long"])
def test_the_shipped_examples_are_what_generate_writes(
    tmp_path: Path, layout: Literal["nested", "long"]
) -> None:
    """``data/synthetic`` and ``data/synthetic_long`` hold what the README says made
    them (``generate --stages 4 --prompts 512 --k 4 --max-tokens 128 --seed 7
    --payload``), and every shipped Parquet file carries page checksums, as every
    file the package writes does (a flipped byte in a shipped log changed the
    losses while validate found nothing wrong)."""
    from raft_polars._engine import pages

    shipped = DATA / ("synthetic" if layout == "nested" else "synthetic_long")
    generate(tmp_path / "g", layout=layout, stages=4, prompts=512, k=4, max_tokens=128, seed=7,
             payload=True)  # fmt: skip
    names = sorted(p.relative_to(shipped) for p in shipped.rglob("*.parquet"))
    assert names == sorted(
        p.relative_to(tmp_path / "g") for p in (tmp_path / "g").rglob("*.parquet")
    )
    for name in names:
        assert pl.read_parquet(shipped / name).equals(pl.read_parquet(tmp_path / "g" / name))
    for path in DATA.rglob("*.parquet"):
        assert pages.verified(str(path)), path


def test_an_existing_empty_directory_is_written_into(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``generate .`` in an empty directory, or an empty directory another made
    (a mount point, a shell's working directory): the log is written into it,
    the directory itself kept (it was replaced by a rename: '.' was refused, a
    mount point failed, a shell in it saw nothing). A hidden temporary that a
    killed run left there does not make it 'not empty', and is removed."""
    here = tmp_path / "here"
    here.mkdir()
    before = here.stat().st_ino
    (here / ".raft-tmp-999999999-0123456789ab").mkdir()  # a dead process's
    monkeypatch.chdir(here)
    result = run(capsys, "generate", ".", "--stages", "1", "--prompts", "2")
    assert result.code == 0, result.err
    assert here.stat().st_ino == before
    assert sorted(p.name for p in here.iterdir()) == ["part-s0000-c0000.parquet"]
    assert raft_polars.stage_losses(".")["prompts"].to_list() == [2]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_run_killed_in_an_existing_directory_leaves_it_without_a_log(tmp_path: Path) -> None:
    """kill -9 while generate writes into an existing empty directory: the
    directory holds nothing a read takes (the parts are written in a hidden
    temporary inside it, moved in at the end), and the next run fills it."""
    out = tmp_path / "out"
    out.mkdir()
    shape = ["--stages", "4", "--prompts", "30000", "--k", "4", "--max-tokens", "64"]
    killed = 0
    for delay in (0.3, 0.8):
        proc = subprocess.Popen([sys.executable, "-m", "raft_polars", "generate", str(out), *shape])
        time.sleep(delay)
        proc.kill()
        proc.wait(timeout=120)
        names = [p.name for p in out.iterdir()]
        if any(not name.startswith(".raft-tmp-") for name in names):  # done before the kill
            assert raft_polars.stage_losses(str(out))["prompts"].to_list() == [30000] * 4
            return
        killed += 1
        with pytest.raises(raft_polars.RaftInputError, match="holds no"):
            raft_polars.stage_losses(str(out))
    assert killed
    assert run_generate(out) == 0
    assert sorted(p.name for p in out.iterdir()) == ["part-s0000-c0000.parquet"]
