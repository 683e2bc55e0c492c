"""The Python API: every function that reads a stage log, one option set.

Each function reads the log into its canonical form (step 1,
:mod:`raft_polars._engine.read`), and hands it to an executor that ranks (step 2)
and reduces (step 3) with the kernels of :mod:`raft_polars._engine`. The
executor is the ``engine=`` keyword, as in Polars' ``collect(engine=...)``:

- ``"polars"`` (default): in this process, on Polars' streaming engine;
- ``"dask"``: on the current ``distributed`` client (the one a ``with
  Client(...)`` block made current), or on a local cluster started for the call;
- ``raft_polars.dask.DaskEngine(client=...)``: on an explicit client or cluster.

Every engine gives the same answers, the same return types and the same error
messages. The meaning of every number is in ``docs/semantics.md``.

Examples
--------
>>> import polars as pl
>>> from raft_polars import stage_losses
>>> log = pl.DataFrame({
...     "stage": [0, 0, 1, 1], "prompt": [0, 0, 0, 0], "cand": [0, 1, 0, 1],
...     "reward": [0.2, 0.4, 0.75, 0.7],
...     "logprobs": [[-2.0, -1.8], [-1.5, -1.6], [-0.6, -0.5], [-0.7, -0.8]],
... })
>>> stage_losses(log).select("stage", "loss", "tokens").rows()
[(0, 1.55, 2), (1, 0.55, 2)]
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, TypeAlias

import polars as pl

from raft_polars import _export
from raft_polars._engine.checks import bad_reward
from raft_polars._engine.read import Preset, StageLog, read_log
from raft_polars._engine.sources import Source, local_specs, reading
from raft_polars._engine.stats import STATS_COLUMNS, best_of_n_table, stats_table
from raft_polars._executors import Engine, Executor, executor
from raft_polars.errors import RaftInputError
from raft_polars.selection import BadRewards, Reduction, Selection, Strategy, check_reduction

__all__ = [
    "best_of_n",
    "collect",
    "prompt_stats",
    "select_best",
    "stage_losses",
    "stage_stats",
    "write_selected",
]


def stage_losses(
    source: Source,
    *,
    rewards: Source | None = None,
    columns: Mapping[str, str] | None = None,
    preset: Preset | None = None,
    storage_options: Mapping[str, str] | None = None,
    reduction: Reduction = "token",
    strategy: Strategy = "best",
    n: int = 1,
    fraction: float | None = None,
    min_reward: float | None = None,
    bad_rewards: BadRewards = "error",
    engine: Engine = "polars",
) -> pl.DataFrame:
    """Per-stage SFT loss and statistics of a stage log.

    Parameters
    ----------
    source
        The stage log: Parquet path, glob, directory, list of paths, polars
        ``DataFrame`` / ``LazyFrame`` or ``pyarrow.Table``; nested layout, or the
        token rows of the long layout when ``rewards`` is given.
    rewards
        The candidate rows (``stage, prompt, cand, reward``) of the long layout.
    columns
        Canonical name to the source's own name, e.g. ``{"prompt": "prompt_id"}``.
    reduction
        ``"token"`` (pooled token mean, the default) or ``"sequence"``.
    strategy, n, fraction, min_reward, bad_rewards
        The selection, see :class:`raft_polars.Selection`; the default is
        best-of-K per prompt, and a bad reward is an error (``bad_rewards="skip"``
        leaves such candidates out and adds the ``skipped`` and
        ``skipped_prompts`` columns).
    engine
        ``"polars"`` (default), ``"dask"`` or a
        :class:`raft_polars.dask.DaskEngine`; see the module docstring.

    Returns
    -------
    polars.DataFrame
        One row per stage, sorted by stage: ``stage``, ``loss`` (float64, not
        rounded; null where ``min_reward`` left nothing selected), ``prompts``,
        ``candidates``, ``selected`` (responses), ``tokens`` (in the selected
        responses), ``reward_best_mean`` (mean selected reward), ``reward_mean``
        (mean over all candidates), ``reward_lift`` (their difference), ``ties``
        (prompts whose best reward is shared) and ``below_min`` (prompts left with
        nothing selected by ``min_reward``).

    Raises
    ------
    RaftInputError
        For every bad input listed in ``docs/semantics.md``, naming where and what.

    Examples
    --------
    >>> import polars as pl
    >>> tokens = pl.DataFrame({"stage": [0, 0, 0], "prompt": ["p", "p", "p"],
    ...                        "cand": [0, 0, 1], "token": [0, 1, 0],
    ...                        "logprob": [-1.0, -2.0, -0.5]})
    >>> rewards = pl.DataFrame({"stage": [0, 0], "prompt": ["p", "p"],
    ...                         "cand": [0, 1], "reward": [1.0, 0.0]})
    >>> stage_losses(tokens, rewards=rewards)["loss"].to_list()
    [1.5]
    """
    selection = Selection(
        strategy=strategy, n=n, fraction=fraction, min_reward=min_reward, bad_rewards=bad_rewards
    )
    check_reduction(reduction)
    run = executor(engine)
    log = read_log(
        source, rewards=rewards, columns=columns, preset=preset, storage_options=storage_options
    )
    return run.losses(log, selection, reduction)


def select_best(
    source: Source,
    *,
    rewards: Source | None = None,
    columns: Mapping[str, str] | None = None,
    preset: Preset | None = None,
    storage_options: Mapping[str, str] | None = None,
    strategy: Strategy = "best",
    n: int = 1,
    fraction: float | None = None,
    min_reward: float | None = None,
    bad_rewards: BadRewards = "error",
    engine: Engine = "polars",
) -> pl.LazyFrame:
    """The selected batch, ready to export for fine-tuning.

    The ranking runs now, with its checks (and, in the long layout, the token
    counts of the selected responses); the returned frame is lazy and reads the
    payload when collected or sunk: collect it with :func:`collect` to get a
    :class:`RaftInputError` naming the file if the payload cannot be read, or if
    a local file changed after this call read it (its size or modification time;
    the rows read then would not be the selection's). ``frame.collect()`` checks
    neither.

    Parameters
    ----------
    source, rewards, columns, strategy, n, fraction, min_reward, engine
        As in :func:`stage_losses`.

    Returns
    -------
    polars.LazyFrame
        One row per selected response (with best-of-K, one per ``(stage,
        prompt)``), sorted by ``stage, prompt, cand``: ``stage``, ``prompt``,
        ``cand``, ``reward``, ``tokens`` and every extra candidate-level column
        (of the nested rows, or of the rewards table in the long layout).

    Examples
    --------
    >>> import polars as pl
    >>> log = pl.DataFrame({"stage": [0, 0], "prompt": [7, 7], "cand": [0, 1],
    ...                     "reward": [0.1, 0.3], "logprobs": [[-1.0], [-0.5, -0.2]],
    ...                     "response": ["meh", "good"]})
    >>> select_best(log).collect().rows()
    [(0, 7, 1, 0.3, 2, 'good')]
    """
    selection = Selection(
        strategy=strategy, n=n, fraction=fraction, min_reward=min_reward, bad_rewards=bad_rewards
    )
    run = executor(engine)
    log = read_log(
        source, rewards=rewards, columns=columns, preset=preset, storage_options=storage_options
    )
    return _selected(run, log, selection)


def _selected(run: Executor, log: StageLog, selection: Selection) -> pl.LazyFrame:
    """:func:`select_best` on a log already read."""
    if "tokens" in log.extras:
        msg = (
            f"{log.origin}: the extra column 'tokens' clashes with the token count that "
            "the selected batch adds; rename or drop it first"
        )
        raise RaftInputError(msg)
    stamps = _stamps(log.paths)  # before the ranking reads them
    return _remember(run.selected(log, selection), log.paths, log.read_origin, stamps)


def write_selected(
    source: Source,
    output: str | Path,
    *,
    rewards: Source | None = None,
    columns: Mapping[str, str] | None = None,
    preset: Preset | None = None,
    storage_options: Mapping[str, str] | None = None,
    strategy: Strategy = "best",
    n: int = 1,
    fraction: float | None = None,
    min_reward: float | None = None,
    bad_rewards: BadRewards = "error",
    stage: _export.StagePick = None,
    format: _export.ExportFormat = "rows",
    prompt_column: str | None = None,
    response_column: str | None = None,
    min_margin: float | None = None,
    force: bool = False,
    engine: Engine = "polars",
) -> _export.Written:
    """Write the selected batch to ``output``, Parquet or JSON lines by extension,
    in the columns of a trainer.

    The batch is streamed to a temporary file in ``output``'s directory and
    renamed onto ``output`` at the end: a failed or interrupted write leaves
    ``output`` as it was.

    Parameters
    ----------
    source, rewards, columns, strategy, n, fraction, min_reward, engine
        As in :func:`stage_losses`.
    output
        ``*.parquet`` / ``*.pq`` or ``*.jsonl`` / ``*.ndjson``.
    stage
        Export one stage only: its id, or ``"last"``.
    format
        The columns written, one row per selected response unless said:

        - ``"rows"`` (default): ``stage``, ``prompt_id``, ``cand``, ``reward``,
          ``tokens`` and every extra candidate-level column (the prompt id is
          ``prompt_id``, since ``prompt`` is the trainers' key of the prompt text);
        - ``"sft"``: ``prompt``, ``completion`` (TRL's prompt-completion format);
        - ``"chat"``: ``messages``, ``[{"role": "user", "content": prompt},
          {"role": "assistant", "content": response}]`` (TRL's conversational
          format);
        - ``"openrlhf"``: ``input``, ``output``, ``reward``;
        - ``"dpo"``: one row per prompt, ``prompt``, ``chosen`` (the best selected
          response), ``rejected`` (the prompt's lowest reward, ties to the smallest
          candidate id), ``chosen_reward``, ``rejected_reward``; prompts whose
          best and worst rewards are equal are skipped (and counted);
        - ``"wide"``: one row per prompt, ``stage``, ``prompt_id``, the selected
          candidates' ``selected_cands``, ``selected_rewards``,
          ``selected_tokens`` and every candidate's ``cands``, ``rewards``, as
          lists in candidate order (empty when nothing was selected).

        ``sft``, ``chat`` and ``openrlhf`` then write ``stage``, ``prompt_id``,
        ``cand``, the candidate's reward (``cand_reward``; ``reward`` in
        ``openrlhf``) and ``tokens``; ``dpo`` writes ``stage``, ``prompt_id``,
        ``chosen_cand`` and ``rejected_cand``: no name a trainer reads.
    prompt_column, response_column
        The columns of the prompt and response text. By default the first
        payload column named ``prompt_text``, ``input`` or ``question`` (else the
        prompt id, when it is a string) and ``response``, ``responses``,
        ``output``, ``completion`` or ``text``. With ``format="rows"`` they add
        ``prompt`` / ``completion`` copies of these columns instead.
    min_margin
        ``dpo``: skip the pairs whose ``chosen_reward - rejected_reward`` is
        below this.
    force
        Replace ``output`` if it exists.

    Returns
    -------
    Written
        The number of rows written (an ``int``); with ``dpo``, its
        ``skipped_equal`` and ``skipped_margin`` count the prompts left out.

    Examples
    --------
    >>> import tempfile, pathlib, polars as pl
    >>> log = pl.DataFrame({"stage": [0, 0], "prompt": [7, 7], "cand": [0, 1],
    ...                     "reward": [0.1, 0.3], "logprobs": [[-1.0], [-0.5, -0.2]],
    ...                     "question": ["2+2?", "2+2?"], "response": ["5", "4"]})
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "batch.parquet"
    >>> write_selected(log, out)
    1
    >>> pl.read_parquet(out).rows()
    [(0, 7, 1, 0.3, 2, '2+2?', '4')]
    >>> pairs = out.with_suffix(".jsonl")
    >>> write_selected(log, pairs, format="dpo")
    1
    >>> pl.read_ndjson(pairs).select("prompt", "chosen", "rejected", "prompt_id").rows()
    [('2+2?', '4', '5', 7)]
    """
    if not isinstance(output, str | Path):
        msg = f"output must be a path, got {type(output).__name__}"
        raise RaftInputError(msg)
    if not isinstance(force, bool):  # "no" and [0] would replace OUT
        msg = f"force must be True or False, got {force!r}"
        raise RaftInputError(msg)
    out = Path(output)
    fmt = _export.output_format(out)
    kind = _export.check_format(format, min_margin, texts=(prompt_column, response_column))
    _export.check_target(out, force=force)
    selection = Selection(
        strategy=strategy, n=n, fraction=fraction, min_reward=min_reward, bad_rewards=bad_rewards
    )
    run = executor(engine)
    log = read_log(  # read once: the selection and the export use the same log
        source, rewards=rewards, columns=columns, preset=preset, storage_options=storage_options
    )
    _export.check_not_input(out, log.paths, local_specs(source) + local_specs(rewards))
    frame = _selected(run, log, selection)
    paths, origin = log.paths, log.read_origin
    candidates = log.candidates(extras=kind == "dpo")
    if selection.bad_rewards == "skip":  # removed before ranking: in no pair, no list
        candidates = candidates.filter(~bad_reward(pl.col("reward")))
    if stage is not None:
        stages = log.collect(log.keys().select(pl.col("stage").unique().sort()))["stage"]
        frame = _export.pick_stage(frame, stages, stage, log.origin)
        candidates = _export.pick_stage(candidates, stages, stage, log.origin)
    built = _export.export_frame(
        kind,
        frame,
        candidates,
        prompt_column=prompt_column,
        response_column=response_column,
        min_margin=min_margin,
        collect=log.collect,
    )
    if fmt == "jsonl":
        _export.check_json_columns(built.frame.collect_schema(), out)

    def write(tmp: Path) -> None:
        with reading(paths, origin):  # a read failure names the file, not the temp path
            if fmt == "parquet":
                _export.sink_parquet(built.frame, tmp)
            else:
                _export.json_lines(built.frame, tmp, out)
        built.check(out)

    _export.write_atomically(out, write, force=force)
    return _export.Written(
        _export.rows_written(out),
        format=kind,
        skipped_equal=built.skipped_equal,
        skipped_margin=built.skipped_margin,
    )


def stage_stats(
    source: Source,
    *,
    rewards: Source | None = None,
    columns: Mapping[str, str] | None = None,
    preset: Preset | None = None,
    storage_options: Mapping[str, str] | None = None,
    reduction: Reduction = "token",
    strategy: Strategy = "best",
    n: int = 1,
    fraction: float | None = None,
    min_reward: float | None = None,
    bad_rewards: BadRewards = "error",
    engine: Engine = "polars",
) -> pl.DataFrame:
    """Per-stage statistics: every column of :func:`stage_losses` and more.

    Parameters
    ----------
    source, rewards, columns, reduction, strategy, n, fraction, min_reward, engine
        As in :func:`stage_losses`.

    Returns
    -------
    polars.DataFrame
        One row per stage: the columns of :func:`stage_losses`, then
        ``reward_std`` (population standard deviation of every candidate's
        reward), ``reward_best_std`` (of the selected rewards), ``zero_variance``
        (prompts with at least 2 candidates whose rewards are all equal),
        ``win_rate`` (mean over selected responses of prompts with at least 2
        candidates of ``(#others lower + 0.5 #others equal) / (K - 1)``),
        ``length_mean`` (tokens over every candidate), ``length_selected_mean``,
        ``longest_share`` (share of those selected responses whose token count
        is the largest of their prompt, ties included) and ``length_reward_corr``
        (mean over prompts with at least 3 candidates, rewards not all equal and
        lengths not all equal, of Spearman's rho of reward and length). A mean
        over nothing is null. Definitions: ``docs/semantics.md``.

    Examples
    --------
    >>> import polars as pl
    >>> log = pl.DataFrame({"stage": [0, 0, 0], "prompt": [0, 0, 0], "cand": [0, 1, 2],
    ...                     "reward": [0.0, 1.0, 0.0],
    ...                     "logprobs": [[-1.0], [-0.5, -0.5, -1.0], [-2.0, -1.0]]})
    >>> stage_stats(log).select("loss", "win_rate", "longest_share", "length_mean").rows()
    [(0.6666666666666666, 1.0, 1.0, 2.0)]
    """
    selection = Selection(
        strategy=strategy, n=n, fraction=fraction, min_reward=min_reward, bad_rewards=bad_rewards
    )
    check_reduction(reduction)
    run = executor(engine)
    log = read_log(
        source, rewards=rewards, columns=columns, preset=preset, storage_options=storage_options
    )
    table, sums = run.stats(log, selection, reduction)
    extra = stats_table(sums, lengths=log.has_logprobs)
    joined = table.join(extra, on="stage", how="left")  # a stage "skip" emptied has no sums
    return joined.select(*table.columns, *STATS_COLUMNS).with_columns(
        pl.col("zero_variance").fill_null(0)  # a count: none, not unknown
    )


def best_of_n(
    source: Source,
    *,
    rewards: Source | None = None,
    columns: Mapping[str, str] | None = None,
    preset: Preset | None = None,
    storage_options: Mapping[str, str] | None = None,
    bad_rewards: BadRewards = "error",
    engine: Engine = "polars",
) -> pl.DataFrame:
    """Best-of-n curves: the expected best and worst reward of ``n`` candidates.

    For every stage and ``n = 1 .. K`` (the stage's largest K): ``prompts`` (those
    with at least ``n`` candidates), ``expected_best`` (mean over them of the
    expected maximum reward of ``n`` of the prompt's candidates drawn without
    replacement) and ``expected_worst`` (the same, minimum), in closed form (no
    sampling), exact for ragged K. With rewards in ``{0, 1}``, ``expected_best``
    is pass@n.

    Parameters
    ----------
    source, rewards, columns, engine
        As in :func:`stage_losses` (log-probs are not read).

    Examples
    --------
    >>> import polars as pl
    >>> log = pl.DataFrame({"stage": [0] * 4, "prompt": [0] * 4, "cand": [0, 1, 2, 3],
    ...                     "reward": [0.0, 0.0, 1.0, 0.0], "logprobs": [[-1.0]] * 4})
    >>> best_of_n(log).select("n", pl.col("expected_best").round(9)).rows()
    [(1, 0.25), (2, 0.5), (3, 0.75), (4, 1.0)]
    """
    run = executor(engine)
    log = read_log(
        source, rewards=rewards, columns=columns, preset=preset, storage_options=storage_options
    )
    return best_of_n_table(run.best_of_n(log, Selection(bad_rewards=bad_rewards)))


def prompt_stats(
    source: Source,
    *,
    rewards: Source | None = None,
    columns: Mapping[str, str] | None = None,
    preset: Preset | None = None,
    storage_options: Mapping[str, str] | None = None,
    strategy: Strategy = "best",
    n: int = 1,
    fraction: float | None = None,
    min_reward: float | None = None,
    bad_rewards: BadRewards = "error",
    engine: Engine = "polars",
) -> pl.DataFrame:
    """One row per ``(stage, prompt)``: how hard the prompt is, and what was kept.

    Returns
    -------
    polars.DataFrame
        Sorted by ``stage, prompt``: ``candidates``, ``reward_mean``,
        ``reward_min``, ``reward_max``, ``reward_std`` (ddof 0),
        ``zero_variance``, ``selected`` (how many), the best selected ``cand``
        and its ``tokens``; then, over every stage the prompt appears in,
        ``stages`` (how many) and ``overall_mean`` (its mean reward), and
        ``status``: ``"solved"`` (mean reward 1), ``"unsolved"`` (0) or
        ``"learnable"`` (between), for rewards in ``[0, 1]``, else null.

    Examples
    --------
    >>> import polars as pl
    >>> log = pl.DataFrame({"stage": [0, 0, 1, 1], "prompt": ["a", "a", "a", "a"],
    ...                     "cand": [0, 1, 0, 1], "reward": [0.0, 1.0, 1.0, 1.0],
    ...                     "logprobs": [[-1.0]] * 4})
    >>> prompt_stats(log).select("stage", "reward_mean", "stages", "status").rows()
    [(0, 0.5, 2, 'learnable'), (1, 1.0, 2, 'learnable')]
    """
    selection = Selection(
        strategy=strategy, n=n, fraction=fraction, min_reward=min_reward, bad_rewards=bad_rewards
    )
    run = executor(engine)
    log = read_log(
        source, rewards=rewards, columns=columns, preset=preset, storage_options=storage_options
    )
    table = run.prompts(log, selection)
    everywhere = pl.col("reward_mean") * pl.col("candidates")
    overall = (everywhere.sum() / pl.col("candidates").sum()).over("prompt")
    in_range = ((pl.col("reward_min").min() >= 0) & (pl.col("reward_max").max() <= 1)).over(
        "prompt"
    )
    return (
        table.with_columns(
            pl.len().over("prompt").cast(pl.Int64).alias("stages"),
            overall.alias("overall_mean"),
            in_range.alias("_in_range"),
        )
        .with_columns(
            pl.when(~pl.col("_in_range"))
            .then(None)
            .when(pl.col("overall_mean") == 1)
            .then(pl.lit("solved"))
            .when(pl.col("overall_mean") == 0)
            .then(pl.lit("unsolved"))
            .otherwise(pl.lit("learnable"))
            .alias("status")
        )
        .select(
            "stage",
            "prompt",
            "candidates",
            "reward_mean",
            "reward_min",
            "reward_max",
            "reward_std",
            "zero_variance",
            "selected",
            "cand",
            "tokens",
            "stages",
            "overall_mean",
            "status",
        )
        .sort("stage", "prompt")
    )


# the lazy frames select_best returned, with the files they read and the local
# files' (size, modification time) then (for collect)
_Stamps: TypeAlias = dict[str, tuple[int, int]]
_SOURCES: dict[int, tuple[weakref.ref[pl.LazyFrame], tuple[str, ...], str, _Stamps]] = {}


def _stamps(paths: Sequence[str]) -> _Stamps:
    """Size and modification time (ns) of each local file of ``paths``."""
    found = {}
    for path in paths:
        with contextlib.suppress(OSError, ValueError):  # remote, or gone: not checked
            info = os.stat(path)
            found[path] = (info.st_size, info.st_mtime_ns)
    return found


def _remember(
    frame: pl.LazyFrame, paths: tuple[str, ...], origin: str, stamps: _Stamps
) -> pl.LazyFrame:
    key = id(frame)
    ref = weakref.ref(frame, lambda _: _SOURCES.pop(key, None))
    _SOURCES[key] = (ref, paths, origin, stamps)
    return frame


def collect(
    frame: pl.LazyFrame, *, engine: Literal["streaming", "in-memory"] = "streaming"
) -> pl.DataFrame:
    """Collect a lazy frame of :func:`select_best` (or any lazy frame) and turn a
    failure to read the log into :class:`RaftInputError`.

    A frame returned by :func:`select_best` reads the payload only when collected;
    a page that cannot be decoded then surfaces as Polars' own error from
    ``frame.collect()``. ``raft_polars.collect(frame)`` raises
    :class:`RaftInputError` instead, naming the file whose footer cannot be read
    (for a frame :func:`select_best` returned) or the source.

    Examples
    --------
    >>> import polars as pl
    >>> import raft_polars as rp
    >>> log = pl.DataFrame({"stage": [0, 0], "prompt": [7, 7], "cand": [0, 1],
    ...                     "reward": [0.1, 0.3], "logprobs": [[-1.0], [-0.5, -0.2]]})
    >>> rp.collect(rp.select_best(log)).rows()
    [(0, 7, 1, 0.3, 2)]
    """
    if not isinstance(frame, pl.LazyFrame):
        msg = f"collect takes the lazy frame select_best returns, got {type(frame).__name__}"
        raise RaftInputError(msg)
    if engine not in ("streaming", "in-memory"):
        msg = f"engine must be 'streaming' or 'in-memory', got {engine!r}"
        raise RaftInputError(msg)
    entry = _SOURCES.get(id(frame))
    paths: tuple[str, ...] = ()
    origin = "the lazy frame"
    stamps: _Stamps = {}
    if entry is not None and entry[0]() is frame:
        paths, origin, stamps = entry[1], entry[2], entry[3]
    _unchanged(stamps)
    with reading(paths, origin):
        got = frame.collect(engine=engine)
    _unchanged(stamps)  # nor while it was read
    return got


def _unchanged(stamps: _Stamps) -> None:
    """Raise where a file the selection was made from has changed since."""
    now = _stamps(list(stamps))
    for path, stamp in stamps.items():
        if now.get(path) != stamp:
            msg = (
                f"{path!r} changed after select_best read it: the rows read now would "
                "not be the selection's; call select_best again"
            )
            raise RaftInputError(msg)
