"""Where the compiled loops are cached: never inside the installed package.

numba's default (a ``__pycache__`` next to the module) put files pip does not
know into ``site-packages/raft_polars``; after an uninstall the directory stayed
and shadowed a later editable install. Each case runs a fresh interpreter with
its own cache directories, so the loops compile and are written there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from reference import reference_losses

import raft_polars

LPS = [[[[-0.5, -1.25], [-2.0]], [[-0.75], [-0.1, -0.2, -0.3]]]]
RWS = [[[0.5, 1.5], [2.0, -1.0]]]

_RUN = f"import json, raft_polars; print(json.dumps(raft_polars.raft_alignment({LPS!r}, {RWS!r})))"


def _package_cache_files() -> set[Path]:
    return set(Path(raft_polars.__file__).parent.rglob("*.nb[ic]"))


def _run(env: dict[str, str]) -> list[float]:
    clean = {key: value for key, value in os.environ.items() if key != "NUMBA_CACHE_DIR"}
    done = subprocess.run(
        [sys.executable, "-c", _RUN],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: list[float] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize("numba_dir", [False, True], ids=["user-cache", "NUMBA_CACHE_DIR"])
def test_loops_are_cached_outside_the_package(tmp_path: Path, numba_dir: bool) -> None:
    before = _package_cache_files()
    xdg, user = tmp_path / "xdg", tmp_path / "numba"
    env = {"XDG_CACHE_HOME": str(xdg)}
    if numba_dir:
        env["NUMBA_CACHE_DIR"] = str(user)

    assert _run(env) == pytest.approx(reference_losses(LPS, RWS), abs=1e-12)

    chosen, other = (user, xdg) if numba_dir else (xdg / "raft_polars" / "numba", user)
    names = {path.name.split("-")[0] for path in chosen.rglob("*.nbi")}
    assert {"_compiled.best_of_nest", "_compiled.list_sums"} <= names
    assert not other.exists()
    assert _package_cache_files() == before  # nothing new next to the modules
    # a second process loads the loops from the same place
    assert _run(env) == pytest.approx(reference_losses(LPS, RWS), abs=1e-12)
