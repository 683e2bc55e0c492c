"""Helpers of the CLI tests: run ``main(argv)``, build logs on disk, a plain reference
for the selection strategies (``tests/reference.py`` covers best-of-K only).

The stage logs are nested lists ``lps[t][i][j]`` (token log-probs) and
``rws[t][i][j]`` (rewards), laid out as files with ``tests/reference.py``; every
candidate row also gets payload columns (``prompt_text``, ``response``, ``uid``)
derived from its ids, so an exported batch can be checked cell by cell.
"""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import polars as pl
import pytest

_TESTS = Path(__file__).resolve().parents[1]
if str(_TESTS) not in sys.path:  # tests/ has no __init__.py: reach reference.py by path
    sys.path.insert(0, str(_TESTS))

from reference import best_index, long_frames, nested_frame  # noqa: E402

from raft_polars.cli import main  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "data"


# --- fixtures (imported by the test modules: a tests/cli/conftest.py would clash with
# tests/conftest.py under the suite's rootdir imports and --doctest-modules) -------------


@pytest.fixture(scope="session")
def log_files(tmp_path_factory: pytest.TempPathFactory) -> LogFiles:
    """Integer ids (stages 5, 15, ...; prompts 100, 103, ...), both layouts."""
    return make_log(11).write(tmp_path_factory.mktemp("log"))


@pytest.fixture(scope="session")
def string_log_files(tmp_path_factory: pytest.TempPathFactory) -> LogFiles:
    """String prompt ids, both layouts."""
    return make_log(23, string_ids=True).write(tmp_path_factory.mktemp("slog"))


@pytest.fixture(params=["int", "str"])
def any_log_files(
    request: pytest.FixtureRequest, log_files: LogFiles, string_log_files: LogFiles
) -> LogFiles:
    """Each of the logs above in turn: integer, then string prompt ids."""
    return log_files if request.param == "int" else string_log_files


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    """An empty directory for outputs."""
    path = tmp_path / "out"
    path.mkdir()
    return path


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> Result:
    """``main(argv)`` with its exit code and captured output (SystemExit included)."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def assert_one_line_error(result: Result, fragment: str = "") -> None:
    """Exit 2, one line on stderr starting with ``raft-polars: error:``, no traceback."""
    assert result.code == 2, result
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("raft-polars: error: "), result.err
    assert "Traceback" not in result.err
    assert fragment in lines[0], (fragment, lines[0])


# --- logs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Log:
    """Nested lists plus their ids; ``files`` writes them in both layouts."""

    lps: list[Any]
    rws: list[Any]
    stage_ids: list[int]
    prompt_ids: list[Any]

    def key(self, t: int, i: int, j: int) -> tuple[int, Any, int]:
        return (self.stage_ids[t], self.prompt_ids[i], j)

    def nested(self) -> pl.DataFrame:
        frame = nested_frame(
            self.lps, self.rws, stage_ids=self.stage_ids, prompt_ids=self.prompt_ids, shuffle=7
        )
        return with_payload(frame)

    def long(self) -> tuple[pl.DataFrame, pl.DataFrame]:
        tokens, rewards = long_frames(
            self.lps, self.rws, stage_ids=self.stage_ids, prompt_ids=self.prompt_ids, shuffle=7
        )
        return tokens, with_payload(rewards)

    def write(self, directory: Path) -> LogFiles:
        directory.mkdir(parents=True, exist_ok=True)
        nested = directory / "nested.parquet"
        self.nested().write_parquet(nested)
        tokens, rewards = self.long()
        tokens_path, rewards_path = directory / "tokens.parquet", directory / "rewards.parquet"
        tokens.write_parquet(tokens_path)
        rewards.write_parquet(rewards_path)
        return LogFiles(self, nested, tokens_path, rewards_path)

    def payload(self, key: tuple[int, Any, int]) -> dict[str, Any]:
        stage, prompt, cand = key
        return {
            "prompt_text": f"question {prompt} at stage {stage}",
            "response": f"answer {cand} to {prompt} at stage {stage}",
            "uid": f"{stage}/{prompt}/{cand}",
        }


@dataclass(frozen=True)
class LogFiles:
    log: Log
    nested: Path
    tokens: Path
    rewards: Path

    def args(self, layout: str) -> list[str]:
        """The source arguments of a data command for ``layout``."""
        if layout == "nested":
            return [str(self.nested)]
        return [str(self.tokens), "--rewards", str(self.rewards)]


def with_payload(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.with_columns(
        pl.format("question {} at stage {}", "prompt", "stage").alias("prompt_text"),
        pl.format("answer {} to {} at stage {}", "cand", "prompt", "stage").alias("response"),
        pl.format("{}/{}/{}", "stage", "prompt", "cand").alias("uid"),
    )


def make_log(seed: int, *, stages: int = 4, string_ids: bool = False) -> Log:
    """A valid ragged log: ragged prompts, K and lengths, ties, empty responses."""
    rng = random.Random(seed)
    lps: list[Any] = []
    rws: list[Any] = []
    for t in range(stages):
        stage_lp, stage_rw = [], []
        for _ in range(rng.randint(2, 6)):
            k = rng.randint(1, 4)
            rewards = [rng.choice([0.0, 0.25, 0.5, 1.0, rng.uniform(-1, 2)]) for _ in range(k)]
            responses = [
                [-round(rng.uniform(0.01, 3.0) / (t + 1), 6) for _ in range(rng.randint(0, 7))]
                for _ in range(k)
            ]
            best = best_index(rewards)
            if not responses[best]:
                responses[best] = [-0.5]
            stage_lp.append(responses)
            stage_rw.append(rewards)
        lps.append(stage_lp)
        rws.append(stage_rw)
    width = max(len(s) for s in rws)
    prompt_ids: list[Any] = (
        [f"p{i:02d}" for i in range(width)] if string_ids else [100 + 3 * i for i in range(width)]
    )
    stage_ids = [10 * t + 5 for t in range(stages)]
    return Log(lps, rws, stage_ids, prompt_ids)


# --- a plain reference of the selection strategies -------------------------------------


def reference_strategy(
    log: Log,
    *,
    strategy: str = "best",
    n: int = 1,
    fraction: float | None = None,
    min_reward: float | None = None,
) -> tuple[list[tuple[int, Any, int]], list[dict[str, Any]]]:
    """The selected keys ``(stage, prompt, cand)`` (sorted) and per-stage stats.

    Loops over the nested lists; ties to the smallest candidate, then (global) the
    smallest prompt id.
    """
    chosen: list[tuple[int, Any, int]] = []
    stats: list[dict[str, Any]] = []
    for t, stage in enumerate(log.rws):
        cands = [(r, i, j) for i, prompt in enumerate(stage) for j, r in enumerate(prompt)]
        if strategy == "global":
            assert fraction is not None
            ranked = sorted(cands, key=lambda c: (-c[0], c[2], log.prompt_ids[c[1]]))
            # the fraction as written (its shortest decimal), times the count, exactly
            picked = ranked[: max(1, math.ceil(Fraction(repr(fraction)) * len(cands)))]
        else:
            keep = n if strategy == "top_n" else 1
            picked = []
            for i, prompt in enumerate(stage):
                order = sorted(range(len(prompt)), key=lambda j: (-prompt[j], j))
                picked += [(prompt[j], i, j) for j in order[:keep]]
        prompts_before = {i for _, i, _ in picked}
        if min_reward is not None:
            picked = [c for c in picked if c[0] >= min_reward]
        prompts_after = {i for _, i, _ in picked}
        tokens = [v for _, i, j in picked for v in log.lps[t][i][j]]
        stats.append(
            {
                "stage": log.stage_ids[t],
                "loss": -sum(tokens) / len(tokens) if tokens else None,
                "selected": len(picked),
                "tokens": len(tokens),
                "reward_best_mean": (sum(r for r, _, _ in picked) / len(picked))
                if picked
                else None,
                "below_min": len(prompts_before - prompts_after),
            }
        )
        chosen += [log.key(t, i, j) for _, i, j in picked]
    return sorted(chosen), stats


def parse_table(text: str) -> list[dict[str, str]]:
    """The aligned ``losses`` table as dicts of cell strings."""
    lines = text.strip().splitlines()
    header = lines[0].split()
    return [dict(zip(header, line.split(), strict=True)) for line in lines[1:]]


def read_output(path: Path) -> pl.DataFrame:
    if path.suffix == ".jsonl":
        return pl.read_ndjson(path)
    return pl.read_parquet(path)


def keys_of(frame: pl.DataFrame, prompt: str = "prompt") -> list[tuple[Any, ...]]:
    return list(frame.select("stage", prompt, "cand").iter_rows())


def flat(values: Sequence[Any]) -> list[Any]:
    return [v for part in values for v in part]
