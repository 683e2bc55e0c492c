"""``raft-polars losses``: the per-stage table in every format, against the reference."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import TypedDict

import cli_helpers
import polars as pl
import pytest
from cli_helpers import DATA, LogFiles, make_log, parse_table, reference_strategy, run
from reference import reference_losses, reference_rounded, reference_stats

# the fixtures shared by the CLI tests (see cli_helpers)
any_log_files = cli_helpers.any_log_files
log_files = cli_helpers.log_files
string_log_files = cli_helpers.string_log_files

LAYOUTS = ("nested", "long")


def _expected(files: LogFiles) -> list[dict[str, float]]:
    log = files.log
    stats = reference_stats(log.lps, log.rws)
    return [
        dict(s, stage=log.stage_ids[t], loss=loss, candidates=sum(map(len, log.rws[t])))
        for t, (s, loss) in enumerate(zip(stats, reference_rounded(log.lps, log.rws), strict=True))
    ]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_table_matches_reference(
    capsys: pytest.CaptureFixture[str], any_log_files: LogFiles, layout: str
) -> None:
    files = any_log_files
    result = run(capsys, "losses", *files.args(layout))
    assert result.code == 0, result.err
    assert result.err == ""
    rows = parse_table(result.out)
    expected = _expected(files)
    assert [int(r["stage"]) for r in rows] == [e["stage"] for e in expected]
    for row, exp in zip(rows, expected, strict=True):
        assert float(row["loss"]) == exp["loss"]
        assert len(row["loss"].split(".")[1]) == 4  # four decimals, aligned
        for name in ("prompts", "candidates", "tokens", "ties"):
            assert int(row[name]) == exp[name], name
        assert int(row["selected"]) == exp["prompts"]
        for name in ("reward_best_mean", "reward_mean"):
            assert float(row[name]) == pytest.approx(exp[name], abs=5.1e-5), name
        lift = exp["reward_best_mean"] - exp["reward_mean"]
        assert float(row["reward_lift"]) == pytest.approx(lift, abs=5.1e-5)
    # aligned: every line of the table has the same width
    assert len({len(line) for line in result.out.splitlines()[1:]}) == 1


@pytest.mark.parametrize("fmt", ["csv", "json"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_csv_and_json(
    capsys: pytest.CaptureFixture[str], log_files: LogFiles, fmt: str, layout: str
) -> None:
    result = run(capsys, "losses", *log_files.args(layout), "--format", fmt)
    assert result.code == 0, result.err
    if fmt == "json":
        rows = json.loads(result.out)
    else:
        rows = [
            {k: (float(v) if "." in v or "e" in v else int(v)) for k, v in r.items()}
            for r in csv.DictReader(io.StringIO(result.out))
        ]
    expected = _expected(log_files)
    assert [r["stage"] for r in rows] == [e["stage"] for e in expected]
    for row, exp in zip(rows, expected, strict=True):
        assert row["loss"] == exp["loss"]  # round(loss, 4), exactly
        assert row["tokens"] == exp["tokens"]
        assert row["prompts"] == exp["prompts"]
        assert row["ties"] == exp["ties"]
        assert row["below_min"] == 0
        assert math.isclose(row["reward_best_mean"], exp["reward_best_mean"], rel_tol=1e-12)
        assert math.isclose(row["reward_mean"], exp["reward_mean"], rel_tol=1e-12)


def test_seed_example_in_data(capsys: pytest.CaptureFixture[str]) -> None:
    seed = DATA / "seed"
    for args in (
        [seed / "nested.parquet"],
        [seed / "tokens.parquet", "--rewards", seed / "rewards.parquet"],
    ):
        result = run(capsys, "losses", *args, "--format", "json")
        assert result.code == 0, result.err
        assert [r["loss"] for r in json.loads(result.out)] == [1.55, 0.55, 0.15]


def test_sequence_reduction(capsys: pytest.CaptureFixture[str], log_files: LogFiles) -> None:
    log = log_files.log
    result = run(
        capsys, "losses", *log_files.args("long"), "--reduction", "sequence", "--format", "json"
    )
    assert result.code == 0, result.err
    expected = [round(x, 4) for x in reference_losses(log.lps, log.rws, reduction="sequence")]
    assert [r["loss"] for r in json.loads(result.out)] == expected


@pytest.mark.parametrize("layout", LAYOUTS)
def test_own_column_names(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, log_files: LogFiles, layout: str
) -> None:
    names = {
        "stage": "iteration",
        "prompt": "prompt_id",
        "cand": "sample",
        "reward": "score",
        "logprobs": "token_logprobs",
        "logprob": "lp",
        "token": "position",
    }
    if layout == "nested":
        path = tmp_path / "theirs.parquet"
        pl.read_parquet(log_files.nested).rename(names, strict=False).write_parquet(path)
        args: list[str | Path] = [path]
    else:
        tokens, rewards = tmp_path / "t.parquet", tmp_path / "r.parquet"
        pl.read_parquet(log_files.tokens).rename(names, strict=False).write_parquet(tokens)
        pl.read_parquet(log_files.rewards).rename(names, strict=False).write_parquet(rewards)
        args = [tokens, "--rewards", rewards]
    mapping = [a for canon, theirs in names.items() for a in ("--column", f"{canon}={theirs}")]
    theirs = run(capsys, "losses", *args, *mapping, "--format", "csv")
    ours = run(capsys, "losses", *log_files.args(layout), "--format", "csv")
    assert theirs.code == 0, theirs.err
    assert theirs.out == ours.out


STRATEGIES = {
    "top_n": ["--strategy", "top_n", "--n", "2"],
    "global": ["--strategy", "global", "--fraction", "0.3"],
    "min_reward": ["--min-reward", "0.5"],
    "top_n+min_reward": ["--strategy", "top_n", "--n", "3", "--min-reward", "0.25"],
    "global+min_reward": ["--strategy", "global", "--fraction", "0.5", "--min-reward", "0.6"],
    # negative numbers in the spellings argparse takes for options
    "min_reward_exponent": ["--min-reward", "-2.5e-1"],
    "top_n+min_reward_exponent": ["--strategy", "top_n", "--n", "2", "--min-reward", "-1E0"],
    "min_reward_underscores": ["--min-reward", "-1_0.5"],
}


class _StrategyKwargs(TypedDict):
    strategy: str
    n: int
    fraction: float | None
    min_reward: float | None


def _strategy_kwargs(argv: list[str]) -> _StrategyKwargs:
    opts = dict(zip(argv[::2], argv[1::2], strict=True))
    return {
        "strategy": opts.get("--strategy", "best"),
        "n": int(opts.get("--n", 1)),
        "fraction": float(opts["--fraction"]) if "--fraction" in opts else None,
        "min_reward": float(opts["--min-reward"]) if "--min-reward" in opts else None,
    }


@pytest.mark.parametrize("name", list(STRATEGIES))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_strategies(
    capsys: pytest.CaptureFixture[str], string_log_files: LogFiles, name: str, layout: str
) -> None:
    files = string_log_files
    result = run(capsys, "losses", *files.args(layout), *STRATEGIES[name], "--format", "json")
    assert result.code == 0, result.err
    _, expected = reference_strategy(files.log, **_strategy_kwargs(STRATEGIES[name]))
    rows = json.loads(result.out)
    assert len(rows) == len(expected)
    for row, exp in zip(rows, expected, strict=True):
        assert row["stage"] == exp["stage"]
        assert row["loss"] == (None if exp["loss"] is None else round(exp["loss"], 4))
        for key in ("selected", "tokens", "below_min"):
            assert row[key] == exp[key], key
        if exp["reward_best_mean"] is None:
            assert row["reward_best_mean"] is None
        else:
            assert math.isclose(row["reward_best_mean"], exp["reward_best_mean"], rel_tol=1e-12)


def test_min_reward_leaves_a_stage_empty(
    capsys: pytest.CaptureFixture[str], log_files: LogFiles
) -> None:
    """A stage with nothing selected has no loss: '-' in the table, null in JSON."""
    result = run(capsys, "losses", *log_files.args("nested"), "--min-reward", "1e9")
    assert result.code == 0, result.err
    rows = parse_table(result.out)
    assert {r["loss"] for r in rows} == {"-"}
    assert [int(r["below_min"]) for r in rows] == [int(r["prompts"]) for r in rows]


def test_no_stages(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "empty.parquet"
    make_log(1).nested().clear().write_parquet(path)
    result = run(capsys, "losses", path, "--format", "json")
    assert result.code == 0, result.err
    assert json.loads(result.out) == []
    table = run(capsys, "losses", path)
    assert table.code == 0
    assert table.out.split() == [
        "stage",
        "loss",
        "prompts",
        "candidates",
        "selected",
        "tokens",
        "reward_best_mean",
        "reward_mean",
        "reward_lift",
        "ties",
        "below_min",
    ]


def test_several_paths_and_directories(capsys: pytest.CaptureFixture[str]) -> None:
    parts = sorted((DATA / "synthetic").glob("*.parquet"))
    whole = run(capsys, "losses", DATA / "synthetic", "--format", "csv")
    listed = run(capsys, "losses", *parts, "--format", "csv")
    globbed = run(capsys, "losses", str(DATA / "synthetic" / "*.parquet"), "--format", "csv")
    long = run(
        capsys,
        "losses",
        DATA / "synthetic_long" / "tokens",
        "--rewards",
        DATA / "synthetic_long" / "rewards",
        "--format",
        "csv",
    )
    assert whole.code == listed.code == globbed.code == long.code == 0
    # the same log read four ways (the last in the long layout): the same table,
    # up to the order of float summation in the reward means
    tables = [list(csv.DictReader(io.StringIO(r.out))) for r in (whole, listed, globbed, long)]
    for table in tables[1:]:
        assert len(table) == len(tables[0]) == 4
        for row, first in zip(table, tables[0], strict=True):
            for key, value in row.items():
                if key.startswith("reward"):
                    assert math.isclose(float(value), float(first[key]), rel_tol=1e-9)
                else:
                    assert value == first[key], key


def test_table_writes_huge_floats_in_scientific_notation(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # 4 decimals of a reward of 1e300 printed 305 digits on a 688-character line
    log = tmp_path / "huge.parquet"
    pl.DataFrame(
        {
            "stage": [0, 0, 1, 1],
            "prompt": [0] * 4,
            "cand": [0, 1, 0, 1],
            "reward": [1e300, -1e300, 123456789012345.6, 0.5],
            "logprobs": [[-1.0], [-2.0], [-0.5], [-1.0]],
        }
    ).write_parquet(log)
    result = run(capsys, "losses", log)
    assert result.code == 0, result.err
    rows = parse_table(result.out)
    assert [r["reward_best_mean"] for r in rows] == ["1.0000e+300", "123456789012345.5938"]
    assert [r["reward_mean"] for r in rows] == ["0.0000", "61728394506173.0469"]
    assert max(map(len, result.out.splitlines())) < 160
    # CSV keeps the value exact
    csv_out = run(capsys, "losses", log, "--format", "csv").out
    assert float(next(csv.DictReader(io.StringIO(csv_out)))["reward_best_mean"]) == 1e300
