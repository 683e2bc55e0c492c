"""The Dask front end: the same losses and selected batch on a Dask cluster.

:func:`stage_losses`, :func:`select_best` and :func:`write_selected` take the
sources of the single-machine API (:func:`raft_polars.stage_losses`) and give the
same answers, computed by tasks on a ``distributed`` cluster: each task reads one
shard (a Parquet file, or a range of row groups of a big one) and returns a
few small tables; no task ever sends token rows. The map and reduce functions
live in :mod:`raft_polars._shards`; this module only plans the tasks and wires
them together.

- Nested layout, best-of-K: each map task reduces its shard to one row per
  ``(stage, prompt)`` (best candidate, NLL sum, token count, candidate
  statistics). Shards whose key ranges overlap no other shard finish in their
  own task (per-stage sums out); the others' rows are bucketed by a hash of
  ``(stage, prompt)`` to reduce tasks, which pick the global best.
- Long layout: the same map and reduce over the rewards pick the selection,
  which is sent, as two small bit masks per prompt, to the token tasks; each sums
  its selected tokens per stage and counts orphan and bad tokens.
- Other strategies (``top_n``, ``global``): the candidate keys (no log-probs)
  come to the client, are ranked by :func:`raft_polars.ranking.rank`, and the
  selected keys go to every task.

Without a ``client``, the current default client is used, or a local cluster
is started for the call (:func:`connect`). Dask is optional: install it with
``pip install 'raft-polars[dask]'``.

Examples
--------
>>> import polars as pl
>>> import raft_polars.dask as rd
>>> log = pl.DataFrame({"stage": [0, 0], "prompt": [0, 0], "cand": [0, 1],
...                     "reward": [0.2, 0.4], "logprobs": [[-2.0, -1.8], [-1.5, -1.6]]})
>>> with rd.connect(workers=1) as client:
...     rd.stage_losses(log, client=client)["loss"].to_list()
[1.55]
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from raft_polars import _checks, _shards
from raft_polars._shards import Final, Issues, Partial, ReadSpec, Shard, TokenPartial
from raft_polars.errors import MissingDependencyError, RaftInputError
from raft_polars.logs import ID_COLUMNS, Source, StageLog, _scan, collect, read_log
from raft_polars.losses import Reduction, below_min, check_reduction
from raft_polars.ranking import Selection, apply_min_reward, prompt_summary, rank

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["connect", "select_best", "stage_losses", "write_selected"]

_INSTALL = "pip install 'raft-polars[dask]'"
_IDS = list(ID_COLUMNS)


# --- the optional dependency ---------------------------------------------------------


def _distributed() -> Any:
    """Import ``distributed`` (and register sizes of polars frames with Dask)."""
    try:
        import distributed
        from dask.sizeof import sizeof
    except ImportError as exc:
        msg = f"the Dask engine needs dask and distributed: {_INSTALL}"
        raise MissingDependencyError(msg) from exc
    _register_sizeof(sizeof)
    return distributed


_REGISTERED: list[bool] = []


def _register_sizeof(sizeof: Any) -> None:
    """Dask estimates memory and transfer sizes with ``sizeof``: teach it polars
    frames and the result records of :mod:`raft_polars._shards`."""
    if _REGISTERED:
        return

    def issues_size(issues: Issues) -> int:
        return sum(int(rows.estimated_size()) + 16 for _, rows in issues.values())

    def frame_size(frame: pl.DataFrame | None) -> int:
        return 0 if frame is None else int(frame.estimated_size())

    sizeof.register(pl.DataFrame)(lambda df: int(df.estimated_size()))
    sizeof.register(Partial)(lambda p: frame_size(p.prompts) + frame_size(p.stages)
                             + issues_size(p.issues))
    sizeof.register(Final)(lambda f: frame_size(f.stages) + frame_size(f.chosen)
                           + frame_size(f.masks) + issues_size(f.issues))
    sizeof.register(TokenPartial)(lambda t: frame_size(t.stages) + frame_size(t.responses)
                                  + issues_size(t.issues))
    _REGISTERED.append(True)


@contextmanager
def connect(scheduler: str | None = None, workers: int | None = None) -> Iterator[Client]:
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
        with distributed.Client(scheduler) as client:
            yield client
        return
    cpus = os.cpu_count() or 1
    count = workers if workers is not None else cpus
    if count < 1:
        msg = f"workers must be at least 1, got {count!r}"
        raise RaftInputError(msg)
    threads = str(max(1, cpus // count))
    with distributed.LocalCluster(
        n_workers=count, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address=None, worker_dashboard_address=None,
        # the scheduler's plain HTTP endpoints: loopback, any free port
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        env={"POLARS_MAX_THREADS": threads, "OMP_NUM_THREADS": threads},
    ) as cluster, distributed.Client(cluster) as client:
        yield client


@contextmanager
def _use(client: Client | None) -> Iterator[Client]:
    distributed = _distributed()
    if client is not None:
        yield client
        return
    try:
        current = distributed.default_client()
    except ValueError:
        current = None
    if current is not None:
        yield current
        return
    with connect() as local:
        yield local


# --- planning ------------------------------------------------------------------------


@dataclass
class _Side:
    """One source (the nested rows, the token rows or the rewards), as shards."""

    spec: ReadSpec
    shards: list[Shard]
    data: list[Any]

    def items(self) -> Iterator[tuple[Shard, Any]]:
        return zip(self.shards, self.data, strict=True)


@dataclass
class _Metrics:
    """Bytes read from Parquet and bytes of every task result sent onwards."""

    bytes_read: int = 0
    futures: list[Any] = field(default_factory=list)
    tasks: int = 0


_METRICS: list[_Metrics] = []


@contextmanager
def _measure() -> Iterator[_Metrics]:
    """Record the bytes read and moved by the calls inside (for ``bench/``)."""
    metrics = _Metrics()
    _METRICS.append(metrics)
    try:
        yield metrics
    finally:
        _METRICS.remove(metrics)


class _Job:
    """The tasks of one call, on one client."""

    def __init__(self, client: Client, log: StageLog) -> None:
        self.client: Any = client  # distributed is not typed
        self.log = log
        self.workers = max(1, len(client.scheduler_info()["workers"]))
        self.moved: list[Any] = []

    # -- planning --

    def side(self, source: Source, role: str, kind: _shards.Kind,
             frame: pl.LazyFrame, columns: Mapping[str, str] | None) -> _Side:
        canonical = frame.collect_schema()
        prompt_type = canonical["prompt"]
        if not _is_paths(source):
            rows = collect(self.log, frame)
            spec = ReadSpec(kind, (), tuple(rows.schema.items()), prompt_type,
                            self.log.extras, role)
            parts = max(2, self.workers) if rows.height > 1 else 1
            size = -(-rows.height // parts) if rows.height else 0
            slices = [rows.slice(i * size, size) for i in range(parts)] if size else [rows]
            shards = []
            for i, part in enumerate(slices):
                bounds = _shards.bounds_of(part)
                lo, hi = bounds if bounds is not None else (None, None)
                shards.append(Shard(i, f"<{role} part {i}>", lo=lo, hi=hi, rows=part.height))
            data: list[Any] = list(self.client.scatter(slices, hash=False))
            return _Side(spec, _shards.mark_isolated(shards), data)
        assert _is_paths(source)
        raw, _, _ = _scan(source, role)
        spec = ReadSpec(kind, _shards.merge_mapping(columns), tuple(raw.collect_schema().items()),
                        prompt_type, self.log.extras, role)
        shards = _shards.plan_files(_shards.resolve_files(source), spec)  # type: ignore[arg-type]
        return _Side(spec, _shards.mark_isolated(shards), [None] * len(shards))

    def submit(self, fn: Callable[..., Any], *args: Any, local: bool = False,
               **kwargs: Any) -> Any:
        """Submit a task. ``local``: its result is only split by tasks that run
        where it is (the bucket pieces of a map task), not sent on as a whole."""
        future = self.client.submit(fn, *args, pure=False, **kwargs)
        if not local:
            self.moved.append(future)
        return future

    def gather(self, futures: Sequence[Any]) -> list[Any]:
        return list(self.client.gather(list(futures)))

    def account(self, *sides: _Side, extras: bool = False) -> None:
        if not _METRICS:
            return
        metrics = _METRICS[-1]
        for side in sides:
            names = [side.spec.raw(c) for c in side.spec.columns()]
            if extras:
                names += list(side.spec.extras)
            metrics.bytes_read += sum(s.bytes_read(names) for s in side.shards)
        keys = [f.key for f in self.moved]
        sizes = self.client.nbytes(keys, summary=False) if keys else {}
        metrics.futures.append(sum(sizes.values()))
        metrics.tasks += len(keys)

    # -- best-of-K over candidate rows: map, shuffle, reduce --

    def best_of_k(self, side: _Side, *, responses: bool, min_reward: float | None,
                  keep_chosen: bool, masks: bool) -> tuple[list[Any], list[Any]]:
        """Final futures (isolated shards and reduce tasks) and the small
        (stages, issues) futures of the bucketed shards."""
        options: dict[str, Any] = {"responses": responses, "min_reward": min_reward,
                                   "keep_chosen": keep_chosen, "masks": masks}
        shared = [(s, d) for s, d in side.items() if not s.isolated]
        buckets = max(1, min(len(shared), 2 * self.workers))
        finals = [self.submit(_t_isolated, s, d, side.spec, **options)
                  for s, d in side.items() if s.isolated]
        maps = [self.submit(_t_partial, s, d, side.spec, responses=responses, buckets=buckets,
                            local=True)
                for s, d in shared]
        smalls = [self.submit(_t_small, m) for m in maps]
        if maps:
            for b in range(buckets):
                pieces = [self.submit(_t_bucket, m, b) for m in maps]
                finals.append(self.submit(_t_reduce, pieces, **options))
        return finals, smalls

    def candidate_checks(self, side: _Side, issues: Issues) -> None:
        def fetch(stage: Any, prompt: Any) -> pl.DataFrame:
            keys = pl.DataFrame({"stage": [stage], "prompt": [prompt]},
                                schema={"stage": pl.Int64, "prompt": side.spec.prompt_type})
            return self.fetch(side, keys, ["stage", "prompt"], [*_IDS, "reward"])

        _shards.raise_candidate_issues(self.log, issues, fetch)

    def fetch(self, side: _Side, keys: pl.DataFrame, on: list[str],
              columns: list[str]) -> pl.DataFrame:
        """Rows of ``side`` matching ``keys`` (a few, to name an error)."""
        found = self.gather([self.submit(_t_fetch, s, d, side.spec, keys, on=on, columns=columns)
                             for s, d in side.items()])
        frame: pl.DataFrame = pl.concat(found, how="vertical_relaxed")
        return frame

    def client_ranking(self, side: _Side, selection: Selection) -> tuple[
        pl.DataFrame, pl.DataFrame, pl.LazyFrame | None, pl.DataFrame
    ]:
        """Strategies other than best-of-K: rank the candidate keys on the client.

        Returns the per-prompt summary, the chosen keys, ``below_min`` and the
        per-stage sums of the candidate side.
        """
        keys = pl.concat(self.gather([self.submit(_t_keys, s, d, side.spec)
                                      for s, d in side.items()]), how="vertical_relaxed")
        summary = prompt_summary(keys.lazy()).collect(engine="in-memory")
        tiny = StageLog(self.log.layout, keys.lazy(), None, self.log.extras, self.log.origin,
                        self.log.token_origin, self.log.files)
        _checks.candidates(tiny, summary)
        ranked = rank(keys.lazy(), selection).collect(engine="in-memory")
        chosen = apply_min_reward(ranked, selection)
        below = below_min(ranked, chosen)
        return keys, chosen, below, _shards.stage_part_from_keys(summary, chosen, below)


def _is_paths(source: object) -> bool:
    if isinstance(source, str | Path):
        return True
    return (isinstance(source, Sequence) and not isinstance(source, str)
            and all(isinstance(p, str | Path) for p in source))


def _overlaps(a: Shard, b: Shard) -> bool:
    if a.lo is None or a.hi is None or b.lo is None or b.hi is None:
        return True
    try:
        return bool(a.lo <= b.hi and b.lo <= a.hi)
    except TypeError:
        return True


def _covering(target: Shard, finals: Sequence[Any], isolated: Sequence[Shard]) -> list[Any]:
    """The finals whose selection can hold keys of ``target``: those of the
    isolated shards whose bounds overlap it (the first ``len(isolated)``), and
    every reduce task."""
    return [final for i, final in enumerate(finals)
            if i >= len(isolated) or _overlaps(target, isolated[i])]


# --- tasks (module-level functions, so workers import them by name) -------------------


def _load(shard: Shard, data: pl.DataFrame | None, spec: ReadSpec, *,
          extras: bool = False, token: bool = False) -> pl.LazyFrame:
    """The shard as a lazy canonical frame (collect it inside ``reading(shard)``)."""
    _distributed()
    if data is not None:
        return data.lazy().select(spec.columns(extras=extras, token=token))
    return _shards.scan_shard(shard, spec, extras=extras, token=token)


def _t_partial(shard: Shard, data: pl.DataFrame | None, spec: ReadSpec, *, responses: bool,
               buckets: int) -> tuple[list[pl.DataFrame], pl.DataFrame, Issues]:
    with _shards.reading(shard):
        part = _shards.candidate_partial(_load(shard, data, spec), responses=responses)
    return _shards.split_buckets(part.prompts, buckets), part.stages, part.issues


def _t_small(mapped: tuple[list[pl.DataFrame], pl.DataFrame, Issues]) -> Final:
    _distributed()
    return Final(mapped[1], None, None, mapped[2])


def _t_bucket(mapped: tuple[list[pl.DataFrame], pl.DataFrame, Issues], b: int) -> pl.DataFrame:
    _distributed()
    return mapped[0][b]


def _t_reduce(pieces: list[pl.DataFrame], **options: Any) -> Final:
    _distributed()
    return _shards.finalize(_shards.combine(pieces), **options)


def _t_isolated(shard: Shard, data: pl.DataFrame | None, spec: ReadSpec, *, responses: bool,
                **options: Any) -> Final:
    with _shards.reading(shard):
        part = _shards.candidate_partial(_load(shard, data, spec), responses=responses)
    final = _shards.finalize(_shards.combine([part.prompts]), responses=responses, **options)
    stages = pl.concat([_shards.finish_frame(part.stages), final.stages])
    return Final(stages, final.chosen, final.masks,
                 _shards.merge_issues([part.issues, final.issues]))


def _t_keys(shard: Shard, data: pl.DataFrame | None, spec: ReadSpec) -> pl.DataFrame:
    with _shards.reading(shard):
        return _load(shard, data, spec).select(*_IDS, "reward").collect(engine="streaming")


def _t_fetch(shard: Shard, data: pl.DataFrame | None, spec: ReadSpec, keys: pl.DataFrame, *,
             on: list[str], columns: list[str]) -> pl.DataFrame:
    frame = _load(shard, data, spec)
    schema = frame.collect_schema()
    keys = keys.with_columns(pl.col(c).cast(schema[c]) for c in on)
    with _shards.reading(shard):
        return frame.join(keys.lazy(), on=on, how="semi").select(columns).collect()


def _masks(parts: Sequence[Final | pl.DataFrame], shard: Shard, attr: str,
           spec: ReadSpec) -> pl.DataFrame:
    """The selection (``masks`` or ``chosen`` keys) covering ``shard``."""
    frames = []
    for part in parts:
        frame = getattr(part, attr) if isinstance(part, Final) else part
        if frame is not None:
            frames.append(_shards.slice_keys(frame, shard.lo, shard.hi))
    if frames:
        return pl.concat(frames, how="diagonal_relaxed")
    schema: dict[str, pl.DataType] = {"stage": pl.Int64(), "prompt": spec.prompt_type}
    if attr == "masks":
        schema.update(exists=pl.UInt8(), chosen=pl.UInt8())
    else:
        schema.update(cand=pl.Int64(), reward=pl.Float64())
    return pl.DataFrame(schema=schema)


def _t_tokens(shard: Shard, data: pl.DataFrame | None, spec: ReadSpec,
              parts: list[Final | pl.DataFrame], *, per_response: bool,
              buckets: int) -> tuple[pl.DataFrame, list[pl.DataFrame], Issues]:
    masks = _masks(parts, shard, "masks", spec)
    with _shards.reading(shard):
        out = _shards.token_partial(_load(shard, data, spec), masks, per_response=per_response)
        issues = out.issues
        if issues:  # a second pass, only to name the first bad rows
            issues = _shards.first_bad_tokens(_load(shard, data, spec, token=True), masks,
                                              issues)
    pieces = ([] if out.responses is None
              else _shards.split_buckets(out.responses, buckets))
    return out.stages, pieces, issues


def _t_token_small(mapped: tuple[pl.DataFrame, list[pl.DataFrame], Issues]) -> Final:
    _distributed()
    return Final(mapped[0], None, None, mapped[2])


def _t_token_bucket(mapped: tuple[pl.DataFrame, list[pl.DataFrame], Issues],
                    b: int) -> pl.DataFrame:
    _distributed()
    return mapped[1][b]


def _t_responses_reduce(pieces: list[pl.DataFrame]) -> Final:
    _distributed()
    return Final(_shards.combine_responses(pieces))


def _t_nested_selected(shard: Shard, data: pl.DataFrame | None, spec: ReadSpec,
                       chosen: pl.DataFrame) -> Final:
    """Nested rows, client-ranked selection: per-stage sums of the selected rows."""
    with _shards.reading(shard):
        return _shards.selected_response_sums(_load(shard, data, spec), chosen)


def _t_counts(shard: Shard, data: pl.DataFrame | None, spec: ReadSpec,
              parts: list[Final | pl.DataFrame]) -> pl.DataFrame:
    """Long layout: token counts of the selected responses in a token shard."""
    chosen = _masks(parts, shard, "chosen", spec)
    tokens = _load(shard, data, spec)
    keys = _shards._cast_keys(chosen, tokens)
    with _shards.reading(shard):
        return tokens.join(keys.lazy(), on=_IDS, how="semi").group_by(_IDS).agg(
            pl.len().cast(pl.Int64).alias("tokens")
        ).collect(engine="streaming")


def _t_rows(shard: Shard, data: pl.DataFrame | None, spec: ReadSpec,
            parts: list[Final | pl.DataFrame], *, counts: list[pl.DataFrame] | None,
            out: str | None) -> pl.DataFrame | int:
    """The selected rows of a candidate shard: returned, or written as a part."""
    chosen = _masks(parts, shard, "chosen", spec)
    frame = _load(shard, data, spec, extras=True)
    total = None
    if counts is not None:
        found = [c for c in counts if c.height]
        total = (pl.concat(found).group_by(_IDS).agg(pl.col("tokens").sum()) if found
                 else pl.DataFrame(schema={**dict(frame.select(_IDS).collect_schema()),
                                           "tokens": pl.Int64}))
    with _shards.reading(shard):
        rows = _shards.selected_rows(frame, chosen, spec.extras, total)
    if out is None:
        return rows
    rows.write_parquet(Path(out) / f"part-{shard.index:05d}.parquet")
    return rows.height


# --- public entry points ----------------------------------------------------------------


def _check_options(selection: Selection | None, reduction: str) -> Selection:
    check_reduction(reduction)
    if selection is None:
        return Selection()
    if not isinstance(selection, Selection):
        msg = f"selection must be a raft_polars.Selection, got {type(selection).__name__}"
        raise RaftInputError(msg)
    return selection


def stage_losses(
    source: Source,
    *,
    rewards: Source | None = None,
    columns: Mapping[str, str] | None = None,
    reduction: Reduction = "token",
    selection: Selection | None = None,
    client: Client | None = None,
) -> pl.DataFrame:
    """Per-stage SFT loss and statistics of a stage log, computed on Dask.

    Same columns and values as :func:`raft_polars.stage_losses`.

    Parameters
    ----------
    source, rewards, columns, reduction
        As in :func:`raft_polars.stage_losses`. Parquet paths are read by the
        workers (they must see the same files); data frames are sent to them.
    selection
        The selection, :class:`raft_polars.Selection` (default: best-of-K).
    client
        A ``distributed.Client``; default: the current client, else a local
        cluster started for the call.

    Returns
    -------
    polars.DataFrame
        One row per stage, sorted by stage, as :func:`raft_polars.stage_losses`.

    Raises
    ------
    RaftInputError
        For the bad input of SEMANTICS.md, with the single-machine messages.
    MissingDependencyError
        dask or distributed is not installed.

    Examples
    --------
    >>> import polars as pl
    >>> import raft_polars.dask as rd
    >>> tokens = pl.DataFrame({"stage": [0, 0, 0], "prompt": ["p", "p", "p"],
    ...                        "cand": [0, 0, 1], "logprob": [-1.0, -2.0, -0.5]})
    >>> rewards = pl.DataFrame({"stage": [0, 0], "prompt": ["p", "p"],
    ...                         "cand": [0, 1], "reward": [1.0, 0.0]})
    >>> with rd.connect(workers=1) as client:
    ...     rd.stage_losses(tokens, rewards=rewards, client=client)["loss"].to_list()
    [1.5]
    """
    selection = _check_options(selection, reduction)
    log = read_log(source, rewards=rewards, columns=columns)
    with _use(client) as active:
        job = _Job(active, log)
        if log.layout == "nested":
            main = job.side(source, "source", "nested", log.candidates, columns)
            table = _nested_losses(job, main, selection, reduction)
            job.account(main)
        else:
            assert rewards is not None
            assert log.tokens is not None
            cands = job.side(rewards, "rewards", "rewards", log.candidates, columns)
            tokens = job.side(source, "source", "tokens", log.tokens, columns)
            table = _long_losses(job, cands, tokens, selection, reduction)
            job.account(cands, tokens)
    return table


def _nested_losses(job: _Job, main: _Side, selection: Selection,
                   reduction: Reduction) -> pl.DataFrame:
    if selection.is_best_of_k:
        finals, smalls = job.best_of_k(main, responses=True, min_reward=selection.min_reward,
                                       keep_chosen=False, masks=False)
        results: list[Final] = job.gather([*finals, *smalls])
        issues = _shards.merge_issues([r.issues for r in results])
        job.candidate_checks(main, issues)
        _shards.raise_selected_logprobs(
            job.log, issues,
            lambda keys: job.fetch(main, keys, _IDS, [*_IDS, "logprobs"]),
        )
        return _shards.finish([r.stages for r in results], log=job.log, reduction=reduction)
    _, chosen, _, stage_part = job.client_ranking(main, selection)
    keys = job.client.scatter(chosen.select(_IDS), broadcast=True, hash=False)
    results = job.gather([job.submit(_t_nested_selected, s, d, main.spec, keys)
                          for s, d in main.items()])
    issues = _shards.merge_issues([r.issues for r in results])
    _shards.raise_selected_logprobs(
        job.log, issues, lambda keys: job.fetch(main, keys, _IDS, [*_IDS, "logprobs"]),
    )
    return _shards.finish([stage_part, *(r.stages for r in results)], log=job.log,
                          reduction=reduction)


def _long_losses(job: _Job, cands: _Side, tokens: _Side, selection: Selection,
                 reduction: Reduction) -> pl.DataFrame:
    per_response = reduction == "sequence"
    if selection.is_best_of_k:
        finals, smalls = job.best_of_k(cands, responses=False, min_reward=selection.min_reward,
                                       keep_chosen=False, masks=True)
        isolated = [s for s in cands.shards if s.isolated]
        small = job.gather([job.submit(_t_final_stages, f) for f in finals] + smalls)
        issues = _shards.merge_issues([r.issues for r in small])
        job.candidate_checks(cands, issues)
        stage_parts = [r.stages for r in small]

        def parts_for(shard: Shard) -> list[Any]:
            return _covering(shard, finals, isolated)
    else:
        keys, chosen, _, stage_part = job.client_ranking(cands, selection)
        table = job.client.scatter(_shards.keys_masks(keys, chosen), broadcast=True,
                                    hash=False)
        stage_parts = [stage_part]

        def parts_for(shard: Shard) -> list[Any]:
            return [table]
    buckets = max(1, min(len(tokens.shards), 2 * job.workers)) if per_response else 0
    maps = [job.submit(_t_tokens, s, d, tokens.spec, parts_for(s), per_response=per_response,
                       buckets=buckets, local=True) for s, d in tokens.items()]
    futures = [job.submit(_t_token_small, m) for m in maps]
    for b in range(buckets):
        futures.append(job.submit(_t_responses_reduce,
                                  [job.submit(_t_token_bucket, m, b) for m in maps]))
    results: list[Final] = job.gather(futures)
    issues = _shards.merge_issues([r.issues for r in results])
    _shards.raise_orphans(job.log, issues)
    _shards.raise_selected_logprobs(job.log, issues)
    return _shards.finish([*stage_parts, *(r.stages for r in results)], log=job.log,
                          reduction=reduction)


def _t_final_stages(final: Final) -> Final:
    _distributed()
    return Final(final.stages, None, None, final.issues)


def _selection(job: _Job, side: _Side, selection: Selection) -> tuple[
    Callable[[Shard], list[Any]], list[Any]
]:
    """The selected keys for the row tasks: a function giving each shard the
    futures that hold its selected keys."""
    if selection.is_best_of_k:
        finals, smalls = job.best_of_k(side, responses=False, min_reward=selection.min_reward,
                                       keep_chosen=True, masks=False)
        small = job.gather([job.submit(_t_final_stages, f) for f in finals] + smalls)
        job.candidate_checks(side, _shards.merge_issues([r.issues for r in small]))
        isolated = [s for s in side.shards if s.isolated]
        return (lambda shard: _covering(shard, finals, isolated)), finals
    _, chosen, _, _ = job.client_ranking(side, selection)
    keys = job.client.scatter(chosen.select(_IDS), broadcast=True, hash=False)
    return (lambda shard: [keys]), [keys]


def _rows(job: _Job, source: Source, *, rewards: Source | None,
          columns: Mapping[str, str] | None, selection: Selection,
          out: str | None) -> list[Any]:
    log = job.log
    if log.layout == "nested":
        side = job.side(source, "source", "nested", log.candidates, columns)
        parts_for, _ = _selection(job, side, selection)
        results = job.gather([
            job.submit(_t_rows, s, d, side.spec, parts_for(s), counts=None, out=out)
            for s, d in side.items()
        ])
        job.account(side, extras=True)
        return results
    assert rewards is not None
    assert log.tokens is not None
    side = job.side(rewards, "rewards", "rewards", log.candidates, columns)
    tokens = job.side(source, "source", "tokens", log.tokens, columns)
    parts_for, _ = _selection(job, side, selection)
    counts = [job.submit(_t_counts, s, d, tokens.spec, parts_for(s)) for s, d in tokens.items()]
    results = job.gather([
        job.submit(_t_rows, s, d, side.spec, parts_for(s),
                   counts=[c for c, t in zip(counts, tokens.shards, strict=True)
                           if _overlaps(s, t)],
                   out=out)
        for s, d in side.items()
    ])
    job.account(side, tokens, extras=True)
    return results


def select_best(
    source: Source,
    *,
    rewards: Source | None = None,
    columns: Mapping[str, str] | None = None,
    selection: Selection | None = None,
    client: Client | None = None,
) -> pl.DataFrame:
    """The selected batch, computed on Dask.

    Same rows as ``raft_polars.select_best(...).collect()``.

    Parameters
    ----------
    source, rewards, columns, selection, client
        As in :func:`stage_losses`.

    Returns
    -------
    polars.DataFrame
        One row per selected response, sorted by ``stage, prompt, cand``:
        ``stage``, ``prompt``, ``cand``, ``reward``, ``tokens`` and every extra
        candidate-level column.

    Examples
    --------
    >>> import polars as pl
    >>> import raft_polars.dask as rd
    >>> log = pl.DataFrame({"stage": [0, 0], "prompt": [7, 7], "cand": [0, 1],
    ...                     "reward": [0.1, 0.3], "logprobs": [[-1.0], [-0.5, -0.2]],
    ...                     "response": ["meh", "good"]})
    >>> with rd.connect(workers=1) as client:
    ...     rd.select_best(log, client=client).rows()
    [(0, 7, 1, 0.3, 2, 'good')]
    """
    selection = _check_options(selection, "token")
    log = read_log(source, rewards=rewards, columns=columns)
    with _use(client) as active:
        job = _Job(active, log)
        parts = _rows(job, source, rewards=rewards, columns=columns, selection=selection,
                      out=None)
    frame: pl.DataFrame = pl.concat(parts, how="vertical_relaxed")
    return frame.sort(_IDS)


def write_selected(
    source: Source,
    out_dir: str | Path,
    *,
    rewards: Source | None = None,
    columns: Mapping[str, str] | None = None,
    selection: Selection | None = None,
    client: Client | None = None,
) -> Path:
    """Write the selected batch as a directory of Parquet parts, one per shard.

    The parts are written under a temporary name beside ``out_dir``, which is
    renamed to ``out_dir`` once every task has succeeded (on failure it is
    removed). The workers write the parts, so ``out_dir`` must be on storage
    they all see.

    Parameters
    ----------
    source, rewards, columns, selection, client
        As in :func:`stage_losses`.
    out_dir
        The directory to create; it must not exist.

    Returns
    -------
    pathlib.Path
        ``out_dir``. Reading it back (``pl.read_parquet(out_dir)``) gives the rows
        of :func:`select_best`.

    Raises
    ------
    RaftInputError
        ``out_dir`` exists, or the log is bad.
    """
    selection = _check_options(selection, "token")
    out = Path(out_dir)
    if out.exists():
        msg = f"output directory {str(out)!r} already exists; remove it or choose another"
        raise RaftInputError(msg)
    log = read_log(source, rewards=rewards, columns=columns)
    temp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:12]}"
    temp.mkdir(parents=True)
    try:
        with _use(client) as active:
            _rows(_Job(active, log), source, rewards=rewards, columns=columns,
                  selection=selection, out=str(temp))
        temp.rename(out)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return out
