"""A plain reference for RAFT, independent of the engine: loops over nested lists.

Also converts nested lists into the file layouts (nested rows, long token rows plus
a rewards table), so every entry point can be checked against the same answer.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

# the example of the task statement (seed/raft_task.txt): [1.55, 0.55, 0.15]
SEED_LOG_PROBS = [
    [[[-2.0, -1.8], [-1.5, -1.6]]],
    [[[-0.6, -0.5], [-0.7, -0.8]]],
    [[[-0.2, -0.1], [-0.3, -0.4]]],
]
SEED_REWARDS = [[[0.2, 0.4]], [[0.75, 0.7]], [[0.95, 0.8]]]

LogProbs = Sequence[Sequence[Sequence[Sequence[float]]]]
Rewards = Sequence[Sequence[Sequence[float]]]


def best_index(rewards: Sequence[float]) -> int:
    """Index of the largest reward, the first one on ties (numpy.argmax)."""
    best = 0
    for j in range(1, len(rewards)):
        if rewards[j] > rewards[best]:
            best = j
    return best


def reference_losses(lps: LogProbs, rws: Rewards, *, reduction: str = "token") -> list[float]:
    """Unrounded per-stage loss: pooled token mean of the NLL of the best responses."""
    out = []
    for stage_lp, stage_rw in zip(lps, rws, strict=True):
        total = 0.0
        count = 0
        seq_means = []
        for prompt_lp, prompt_rw in zip(stage_lp, stage_rw, strict=True):
            chosen = prompt_lp[best_index(prompt_rw)]
            for value in chosen:
                total += -float(value)
            count += len(chosen)
            if chosen:
                seq_means.append(-sum(float(v) for v in chosen) / len(chosen))
        if reduction == "token":
            out.append(total / count)
        else:
            out.append(sum(seq_means) / len(seq_means))
    return out


def reference_rounded(lps: LogProbs, rws: Rewards, **kwargs: Any) -> list[float]:
    return [round(x, 4) for x in reference_losses(lps, rws, **kwargs)]


def reference_stats(lps: LogProbs, rws: Rewards) -> list[dict[str, float]]:
    """Per-stage statistics: prompts, tokens, mean best reward, mean reward, ties."""
    out = []
    for stage_lp, stage_rw in zip(lps, rws, strict=True):
        best = [max(r) for r in stage_rw]
        every = [x for r in stage_rw for x in r]
        out.append(
            {
                "prompts": len(stage_rw),
                "tokens": sum(
                    len(p[best_index(r)]) for p, r in zip(stage_lp, stage_rw, strict=True)
                ),
                "reward_best_mean": sum(best) / len(best),
                "reward_mean": sum(every) / len(every),
                "ties": sum(1 for r in stage_rw if r.count(max(r)) > 1),
            }
        )
    return out


def reference_selection(rws: Rewards) -> list[tuple[int, int, int]]:
    """The selected (stage, prompt, cand) of best-of-K, by position."""
    return [(t, i, best_index(r)) for t, stage in enumerate(rws) for i, r in enumerate(stage)]


def nested_frame(
    lps: LogProbs,
    rws: Rewards,
    *,
    stage_ids: Sequence[int] | None = None,
    prompt_ids: Sequence[Any] | None = None,
    shuffle: int | None = None,
    float32: bool = False,
) -> pl.DataFrame:
    """One row per candidate: stage, prompt, cand, reward, logprobs (nested layout).

    Stage ``t`` gets id ``stage_ids[t]``; prompt ``i`` gets ``prompt_ids[i]``;
    candidate ``j`` gets id ``j``. ``shuffle`` permutes rows with that seed.
    """
    rows = []
    for t, (stage_lp, stage_rw) in enumerate(zip(lps, rws, strict=True)):
        for i, (prompt_lp, prompt_rw) in enumerate(zip(stage_lp, stage_rw, strict=True)):
            for j, (resp, reward) in enumerate(zip(prompt_lp, prompt_rw, strict=True)):
                rows.append(
                    {
                        "stage": stage_ids[t] if stage_ids else t,
                        "prompt": prompt_ids[i] if prompt_ids else i,
                        "cand": j,
                        "reward": float(reward),
                        "logprobs": [float(v) for v in resp],
                    }
                )
    if shuffle is not None:
        random.Random(shuffle).shuffle(rows)
    lp_type = pl.List(pl.Float32 if float32 else pl.Float64)
    prompt_type = pl.String if prompt_ids and isinstance(prompt_ids[0], str) else pl.Int64
    schema = {
        "stage": pl.Int64,
        "prompt": prompt_type,
        "cand": pl.Int64,
        "reward": pl.Float64,
        "logprobs": lp_type,
    }
    return pl.DataFrame(rows, schema=schema)


def long_frames(lps: LogProbs, rws: Rewards, **kwargs: Any) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(token rows, reward rows) of the long layout, built from :func:`nested_frame`."""
    nested = nested_frame(lps, rws, **kwargs)
    rewards = nested.select("stage", "prompt", "cand", "reward")
    tokens = (
        nested.select("stage", "prompt", "cand", "logprobs")
        .with_columns(pl.int_ranges(pl.col("logprobs").list.len()).alias("token"))
        .explode(["logprobs", "token"])
        .drop_nulls("token")
        .rename({"logprobs": "logprob"})
        .select("stage", "prompt", "cand", "token", "logprob")
    )
    if kwargs.get("shuffle") is not None:
        tokens = tokens.sample(fraction=1.0, shuffle=True, seed=kwargs["shuffle"])
    return tokens, rewards


def write_split(frame: pl.DataFrame, directory: Path, parts: int) -> list[Path]:
    """Write ``frame`` as ``parts`` Parquet files (rows dealt round-robin)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    indexed = frame.with_row_index("_row")
    for part in range(parts):
        path = directory / f"part-{part}.parquet"
        indexed.filter(pl.col("_row") % parts == part).drop("_row").write_parquet(path)
        paths.append(path)
    return paths


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)


def report_places(report: dict[str, Any], back: dict[str, int] | None = None) -> dict[str, Any]:
    """Each problem of a ``validate`` report (``to_dict()``): its count and its
    places, as a set; with ``back``, text prompt ids named by their integers."""

    def named(place: dict[str, Any]) -> tuple[Any, ...]:
        if back is not None and "prompt" in place:
            place = {**place, "prompt": back.get(place["prompt"])}
        return tuple(sorted(place.items()))

    out = {}
    for problem in report["problems"]:
        out[problem["kind"]] = (problem["count"], {named(r) for r in problem["locations"]})
    return out
