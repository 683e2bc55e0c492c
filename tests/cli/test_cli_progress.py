"""Progress (issue 12 item 8): long commands redraw a line on stderr when it is a
terminal (checked on a real pseudo-terminal), and print nothing when it is not or
with --quiet; the library itself prints nothing and reports to a receiver."""

from __future__ import annotations

import os
import pty
import subprocess
import sys

import polars as pl
import pytest
from cli_helpers import DATA, run

import raft_polars as rp
from raft_polars._progress import reporting

LONG = ["losses", str(DATA / "synthetic_long" / "tokens"),
        "--rewards", str(DATA / "synthetic_long" / "rewards")]  # fmt: skip
VALIDATE = ["validate", *LONG[1:]]


def _on_terminal(
    argv: list[str], *, stdout_too: bool = False, columns: int | None = None
) -> tuple[int, str]:
    """Run the CLI with stderr (and stdout, with ``stdout_too``) on a
    pseudo-terminal (``columns`` wide, when given); what the terminal saw."""
    main, follower = pty.openpty()
    env = {**os.environ, "COLUMNS": str(columns)} if columns else None
    done = subprocess.run(
        [sys.executable, "-m", "raft_polars", *argv],
        stdout=follower if stdout_too else subprocess.PIPE, stderr=follower,
        timeout=120, check=False, env=env,
    )  # fmt: skip
    os.close(follower)
    seen = b""
    try:
        while chunk := os.read(main, 65536):
            seen += chunk
    except OSError:  # the follower is closed: everything was read
        pass
    os.close(main)
    return done.returncode, seen.decode(errors="replace")


def test_progress_on_a_terminal() -> None:
    code, seen = _on_terminal(LONG)
    assert code == 0
    assert "raft-polars: ranked 8,192 candidates" in seen
    assert seen.endswith("\r\x1b[K")  # the line is cleared at the end


def test_the_progress_line_fits_a_narrow_terminal() -> None:
    """On a terminal 40 columns wide each drawn line takes at most 39: a longer
    one wrapped, and the clearing before the next reached its last row only."""
    code, seen = _on_terminal(LONG, columns=40)
    assert code == 0
    lines = [line for line in seen.split("\r\x1b[K") if line]
    assert lines
    assert all(len(line) <= 39 for line in lines), lines
    assert any(line.endswith("...") for line in lines)


def test_the_result_begins_on_a_clear_line() -> None:
    """stdout and stderr on one terminal: the progress line is cleared before
    the result is printed (it was cleared after, the table's first line glued to
    the progress text)."""
    code, text = _on_terminal(LONG, stdout_too=True)
    assert code == 0
    assert "raft-polars: ranked" in text
    assert text[: text.index("stage ")].endswith("\r\x1b[K")


def test_quiet_on_a_terminal() -> None:
    code, seen = _on_terminal([*LONG, "--quiet"])
    assert code == 0
    assert seen == ""


def test_nothing_when_not_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    result = run(capsys, *LONG)
    assert result.code == 0
    assert result.err == ""


def test_the_library_reports_to_a_receiver() -> None:
    heard: list[str] = []
    with reporting(heard.append):
        rp.stage_losses(str(DATA / "synthetic"))
    assert heard
    assert heard[0].startswith("ranked 8,192 candidates")


def _token_rows() -> int:
    rows: int = (
        pl.scan_parquet(DATA / "synthetic_long" / "tokens").select(pl.len()).collect().item()
    )
    return rows


@pytest.mark.parametrize(
    ("argv", "shown"),
    [
        (VALIDATE, ["checked 8,192 candidates", f"checked {_token_rows():,} token rows"]),
        (["validate", str(DATA / "synthetic")], ["read ", "checked 8,192 candidates"]),
    ],
    ids=["long", "nested"],
)
def test_validate_on_a_terminal(argv: list[str], shown: list[str]) -> None:
    """validate draws its passes (candidates checked, token rows or candidate
    rows so far) as losses does, and clears the line."""
    code, seen = _on_terminal(argv)
    assert code == 0
    for text in shown:
        assert f"raft-polars: {text}" in seen
    assert seen.endswith("\r\x1b[K")


def test_validate_quiet_or_not_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    code, seen = _on_terminal([*VALIDATE, "--quiet"])
    assert (code, seen) == (0, "")
    result = run(capsys, *VALIDATE)
    assert (result.code, result.err) == (0, "")


def test_validate_reports_every_token_row() -> None:
    """The token pass (a thread of its own) reports to the caller's receiver;
    its last count is the token rows of the files."""
    heard: list[str] = []
    with reporting(heard.append):
        rp.validate(DATA / "synthetic_long" / "tokens", rewards=DATA / "synthetic_long" / "rewards")
    counts = [m for m in heard if "token rows" in m]
    assert counts
    assert counts[-1].startswith(f"checked {_token_rows():,} token rows")
