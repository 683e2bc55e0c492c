"""``python -m raft_polars``: the ``raft-polars`` command line."""

from __future__ import annotations

from raft_polars.cli import entrypoint

if __name__ == "__main__":
    entrypoint()
