"""``python -m raft_polars`` and the ``raft-polars`` command: the command line,
started so that Ctrl-C while it imports its libraries (the first ~0.3 s) ends
it with one line and exit status 130, as Ctrl-C does later, not a traceback:
the ending on signals (:mod:`raft_polars._signals`) is installed first, and
stays until the process is gone (it ends without the interpreter's
finalization, during which Python gives the signals back their defaults)."""

from __future__ import annotations

import sys


def main() -> None:
    """Install the ending on signals, import the command line, then run it."""
    from raft_polars._signals import exit_now, hold_if_signalled, install

    install()
    try:
        from raft_polars.cli import entrypoint
    except KeyboardInterrupt:  # one that came before the ending was installed
        hold_if_signalled()
        sys.stderr.write("raft-polars: error: interrupted\n")
        raise SystemExit(130) from None
    try:
        entrypoint()
    except SystemExit as end:
        code = end.code
    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message") prints it, exit 1
        sys.stderr.write(f"{code}\n")
        code = 1
    exit_now(code)


if __name__ == "__main__":
    main()
