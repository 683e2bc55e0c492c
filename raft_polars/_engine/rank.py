"""Step 2 of RAFT: rank the candidates of each prompt and select the batch.

The default is the seed's best-of-K: per ``(stage, prompt)`` the candidate with the
largest reward, ties to the smallest candidate id. Other strategies:

- ``top_n``: the ``n`` best candidates of each prompt (same order and tie rule);
- ``global``: the RAFT paper's global ranking, the top ``fraction`` of all
  candidates of a stage by reward, across prompts (ties to the smallest candidate
  id, then the smallest prompt id); ``ceil(fraction * candidates)`` are kept;
- ``min_reward`` (with any strategy): selected candidates whose reward is below the
  threshold are dropped, so a prompt whose selection falls below it contributes
  nothing; such prompts are counted.

Everything here works on the small candidate-level key frame
``stage, prompt, cand, reward``, never on tokens.

Examples
--------
>>> import polars as pl
>>> from raft_polars import Selection
>>> from raft_polars._engine.rank import select
>>> keys = pl.LazyFrame({"stage": [0, 0, 0, 0], "prompt": [1, 1, 2, 2],
...                      "cand": [0, 1, 0, 1], "reward": [0.5, 0.5, 0.1, 0.9]})
>>> select(keys, Selection()).sort("prompt").collect().rows()
[(0, 1, 0, 0.5), (0, 2, 1, 0.9)]
>>> select(keys, Selection(strategy="global", fraction=0.5)).sort("prompt").collect().rows()
[(0, 1, 0, 0.5), (0, 2, 1, 0.9)]
>>> select(keys, Selection(min_reward=0.6)).collect().rows()
[(0, 2, 1, 0.9)]
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import polars as pl

from raft_polars._engine.checks import Problem, bad_reward, beyond_int64, first_row
from raft_polars._engine.dense import Box, PromptCodes, box_of, position, prompt_codes
from raft_polars._engine.read import ID_COLUMNS, canonical_ids
from raft_polars._engine.sums import group_sums
from raft_polars.errors import RaftInputError
from raft_polars.selection import Selection

__all__ = [
    "ORDER_BY",
    "ORDER_DESCENDING",
    "STAGE_SUMS",
    "Keys",
    "Ranked",
    "apply_min_reward",
    "below_min",
    "dense_summary",
    "index_keys",
    "prompt_summary",
    "rank",
    "rank_keys",
    "select",
]

FrameT = TypeVar("FrameT", pl.DataFrame, pl.LazyFrame)
_PROMPT = ["stage", "prompt"]
_IDS = list(ID_COLUMNS)
# best first: the largest reward, then the smallest candidate id
ORDER_BY = ["reward", "cand"]
ORDER_DESCENDING = [True, False]
# the per-stage sums every partition returns and the executors add up
STAGE_SUMS: dict[str, pl.DataType] = {
    "prompts": pl.Int64(),
    "candidates": pl.Int64(),
    "reward_sum": pl.Float64(),
    "ties": pl.Int64(),
    "selected": pl.Int64(),
    "reward_best_sum": pl.Float64(),
    "below_min": pl.Int64(),
    "nll": pl.Float64(),
    "tokens": pl.Int64(),
    "seq_sum": pl.Float64(),
    "seq_n": pl.Int64(),
    "skipped": pl.Int64(),
    "skipped_prompts": pl.Int64(),
}


def prompt_summary(candidates: pl.LazyFrame) -> pl.LazyFrame:
    """One row per ``(stage, prompt)``: candidate counts, reward statistics and
    the best candidate (``cand``, ``reward``).

    Columns: ``stage, prompt, cand, reward, candidates, cand_unique, null_cands,
    reward_sum, ties, bad_rewards``. ``ties`` is the number of candidates that
    share the best reward; ``bad_rewards`` counts null, NaN and infinite rewards;
    ``null_cands`` counts null candidate ids.
    """
    reward = pl.col("reward")
    return candidates.group_by(_PROMPT).agg(
        pl.col("cand", "reward").sort_by(ORDER_BY, descending=ORDER_DESCENDING).first(),
        pl.len().alias("candidates"),
        pl.col("cand").n_unique().alias("cand_unique"),
        pl.col("cand").null_count().alias("null_cands"),
        reward.sort_by("cand").sum().alias("reward_sum"),  # the same bits on every run
        (reward == reward.max()).sum().alias("ties"),
        bad_reward(reward).sum().alias("bad_rewards"),
    )


def dense_summary(keys: pl.DataFrame, box: Box | None = None) -> pl.DataFrame | None:
    """:func:`prompt_summary` with numpy, for integer ids that fit a dense box.

    Returns the same columns (Int64 ids, sorted by ``stage, prompt``), or None
    when the ids do not fit a box or something is off (a null id, a duplicate
    candidate, a reward that is not finite): :func:`prompt_summary` then runs, and
    the checks name the problem. Time and memory are O(candidates) when the box
    is at most 4 positions per candidate; it gives up otherwise. The ranking is
    the compiled :func:`~raft_polars._engine._compiled.best_of_groups`, which the
    nested lists of ``raft_alignment`` use too.
    """
    box = box_of(keys) if box is None else box
    if box is None or not dense_enough(box, keys.height):
        return None
    reward = keys["reward"].cast(pl.Float64).to_numpy()  # a null reward: NaN
    if not np.isfinite(reward).all():
        return None
    index = box.index(keys)
    present = np.zeros(box.size, dtype=bool)
    present[index] = True
    if int(np.count_nonzero(present)) != len(index):  # a duplicate candidate
        return None
    from raft_polars._engine._compiled import best_of_groups, groups_of

    group, offset = np.divmod(index, box.spans[2])
    del index
    cand, best, ties, counts, sums = groups_of(box.prompts)
    best_of_groups(group, offset, reward, cand, best, ties, counts, sums)
    used = np.flatnonzero(counts)
    count = pl.get_index_type()
    zeros = pl.Series(np.zeros(len(used), dtype=np.uint32), dtype=count)
    return pl.DataFrame(
        {
            **box.ids(used),
            "cand": cand[used] + box.lows[2],
            "reward": best[used],
            "candidates": pl.Series(counts[used], dtype=count),
            "cand_unique": pl.Series(counts[used], dtype=count),
            "null_cands": zeros,
            "reward_sum": sums[used],
            "ties": pl.Series(ties[used], dtype=count),
            "bad_rewards": zeros,
        }
    ).cast({"stage": pl.Int64, "prompt": pl.Int64, "cand": pl.Int64, "reward": pl.Float64})


def select(candidates: pl.LazyFrame, selection: Selection) -> pl.LazyFrame:
    """The selected candidates: ``stage, prompt, cand, reward``, one row each.

    :func:`rank` followed by :func:`apply_min_reward`. Row order carries no
    meaning; the rewards are assumed finite (:func:`prompt_summary` counts the
    bad ones).
    """
    return apply_min_reward(rank(candidates, selection), selection)


def rank(candidates: pl.LazyFrame, selection: Selection) -> pl.LazyFrame:
    """The candidates the strategy selects, before any ``min_reward`` threshold."""
    keys = candidates.select(*ID_COLUMNS, "reward")
    if selection.strategy == "global":
        assert selection.fraction is not None
        ranked = keys.sort(
            ["stage", "reward", "cand", "prompt"], descending=[False, True, False, False]
        )
        position = pl.int_range(pl.len()).over("stage")
        return ranked.filter(position < global_keep(pl.len().over("stage"), selection.fraction))
    if selection.is_best_of_k:
        return prompt_summary(keys).select(*ID_COLUMNS, "reward")
    ranked = keys.sort([*_PROMPT, "reward", "cand"], descending=[False, False, True, False])
    return ranked.filter(pl.int_range(pl.len()).over(_PROMPT) < selection.n)


def global_keep(count: pl.Expr, fraction: float) -> pl.Expr:
    """How many of ``count`` candidates ``fraction`` keeps: the ceiling of the
    product with the fraction as written (its shortest decimal, ``repr``), in
    exact integers, at least 1. Binary rounding makes ``0.28 * 25``
    7.000000000000001 (7 kept, not 8), while ``0.280000000001 * 25`` is above 7
    (8 kept: a tolerance of 1e-9 kept 7)."""
    exact = written(fraction)
    if exact.denominator >= 10**37:  # below 1e-20: any count of 64 bits keeps one
        return pl.lit(1, pl.Int64)
    top, bottom = pl.lit(exact.numerator, pl.Int128), pl.lit(exact.denominator, pl.Int128)
    ceiling = (count.cast(pl.Int128) * top + bottom - 1) // bottom
    return ceiling.clip(1).cast(pl.Int64)


def written(value: float | Decimal) -> Fraction:
    """A number as written, exactly: a float by its shortest decimal (``repr``;
    a numpy float by its own precision's, ``np.float32(0.28)`` is 0.28, not
    0.2800000011920929), a whole number or a fraction as it is."""
    if isinstance(value, numbers.Rational):
        return Fraction(value.numerator, value.denominator)
    if isinstance(value, Decimal):
        return Fraction(value)
    if isinstance(value, np.floating):
        return Fraction(str(value))
    return Fraction(repr(float(value)))


def apply_min_reward(chosen: FrameT, selection: Selection) -> FrameT:
    """Drop the selected candidates whose reward is below ``selection.min_reward``."""
    if selection.min_reward is None:
        return chosen
    return chosen.filter(pl.col("reward") >= selection.min_reward)


def below_min(ranked: pl.DataFrame, chosen: pl.DataFrame) -> pl.DataFrame | None:
    """Per stage, the prompts that ``min_reward`` left with nothing selected.

    None when nothing was dropped (``chosen`` is ``ranked``).
    """
    if chosen is ranked or chosen.height == ranked.height:
        return None

    def prompts(frame: pl.DataFrame, name: str) -> pl.DataFrame:
        return frame.group_by("stage").agg(pl.col("prompt").n_unique().alias(name))

    return (
        prompts(ranked, "before")
        .join(prompts(chosen, "after"), on="stage", how="left")
        .select("stage", (pl.col("before") - pl.col("after").fill_null(0)).alias("below_min"))
    )


# --- the rank kernel -------------------------------------------------------------------


@dataclass
class Keys:
    """The candidate keys ``stage, prompt, cand, reward`` as read for ranking.

    Attributes
    ----------
    frame
        The ids in the source's own integer types, or the prompt ids as
        ``codes``; the reward as Float64.
    codes
        The codes of prompt ids (strings, or integers too sparse for a box), or
        None.
    summary
        :func:`dense_summary` of the keys (canonical ids), or None when they do
        not fit a dense box.
    box
        The dense box of ``frame``'s ids when ``summary`` is not None.
    """

    frame: pl.DataFrame
    codes: PromptCodes | None = None
    summary: pl.DataFrame | None = None
    box: Box | None = None

    def canonical(self) -> pl.DataFrame:
        """The keys with canonical ids (Int64, or String prompts)."""
        frame = self.frame if self.codes is None else self.codes.decode(self.frame)
        return canonical_keys(frame)

    def index(self, box: Box, chosen: pl.DataFrame) -> npt.NDArray[np.signedinteger[Any]]:
        """Positions in ``box`` of the (canonical) ``chosen`` candidates."""
        return box.index(chosen if self.codes is None else self.codes.encode(chosen))

    def lookup(
        self, frame: pl.LazyFrame, box: Box, table: npt.NDArray[np.uint8], *, checked: bool
    ) -> tuple[pl.LazyFrame, pl.Expr]:
        """``frame`` and the expression of each row's entry of ``table`` at its box
        position (:meth:`position`)."""
        frame, flat = self.position(frame, box, checked=checked)
        return frame, pl.lit(pl.Series("table", table)).gather(flat)

    def position(
        self, frame: pl.LazyFrame, box: Box, *, checked: bool
    ) -> tuple[pl.LazyFrame, pl.Expr]:
        """``frame`` and the expression of each row's position in ``box``
        (``box.size``: outside). With prompt codes, ``frame`` gets them as one more
        column (under a name none of its columns has), which the caller drops."""
        if self.codes is None:
            return frame, position(box, frame.collect_schema(), checked=checked)
        frame, code = self.with_codes(frame)
        names = ("stage", code, "cand")
        return frame, position(box, frame.collect_schema(), checked=checked, names=names)

    def with_codes(self, frame: pl.LazyFrame) -> tuple[pl.LazyFrame, str]:
        """``frame`` with the codes of its prompts as one more column, and that
        column's name (one none of its columns has; the caller drops it)."""
        assert self.codes is not None
        code = _code_name(frame.collect_schema())
        return self.codes.attach(frame, code), code


def _code_name(schema: pl.Schema) -> str:
    """A name for the prompt's codes that no column of ``schema`` has."""
    name = "_raft_prompt_code"
    while name in schema or f"{name}_right" in schema:
        name += "_"
    return name


def canonical_keys(frame: pl.DataFrame) -> pl.DataFrame:
    """``stage, prompt, cand, reward`` with canonical ids; ids that do not fit
    Int64 (UInt64 beyond 2**63, say) are an input error."""
    try:
        return frame.select(*canonical_ids(frame.schema), "reward")
    except pl.exceptions.PolarsError as exc:
        detail = str(exc).strip().splitlines()[0]
        detail = beyond_int64(detail) or detail
        msg = f"the ids must fit a 64-bit signed integer: {detail}"
        raise RaftInputError(msg) from exc


def index_keys(frame: pl.DataFrame, *, summarize: bool = True) -> Keys:
    """The keys, with a numpy summary when the ids fit a dense box (string
    prompt ids and sparse integer ones as codes).

    ``summarize=False``: keys already ranked and checked, only their box (for the
    token pass).
    """
    for name in ID_COLUMNS:
        if frame.schema[name] == pl.UInt64 and (frame[name].max() or 0) > 2**63 - 1:  # type: ignore[operator]
            canonical_keys(frame)  # reported as every other path does, from the cast

    def boxed(keys: pl.DataFrame) -> tuple[Box, pl.DataFrame | None] | None:
        box = box_of(keys)
        if box is None or not dense_enough(box, keys.height):
            return None
        if not summarize:
            return box, None
        summary = dense_summary(keys, box)
        return None if summary is None else (box, summary)

    if frame.schema["prompt"] != pl.String and (found := boxed(frame)) is not None:
        return Keys(frame, None, found[1], found[0])
    codes = prompt_codes(frame)
    if codes is None:
        return Keys(frame)
    coded = codes.encode(frame)
    found = boxed(coded)
    if found is None:
        return Keys(frame)
    box, summary = found
    return Keys(coded, codes, None if summary is None else codes.decode(summary), box)


def dense_enough(box: Box, candidates: int) -> bool:
    """At most 4 ``(stage, prompt)`` positions per candidate: O(candidates) work."""
    return box.prompts <= 4 * candidates


@dataclass
class Ranked:
    """What the rank kernel returns for one partition (whole prompts; whole
    stages for the global ranking).

    Attributes
    ----------
    keys
        The partition's keys (for the token pass and the selected rows).
    chosen
        The selected candidates, canonical ``stage, prompt, cand, reward``.
    stages
        Per-stage sums (:data:`STAGE_SUMS`: the candidate and selection ones).
    problems
        Null ids, duplicate candidates, bad rewards.
    """

    keys: Keys
    chosen: pl.DataFrame
    stages: pl.DataFrame
    problems: list[Problem]
    every: Keys | None = None

    @property
    def token_keys(self) -> Keys:
        """The keys of every candidate, skipped ones included: their token rows
        are not orphans."""
        return self.keys if self.every is None else self.every


def rank_keys(frame: pl.DataFrame, selection: Selection) -> Ranked:
    """The rank kernel: check and rank a partition's candidate keys.

    ``frame`` holds ``stage, prompt, cand, reward`` (ids in the source's types,
    the reward Float64) of whole prompts (whole stages for ``"global"``).
    ``selection.bad_rewards == "skip"``: candidates with a bad reward are left
    out, counted per stage.
    """
    every = skipped = None
    if selection.bad_rewards == "skip":
        bad = bad_reward(pl.col("reward"))
        if frame.select(bad.any()).item():
            # the ids are checked before any row is left out: a duplicate or a null
            # id among the skipped rows is an error, as it is without skip
            every = index_keys(frame.with_columns(pl.lit(0.0).alias("reward")))
            whole = every.summary
            if whole is None:
                whole = prompt_summary(every.canonical().lazy()).collect(engine="in-memory")
            problems = candidate_problems(every, whole)
            if problems:
                empty = whole.head(0).select(*_IDS, "reward")
                return Ranked(every, empty, _empty_stages(), problems)
            lost = (
                frame.select("stage", "prompt", bad.alias("_bad"))
                .group_by("stage", "prompt")
                .agg(pl.col("_bad").sum().alias("skipped"), pl.col("_bad").all().alias("_gone"))
            )
            skipped = lost.group_by("stage").agg(
                pl.col("skipped").sum(), pl.col("_gone").sum().alias("skipped_prompts")
            )
            frame = frame.filter(~bad)
    keys = index_keys(frame)
    summary = keys.summary
    if summary is None:  # the general path
        summary = prompt_summary(keys.canonical().lazy()).collect(engine="in-memory")
    problems = candidate_problems(keys, summary)
    if problems:
        return Ranked(keys, summary.head(0).select(*_IDS, "reward"), _empty_stages(), problems)
    if selection.is_best_of_k:  # the summary holds each prompt's best candidate
        ranked = summary.select(*_IDS, "reward")
    else:
        ranked = rank(keys.canonical().lazy(), selection).collect(engine="in-memory")
    # canonical ids whatever the path (prompt codes decode to the source's type)
    ranked = ranked.select(*canonical_ids(ranked.schema), pl.col("reward").cast(pl.Float64))
    chosen = apply_min_reward(ranked, selection)
    # the rewards added in the order of their ids, not of the rows (a prompt's own
    # sum, in the summary, is in row order): a shuffled log gives the same bits
    rewards = group_sums(
        frame.select(pl.col("stage").cast(pl.Int64), "prompt", "cand", "reward"),
        ["stage"],
        {"reward_sum": pl.col("reward")},
        order=["prompt", "cand"],
    )
    stages = (
        group_sums(
            summary,
            ["stage"],
            {"prompts": pl.lit(1), "candidates": pl.col("candidates"), "ties": pl.col("ties") > 1},
            order=["prompt"],
        )
        .join(rewards, on="stage", how="left")
        .join(
            group_sums(
                chosen,
                ["stage"],
                {"selected": pl.lit(1), "reward_best_sum": pl.col("reward")},
                order=["prompt", "cand"],
            ),
            on="stage",
            how="left",
        )
    )
    below = below_min(ranked, chosen)
    if below is not None:
        stages = stages.join(below, on="stage", how="left")
    if skipped is not None:
        skipped = skipped.with_columns(pl.col("stage").cast(stages.schema["stage"]))
        stages = stages.join(skipped, on="stage", how="full", coalesce=True)
    return Ranked(keys, chosen, stage_frame(stages), [], every)


def stage_frame(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame``'s per-stage sums with every column of :data:`STAGE_SUMS` (zero
    where absent), in their types."""
    return frame.select(
        pl.col("stage").cast(pl.Int64),
        *(
            (pl.col(name).fill_null(0) if name in frame.columns else pl.lit(0))
            .cast(dtype)
            .alias(name)
            for name, dtype in STAGE_SUMS.items()
        ),
    )


def _empty_stages() -> pl.DataFrame:
    return pl.DataFrame(schema={"stage": pl.Int64, **STAGE_SUMS})


def candidate_problems(keys: Keys, summary: pl.DataFrame) -> list[Problem]:
    """Null ids, duplicate candidates and non-finite rewards of a partition."""
    if not (
        summary["stage"].has_nulls()
        or summary["prompt"].has_nulls()
        or summary["null_cands"].to_numpy().any()
        or (summary["candidates"].to_numpy() != summary["cand_unique"].to_numpy()).any()
        or summary["bad_rewards"].to_numpy().any()
    ):
        return []
    nulls = summary.filter(
        pl.col("stage").is_null() | pl.col("prompt").is_null() | (pl.col("null_cands") > 0)
    ).sort(_PROMPT, nulls_last=True)
    row = first_row(nulls)
    if row is not None:
        return [Problem("null_id", nulls.height, {"stage": row["stage"], "prompt": row["prompt"]})]
    problems = []
    frame = keys.canonical()
    dup = summary.filter(pl.col("candidates") != pl.col("cand_unique")).sort(_PROMPT)
    row = first_row(dup)
    if row is not None:
        found = (
            frame.filter(stage=row["stage"], prompt=row["prompt"])
            .group_by("cand")
            .len()
            .filter(pl.col("len") > 1)
            .sort("cand")
            .row(0, named=True)
        )
        where = {"stage": row["stage"], "prompt": row["prompt"], "cand": found["cand"]}
        problems.append(Problem("duplicate", dup.height, {**where, "rows": found["len"]}))
    total = int(summary["bad_rewards"].sum())
    if total:
        row = first_row(frame.filter(bad_reward(pl.col("reward"))).sort(_IDS).head(1))
        assert row is not None
        problems.append(Problem("bad_reward", total, row))
    return problems
