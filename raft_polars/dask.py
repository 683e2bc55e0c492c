"""Dask: run raft_polars on a ``distributed`` cluster.

Every function that reads a log takes ``engine="dask"`` (use the current
client, the one a ``with Client(...)`` block made current, or start a local
cluster for the call) or ``engine=DaskEngine(...)`` (an explicit client, a
scheduler address, or a local cluster of a given size). The answers, return
types and error messages are those of the default engine; how the work is split
is described in ``docs/distributed.md``. This module holds only what is
Dask-specific: connecting and sizing. Dask is optional: install it with
``pip install 'raft-polars[dask]'``.

Examples
--------
>>> import polars as pl
>>> import raft_polars as rp
>>> from raft_polars.dask import DaskEngine, connect
>>> log = pl.DataFrame({"stage": [0, 0], "prompt": [0, 0], "cand": [0, 1],
...                     "reward": [0.2, 0.4], "logprobs": [[-2.0, -1.8], [-1.5, -1.6]]})
>>> with connect(workers=1) as client:
...     rp.stage_losses(log, engine=DaskEngine(client=client))["loss"].to_list()
[1.55]
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

from raft_polars.errors import MissingDependencyError, RaftInputError, RaftPolarsError

__all__ = ["DaskEngine", "connect"]

_INSTALL = "pip install 'raft-polars[dask]'"


def _distributed() -> Any:
    """Import ``distributed``, or say how to install it."""
    try:
        import distributed
    except ImportError as exc:
        msg = f"the Dask engine needs dask and distributed: {_INSTALL}"
        raise MissingDependencyError(msg) from exc
    return distributed


def _client_of(distributed: Any, scheduler: str) -> Any:
    """A client of the scheduler at ``scheduler``; a RaftInputError naming it when
    the address is malformed or no scheduler answers there.

    A malformed address, or one that cannot be reached, is refused before a
    client is made. A client whose start failed is dropped and collected here,
    at once: left to the garbage collector, its ``__del__`` closed it whenever
    the collector ran, once in the middle of another client's start in the same
    thread, which then waited for itself forever (distributed's loop runner
    lock)."""
    import gc

    why = _malformed(scheduler) or _unreachable(distributed, scheduler)
    if why is None:
        try:
            return distributed.Client(scheduler)
        except (ValueError, OSError, TimeoutError, TypeError) as exc:  # gone since, say
            why = (str(exc).strip().splitlines() or [repr(exc)])[0].strip('"')
            exc.__traceback__ = None  # its frames hold the half-made client
        except MemoryError as exc:  # an answer read as a frame of exabytes: not Dask's
            why = "what answers there is not a Dask scheduler (an HTTP server or a proxy?)"
            exc.__traceback__ = None
        gc.collect()
    msg = f"cannot connect to the Dask scheduler {scheduler!r}: {why}"
    raise RaftInputError(msg)


_PROBE_SECONDS = 30.0  # as distributed's own connect timeout
_OVER_TCP = ("tcp", "tls", "ws", "wss")


def _unreachable(distributed: Any, address: str) -> str | None:  # noqa: PLR0911 - one per reason
    """Why no Dask scheduler can be reached at a well-formed ``address``, or
    None: ``tls://`` without Dask's TLS configuration (distributed raised a
    ``TypeError`` with a traceback); a port where nothing listens, or a host
    unknown or not answering (distributed retried for 30 s and said "Timed
    out"); at a ``tcp://`` address, something that is no Dask scheduler. A
    scheduler sends its handshake as a connection opens; an HTTP server (a
    proxy, an ingress) waits for a request, and distributed's client waited
    with it past any timeout (it answers garbage with an error some do, which
    distributed read as a frame of exabytes)."""
    import socket

    from distributed.comm.addressing import parse_address, parse_host_port

    scheme, where = parse_address(address)
    if scheme == "tls":
        try:
            context = distributed.Security().get_connection_args("client")["ssl_context"]
        except (OSError, ValueError, TypeError) as exc:
            text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            return f"Dask's TLS configuration cannot be used: {text}"
        if context is None:
            return (
                "a tls:// scheduler needs Dask's TLS configuration (distributed.comm.tls."
                "ca-file and distributed.comm.tls.client.cert, with its key), and none is set"
            )
    if scheme not in _OVER_TCP:
        return None
    host, port = parse_host_port(where)
    try:
        probe = socket.create_connection((host, port), timeout=_PROBE_SECONDS)
    except ConnectionRefusedError:
        return f"connection refused: nothing listens on port {port} of {host}"
    except TimeoutError:
        return f"no answer from {host} in {_PROBE_SECONDS:.0f} s (no such machine, or a firewall?)"
    except socket.gaierror as exc:
        return f"unknown host {host!r} ({exc.strerror or exc})"
    except OSError as exc:  # the network unreachable, say
        return exc.strerror or str(exc) or type(exc).__name__
    with probe:
        if scheme != "tcp":  # TLS and websockets: the client speaks first
            return None
        try:
            first = probe.recv(8)
        except TimeoutError:
            return (
                f"what listens there sent nothing in {_PROBE_SECONDS:.0f} s: not a Dask scheduler"
            )
        except OSError:  # reset: distributed's own attempt says what it finds
            return None
    if not first or first.startswith(b"HTTP"):
        return "what listens there is not a Dask scheduler (an HTTP server or a proxy?)"
    return None


def _malformed(address: str) -> str | None:
    """Why distributed cannot use ``address`` as a scheduler's, or None."""
    from distributed.comm.addressing import parse_address, parse_host_port
    from distributed.comm.registry import get_backend

    try:
        scheme, where = parse_address(address)
        get_backend(scheme)
        if scheme in _OVER_TCP:
            _, port = parse_host_port(where)
            if not 0 < int(port) < 1 << 16:
                return f"the port must be 1 to 65535, got {port}"
        elif scheme == "inproc" and len(where.split("/")) != 3:
            return (
                "an inproc:// address is inproc://HOST/PID/N, of a scheduler in this same process"
            )
    except (ValueError, TypeError) as exc:
        return str(exc).strip() or type(exc).__name__
    return None


@contextmanager
def connect(scheduler: str | None = None, workers: int | None = None) -> Iterator[Any]:
    """A ``distributed.Client``: joined to a running scheduler, or on a local cluster.

    Parameters
    ----------
    scheduler
        Address of a running Dask scheduler, e.g. ``"tcp://10.0.0.5:8786"``.
    workers
        Without ``scheduler``: worker processes of the local cluster (default:
        one per CPU), each with one thread and bound to ``127.0.0.1``, with no
        dashboard. Polars inside each worker gets its share of the CPUs.

    Yields
    ------
    distributed.Client
        Closed on exit, with the local cluster if one was started.

    Raises
    ------
    MissingDependencyError
        dask or distributed is not installed.

    Examples
    --------
    >>> from raft_polars.dask import connect
    >>> with connect(workers=1) as client:
    ...     len(client.scheduler_info()["workers"])
    1
    """
    distributed = _distributed()
    if scheduler is not None:
        if workers is not None:
            msg = "workers= sizes a local cluster; it does not apply with scheduler="
            raise RaftInputError(msg)
        client = _client_of(distributed, scheduler)
        with client:
            if not client.scheduler_info().get("workers"):  # Dask waits for some, silently
                logging.getLogger("raft_polars").warning(
                    "the Dask scheduler %s has no workers yet: the work waits until some "
                    "join (dask worker %s)",
                    scheduler,
                    scheduler,
                )
            yield client
        return
    import os

    from raft_polars._executors.dask import cpu_threads

    count = workers if workers is not None else (os.cpu_count() or 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        msg = f"workers must be a whole number >= 1, got {count!r}"
        raise RaftInputError(msg)
    threads = cpu_threads(count)
    with ExitStack() as stack:
        try:
            cluster = stack.enter_context(
                distributed.LocalCluster(
                    n_workers=count,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address=None,
                    worker_dashboard_address=None,
                    # the scheduler's plain HTTP endpoints: loopback, any free port
                    scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                    env={"POLARS_MAX_THREADS": threads, "OMP_NUM_THREADS": threads},
                    # a task's error reaches the caller as the engine's error; the
                    # workers' own log of it ("Compute Failed" and a traceback) is
                    # left unprinted
                    silence_logs=logging.CRITICAL,
                )
            )
            client = stack.enter_context(distributed.Client(cluster))
        except (RuntimeError, OSError, TimeoutError) as exc:  # a worker ended as it started
            cause = str(exc.__cause__ or exc).strip() or type(exc).__name__
            msg = (
                f"the local Dask cluster of {count} worker process(es) on 127.0.0.1 did "
                f"not start: {cause}. A worker process ended as it started: killed, out of "
                "memory, or unable to import the main script again (a script needs "
                "'if __name__ == \"__main__\":' around its work, and cannot come from stdin)"
            )
            raise RaftPolarsError(msg) from None
        yield client


@dataclass(frozen=True)
class DaskEngine:
    """The Dask engine with an explicit client or cluster, for ``engine=``.

    Parameters
    ----------
    client
        A ``distributed.Client`` to run on.
    scheduler
        Without ``client``: the address of a running scheduler to connect to for
        each call.
    workers
        Without ``client`` or ``scheduler``: start a local cluster of this many
        worker processes for each call.

    With none of them (and with ``engine="dask"``), the current client is used,
    or a local cluster is started for the call.
    """

    client_: Any = None
    scheduler: str | None = None
    workers: int | None = None

    def __init__(
        self, client: Any = None, *, scheduler: str | None = None, workers: int | None = None
    ) -> None:
        object.__setattr__(self, "client_", client)
        object.__setattr__(self, "scheduler", scheduler)
        object.__setattr__(self, "workers", workers)
        if client is not None and (scheduler is not None or workers is not None):
            msg = "DaskEngine takes a client, or a scheduler / workers, not both"
            raise RaftInputError(msg)

    @contextmanager
    def client(self) -> Iterator[Any]:
        """The client to run on, for the duration of one call."""
        distributed = _distributed()
        if self.client_ is not None:
            yield self.client_
            return
        if self.scheduler is None and self.workers is None:
            try:
                current = distributed.default_client()
            except ValueError:
                current = None
            if current is not None:
                yield current
                return
        with connect(scheduler=self.scheduler, workers=self.workers) as started:
            yield started
