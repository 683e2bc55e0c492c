"""The in-process executor: each kernel once, on the whole log.

Every fast path of the kernels applies: the dense box (ids, or prompt codes),
footer-proven bounds for the token pass, the nested layout's two passes (rank
the keys, then decode only the selected lists).
"""

from __future__ import annotations

import contextvars
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import polars as pl

from raft_polars._engine import validate as vk
from raft_polars._engine.checks import naming, raise_first
from raft_polars._engine.rank import Ranked, rank_keys
from raft_polars._engine.read import StageLog
from raft_polars._engine.reduce import (
    finish,
    list_lengths,
    nested_sums,
    selected_rows,
    token_counts,
    token_sums,
)
from raft_polars._engine.stats import (
    best_of_n_sums,
    prompt_rows,
    stats_parts,
    unknown_selected,
)
from raft_polars._progress import Clock, report
from raft_polars.selection import Reduction, Selection

__all__ = ["LocalExecutor"]

T = TypeVar("T")

_IDS = ["stage", "prompt", "cand"]


class LocalExecutor:
    """Runs the kernels in this process (Polars' streaming engine, all cores)."""

    def rank(self, log: StageLog, selection: Selection) -> Ranked:
        """Read the candidate keys, rank them, raise their first problem."""
        clock = Clock()
        _preload()  # numba's import and first load (~0.5 s) overlap the read of the keys
        keys = log.collect(log.keys())
        with naming(log.origin):
            ranked = rank_keys(keys, selection)
        raise_first(ranked.problems, origin=log.origin, token_origin=log.token_origin)
        report(f"ranked {keys.height:,} candidates in {clock.lap():.1f} s; reducing ...")
        return ranked

    def losses(self, log: StageLog, selection: Selection, reduction: Reduction) -> pl.DataFrame:
        ranked = self.rank(log, selection)
        if not log.has_logprobs:
            return finish(log, [ranked.stages], [], [], reduction, skipped=_skips(selection))
        if log.layout == "nested":
            reduced = nested_sums(log, ranked.chosen, keys=ranked.token_keys)
        else:
            reduced = token_sums(
                log, ranked.token_keys, ranked.chosen, per_response=reduction == "sequence"
            )
        return finish(
            log,
            [ranked.stages, reduced.stages],
            [reduced.responses],
            reduced.problems,
            reduction,
            skipped=_skips(selection),
        )

    def stats(
        self, log: StageLog, selection: Selection, reduction: Reduction
    ) -> tuple[pl.DataFrame, list[pl.DataFrame]]:
        ranked = self.rank(log, selection)
        counts: pl.DataFrame | None
        if not log.has_logprobs:
            table = finish(log, [ranked.stages], [], [], reduction, skipped=_skips(selection))
            return table, stats_parts(ranked.keys.canonical(), ranked.chosen, None)
        if log.layout == "nested":
            reduced = nested_sums(log, ranked.chosen, keys=ranked.token_keys, every=True)
            counts = reduced.counts
        else:
            reduced = token_sums(
                log,
                ranked.token_keys,
                ranked.chosen,
                per_response=reduction == "sequence",
                every=True,
            )
            assert reduced.counts is not None
            counts = reduced.counts
        table = finish(
            log,
            [ranked.stages, reduced.stages],
            [reduced.responses],
            reduced.problems,
            reduction,
            skipped=_skips(selection),
        )
        return table, stats_parts(ranked.keys.canonical(), ranked.chosen, counts)

    def prompts(self, log: StageLog, selection: Selection) -> pl.DataFrame:
        ranked = self.rank(log, selection)
        counts: pl.DataFrame | None
        if log.layout == "nested":
            counts = list_lengths(log)
            problems = unknown_selected(ranked.chosen, counts)
            raise_first(problems, origin=log.origin, token_origin=log.token_origin)
        else:
            reduced = token_sums(log, ranked.token_keys, ranked.chosen, every=True, checks=False)
            raise_first(reduced.problems, origin=log.origin, token_origin=log.token_origin)
            assert reduced.counts is not None
            counts = reduced.counts
        return prompt_rows(ranked.keys.canonical(), ranked.chosen, counts)

    def best_of_n(self, log: StageLog, selection: Selection) -> list[pl.DataFrame]:
        ranked = self.rank(log, selection)
        return [best_of_n_sums(ranked.keys.frame)]  # ids as read: grouped, not shown

    def selected(self, log: StageLog, selection: Selection) -> pl.LazyFrame:
        ranked = self.rank(log, selection)
        counts = None
        if log.layout == "long":
            counts, problems = token_counts(log, ranked.token_keys, ranked.chosen)
            raise_first(problems, origin=log.origin, token_origin=log.token_origin)
        return selected_rows(log, ranked.chosen, keys=ranked.token_keys, counts=counts)

    def validate(self, log: StageLog, selection: Selection, limit: int) -> vk.Checked:
        from raft_polars._engine import pages

        with pages.remembering():  # the strict reads and the Polars check walk each file once
            return self._validate(log, selection, limit)

    def _validate(self, log: StageLog, selection: Selection, limit: int) -> vk.Checked:
        clock = Clock()
        nested = log.layout == "nested"
        # the token pass decodes in threads of its own while the candidates are checked
        token_pass = None if nested else _started(vk.token_part, log)
        if nested:  # the candidate rows are the log's: one strict decode
            reader = vk.StrictParquet(progress="candidate rows")
            strict = vk.strictly(log, reader)
            cands = strict.collect(vk.checked_rows(strict))
        else:  # Polars reads them, the reward files are checked apart
            cands = vk.read_checked(log)
        part = vk.check_candidates(cands, selection, limit, nested=nested)
        report(f"checked {cands.height:,} candidates in {clock.lap():.1f} s; checking on ...")
        del cands  # the token pass needs the memory more
        found = vk.Findings(limit)
        # the files the strict reads reject (the reward files of the long layout)
        paths = [] if nested else vk.strict_paths(log, tokens=False)
        errors = [
            *(reader.errors.items() if nested else ()),
            *((p, vk.strict_read(p)) for p in paths),
        ]
        errors += [(path, vk.json_ids(path, columns)) for path, columns in vk.json_id_files(log)]
        if nested:
            errors += vk.polars_refusals(log, errors, _map)
            vk.strict_findings(found, errors)
            assert part.stage_tokens is not None
            if log.has_logprobs:
                vk.empty_stages(found, [part.stage_tokens])
            return vk.summarize(found, [part])
        assert part.known is not None
        assert token_pass is not None
        tokens = token_pass.result()
        errors += tokens.errors.items()
        errors += vk.polars_refusals(log, errors, _map)
        vk.strict_findings(found, errors)
        skip = vk.unread(errors)

        def fetch(keys: pl.DataFrame) -> pl.DataFrame:
            return vk.fetch_tokens(log, None, keys, skip)

        per_response = vk.combine_runs([tokens.runs], fetch, has_position=log.has_token)
        stage_tokens = vk.finish_long(
            found, part.known, part.chosen, per_response, has_position=log.has_token
        )
        vk.empty_stages(found, [stage_tokens])
        return vk.summarize(found, [part], tokens=int(per_response.rows["rows"].sum()))


def _map(function: Callable[..., Any], *items: list[Any]) -> list[Any]:
    return list(map(function, *items))


def _preload() -> None:
    """Load the compiled loops in a background thread, once per process."""
    if "raft_polars._engine._compiled" in sys.modules:
        return

    def load() -> None:
        try:
            from raft_polars._engine import _compiled

            _compiled.touch()
        except Exception:  # the caller's own import raises it, in its own thread
            pass

    threading.Thread(target=load, name="raft-polars-preload", daemon=True).start()


def _started(call: Callable[..., T], *args: Any) -> Future[T]:
    """``call(*args)`` started in a thread of its own (a daemon: an error elsewhere
    does not wait for it)."""
    done: Future[T] = Future()
    context = contextvars.copy_context()  # the progress receiver, among others

    def run() -> None:
        try:
            done.set_result(context.run(call, *args))
        except BaseException as exc:  # raised where the result is asked for
            done.set_exception(exc)

    threading.Thread(target=run, name="raft-polars-validate", daemon=True).start()
    return done


def _skips(selection: Selection) -> bool:
    """Whether the table shows the counts of skipped bad rewards."""
    return selection.bad_rewards == "skip"
