"""The installed command line as a real process: ``python -m raft_polars`` and the
``raft-polars`` console script next to the interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import cli_helpers
import polars as pl
import pytest
from cli_helpers import DATA, REPO, LogFiles
from reference import reference_selection

# the fixtures shared by the CLI tests (see cli_helpers)
log_files = cli_helpers.log_files


def _script() -> Path:
    for directory in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        for name in ("raft-polars", "raft-polars.exe"):
            if (directory / name).is_file():
                return directory / name
    pytest.skip("the raft-polars console script is not installed next to this Python")


def _run(*argv: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "PYTHONWARNINGS")}
    return subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
        check=False,
    )


def test_module_losses() -> None:
    done = _run(
        sys.executable,
        "-m",
        "raft_polars",
        "losses",
        "data/seed/nested.parquet",
        "--format",
        "json",
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert [r["loss"] for r in json.loads(done.stdout)] == [1.55, 0.55, 0.15]


def test_script_select(tmp_path: Path, log_files: LogFiles) -> None:
    out = tmp_path / "batch.jsonl"
    done = _run(
        _script(),
        "select",
        log_files.tokens,
        "--rewards",
        log_files.rewards,
        "-o",
        out,
        "--prompt-column",
        "prompt_text",
        "--response-column",
        "response",
    )
    assert done.returncode == 0, done.stderr
    frame = pl.read_ndjson(out)
    log = log_files.log
    expected = [log.key(t, i, j) for t, i, j in reference_selection(log.rws)]
    assert list(frame.select("stage", "prompt_id", "cand").iter_rows()) == expected
    assert frame["completion"].to_list() == [log.payload(k)["response"] for k in expected]
    # a second run refuses to replace the batch
    again = _run(_script(), "select", log_files.nested, "-o", out)
    assert again.returncode == 2
    assert again.stderr == f"raft-polars: error: {str(out)!r} exists; pass --force to replace it\n"


def test_script_errors_and_exit_codes(tmp_path: Path) -> None:
    broken = tmp_path / "broken.parquet"
    broken.write_bytes((DATA / "seed" / "nested.parquet").read_bytes()[:200])
    done = _run(_script(), "losses", broken)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("raft-polars: error: cannot read Parquet file")
    assert done.stderr.count("\n") == 1
    bad = tmp_path / "bad.parquet"
    pl.read_parquet(DATA / "seed" / "nested.parquet").with_columns(
        reward=pl.lit(float("nan"))
    ).write_parquet(bad)
    found = _run(_script(), "validate", bad, "--json")
    assert found.returncode == 1
    assert json.loads(found.stdout)["problems"][0]["count"] == 6


def test_script_report_and_generate(tmp_path: Path) -> None:
    gen = _run(_script(), "generate", tmp_path / "log", "--stages", "3", "--prompts", "8")
    assert gen.returncode == 0, gen.stderr
    assert gen.stderr == ""  # not a terminal: no progress bar
    png = tmp_path / "report.png"
    done = _run(_script(), "report", tmp_path / "log", "-o", png)
    assert done.returncode == 0, done.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_broken_pipe_is_quiet(tmp_path: Path) -> None:
    """``raft-polars losses ... | head -1``: no traceback when the reader goes away."""
    stages = 3000  # a table far larger than a pipe's buffer
    pl.DataFrame(
        {
            "stage": range(stages),
            "prompt": [0] * stages,
            "cand": [0] * stages,
            "reward": [1.0] * stages,
            "logprobs": [[-1.0]] * stages,
        }
    ).write_parquet(tmp_path / "log.parquet")
    with subprocess.Popen(
        [str(_script()), "losses", str(tmp_path / "log.parquet")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        proc.stdout.readline()
        proc.stdout.close()
        err = proc.stderr.read()
        code = proc.wait(timeout=120)
    assert b"Traceback" not in err
    assert code == 0


@pytest.mark.parametrize("value", ["0", "00", " 0"])
def test_polars_max_threads_zero_is_named(value: str) -> None:
    """``POLARS_MAX_THREADS=0`` makes Polars' reader fail on the first file (it
    read as a fault of the data file, exit 2): the error names the variable,
    for files and for frames; 1 still runs, and the nested lists need no read."""
    code = (
        "import raft_polars as rp, polars as pl\n"
        "frame = pl.DataFrame({'stage': [0], 'prompt': [0], 'cand': [0], 'reward': [1.0],\n"
        "                      'logprobs': [[-1.0]]})\n"
        "print(rp.raft_alignment([[[[-1.0], [-2.0]]]], [[[1.0, 0.5]]]))\n"
        "try:\n"
        "    rp.stage_losses(frame)\n"
        "except rp.RaftPolarsError as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    env = {**os.environ, "POLARS_MAX_THREADS": value}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    first, error = done.stdout.splitlines()
    assert first == "[1.0]"
    assert error.startswith("RaftPolarsError the environment sets POLARS_MAX_THREADS=")
    cli = subprocess.run(
        [sys.executable, "-m", "raft_polars", "losses", "data/seed/nested.parquet"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert cli.returncode == 2
    assert "POLARS_MAX_THREADS" in cli.stderr
    assert "nested.parquet" not in cli.stderr
    env["POLARS_MAX_THREADS"] = "1"
    one = subprocess.run(
        [sys.executable, "-m", "raft_polars", "losses", "data/seed/nested.parquet"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr


@pytest.mark.parametrize("value", ["0", "-1", " -3"])
def test_numba_num_threads_below_one_is_named(value: str) -> None:
    """``NUMBA_NUM_THREADS`` below 1, which numba refuses at its import (a
    traceback, the error lost in the thread that loads the compiled loops
    ahead, then "cannot import name"): one error that names the variable, from
    the CLI (exit 2), the frame API and the nested-list API; a value numba
    ignores (text) still runs."""
    code = (
        "import raft_polars as rp\n"
        "for call in (lambda: rp.stage_losses('data/seed/nested.parquet'),\n"
        "             lambda: rp.raft_alignment([[[[-1.0], [-2.0]]]], [[[1.0, 0.5]]])):\n"
        "    try:\n"
        "        print(call())\n"
        "    except rp.RaftPolarsError as exc:\n"
        "        print(type(exc).__name__, exc)\n"
    )
    env = {**os.environ, "NUMBA_NUM_THREADS": value}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
        cwd=REPO, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2
    assert all(
        line.startswith("RaftPolarsError ") and "NUMBA_NUM_THREADS" in line for line in lines
    )
    cli = subprocess.run(
        [sys.executable, "-m", "raft_polars", "losses", "data/seed/nested.parquet"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert cli.returncode == 2
    assert cli.stderr.startswith("raft-polars: error: the environment sets NUMBA_NUM_THREADS=")
    assert len(cli.stderr.splitlines()) == 1
    env["NUMBA_NUM_THREADS"] = "many"
    one = subprocess.run(
        [sys.executable, "-m", "raft_polars", "losses", "data/seed/nested.parquet"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr


_CTRL_C_IN_IMPORTS = """
import builtins, sys
real = builtins.__import__
def ctrl_c(name, *args, **kwargs):  # Ctrl-C as Polars is being imported
    if name == "polars" or name.startswith("polars."):
        raise KeyboardInterrupt
    return real(name, *args, **kwargs)
builtins.__import__ = ctrl_c
sys.argv = ["raft-polars", "losses", "data/seed/nested.parquet"]
from raft_polars.__main__ import main
main()
"""


def test_ctrl_c_while_importing_is_one_line() -> None:
    """Ctrl-C in the first ~0.3 s, while the command imports Polars: one line
    and exit status 130, as later (it was Python's traceback); ``import
    raft_polars`` itself imports none of the heavy libraries."""
    done = subprocess.run(
        [sys.executable, "-c", _CTRL_C_IN_IMPORTS], capture_output=True, text=True, cwd=REPO,
        timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 130, done.stderr
    assert done.stderr == "raft-polars: error: interrupted\n"
    light = subprocess.run(
        [sys.executable, "-c", "import sys, raft_polars; print(sorted({'polars', 'pyarrow', "
         "'numpy'} & set(sys.modules)), raft_polars.stage_losses.__module__)"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert light.stdout.split() == ["[]", "raft_polars.api"], light.stderr


_EVERY_MODULE_THEN_NAMES = """
import importlib, pkgutil, raft_polars
for found in pkgutil.walk_packages(raft_polars.__path__, "raft_polars."):
    if found.name not in ("raft_polars.__main__",):
        importlib.import_module(found.name)
wrong = [n for n in raft_polars.__all__
         if type(getattr(raft_polars, n)).__name__ == "module"
         or getattr(raft_polars, n).__name__ != n]
print(wrong)
"""


def test_no_submodule_shadows_a_public_name() -> None:
    """With the names imported on first use, a submodule named like a public
    name would replace it once imported (``raft_polars.validate`` became the
    module, 'module' object is not callable): every submodule imported, each
    public name is still its function or class."""
    done = subprocess.run(
        [sys.executable, "-c", _EVERY_MODULE_THEN_NAMES], capture_output=True, text=True,
        cwd=REPO, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
