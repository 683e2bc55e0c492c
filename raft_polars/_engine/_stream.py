"""A query's result batch by batch, with the engine's errors raised.

Polars' ``collect_batches`` ends the iteration quietly when a thread of the
streaming engine panics (Polars 2.1: a corrupted page that trips an assertion
in the Parquet decoder), so a reader of its batches takes the rows read until
then for the whole input: a truncated read, a silently different answer.
``sink_batches`` runs the same streaming plan and raises the panic; it hands
each batch to a function instead, so :func:`batches` runs it in a thread of its
own and hands its batches on through a queue of one, which keeps memory bounded
as ``collect_batches`` did.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

import polars as pl

__all__ = ["batches"]

_END = object()


def batches(query: pl.LazyFrame) -> Iterator[pl.DataFrame]:
    """The batches of ``query`` on the streaming engine, in order. An error of the
    engine (a Polars error, a panic of its Rust code) is raised here, after the
    batches given before it; leaving the loop early stops the query."""
    handed: queue.Queue[Any] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def take(batch: pl.DataFrame) -> bool | None:
        if stop.is_set():
            return True  # the reader left: the engine stops
        handed.put(batch)
        return None

    def run() -> None:
        try:
            query.sink_batches(take, engine="streaming")
        except BaseException as exc:  # raised where the batches are taken
            handed.put(exc)
        else:
            handed.put(_END)

    worker = threading.Thread(target=run, name="raft-polars-batches", daemon=True)
    worker.start()
    try:
        while True:
            item = handed.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a batch waiting to be handed on
            try:
                handed.get(timeout=0.05)
            except queue.Empty:
                continue
        worker.join()
