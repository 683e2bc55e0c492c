"""Ctrl-C (SIGINT) and SIGTERM at any moment of ``raft-polars select``, in a real
process: the command ends with 130 or 143 and one line at most, or it had
finished (0, the complete output); never a traceback, and never a partial
output or a temporary file left.

Python raises a signal's exception wherever the main thread runs Python code
next, and a callback that Polars' Rust code, pyo3 or ctypes called swallowed it
(exit 0 and a traceback), turned it into a panic (exit 1) or into an error
blaming a data file (exit 2); see ``raft_polars/_signals.py``."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import polars as pl
import pytest
from cli_helpers import REPO

DELAYS = 20
FIRST = 0.05  # s, where the process's handlers cannot be seen (no /proc)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "PYTHONWARNINGS")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["POLARS_MAX_THREADS"] = "1"  # one thread: callbacks from Rust on the main thread
    return env


def _started(pid: int) -> None:
    """Wait until the process handles SIGTERM (its first ~30 ms, the interpreter's
    own start, are nobody's to handle), or FIRST seconds where /proc is not."""
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        time.sleep(FIRST)
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            caught = next(x for x in status.read_text().splitlines() if x.startswith("SigCgt"))
            if int(caught.split()[1], 16) >> (signal.SIGTERM - 1) & 1:
                return
        time.sleep(0.001)


def _outcome(
    sig: str, delay: float, argv: list[str], out: Path, expected: pl.DataFrame
) -> tuple[str, str | None]:
    """The outcome of ``select`` signalled after ``delay`` s, and what is wrong with it."""
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=REPO
    )
    _started(proc.pid)
    time.sleep(delay)
    proc.send_signal(getattr(signal, sig))
    stdout, stderr = proc.communicate(timeout=120)
    code = proc.returncode
    left = sorted(p.name for p in out.parent.iterdir())
    complete = left == [out.name] and pl.read_parquet(out).equals(expected)
    for path in out.parent.iterdir():
        path.unlink()
    where = f"{sig} at {delay:.3f} s: exit {code}, left {left}, stderr {stderr[-600:]!r}"
    wanted = 130 if sig == "SIGINT" else 128 + signal.SIGTERM
    if code == 0:
        if stderr or not complete or not stdout.startswith("wrote "):
            return "0", f"finished, but not cleanly: {where}"
        return "0", None
    if code != wanted:
        return str(code), f"wrong exit: {where}"
    if len(stderr.splitlines()) > 1 or any(
        bad in stderr for bad in ("Traceback", "Exception ignored", "Err {")
    ):
        return str(code), f"more than one line: {where}"
    if left and not complete:
        return str(code), f"partial output: {where}"
    return str(code) + (" with the output" if left else ""), None


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_signal_at_any_moment_of_select_ends_it_cleanly(tmp_path: Path) -> None:
    """SIGINT and SIGTERM at 20 moments each, from the imports to the end."""
    log, outdir = tmp_path / "log", tmp_path / "out"
    outdir.mkdir()
    subprocess.run(
        [sys.executable, "-m", "raft_polars", "generate", str(log), "--stages", "4",
         "--prompts", "20000", "--k", "4", "--max-tokens", "64", "--payload"],
        check=True, capture_output=True, env=_env(), cwd=REPO, timeout=120,
    )  # fmt: skip
    out = outdir / "batch.parquet"
    argv = [sys.executable, "-m", "raft_polars", "select", str(log), "-o", str(out)]
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, env=_env(), cwd=REPO, timeout=120)
    whole = time.perf_counter() - start
    expected = pl.read_parquet(out)
    out.unlink()
    last = whole * 1.1  # the last delays let some runs finish
    delays = [i * last / (DELAYS - 1) for i in range(DELAYS)]
    seen: Counter[str] = Counter()
    problems = []
    for sig in ("SIGINT", "SIGTERM"):
        for delay in delays:
            outcome, problem = _outcome(sig, delay, argv, out, expected)
            seen[f"{sig} {outcome}"] += 1
            if problem is not None:
                problems.append(problem)
    print(dict(sorted(seen.items())))  # the outcomes, with -s
    assert not problems, f"{dict(seen)}\n" + "\n".join(problems)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_signal_after_the_result_of_a_dask_select_exits_0(tmp_path: Path, sig: str) -> None:
    """SIGTERM or Ctrl-C once ``select --engine dask`` has printed its result
    line (OUT complete), while the process ends (its local cluster's helper
    processes let go of it): exit 0, nothing on stderr, OUT complete. It was
    143 or 130, which say that no output is left, with OUT there."""
    pytest.importorskip("distributed")
    log = tmp_path / "log"
    subprocess.run(
        [sys.executable, "-m", "raft_polars", "generate", str(log), "--stages", "2",
         "--prompts", "50", "--k", "4"],
        check=True, capture_output=True, env=_env(), cwd=REPO, timeout=120,
    )  # fmt: skip
    plain = tmp_path / "plain.jsonl"
    subprocess.run(
        [sys.executable, "-m", "raft_polars", "select", str(log), "-o", str(plain)],
        check=True, capture_output=True, env=_env(), cwd=REPO, timeout=120,
    )  # fmt: skip
    out = tmp_path / "out.jsonl"
    argv = [sys.executable, "-m", "raft_polars", "select", str(log), "-o", str(out),
            "--engine", "dask", "--workers", "1"]  # fmt: skip
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=REPO
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the result: the command's work is done
    proc.send_signal(getattr(signal, sig))
    rest, stderr = proc.communicate(timeout=120)
    assert line == f"wrote 100 selected response(s) to {out}\n", (line, stderr)
    assert (proc.returncode, rest, stderr) == (0, "", "")
    assert out.read_bytes() == plain.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log", "out.jsonl", "plain.jsonl"]


def _spawned(pid: int) -> list[int]:
    """The multiprocessing children of ``pid`` (a local Dask cluster's workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            if parent == pid and b"spawn_main" in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers in /proc")
def test_a_dask_worker_killed_as_the_cluster_starts_is_one_line(tmp_path: Path) -> None:
    """A worker process of the local cluster killed (``kill -9``, the OOM killer)
    while the cluster starts: the command recovers (exit 0, the losses) or says
    so in one line (exit 2); it printed distributed's traceback and exited 1."""
    src = tmp_path / "log.parquet"
    pl.DataFrame(
        {"stage": [0, 0], "prompt": [0, 0], "cand": [0, 1], "reward": [0.1, 0.9],
         "logprobs": [[-1.0], [-2.0]]}
    ).write_parquet(src)  # fmt: skip
    argv = [sys.executable, "-m", "raft_polars", "losses", str(src), "--engine", "dask",
            "--workers", "2"]  # fmt: skip
    for _ in range(3):
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=REPO
        )
        deadline, killed = time.monotonic() + 60, False
        while not killed and proc.poll() is None and time.monotonic() < deadline:
            workers = _spawned(proc.pid)
            if workers:
                time.sleep(0.2)  # the worker process is starting
                with contextlib.suppress(ProcessLookupError):
                    os.kill(workers[-1], signal.SIGKILL)
                killed = True
            time.sleep(0.01)
        out, err = proc.communicate(timeout=120)
        assert "Traceback" not in err, err
        if proc.returncode == 2:
            assert err.startswith("raft-polars: error: the local Dask cluster"), err
            assert len(err.splitlines()) == 1, err
        else:
            assert proc.returncode == 0, err
            assert "2.0" in out
    assert killed
