"""Local glob patterns: the package's own matcher (``sources._glob``) against
Python's ``glob.glob(recursive=True)`` on random trees with links, hidden names
and broken links; and a recursive pattern through links back up, which Python's
glob follows without end, read in a bounded time."""

from __future__ import annotations

import fnmatch
import glob
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import nested_frame, reference_rounded

import raft_polars
from raft_polars._engine import sources

LPS = [[[[-1.0, -2.0], [-0.5]], [[-3.0], [-0.25, -0.75, -1.0]]], [[[-0.1], [-0.2, -0.3]]]]
RWS = [[[0.1, 0.9], [0.4, 0.4]], [[2.0, 1.0]]]
_NAMES = ["a", "b", "ab", ".h", "_u", "x=1", "a.parquet", "b.jsonl", "_c.parquet", ".d.pq"]
_PARTS = ["*", "**", "a", "b", "?", "[ab]*", ".*", "_*", "*.parquet", "*=*", "t", "l*", "*b", "."]


def _read_keeps(paths: Iterable[str], pattern: str) -> list[str]:
    """What a read keeps of a glob's paths: none with a name below the pattern's
    fixed part that begins with '.' or '_', unless a part of the pattern that
    begins so matches it (docs/semantics.md)."""
    first = min((i for i, ch in enumerate(pattern) if ch in "*?["), default=len(pattern))
    fixed = pattern[:first]
    root = Path(fixed if fixed.endswith("/") else os.path.dirname(fixed))
    spelled = [p for p in pattern.split("/") if p[:1] in ("_", ".")]
    kept = []
    for path in paths:
        below = Path(path).parts[len(root.parts) :] if str(root) != "." else Path(path).parts
        if not any(
            n[:1] in ("_", ".") and not any(fnmatch.fnmatchcase(n, p) for p in spelled)
            for n in below
        ):
            kept.append(path)
    return kept


def _identity(path: str) -> tuple[int, int]:
    try:
        seen = os.stat(path)
    except OSError:  # a link to nothing: the link itself
        seen = os.lstat(path)
    return seen.st_dev, seen.st_ino


def _first_names(paths: Iterable[str | Path]) -> dict[tuple[int, int], tuple[str, ...]]:
    """Each file or directory matched, by the first of its names in order (the
    one a read keeps)."""
    first: dict[tuple[int, int], tuple[str, ...]] = {}
    for path in paths:
        if not os.path.lexists(path):  # Python's glob gives 'b/' for 'b/**' with no b
            continue
        parts = Path(path).parts
        key = _identity(str(path))
        if key not in first or parts < first[key]:
            first[key] = parts
    return first


@st.composite
def _trees(draw: st.DrawFn) -> list[tuple[str, str]]:
    """A tree as (kind, path) entries: directories, files, and links from outside
    ``t/`` to directories and files in it or to nothing (so no loop)."""
    entries: list[tuple[str, str]] = [("dir", "t")]
    dirs = ["", "t"]
    for _ in range(draw(st.integers(1, 14))):
        parent = draw(st.sampled_from(dirs))
        name = draw(st.sampled_from(_NAMES))
        path = os.path.join(parent, name)
        if any(p == path for _, p in entries):
            continue
        if "." in name[1:]:  # a file's name
            entries.append(("file", path))
        else:
            entries.append(("dir", path))
            dirs.append(path)
    inside = [p for k, p in entries if k == "dir" and p.startswith("t/")] + ["t"]
    for _ in range(draw(st.integers(0, 4))):
        parent = draw(st.sampled_from([d for d in dirs if d != "t" and not d.startswith("t/")]))
        path = os.path.join(parent, draw(st.sampled_from(["l", "lb", "l.parquet", ".l"])))
        if any(p.split(">")[0] == path for _, p in entries):
            continue
        entries.append(("link", path + ">" + draw(st.sampled_from([*inside, "missing"]))))
    return entries


def _make(root: Path, entries: list[tuple[str, str]]) -> None:
    for kind, path in entries:
        if kind == "dir":
            (root / path).mkdir(parents=True, exist_ok=True)
        elif kind == "file":
            (root / path).write_bytes(b"x")
        else:
            at, target = path.split(">")
            (root / at).symlink_to(root / target)


@settings(max_examples=150, deadline=None)
@given(
    _trees(),
    st.lists(st.sampled_from(_PARTS), min_size=1, max_size=4),
    st.booleans(),
    st.booleans(),
)
def test_the_matcher_takes_what_pythons_glob_takes(
    entries: list[tuple[str, str]], parts: list[str], trailing: bool, relative: bool
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp).resolve()
        _make(root, entries)
        pattern = "/".join(parts) + ("/" if trailing else "")
        cwd = os.getcwd()
        if relative:
            os.chdir(root)
        else:
            pattern = f"{root}/{pattern}"
        try:
            want = _first_names(_read_keeps(glob.glob(pattern, recursive=True), pattern))
            spelled = [p for p in pattern.split("/") if p[:1] in ("_", ".")]
            got = _first_names(sources._glob(pattern, spelled))
        finally:
            os.chdir(cwd)
        assert got == want, pattern


def test_a_literal_pattern_part_is_looked_up(tmp_path: Path) -> None:
    """Parts without wildcards are taken by name, hidden ones and ``..`` too."""
    (tmp_path / "r" / "s").mkdir(parents=True)
    (tmp_path / "r" / ".h").mkdir()
    (tmp_path / "r" / ".h" / "f.parquet").write_bytes(b"x")
    (tmp_path / "r" / "s" / "g.parquet").write_bytes(b"x")
    for tail in ["*/.h/f.parquet", "*/s/../.h/*", "r/s/", "r/*/g.parquet", "*/s/"]:
        pattern = f"{tmp_path}/{tail}"
        want = _first_names(glob.glob(pattern, recursive=True))
        assert want
        assert _first_names(sources._glob(pattern)) == want, tail


def test_a_directory_first_named_by_a_hidden_name_is_read_by_its_other(tmp_path: Path) -> None:
    """'_run3' comes before 'latest' (a link to it) in order, and a read leaves
    '_run3' out: the directory is read as 'latest', as before the package
    matched globs itself; '../' after a wildcard likewise past a '_tmp'."""
    logs = tmp_path / "logs"
    (logs / "_run3").mkdir(parents=True)
    (logs / "_run3" / "log.parquet").write_bytes(b"x")
    (logs / "latest").symlink_to(logs / "_run3", target_is_directory=True)
    for tail in ("*/*.parquet", "**/*.parquet", "*"):
        assert sources.local_files(f"{logs}/{tail}") == [f"{logs}/latest/log.parquet"], tail
    out = str(logs / "_run3" / "out.parquet")
    assert sources.would_read(f"{logs}/*/*.parquet", out) is not None
    runs = tmp_path / "runs"
    for name in ("_tmp", "a", "shared"):
        (runs / name).mkdir(parents=True)
    (runs / "shared" / "log.parquet").write_bytes(b"x")
    got = sources.local_files(f"{runs}/*/../shared/*.parquet")
    assert got == [f"{runs}/a/../shared/log.parquet"]


def test_the_output_guard_takes_dot_dot_as_the_read_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """'..' after a wildcard is the OS's to resolve, through links too: an OUT the
    read would take once written is refused ('z/**/..' reads the directory
    above z). A hidden name spelled in the fixed part ('_t/') un-hides nothing
    below it, for the read as for the guard."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "z" / "c").mkdir(parents=True)
    (tmp_path / "b").mkdir()
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "l").symlink_to("../b", target_is_directory=True)
    for spec in ("z/**/..", "[!a]/**/.."):
        assert sources.would_read(spec, "new.parquet") is not None, spec
    (tmp_path / "new.parquet").write_bytes(b"x")
    for spec in ("z/**/..", "[!a]/**/.."):
        assert any(os.path.samefile(f, "new.parquet") for f in sources.local_files(spec))
    (tmp_path / "_t" / "_t").mkdir(parents=True)
    (tmp_path / "_t" / "run").mkdir()
    (tmp_path / "_t" / "run" / "part.parquet").write_bytes(b"x")
    assert sources.would_read("./_t/*", "_t/_t/new.parquet") is None
    (tmp_path / "_t" / "_t" / "new.parquet").write_bytes(b"x")
    assert sources.local_files("./_t/*") == ["_t/run/part.parquet"]


def test_dot_parts_neither_reorder_names_nor_lose_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A '.' part is no name in the order of names (Path drops it): with a link
    a/b/d -> a/c, a file is first reached as a/b/d/f.pq, as Python's glob and
    sorting give it; a relative '**/.' matches the working directory, '*/..' it
    too, by another name."""
    (tmp_path / "a" / "c").mkdir(parents=True)
    (tmp_path / "a" / "c" / "f.pq").write_bytes(b"x")
    (tmp_path / "a" / "b").mkdir()
    (tmp_path / "a" / "b" / "d").symlink_to(tmp_path / "a" / "c", target_is_directory=True)
    for tail in ("**/./*/*.pq", "a/**/./f.pq", "*/./*/./*/*.pq"):
        pattern = f"{tmp_path}/{tail}"
        want = _first_names(glob.glob(pattern, recursive=True))
        assert want
        assert _first_names(sources._glob(pattern)) == want, tail
    monkeypatch.chdir(tmp_path / "a" / "c")
    (tmp_path / "a" / "c" / "sub").mkdir()
    for pattern in ("**/.", "**/./", "*/..", "?ub/.."):
        want = _first_names(glob.glob(pattern, recursive=True))
        assert _first_names(sources._glob(pattern)) == want, pattern
        assert sources.local_files(pattern), pattern


def test_a_recursive_glob_through_links_back_up_is_read_once(tmp_path: Path) -> None:
    """Three directories each linking to the others and to the top: Python's glob
    follows the links again and again (paths exponential in the depth the OS
    allows, gigabytes); the read takes each file once, by its first name."""
    frame = nested_frame(LPS, RWS)
    top = tmp_path / "run"
    for name in ("a", "b", "c"):
        (top / name).mkdir(parents=True)
    frame.write_parquet(top / "a" / "log.parquet")
    for name in ("a", "b", "c"):
        for other in ("a", "b", "c"):
            (top / name / f"to_{other}").symlink_to(top / other, target_is_directory=True)
        (top / name / "up").symlink_to(top, target_is_directory=True)
    pattern = str(top / "**" / "*.parquet")
    listing = "import sys, raft_polars._engine.sources as s; print(s.local_files(sys.argv[1]))"
    run = subprocess.run(  # apart, in bounded time: Python's glob here grows without end
        [sys.executable, "-c", listing, pattern],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.stdout.strip() == repr([str(top / "a" / "log.parquet")]), run.stderr
    got = raft_polars.stage_losses(pattern)
    assert [round(x, 4) for x in got["loss"].to_list()] == reference_rounded(LPS, RWS)
