"""Where the compiled loops are cached: never inside the installed package.

numba's default (a ``__pycache__`` next to the module) put files pip does not
know into ``site-packages/raft_polars``; after an uninstall the directory stayed
and shadowed a later editable install. Each case runs a fresh interpreter with
its own cache directories, so the loops compile and are written there.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

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


@pytest.mark.skipif(sys.platform == "win32", reason="resource limits")
def test_a_cache_that_cannot_be_written_leaves_the_loops_uncached(tmp_path: Path) -> None:
    """A cache directory on a full disk (here a 20 KiB file size limit): the loops
    compile and run uncached (numba raised 'File too large' and every command
    failed, on a fresh machine in CI), and no partial cache file stays."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (20 << 10, 20 << 10))

    clean = {key: value for key, value in os.environ.items() if key != "NUMBA_CACHE_DIR"}
    done = subprocess.run(
        [sys.executable, "-c", _RUN], env={**clean, "XDG_CACHE_HOME": str(tmp_path)},
        capture_output=True, text=True, timeout=300, check=False, preexec_fn=limit,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == pytest.approx(reference_losses(LPS, RWS), abs=1e-12)
    assert not [p for p in tmp_path.rglob("*") if ".tmp." in p.name]


@pytest.mark.parametrize("damage", ["empty_index", "cut_index", "empty_data", "garbage_data"])
def test_a_damaged_cache_file_is_compiled_again(tmp_path: Path, damage: str) -> None:
    """A cache file left empty or cut short (a crash after a rename, a full disk,
    a copy) is a cache miss: the loops compile again, the command prints no
    traceback, gives the answer, and the cache is whole for the next process
    (numba raised ``EOFError`` at every later start)."""
    env = {"XDG_CACHE_HOME": str(tmp_path)}
    want = reference_losses(LPS, RWS)
    assert _run(env) == pytest.approx(want, abs=1e-12)
    suffix = ".nbi" if damage.endswith("index") else ".nbc"
    files = sorted(tmp_path.rglob(f"*{suffix}"))
    assert files
    for path in files:
        data = path.read_bytes()
        damaged = {"empty": b"", "cut": data[: len(data) // 2], "garbage": b"\x80\x05junk"}
        path.write_bytes(damaged[damage.split("_", maxsplit=1)[0]])
    clean = {key: value for key, value in os.environ.items() if key != "NUMBA_CACHE_DIR"}
    for _ in range(2):  # damaged, then healed
        done = subprocess.run(
            [sys.executable, "-c", _RUN], env={**clean, **env},
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr
        assert json.loads(done.stdout) == pytest.approx(want, abs=1e-12)
    indexes = sorted(tmp_path.rglob("*.nbi"))
    assert indexes
    assert all(path.stat().st_size > 0 for path in indexes)


def _module(path: Path, name: str) -> Any:
    path.write_text(f"def {name}(x):\n    return x + 1\n")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


def test_two_threads_decorating_at_once_cache_in_the_cache_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two loops decorated by two threads at once (the loops preloaded in the
    background while validate imports its own): the second read numba's cache
    setting outside the lock, took the first one's passing value for the user's,
    and the first one's reset, landing between numba's check of the setting and
    its read, put the second loop's cache in the working directory. numba's
    locator is held there, within that window, to make the interleaving sure."""
    from numba.core import caching

    from raft_polars._engine import _jit

    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    early, late = _module(tmp_path / "early.py", "early"), _module(tmp_path / "late.py", "late")
    first_in, second_in, first_done = threading.Event(), threading.Event(), threading.Event()
    original = caching.UserProvidedCacheLocator.get_suitable_cache_subpath.__func__  # type: ignore[attr-defined]

    def subpath(cls: Any, py_file: str) -> str:
        if Path(py_file).name == "early.py":  # the first thread, within the lock
            first_in.set()
            second_in.wait(2)  # until the second thread has read the setting (or 2 s)
        elif Path(py_file).name == "late.py":  # between numba's check and its read
            second_in.set()
            first_done.wait(30)
        got: str = original(cls, py_file)
        return got

    monkeypatch.setattr(
        caching.UserProvidedCacheLocator, "get_suitable_cache_subpath", classmethod(subpath)
    )
    done: dict[str, Any] = {}
    first = threading.Thread(target=lambda: done.update(early=_jit.njit()(early)))
    second = threading.Thread(target=lambda: done.update(late=_jit.njit()(late)))
    first.start()
    assert first_in.wait(30)
    second.start()
    first.join(60)
    first_done.set()
    second.join(60)
    for name in ("early", "late"):
        path = Path(done[name]._cache._cache_path)
        assert path.is_absolute(), path
        assert path.parent == _jit.cache_dir(), path
    assert list((tmp_path / "cwd").iterdir()) == []
