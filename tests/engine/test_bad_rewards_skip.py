"""``bad_rewards="skip"`` (issue 10 item 8): null, NaN and infinite rewards leave
their candidate out of the ranking and the statistics, counted per stage, against
a plain reference, in both layouts and on both executors."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask_cluster
import polars as pl
import pytest
from reference import best_index, long_frames, nested_frame

import raft_polars as rp
from raft_polars import RaftInputError

NAN, INF = math.nan, math.inf
LPS = [[[[-1.0], [-2.0, -2.0], [-3.0]], [[-0.5], [-4.0]]], [[[-0.25], [-1.0]]]]
NULL = -999.0  # written as a null reward
RWS: list[Any] = [[[0.1, NAN, 0.5], [INF, -INF]], [[NULL, 2.0]]]


def _nulls(frame: pl.DataFrame) -> pl.DataFrame:
    reward = pl.col("reward")
    return frame.with_columns(pl.when(reward == NULL).then(None).otherwise(reward).alias("reward"))


def reference(lps: list[Any], rws: list[Any]) -> list[dict[str, Any]]:
    rows = []
    for stage_lp, stage_rw in zip(lps, rws, strict=True):
        nll = tokens = skipped = gone = prompts = cands = 0
        best = []
        for lp, rewards in zip(stage_lp, stage_rw, strict=True):
            good = [(j, r) for j, r in enumerate(rewards) if r != NULL and math.isfinite(r)]
            skipped += len(rewards) - len(good)
            if not good:
                gone += 1
                continue
            prompts += 1
            cands += len(good)
            j = [j for j, _ in good][best_index([r for _, r in good])]
            best.append(rewards[j])
            nll -= sum(lp[j])
            tokens += len(lp[j])
        rows.append({"loss": nll / tokens if tokens else None, "prompts": prompts,
                     "candidates": cands, "selected": len(best), "skipped": skipped,
                     "skipped_prompts": gone})  # fmt: skip
    return rows


def _engine(name: str) -> Any:
    return dask_cluster.engine() if name == "dask" else "polars"


@pytest.mark.parametrize("engine", ["polars", "dask"])
@pytest.mark.parametrize("layout", ["nested", "long"])
def test_skip(tmp_path: Path, layout: str, engine: str) -> None:
    if layout == "nested":
        _nulls(nested_frame(LPS, RWS)).write_parquet(tmp_path / "n.parquet")
        kwargs: dict[str, Any] = {"source": str(tmp_path / "n.parquet")}
    else:
        tokens, rewards = long_frames(LPS, RWS)
        tokens.write_parquet(tmp_path / "t.parquet")
        _nulls(rewards).write_parquet(tmp_path / "r.parquet")
        kwargs = {"source": str(tmp_path / "t.parquet"), "rewards": str(tmp_path / "r.parquet")}
    on = _engine(engine)
    with pytest.raises(RaftInputError, match="reward must be a finite number"):
        rp.stage_losses(**kwargs, engine=on)
    table = rp.stage_losses(**kwargs, bad_rewards="skip", engine=on)
    assert table.columns[-2:] == ["skipped", "skipped_prompts"]
    for got, want in zip(table.iter_rows(named=True), reference(LPS, RWS), strict=True):
        for name, value in want.items():
            assert got[name] == pytest.approx(value), name
    picked = rp.select_best(**kwargs, bad_rewards="skip", engine=on).collect()
    assert picked.select("stage", "prompt", "cand").rows() == [(0, 0, 2), (1, 0, 1)]
    stats = rp.stage_stats(**kwargs, bad_rewards="skip", engine=on)
    assert stats["reward_std"].to_list() == pytest.approx([0.2, 0.0])
    curves = rp.best_of_n(**kwargs, bad_rewards="skip", engine=on)
    assert curves.select("stage", "n", "prompts").rows() == [(0, 1, 1), (0, 2, 1), (1, 1, 1)]


def test_cli_skip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from raft_polars.cli import main

    _nulls(nested_frame(LPS, RWS)).write_parquet(tmp_path / "n.parquet")
    assert main(["losses", str(tmp_path / "n.parquet"), "--bad-rewards", "skip",
                 "--format", "csv"]) == 0  # fmt: skip
    header = capsys.readouterr().out.splitlines()[0]
    assert header.endswith("below_min,skipped,skipped_prompts")


def test_a_stage_with_every_reward_bad() -> None:
    """Its means are null (a mean over nothing), its counts say why."""
    frame = pl.DataFrame(
        {
            "stage": [0, 0, 1],
            "prompt": [0, 0, 0],
            "cand": [0, 1, 0],
            "reward": [0.1, 0.2, NAN],
            "logprobs": [[-1.0], [-2.0], [-1.0]],
        }
    )
    table = rp.stage_losses(frame, bad_rewards="skip")
    cols = ("stage", "loss", "candidates", "reward_mean", "reward_lift", "skipped_prompts")
    assert table.select(cols).row(1) == (1, None, 0, None, None, 1)
    # the statistics: counts are 0, not unknown; the means and spreads null
    stats = rp.stage_stats(frame, bad_rewards="skip").row(1, named=True)
    counts = ("prompts", "selected", "ties", "below_min", "zero_variance")
    assert {c: stats[c] for c in counts} == dict.fromkeys(counts, 0)
    assert stats["reward_std"] is None
    assert stats["win_rate"] is None


@pytest.mark.parametrize("engine", ["polars", "dask"])
@pytest.mark.parametrize("layout", ["nested", "long"])
@pytest.mark.parametrize(
    ("rewards", "kind"),
    [
        ([0.2, NAN, 0.5], "duplicate candidate"),  # a retried scoring appended: one copy bad
        ([0.2, NAN, INF], "duplicate candidate"),  # both copies bad
        ([0.2, 0.3, NAN], "null"),  # a null prompt id on a bad row
    ],
)
def test_skip_checks_the_ids_of_the_rows_it_leaves_out(
    tmp_path: Path, layout: str, engine: str, rewards: list[float], kind: str
) -> None:
    """The ids are checked before a bad row is left out: skip does not hide a
    duplicate candidate (whose other copy would be selected, with the skipped
    copy's log-probs in its loss) nor a null id."""
    prompts = [0, 0, None] if kind == "null" else [0, 0, 0]
    cands = [0, 1, 1] if kind != "null" else [0, 1, 2]
    keys = {"stage": [0, 0, 0], "prompt": prompts, "cand": cands}
    if layout == "nested":
        frame = pl.DataFrame({**keys, "reward": rewards, "logprobs": [[-1.0], [-5.0], [-2.0]]})
        frame.write_parquet(tmp_path / "n.parquet")
        kwargs: dict[str, Any] = {"source": str(tmp_path / "n.parquet")}
    else:
        pl.DataFrame({**keys, "reward": rewards}).write_parquet(tmp_path / "r.parquet")
        tokens = pl.DataFrame(
            {"stage": [0, 0], "prompt": [0, 0], "cand": [0, 1], "token": [0, 0]}
        ).with_columns(logprob=pl.Series([-1.0, -2.0]))
        tokens.write_parquet(tmp_path / "t.parquet")
        kwargs = {"source": str(tmp_path / "t.parquet"), "rewards": str(tmp_path / "r.parquet")}
    on = _engine(engine)
    calls: list[Callable[[], object]] = [
        lambda: rp.stage_losses(**kwargs, bad_rewards="skip", engine=on),
        lambda: rp.select_best(**kwargs, bad_rewards="skip", engine=on).collect(),
        lambda: rp.stage_stats(**kwargs, bad_rewards="skip", engine=on),
        lambda: rp.best_of_n(**kwargs, bad_rewards="skip", engine=on),
        lambda: rp.prompt_stats(**kwargs, bad_rewards="skip", engine=on),
    ]
    for call in calls:
        with pytest.raises(RaftInputError, match=kind):
            call()
    report = rp.validate(**kwargs, bad_rewards="skip", engine=on)
    assert not report.ok
