"""Fixtures of the Dask tests: one local cluster for the whole session.

Two worker processes with one thread each, bound to 127.0.0.1, dashboard off:
nothing in these tests sends traffic beyond loopback.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("distributed")

# the shared helpers of tests/ (reference.py) and of this folder
for folder in (Path(__file__).parent, Path(__file__).parent.parent):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))


@pytest.fixture(scope="session")
def client() -> Iterator[Any]:
    """A ``distributed.Client`` on a local cluster of 2 worker processes."""
    from raft_polars.dask import connect

    with connect(workers=2) as active:
        yield active
