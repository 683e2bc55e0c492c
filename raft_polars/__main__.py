"""``python -m raft_polars`` and the ``raft-polars`` command: the command line,
started so that Ctrl-C while it imports its libraries (the first ~0.3 s) ends
it with one line and exit status 130, as Ctrl-C does later, not a traceback."""

from __future__ import annotations

import sys


def main() -> None:
    """Import the command line, then run it."""
    try:
        from raft_polars.cli import entrypoint
    except KeyboardInterrupt:
        sys.stderr.write("raft-polars: error: interrupted\n")
        raise SystemExit(130) from None
    entrypoint()


if __name__ == "__main__":
    main()
