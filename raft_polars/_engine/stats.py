"""Statistics of best-of-K logs beyond the loss: best-of-n curves, reward spread,
dead groups, win rates, length bias, per-prompt difficulty.

Every statistic is a kernel over a *candidate table*, one row per candidate with
``stage, prompt, cand, reward``, ``selected`` (chosen by the selection options)
and ``tokens`` (null when the log has no log-probs), holding whole prompts. The
kernels return per-stage sums that add up across partitions, so that any executor
can run them; the definitions are in ``docs/semantics.md``.

Best-of-n is computed in closed form: with a prompt's K rewards sorted,
``r_(1) <= ... <= r_(K)``, the expected maximum of ``n`` of them drawn without
replacement is ``sum_i r_(i) C(i-1, n-1) / C(K, n)`` and the expected minimum
``sum_i r_(i) C(K-i, n-1) / C(K, n)`` (PKPO, arXiv 2505.15201, eq. 12). The
weights come one from the next by their ratios, from the largest (``n / K``)
down, so they neither overflow nor underflow for K in the thousands. For
rewards in ``{0, 1}`` the expected maximum is pass@n, ``1 - C(K-c, n) / C(K,
n)`` with ``c`` correct answers.

Examples
--------
>>> import polars as pl
>>> from raft_polars._engine.stats import best_of_n_sums
>>> cands = pl.DataFrame({"stage": [0] * 4, "prompt": [0] * 4, "cand": [0, 1, 2, 3],
...                       "reward": [0.0, 0.0, 1.0, 0.0]})
>>> best_of_n_sums(cands).select("n", "prompts", pl.col("best_sum").round(12)).rows()
[(1, 1, 0.25), (2, 1, 0.5), (3, 1, 0.75), (4, 1, 1.0)]
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import repeat

import numpy as np
import polars as pl

from raft_polars._engine.checks import Problem, first_row
from raft_polars._engine.sums import group_starts, group_sums, in_order

__all__ = [
    "BEST_OF_N_COLUMNS",
    "STATS_COLUMNS",
    "best_of_n_sums",
    "best_of_n_table",
    "by_prompts",
    "candidate_table",
    "prompt_rows",
    "prompt_table",
    "split_prompts",
    "stage_sums",
    "stats_parts",
    "stats_table",
]

_PROMPT = ["stage", "prompt"]
_IDS = ["stage", "prompt", "cand"]
STATS_COLUMNS = (
    "reward_std",
    "reward_best_std",
    "zero_variance",
    "win_rate",
    "length_mean",
    "length_selected_mean",
    "longest_share",
    "length_reward_corr",
)
BEST_OF_N_COLUMNS = ("stage", "n", "prompts", "expected_best", "expected_worst")


def candidate_table(
    keys: pl.DataFrame, chosen: pl.DataFrame, tokens: pl.DataFrame | None
) -> pl.DataFrame:
    """``keys`` (canonical ``stage, prompt, cand, reward``) with ``selected`` and
    ``tokens`` (from ``stage, prompt, cand, tokens`` rows; 0 for a candidate
    without token rows, null for one whose count is null (a null list: its
    length is unknown), and for every candidate when ``tokens`` is None)."""
    marks = chosen.select(_IDS).with_columns(pl.lit(True).alias("selected"))
    table = keys.join(marks, on=_IDS, how="left").with_columns(pl.col("selected").fill_null(False))
    if tokens is None:
        return table.with_columns(pl.lit(None, pl.Int64).alias("tokens"))
    count = pl.col("tokens")
    known = pl.when(count.null_count() == 0).then(count.sum().cast(pl.Int64))
    counts = tokens.group_by(_IDS).agg(known, pl.lit(True).alias("_rows"))
    absent = pl.col("_rows").is_null()  # no token rows: an empty response
    table = table.join(counts, on=_IDS, how="left")
    return table.with_columns(pl.when(absent).then(0).otherwise(count).alias("tokens")).drop(
        "_rows"
    )


# candidates whose table is built at a time: whole prompts, so that the joins and
# window functions over the 2.6 M candidates of a 692 M-token log stay small (all
# at once they peaked at 1.5 GiB)
_CANDIDATES = 1 << 17
_BUCKET_SEED = 0x5AF8


def split_prompts(frame: pl.DataFrame, parts: int) -> Iterator[pl.DataFrame]:
    """``frame`` in ``parts`` parts of whole prompts, by a hash of ``stage,
    prompt``: a prompt falls in the same part of every frame whose ids have the
    same types. Each part is taken when it is asked for: the parts of a frame
    are never all held at once beside it (at 692 M tokens, 160 MiB less)."""
    if parts <= 1:
        yield frame
        return
    hashed = pl.struct(*_PROMPT).hash(seed=_BUCKET_SEED) % parts
    # a batch at a time: the struct's hashes of millions of rows never held at once
    bucket = frame.lazy().select(hashed.cast(pl.UInt32)).collect(engine="streaming").to_series()
    for part in range(parts):
        yield frame.filter(bucket == part)


def by_prompts(
    keys: pl.DataFrame,
    chosen: pl.DataFrame,
    tokens: pl.DataFrame | None,
    *,
    candidates: int = _CANDIDATES,
) -> Iterator[pl.DataFrame]:
    """:func:`candidate_table` in parts of whole prompts, about ``candidates``
    rows each (:func:`split_prompts` of the three frames)."""
    parts = max(1, -(-keys.height // candidates))
    counted = repeat(None, parts) if tokens is None else split_prompts(tokens, parts)
    own, picked = split_prompts(keys, parts), split_prompts(chosen, parts)
    for frames in zip(own, picked, counted, strict=True):
        yield candidate_table(*frames)


def stats_parts(
    keys: pl.DataFrame,
    chosen: pl.DataFrame,
    tokens: pl.DataFrame | None,
    *,
    candidates: int = _CANDIDATES,
) -> list[pl.DataFrame]:
    """:func:`stage_sums` of the candidates, by parts of whole prompts."""
    parts = by_prompts(keys, chosen, tokens, candidates=candidates)
    return [stage_sums(c, prompt_table(c)) for c in parts]


def prompt_rows(
    keys: pl.DataFrame,
    chosen: pl.DataFrame,
    tokens: pl.DataFrame | None,
    *,
    candidates: int = _CANDIDATES,
) -> pl.DataFrame:
    """:func:`prompt_table` of the candidates, by parts of whole prompts."""
    parts = by_prompts(keys, chosen, tokens, candidates=candidates)
    return pl.concat([prompt_table(c) for c in parts], how="vertical")


def unknown_selected(chosen: pl.DataFrame, tokens: pl.DataFrame | None) -> list[Problem]:
    """``null_logprobs`` for the selected candidates whose token count is null
    (a null list in the nested layout), as the loss reports them."""
    if tokens is None or not tokens["tokens"].has_nulls():
        return []
    unknown = tokens.filter(pl.col("tokens").is_null()).select(_IDS)
    on = chosen.select(pl.col(c).cast(unknown.schema[c]) for c in _IDS)
    found = unknown.join(on, on=_IDS, how="semi").sort(_IDS)
    row = first_row(found)
    return [] if row is None else [Problem("null_logprobs", found.height, row)]


_PROMPT_SCHEMA = pl.Schema({
    "stage": pl.Int64, "prompt": pl.Int64, "candidates": pl.Int64, "reward_mean": pl.Float64,
    "reward_min": pl.Float64, "reward_max": pl.Float64, "reward_std": pl.Float64,
    "zero_variance": pl.Boolean, "selected": pl.Int64, "cand": pl.Int64, "tokens": pl.Int64,
    "win_sum": pl.Float64, "win_n": pl.Int64, "longest_n": pl.Int64, "longest_d": pl.Int64,
    "rho": pl.Float64,
})  # fmt: skip


def prompt_table(cands: pl.DataFrame) -> pl.DataFrame:
    """One row per ``(stage, prompt)``, sorted by them: ``candidates``,
    ``reward_mean``, ``reward_min``, ``reward_max``, ``reward_std`` (ddof 0),
    ``zero_variance``, ``selected`` (how many), the best selected ``cand`` and its
    ``tokens`` (null when nothing is selected), and the per-prompt parts of the
    stage statistics (``win_sum``, ``win_n``, ``longest_n``, ``longest_d``,
    ``rho``; a prompt with a candidate of unknown length gives no longest share
    and no rho).

    One compiled loop over the candidates in prompt order
    (:func:`_compiled.prompt_groups`): the window expressions it replaced (ranks,
    maxima and Spearman's rho over each prompt) took 2.4 s of the 10-12 s of
    ``stage_stats`` at 692 M tokens."""
    from raft_polars._engine import _compiled

    ordered = cands.select(*_IDS, pl.col("reward").cast(pl.Float64), "selected", "tokens")
    if not in_order(ordered, _IDS):
        ordered = ordered.sort(_IDS, nulls_last=True)
    if not ordered.height:
        return _PROMPT_SCHEMA.to_frame().with_columns(
            pl.col(c).cast(ordered.schema[c]) for c in ("stage", "prompt", "cand", "tokens")
        )
    starts = group_starts(ordered, _PROMPT)
    groups = len(starts)
    floats, ints = np.zeros((groups, 6)), np.zeros((groups, 5), dtype=np.int64)
    tokens = ordered["tokens"]
    counted = tokens.null_count() < tokens.len()  # a log with log-probs: none null
    _compiled.prompt_groups(
        np.append(starts, ordered.height),
        ordered["reward"].to_numpy(),
        tokens.fill_null(-1).cast(pl.Int64).to_numpy(),  # unknown: below 0
        counted,
        ordered["selected"].fill_null(value=False).to_numpy(),
        ordered["cand"].cast(pl.Int64).fill_null(0).to_numpy(),
        floats,
        ints,
    )
    best = ints[:, 3]
    picked = ordered.select("cand", "tokens").gather(np.maximum(best, 0))
    sizes = np.diff(np.append(starts, ordered.height))
    low, high = floats[:, 1], floats[:, 2]
    has_best = pl.lit(pl.Series(best >= 0))
    return ordered.select(pl.col(_PROMPT).gather(starts)).with_columns(
        pl.Series("candidates", sizes, pl.Int64),
        pl.Series("reward_mean", floats[:, 0]),
        pl.Series("reward_min", low),
        pl.Series("reward_max", high),
        pl.Series("reward_std", floats[:, 3]),
        pl.Series("zero_variance", (sizes >= 2) & (low == high)),
        pl.Series("selected", ints[:, 0], pl.Int64),
        pl.when(has_best).then(pl.lit(picked["cand"])).alias("cand"),
        pl.when(has_best).then(pl.lit(picked["tokens"])).alias("tokens"),
        pl.Series("win_sum", floats[:, 4]),
        pl.Series("win_n", ints[:, 1], pl.Int64),
        pl.Series("longest_n", ints[:, 2], pl.Int64),
        pl.Series("longest_d", ints[:, 4], pl.Int64),
        pl.Series("rho", floats[:, 5]).fill_nan(None),
    )


def stage_sums(cands: pl.DataFrame, prompts: pl.DataFrame) -> pl.DataFrame:
    """Per-stage sums of one partition, to be added across partitions
    (:func:`stats_table` turns them into the statistics): counts, sums, and the
    rewards' means and sums of squared deviations from them (two passes, each
    added in a fixed order: :func:`group_sums`)."""
    reward, tokens, chosen = pl.col("reward"), pl.col("tokens"), pl.col("selected")
    counted = tokens.is_not_null()
    per_cand = group_sums(
        cands,
        ["stage"],
        {
            "n_all": pl.lit(1),
            "r_sum": reward,
            "n_sel": chosen,
            "rs_sum": pl.when(chosen).then(reward),
            "len_sum": tokens,
            "len_n": counted,
            "len_sel_sum": pl.when(chosen).then(tokens),
            "len_sel_n": chosen & counted,
        },
        order=_IDS[1:],
    ).with_columns(
        (pl.col("r_sum") / pl.col("n_all")).alias("r_mean"),
        pl.when(pl.col("n_sel") > 0).then(pl.col("rs_sum") / pl.col("n_sel")).alias("rs_mean"),
    )
    means = cands.select(*_IDS, reward, chosen).join(
        per_cand.select("stage", "r_mean", "rs_mean"), on="stage", how="left"
    )
    spread = group_sums(
        means,
        ["stage"],
        {
            "r_m2": (reward - pl.col("r_mean")) ** 2,
            "rs_m2": pl.when(chosen).then((reward - pl.col("rs_mean")) ** 2),
        },
        order=_IDS[1:],
    )
    per_prompt = group_sums(
        prompts,
        ["stage"],
        {
            "zero_variance": pl.col("zero_variance"),
            "win_sum": pl.col("win_sum"),
            "win_n": pl.col("win_n"),
            "longest_n": pl.col("longest_n"),
            "longest_d": pl.col("longest_d"),
            "rho_sum": pl.col("rho"),
            "rho_n": pl.col("rho").is_not_null(),
        },
        order=["prompt"],
    )
    return (
        per_cand.drop("r_sum", "rs_sum")
        .join(spread, on="stage", how="left")
        .join(per_prompt, on="stage", how="left")
    )


def _pooled(every: pl.DataFrame, n: str, mean: str, m2: str) -> pl.DataFrame:
    """Per stage, the population standard deviation of parts given as count,
    mean and sum of squared deviations (Chan et al.'s pairwise combination, exact
    in real numbers and without the cancellation of a sum of squares), the parts
    added in their order."""
    weight = pl.col(n).cast(pl.Float64)
    sums = {"w": weight, "wm": weight * pl.col(mean).fill_null(0.0)}
    grand = group_sums(every, ["stage"], sums).select(
        "stage", pl.when(pl.col("w") > 0).then(pl.col("wm") / pl.col("w")).alias("grand"), "w"
    )
    deviation = (
        pl.col(m2).fill_null(0.0) + weight * (pl.col(mean).fill_null(0.0) - pl.col("grand")) ** 2
    )
    spread = group_sums(
        every.join(grand, on="stage", how="left", maintain_order="left"),
        ["stage"],
        {"spread": pl.when(weight > 0).then(deviation)},
    )
    return grand.join(spread, on="stage").select(
        "stage",
        pl.when(pl.col("w") > 0)
        .then(  # an overflowing mean leaves no spread to measure: NaN, not inf
            pl.when(pl.col("grand").is_finite())
            .then((pl.col("spread") / pl.col("w")).sqrt())
            .otherwise(float("nan"))
        )
        .alias(f"{m2}_std"),
    )


def stats_table(parts: list[pl.DataFrame], *, lengths: bool) -> pl.DataFrame:
    """The statistics of :data:`STATS_COLUMNS` per stage, from every partition's
    :func:`stage_sums`. Length statistics are null without token counts."""
    every = pl.concat(parts, how="vertical")
    additive = [
        c for c in every.columns if c not in ("stage", "r_mean", "r_m2", "rs_mean", "rs_m2")
    ]
    total = (
        group_sums(every, ["stage"], {c: pl.col(c) for c in additive})
        .join(_pooled(every, "n_all", "r_mean", "r_m2"), on="stage")
        .join(_pooled(every, "n_sel", "rs_mean", "rs_m2"), on="stage")
    )

    def mean(num: str, den: str) -> pl.Expr:
        return pl.when(pl.col(den) > 0).then(pl.col(num) / pl.col(den))

    columns = [
        pl.col("r_m2_std").alias("reward_std"),
        pl.col("rs_m2_std").alias("reward_best_std"),
        pl.col("zero_variance"),
        mean("win_sum", "win_n").alias("win_rate"),
    ]
    if lengths:
        columns += [
            mean("len_sum", "len_n").alias("length_mean"),
            mean("len_sel_sum", "len_sel_n").alias("length_selected_mean"),
            mean("longest_n", "longest_d").alias("longest_share"),
            mean("rho_sum", "rho_n").alias("length_reward_corr"),
        ]
    else:
        columns += [
            pl.lit(None, pl.Float64).alias(name)
            for name in ("length_mean", "length_selected_mean", "longest_share")
        ] + [pl.lit(None, pl.Float64).alias("length_reward_corr")]
    return total.select("stage", *columns).with_columns(
        pl.col(c).cast(pl.Float64) for c in STATS_COLUMNS if c != "zero_variance"
    )


# --- best-of-n ------------------------------------------------------------------------


def best_of_n_sums(cands: pl.DataFrame) -> pl.DataFrame:
    """Per ``(stage, n)``: ``prompts`` with at least ``n`` candidates and the sums
    over them of the expected best (``best_sum``) and worst (``worst_sum``)
    reward of ``n`` candidates drawn without replacement.

    With the candidates in order of prompt (as logs hold them; else sorted by
    prompt), one compiled loop (:func:`_compiled.best_of_n`) sorts a copy of
    each prompt's rewards and goes over its ``k * (k + 1)`` weights: beside the
    rewards, O(prompts) memory whatever ``K`` (no array of one row a candidate
    but one flag each). The rows Polars expanded, one per
    candidate and ``n``, took 0.33 s at 262 K candidates (K = 8), a block of
    1 Mi pairs at a time to bound their memory; a sort of every candidate by
    prompt and reward held 270 MiB at 2.6 M."""
    from raft_polars._engine import _compiled

    schema = {"stage": pl.Int64, "n": pl.Int64, "prompts": pl.Int64,
              "best_sum": pl.Float64, "worst_sum": pl.Float64}  # fmt: skip
    if cands.height == 0:
        return pl.DataFrame(schema=schema)
    ordered = cands.select(*_PROMPT, pl.col("reward").cast(pl.Float64))
    if not _in_prompt_order(ordered):
        ordered = ordered.sort(_PROMPT, nulls_last=True)
    # each prompt's first row, then each prompt's stage (O(prompts) from there on)
    first = pl.int_range(pl.len()) == 0
    stage, prompt = pl.col("stage"), pl.col("prompt")
    new_prompt = first | stage.ne_missing(stage.shift(1)) | prompt.ne_missing(prompt.shift(1))
    starts = np.flatnonzero(ordered.select(new_prompt).to_series().to_numpy())
    of_prompt = ordered["stage"].gather(starts)
    new_stage = of_prompt.ne_missing(of_prompt.shift(1)).to_numpy().copy()
    new_stage[0] = True
    group_stage = np.cumsum(new_stage) - 1
    stages = of_prompt.filter(new_stage)
    starts = np.append(starts, ordered.height)
    largest = int(np.diff(starts).max())
    prompts = np.zeros((stages.len(), largest), dtype=np.int64)
    best, worst = np.zeros(prompts.shape), np.zeros(prompts.shape)
    reward = ordered["reward"].to_numpy()  # Polars' buffer: the kernel sorts copies
    del ordered, of_prompt
    _compiled.best_of_n(starts, group_stage, reward, prompts, best, worst)
    grid = pl.DataFrame(
        {
            "stage": np.repeat(stages.to_numpy(), largest),
            "n": np.tile(np.arange(1, largest + 1), stages.len()),
            "prompts": prompts.ravel(),
            "best_sum": best.ravel(),
            "worst_sum": worst.ravel(),
        }
    )
    return grid.filter(pl.col("prompts") > 0).cast(schema)  # type: ignore[arg-type]


def _in_prompt_order(cands: pl.DataFrame) -> bool:
    """Whether the rows come by ``(stage, prompt)``, ascending, no id null: each
    prompt's rows then lie together."""
    stage, prompt = pl.col("stage"), pl.col("prompt")
    before, prompt_before = stage.shift(1), prompt.shift(1)
    ordered = (stage > before) | ((stage == before) & (prompt >= prompt_before))
    return bool(
        cands.select(
            stage.is_not_null().all() & prompt.is_not_null().all() & ordered.fill_null(True).all()
        ).item()
    )


def best_of_n_table(parts: list[pl.DataFrame]) -> pl.DataFrame:
    """``stage, n, prompts, expected_best, expected_worst`` from every partition's
    :func:`best_of_n_sums`."""
    every = pl.concat(parts, how="vertical")
    total = group_sums(
        every, ["stage", "n"], {c: pl.col(c) for c in ("prompts", "best_sum", "worst_sum")}
    )
    return total.select(
        "stage",
        "n",
        "prompts",
        (pl.col("best_sum") / pl.col("prompts")).alias("expected_best"),
        (pl.col("worst_sum") / pl.col("prompts")).alias("expected_worst"),
    ).sort("stage", "n")
