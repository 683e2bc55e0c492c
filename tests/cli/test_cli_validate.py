"""``raft-polars validate`` and :func:`raft_polars.validation.validate`: planted problems of
every kind are found, counted and located; clean logs pass."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cli_helpers
import polars as pl
import pytest
from cli_helpers import DATA, LogFiles, assert_one_line_error, run

from raft_polars.errors import RaftInputError
from raft_polars.validation import PROBLEM_KINDS, validate

# the fixtures shared by the CLI tests (see cli_helpers)
any_log_files = cli_helpers.any_log_files
log_files = cli_helpers.log_files
string_log_files = cli_helpers.string_log_files

NAN, INF = float("nan"), float("inf")

# a small hand-made log: stages 0 and 1, prompts 0..2, candidates 0..2 with 3 tokens
# each; rewards 0.1, 0.9, 0.5, so candidate 1 is selected everywhere
Row = dict[str, Any]


def _rows() -> list[Row]:
    return [
        {
            "stage": t,
            "prompt": i,
            "cand": j,
            "reward": [0.1, 0.9, 0.5][j],
            "logprobs": [-0.1 * (j + 1), -0.2, -0.3],
            "response": f"r{t}{i}{j}",
        }
        for t in range(2)
        for i in range(3)
        for j in range(3)
    ]


def _find(rows: list[Row], stage: int, prompt: int, cand: int) -> Row:
    return next(r for r in rows if (r["stage"], r["prompt"], r["cand"]) == (stage, prompt, cand))


_NESTED_SCHEMA: dict[str, pl.DataType | type[pl.DataType]] = {
    "stage": pl.Int64,
    "prompt": pl.Int64,
    "cand": pl.Int64,
    "reward": pl.Float64,
    "logprobs": pl.List(pl.Float64),
    "response": pl.String,
}


def _nested(rows: list[Row]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=_NESTED_SCHEMA, orient="row")


def _long(rows: list[Row]) -> tuple[list[Row], list[Row]]:
    """(token rows, reward rows) of the hand-made log."""
    tokens = [
        {"stage": r["stage"], "prompt": r["prompt"], "cand": r["cand"], "token": k, "logprob": v}
        for r in rows
        for k, v in enumerate(r["logprobs"])
    ]
    rewards = [{k: v for k, v in r.items() if k != "logprobs"} for r in rows]
    return tokens, rewards


def _write_long(path: Path, tokens: list[Row], rewards: list[Row]) -> list[str]:
    schema = {
        "stage": pl.Int64,
        "prompt": pl.Int64,
        "cand": pl.Int64,
        "token": pl.Int64,
        "logprob": pl.Float64,
    }
    pl.DataFrame(tokens, schema=schema, orient="row").write_parquet(path / "tokens.parquet")
    rschema = {k: v for k, v in _NESTED_SCHEMA.items() if k != "logprobs"}
    pl.DataFrame(rewards, schema=rschema, orient="row").write_parquet(path / "rewards.parquet")
    return [str(path / "tokens.parquet"), "--rewards", str(path / "rewards.parquet")]


# --- planted problems: (layout, plant, kind, count, first location, also allowed) -------


def _null_id(rows: list[Row]) -> None:
    _find(rows, 0, 2, 2)["cand"] = None


def _dup_candidate(rows: list[Row]) -> None:
    rows.append(dict(_find(rows, 1, 0, 2), reward=0.3))


def _bad_reward(rows: list[Row]) -> None:
    _find(rows, 0, 1, 0)["reward"] = NAN
    _find(rows, 1, 2, 2)["reward"] = INF
    _find(rows, 1, 2, 0)["reward"] = None


def _null_logprobs(rows: list[Row]) -> None:
    _find(rows, 1, 1, 0)["logprobs"] = None


def _bad_selected(rows: list[Row]) -> None:
    _find(rows, 1, 2, 1)["logprobs"] = [-0.1, 0.5, NAN]


def _bad_unselected(rows: list[Row]) -> None:
    _find(rows, 0, 0, 2)["logprobs"] = [-0.1, -0.2, INF]
    _find(rows, 1, 0, 0)["logprobs"] = [None, -0.2]


def _empty_stage(rows: list[Row]) -> None:
    for i in range(3):
        _find(rows, 1, i, 1)["logprobs"] = []


NESTED_CASES: dict[str, tuple[Callable[[list[Row]], None], str, int, Row, set[str]]] = {
    "null_id": (_null_id, "null_id", 1, {"stage": 0, "prompt": 2, "cand": None}, set()),
    "duplicate_candidate": (
        _dup_candidate,
        "duplicate_candidate",
        1,
        {"stage": 1, "prompt": 0, "cand": 2, "rows": 2},
        set(),
    ),
    "bad_reward": (
        _bad_reward,
        "bad_reward",
        3,
        {"stage": 0, "prompt": 1, "cand": 0, "reward": "nan"},
        set(),
    ),
    "null_logprobs": (
        _null_logprobs,
        "null_logprobs",
        1,
        {"stage": 1, "prompt": 1, "cand": 0, "selected": False},
        set(),
    ),
    "bad_logprob_selected": (
        _bad_selected,
        "bad_logprob_selected",
        2,
        {"stage": 1, "prompt": 2, "cand": 1, "token": 1, "logprob": 0.5, "bad_tokens": 2},
        set(),
    ),
    "bad_logprob_unselected": (
        _bad_unselected,
        "bad_logprob_unselected",
        2,
        {"stage": 0, "prompt": 0, "cand": 2, "token": 2, "logprob": "inf"},
        set(),
    ),
    "empty_stage": (_empty_stage, "empty_stage", 1, {"stage": 1, "selected": 3}, set()),
}


def _orphans(tokens: list[Row], rewards: list[Row]) -> None:
    del rewards
    tokens += [{"stage": 0, "prompt": 7, "cand": 0, "token": k, "logprob": -1.0} for k in (0, 1)]


def _token(tokens: list[Row], *key: int) -> Row:
    return next(t for t in tokens if (t["stage"], t["prompt"], t["cand"], t["token"]) == key)


def _null_position(tokens: list[Row], rewards: list[Row]) -> None:
    del rewards
    _token(tokens, 0, 1, 1, 1)["token"] = None


def _dup_token(tokens: list[Row], rewards: list[Row]) -> None:
    del rewards
    tokens.append(dict(_token(tokens, 1, 0, 1, 2)))


def _gap(tokens: list[Row], rewards: list[Row]) -> None:
    del rewards
    tokens.remove(_token(tokens, 0, 2, 0, 1))


def _long_bad_selected(tokens: list[Row], rewards: list[Row]) -> None:
    del rewards
    _token(tokens, 0, 0, 1, 0)["logprob"] = 0.25


def _long_bad_unselected(tokens: list[Row], rewards: list[Row]) -> None:
    del rewards
    _token(tokens, 1, 1, 2, 1)["logprob"] = None


def _long_empty_stage(tokens: list[Row], rewards: list[Row]) -> None:
    del tokens
    rewards += [dict(r, stage=2) for r in rewards if r["stage"] == 0]  # and no token rows


def _long_bad_reward(tokens: list[Row], rewards: list[Row]) -> None:
    del tokens
    _find(rewards, 1, 0, 0)["reward"] = None


def _long_dup_candidate(tokens: list[Row], rewards: list[Row]) -> None:
    del tokens
    rewards.append(dict(_find(rewards, 0, 2, 1)))


LONG_CASES: dict[str, tuple[Callable[[list[Row], list[Row]], None], str, int, Row, set[str]]] = {
    "orphan_tokens": (
        _orphans,
        "orphan_tokens",
        2,
        {"stage": 0, "prompt": 7, "cand": 0, "rows": 2},
        set(),
    ),
    "null_token_position": (
        _null_position,
        "null_token_position",
        1,
        {"stage": 0, "prompt": 1, "cand": 1, "rows": 1},
        {"token_gap"},
    ),
    "duplicate_token": (
        _dup_token,
        "duplicate_token",
        1,
        {"stage": 1, "prompt": 0, "cand": 1, "token": 2, "rows": 2},
        set(),
    ),
    "token_gap": (
        _gap,
        "token_gap",
        1,
        {"stage": 0, "prompt": 2, "cand": 0, "first_pos": 0, "last_pos": 2, "positions": 2},
        set(),
    ),
    "bad_logprob_selected": (
        _long_bad_selected,
        "bad_logprob_selected",
        1,
        {"stage": 0, "prompt": 0, "cand": 1, "token": 0, "logprob": 0.25},
        set(),
    ),
    "bad_logprob_unselected": (
        _long_bad_unselected,
        "bad_logprob_unselected",
        1,
        {"stage": 1, "prompt": 1, "cand": 2, "token": 1, "logprob": None},
        set(),
    ),
    "empty_stage": (_long_empty_stage, "empty_stage", 1, {"stage": 2, "selected": 3}, set()),
    "bad_reward": (
        _long_bad_reward,
        "bad_reward",
        1,
        {"stage": 1, "prompt": 0, "cand": 0, "reward": None},
        set(),
    ),
    "duplicate_candidate": (
        _long_dup_candidate,
        "duplicate_candidate",
        1,
        {"stage": 0, "prompt": 2, "cand": 1, "rows": 2},
        set(),
    ),
}


def test_every_kind_is_planted() -> None:
    planted = {c[1] for c in NESTED_CASES.values()} | {c[1] for c in LONG_CASES.values()}
    # corrupt_file is planted by byte flips: tests/engine/test_faults.py
    assert planted | {"corrupt_file"} == set(PROBLEM_KINDS)


def _check_found(
    capsys: pytest.CaptureFixture[str], args: list[str], case: tuple[Any, ...]
) -> None:
    _, kind, count, first, allowed = case
    result = run(capsys, "validate", *args, "--json")
    assert result.code == 1, result
    assert result.err == ""
    report = json.loads(result.out, parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))
    assert report["ok"] is False
    found = {p["kind"]: p for p in report["problems"]}
    assert set(found) - allowed == {kind}
    assert found[kind]["count"] == count
    location = found[kind]["locations"][0]
    assert {k: location[k] for k in first} == first, location
    text = run(capsys, "validate", *args)
    assert text.code == 1
    assert f"  {kind}: {count} {PROBLEM_KINDS[kind]}" in text.out


@pytest.mark.parametrize("name", list(NESTED_CASES))
def test_planted_nested(capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str) -> None:
    rows = _rows()
    NESTED_CASES[name][0](rows)
    path = tmp_path / "log.parquet"
    _nested(rows).write_parquet(path)
    _check_found(capsys, [str(path)], NESTED_CASES[name])


@pytest.mark.parametrize("name", list(LONG_CASES))
def test_planted_long(capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str) -> None:
    tokens, rewards = _long(_rows())
    LONG_CASES[name][0](tokens, rewards)
    _check_found(capsys, _write_long(tmp_path, tokens, rewards), LONG_CASES[name])


def _null_position_bad_logprob(tokens: list[Row], rewards: list[Row]) -> None:
    del rewards
    _token(tokens, 0, 1, 2, 1).update(token=None, logprob=NAN)  # candidate 2: not selected


@pytest.mark.parametrize(
    ("layout", "plant", "line"),
    [
        ("nested", _null_id, "    stage 0, prompt 2, candidate null"),
        (
            "long",
            _null_position_bad_logprob,
            "    stage 0, prompt 1, candidate 2, token null: logprob nan, bad_tokens 1",
        ),
    ],
)
def test_text_report_writes_null_ids_as_null(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    layout: str,
    plant: Callable[..., None],
    line: str,
) -> None:
    """A null id or token position is 'null' in the text report, as a null reward or
    log-prob is (it was Python's 'None')."""
    if layout == "nested":
        rows = _rows()
        plant(rows)
        _nested(rows).write_parquet(tmp_path / "log.parquet")
        args = [str(tmp_path / "log.parquet")]
    else:
        tokens, rewards = _long(_rows())
        plant(tokens, rewards)
        args = _write_long(tmp_path, tokens, rewards)
    result = run(capsys, "validate", *args)
    assert result.code == 1
    assert line in result.out.splitlines(), result.out
    assert "None" not in result.out


def test_everything_at_once(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    tokens, rewards = _long(_rows())
    for plant, *_ in LONG_CASES.values():
        plant(tokens, rewards)
    args = _write_long(tmp_path, tokens, rewards)
    result = run(capsys, "validate", *args)
    assert result.code == 1
    lines = result.out.splitlines()
    kinds = [c[1] for c in LONG_CASES.values()]
    assert lines[1] == f"{len(set(kinds))} kind(s) of problem found:"
    headlines = [
        line.split(":")[0].strip()
        for line in lines
        if line.startswith("  ") and not line.startswith("    ")
    ]
    assert headlines == [k for k in PROBLEM_KINDS if k in kinds]  # in the documented order


@pytest.mark.parametrize("layout", ["nested", "long"])
def test_clean_logs_pass(
    capsys: pytest.CaptureFixture[str], any_log_files: LogFiles, layout: str
) -> None:
    log_files = any_log_files
    result = run(capsys, "validate", *log_files.args(layout))
    assert result.code == 0, result
    assert result.out.splitlines()[-1] == "no problems found"
    log = log_files.log
    summary = (
        f"{len(log.rws)} stage(s), {sum(map(len, log.rws))} prompt(s), "
        f"{sum(len(p) for s in log.rws for p in s)} candidate row(s), "
        f"{sum(len(r) for s in log.lps for p in s for r in p)} token(s)"
    )
    assert summary in result.out
    as_json = json.loads(run(capsys, "validate", *log_files.args(layout), "--json").out)
    assert as_json["ok"] is True
    assert as_json["problems"] == []


def test_example_data_is_clean(capsys: pytest.CaptureFixture[str]) -> None:
    long = [DATA / "synthetic_long" / "tokens", "--rewards", DATA / "synthetic_long" / "rewards"]
    for args in ([DATA / "synthetic"], [DATA / "seed" / "nested.parquet"], long):
        assert run(capsys, "validate", *args).code == 0


def test_selection_decides_what_is_selected(tmp_path: Path) -> None:
    """A bad log-prob in candidate 2 is 'selected' under top_n n=2, not under best-of-K."""
    rows = _rows()
    _find(rows, 0, 0, 2)["logprobs"] = [-0.1, 1.5]
    path = tmp_path / "log.parquet"
    _nested(rows).write_parquet(path)
    assert [p.kind for p in validate(path).problems] == ["bad_logprob_unselected"]
    top2 = validate(path, strategy="top_n", n=2)
    assert [p.kind for p in top2.problems] == ["bad_logprob_selected"]
    # nothing is selected at all: every response counts as not selected
    assert [p.kind for p in validate(path, min_reward=0.95).problems] == ["bad_logprob_unselected"]


def test_locations_are_limited(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rows = _rows()
    for row in rows:
        row["reward"] = NAN
    path = tmp_path / "log.parquet"
    _nested(rows).write_parquet(path)
    report = validate(path, limit=3)
    assert report.problems[0].count == 18
    assert len(report.problems[0].locations) == 3
    result = run(capsys, "validate", path, "--limit", "2")
    assert result.code == 1
    assert "    ... and 16 more" in result.out


@pytest.mark.parametrize("limit", [0, 17, 18, 2**63, 2**64, 10**20])
def test_any_limit_from_none_to_beyond_the_log(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, limit: int
) -> None:
    """0 keeps the counts only, a limit beyond the log every location, in the CLI as in
    the API: a limit beyond 2**64 - 1 raised OverflowError (exit 1 with a traceback),
    --limit 0 was refused."""
    rows = _rows()
    for row in rows:
        row["reward"] = NAN
    path = tmp_path / "log.parquet"
    _nested(rows).write_parquet(path)
    every = sorted((r["stage"], r["prompt"], r["cand"]) for r in rows)
    shown = every[: min(limit, len(every))]
    (problem,) = validate(path, limit=limit).problems
    assert (problem.kind, problem.count, problem.places) == ("bad_reward", 18, 18)
    assert [(p["stage"], p["prompt"], p["cand"]) for p in problem.locations] == shown
    result = run(capsys, "validate", path, "--limit", limit)
    assert (result.code, result.err) == (1, "")
    located = [line for line in result.out.splitlines() if line.startswith("    stage ")]
    assert located == [f"    stage {t}, prompt {i}, candidate {j}: reward nan" for t, i, j in shown]
    assert ("... and" in result.out) == (0 < limit < 18)  # 0: the counts only
    if limit == 0:
        assert result.out.splitlines()[-1].startswith("  bad_reward: 18 reward(s)")


def test_negative_limit_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    _nested(_rows()).write_parquet(path)
    result = run(capsys, "validate", path, "--limit", "-1")
    assert_one_line_error(result, "argument --limit: expected a whole number >= 0, got '-1'")
    with pytest.raises(RaftInputError, match=r"limit=-1: must be a whole number >= 0"):
        validate(path, limit=-1)


def test_no_token_column(tmp_path: Path) -> None:
    tokens, rewards = _long(_rows())
    for t in tokens:
        del t["token"]
    pl.DataFrame(tokens).write_parquet(tmp_path / "t.parquet")
    pl.DataFrame(rewards).write_parquet(tmp_path / "r.parquet")
    report = validate(tmp_path / "t.parquet", rewards=tmp_path / "r.parquet")
    assert report.ok
    assert "no 'token' column" in report.skipped[0]


@pytest.mark.parametrize("broken", ["truncated", "missing column", "wrong type", "missing"])
def test_unreadable_log_is_bad_input(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, broken: str
) -> None:
    """A log that cannot be read as a stage log at all: exit 2, not a report."""
    path = tmp_path / "log.parquet"
    frame = _nested(_rows())
    if broken == "truncated":
        frame.write_parquet(path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif broken == "missing column":
        frame.drop("reward").write_parquet(path)
    elif broken == "wrong type":
        frame.with_columns(pl.col("reward").cast(pl.String)).write_parquet(path)
    assert_one_line_error(run(capsys, "validate", path), "log.parquet")
