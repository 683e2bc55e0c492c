"""One local Dask cluster for the whole test run, made on first use.

The scheduler and the two workers (one thread each) run as separate processes
bound to 127.0.0.1 with no dashboard, so that nothing of theirs runs in the test
process (a scheduler thread there draws from the global ``random`` and upsets
hypothesis); the test process holds only a client. The cluster is stopped when
the test process exits, and on Linux also when it crashes (each Dask command is
sent SIGTERM when the test process ends). Nothing leaves the loopback interface.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_STATE: dict[str, Any] = {}


# Linux: the child asks for SIGTERM when the test process ends, however it ends (a
# native crash runs no atexit), then becomes the Dask command (the request outlives
# exec); a test process already gone by then ends the child at once
_ENDED_WITH_PARENT = """
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv[1]):
    sys.exit(0)
os.execv(sys.executable, [sys.executable, "-m", *sys.argv[2:]])
"""


def _dask(*args: str) -> list[str]:
    command = ["distributed.cli." + args[0], *args[1:]]
    if sys.platform.startswith("linux"):
        return [sys.executable, "-c", _ENDED_WITH_PARENT, str(os.getpid()), *command]
    return [sys.executable, "-m", *command]


def client() -> Any:
    """The shared ``distributed.Client`` (not made the default client)."""
    if "client" in _STATE:
        return _STATE["client"]
    from distributed import Client

    folder = Path(tempfile.mkdtemp(prefix="raft-dask-"))
    info = folder / "scheduler.json"
    env = {**os.environ, "POLARS_MAX_THREADS": "1", "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    procs = [
        subprocess.Popen(
            _dask(
                "dask_scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(info),
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
    ]
    _STATE["procs"] = procs
    _STATE["folder"] = folder
    atexit.register(shutdown)
    deadline = time.monotonic() + 60
    while not info.exists() or not info.read_text().strip():
        if time.monotonic() > deadline:
            raise RuntimeError("the Dask scheduler did not start")
        time.sleep(0.1)
    address = json.loads(info.read_text())["address"]
    procs.append(
        subprocess.Popen(
            _dask(
                "dask_worker",
                address,
                "--nworkers",
                "2",
                "--nthreads",
                "1",
                "--host",
                "127.0.0.1",
                "--no-dashboard",
                "--local-directory",
                str(folder),
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
    )
    # distributed's Client is not annotated
    active = Client(address, set_as_default=False, timeout=60)  # type: ignore[no-untyped-call]
    active.wait_for_workers(2, timeout=60)
    _STATE["client"] = active
    return active


def shutdown() -> None:
    """Close the client, stop the cluster's processes and remove their folder."""
    active = _STATE.pop("client", None)
    if active is not None:
        active.close()
    procs = _STATE.pop("procs", [])
    for proc in reversed(procs):
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    folder = _STATE.pop("folder", None)
    if folder is not None:  # the scheduler file and the workers' scratch space
        shutil.rmtree(folder, ignore_errors=True)


def engine() -> Any:
    """``engine=`` for the shared cluster."""
    from raft_polars.dask import DaskEngine

    return DaskEngine(client())
