"""The shared test cluster (``tests/dask_cluster.py``) ends with the test process
that made it, however that process ends: a native crash runs no ``atexit``, and
its scheduler and workers were left running."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("distributed")

_CRASH = """
import os, sys
sys.path.insert(0, sys.argv[1])
import dask_cluster
client = dask_cluster.client()
assert len(client.scheduler_info()["workers"]) == 2
print(*(proc.pid for proc in dask_cluster._STATE["procs"]), flush=True)
os.abort()  # as a native crash ends a process: no atexit
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_cluster_ends_with_a_crashed_test_process() -> None:
    tests = str(Path(__file__).resolve().parents[1])
    done = subprocess.run(
        [sys.executable, "-c", _CRASH, tests], capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert done.returncode == -6, done.stderr  # SIGABRT
    pids = [int(p) for p in done.stdout.split()]
    assert len(pids) == 2  # the scheduler and the workers' command
    deadline = time.monotonic() + 30
    while any(map(_alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [pid for pid in pids if _alive(pid)]
    for pid in left:  # not to leave them to the rest of the run
        os.kill(pid, 9)
    assert not left
