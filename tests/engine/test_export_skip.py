"""Exports with ``bad_rewards="skip"``: a skipped candidate is in no pair and in
no list, as if the log did not hold it (an outside fault run found the DPO
export pairing a skipped candidate's text with another's reward, and the wide
export listing skipped candidates and prompts). Checked against a plain
reference over the rows without the skipped ones, on both executors."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import dask_cluster
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import raft_polars as rp

_REWARD = st.one_of(
    st.sampled_from([0.1, 0.5, 0.9, 0.5]),
    st.sampled_from([None, math.nan, math.inf, -math.inf]),
)


@st.composite
def _logs(draw: Any) -> list[dict[str, Any]]:
    rows = []
    for prompt in range(draw(st.integers(1, 4))):
        for cand in range(draw(st.integers(1, 4))):
            rows.append({"stage": 0, "prompt": prompt, "cand": cand, "reward": draw(_REWARD),
                         "logprobs": [-1.0 - cand], "text": f"p{prompt}c{cand}"})  # fmt: skip
    return rows


def _bad(reward: float | None) -> bool:
    return reward is None or not math.isfinite(reward)


def _expected(rows: list[dict[str, Any]], kind: str) -> list[tuple[Any, ...]]:
    """DPO: per prompt, best (largest reward, smallest cand) against worst
    (smallest reward, smallest cand) of the kept candidates, equal rewards no pair;
    wide: each prompt with a kept candidate, its cands and rewards in cand order."""
    kept: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        if not _bad(row["reward"]):
            kept.setdefault(row["prompt"], []).append(row)
    out: list[tuple[Any, ...]] = []
    for prompt, cands in sorted(kept.items()):
        cands.sort(key=lambda r: r["cand"])
        if kind == "wide":
            out.append((prompt, [r["cand"] for r in cands], [r["reward"] for r in cands]))
            continue
        best = min(cands, key=lambda r: (-r["reward"], r["cand"]))
        worst = min(cands, key=lambda r: (r["reward"], r["cand"]))
        if best["reward"] != worst["reward"]:
            out.append((prompt, best["text"], worst["text"], best["reward"], worst["reward"]))
    return out


@pytest.mark.parametrize("engine", ["polars", "dask"])
@pytest.mark.parametrize("kind", ["dpo", "wide"])
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(rows=_logs())
def test_skipped_candidates_are_in_no_export(
    tmp_path: Path, engine: str, kind: str, rows: list[dict[str, Any]]
) -> None:
    frame = pl.DataFrame(rows, schema={"stage": pl.Int64, "prompt": pl.Int64, "cand": pl.Int64,
                                       "reward": pl.Float64, "logprobs": pl.List(pl.Float64),
                                       "text": pl.String})  # fmt: skip
    out = tmp_path / f"out-{kind}.parquet"
    on: Any = dask_cluster.engine() if engine == "dask" else "polars"
    fmt: Any = kind
    expected = _expected(rows, kind)
    if not any(not _bad(r["reward"]) for r in rows):
        return  # nothing kept: no stage has a selection (covered elsewhere)
    text = "text" if kind == "dpo" else None  # the wide format writes none
    rp.write_selected(frame, out, format=fmt, bad_rewards="skip", force=True,
                      prompt_column=text, response_column=text, engine=on)  # fmt: skip
    written = pl.read_parquet(out)
    if kind == "wide":
        got = written.select("prompt_id", "cands", "rewards").rows()
    else:
        got = written.select(
            "prompt_id", "chosen", "rejected", "chosen_reward", "rejected_reward"
        ).rows()
    assert [tuple(r) for r in got] == expected
