"""Polars' Rust panics in the command line: one ``raft-polars: error:`` line that
names the file, without the report (and backtrace) Rust's panic hook writes to
file descriptor 2; everything else native code writes there still comes through."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from raft_polars._native_stderr import PanicFilter

PANICKING = Path(__file__).resolve().parents[1] / "data" / "v2_page_polars_panics.parquet"

# Rust's panic reports as its hook writes them: no RUST_BACKTRACE, =1, =full
REPORTS = [
    "\nthread 'async-executor-1' (1332) panicked at crates/a.rs:418:9:\n"
    "assertion `left == right` failed\n  left: 119\n right: 120\n"
    "note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n",
    "\nthread 'tokio-rt-worker' (7) panicked at crates/b.rs:1:2:\nInvalid argument\n"
    "stack backtrace:\n   0: __rustc::rust_begin_unwind\n   1: core::panicking::panic_fmt\n"
    "note: Some details are omitted, run with `RUST_BACKTRACE=full` for a verbose backtrace.\n",
    "\nthread '<unnamed>' panicked at src/c.rs:3:4:\nboom\nstack backtrace:\n"
    "   0:     0x7f00 - std::backtrace::x\n                               at /rustc/std.rs:1:2\n",
]

ordinary = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\n\r"), max_size=30
).filter(lambda line: not line.startswith(("thread '", " ", "\t")) and line.strip() != "")


@given(
    st.lists(
        st.one_of(
            ordinary.map(lambda line: ("keep", line + "\n")),
            st.just(("keep", "\n")),
            st.sampled_from(REPORTS).map(lambda report: ("drop", report)),
        ),
        max_size=12,
    )
)
def test_the_filter_drops_panic_reports_and_keeps_the_rest(
    pieces: list[tuple[str, str]],
) -> None:
    """Plain lines (blank ones too) interleaved with panic reports of every
    backtrace setting: the plain lines come out, in order, and nothing of the
    reports."""
    screen = PanicFilter()
    text = "".join(piece for _, piece in pieces)
    *whole, last = text.split("\n")  # as the relay splits what it reads
    raws = [raw + "\n" for raw in whole] + ([last] if last else [])
    out = [line for raw in raws for line in screen.lines(raw)]
    out += screen.close()
    kept = [piece for kind, piece in pieces if kind == "keep"]
    assert [line for line in out if line.strip()] == [line for line in kept if line.strip()]
    # a blank line just before a report may be the report's (Rust writes one): no
    # more blank lines come out than went in as plain lines
    assert out.count("\n") <= kept.count("\n")
    assert "panicked" not in "".join(out)


def _cli(*argv: str, backtrace: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RUST_BACKTRACE", "COLUMNS")}
    if backtrace is not None:
        env["RUST_BACKTRACE"] = backtrace
    return subprocess.run(
        [sys.executable, "-m", "raft_polars", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        check=False,
    )


@pytest.mark.parametrize("backtrace", [None, "0", "1", "full"])
@pytest.mark.parametrize("command", ["losses", "select", "stats"])
def test_a_polars_panic_is_one_error_line(tmp_path: Path, command: str, backtrace: str) -> None:
    argv = [command, str(PANICKING)]
    if command == "select":
        argv += ["-o", str(tmp_path / "out.parquet")]
    result = _cli(*argv, backtrace=backtrace)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("raft-polars: error: ")
    assert "v2_page_polars_panics.parquet" in lines[0]
    assert "Polars' reader failed on it" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_a_polars_panic_on_dask_workers_is_one_error_line() -> None:
    result = _cli("losses", str(PANICKING), "--engine", "dask", "--workers", "1", backtrace="1")
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if "panicked" in line]
    assert errors == []
    assert "raft-polars: error: " in result.stderr
    assert "v2_page_polars_panics.parquet" in result.stderr


def test_what_native_code_writes_still_comes_through() -> None:
    code = (
        "import os, sys\n"
        "from raft_polars._native_stderr import without_panic_reports\n"
        "with without_panic_reports():\n"
        "    os.write(2, b'native one\\n')\n"
        "    print('python', file=sys.stderr)\n"
        "    os.write(2, b\"\\nthread 'x' panicked at a.rs:1:2:\\nboom\\nnote: run with\\n\")\n"
        "    os.write(2, b'native two\\n')\n"
        "print('after', file=sys.stderr)\n"
        "os.write(2, b'fd 2 is back\\n')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    lines = result.stderr.splitlines()
    assert sorted(lines[:3]) == ["native one", "native two", "python"]  # two streams
    assert lines[3:] == ["after", "fd 2 is back"]
