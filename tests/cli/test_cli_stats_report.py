"""``raft-polars stats`` and the HTML report: the numbers are the API's, the JSON is
strict, the page holds its parts and loads nothing from outside itself."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import polars as pl
import pytest
from cli_helpers import DATA, run

import raft_polars as rp

NESTED = DATA / "synthetic"


def test_stats_table_matches_the_api(capsys: pytest.CaptureFixture[str]) -> None:
    result = run(capsys, "stats", NESTED, "--format", "json")
    assert result.code == 0
    rows = json.loads(result.out)
    table = rp.stage_stats(str(NESTED))
    assert [r["stage"] for r in rows] == table["stage"].to_list()
    for row, want in zip(rows, table.iter_rows(named=True), strict=True):
        assert row["loss"] == round(want["loss"], 4)
        for name in ("reward_std", "win_rate", "length_mean", "length_reward_corr"):
            assert row[name] == pytest.approx(want[name], rel=1e-12)


def test_best_of_n_csv(capsys: pytest.CaptureFixture[str]) -> None:
    result = run(capsys, "stats", NESTED, "--best-of-n", "--format", "csv")
    assert result.code == 0
    lines = result.out.splitlines()
    assert lines[0] == "stage,n,prompts,expected_best,expected_worst"
    assert len(lines) == 1 + 4 * 4  # 4 stages x K = 4


def test_per_prompt_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "log.parquet"
    pl.DataFrame({
        "stage": [0, 0, 0, 0, 1, 1], "prompt": ["a", "a", "b", "b", "a", "a"],
        "cand": [0, 1, 0, 1, 0, 1], "reward": [0.0, 1.0, 0.0, 0.0, 1.0, 1.0],
        "logprobs": [[-1.0]] * 6,
    }).write_parquet(log)  # fmt: skip
    out = tmp_path / "learnable.jsonl"
    result = run(capsys, "stats", log, "--per-prompt", "-o", out, "--status", "learnable")
    assert result.code == 0
    frame = pl.read_ndjson(out)
    assert frame.select("stage", "prompt", "status").rows() == [
        (0, "a", "learnable"), (1, "a", "learnable")
    ]  # fmt: skip
    again = run(capsys, "stats", log, "--per-prompt", "-o", out)
    assert again.code == 2  # exists: --force to replace
    assert sorted(p.name for p in tmp_path.iterdir()) == ["learnable.jsonl", "log.parquet"]


def test_stats_json_with_infinite_loss(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "big.parquet"
    pl.DataFrame({"stage": [0], "prompt": [0], "cand": [0], "reward": [1.0],
                  "logprobs": [[-1e308, -1e308]]}).write_parquet(log)  # fmt: skip
    result = run(capsys, "stats", log, "--format", "json")
    assert result.code == 0
    assert json.loads(result.out)[0]["loss"] == "inf"


class _Page(HTMLParser):
    """Collects tags, ids and every attribute that could load something."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.ids: set[str] = set()
        self.loads: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            if name == "id" and value:
                self.ids.add(value)
            if name in ("src", "href", "xlink:href", "data") and value:
                self.loads.append((tag, name, value))


def test_html_report_is_whole_and_self_contained(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "report.html"
    result = run(capsys, "report", NESTED, "-o", out, "--min-reward", "0.5")
    assert result.code == 0
    text = out.read_text(encoding="utf-8")
    page = _Page()
    page.feed(text)
    assert {"stages", "trend", "statistics", "best-of-n"} <= page.ids
    assert {"figure-trend", "figure-statistics"} <= page.ids
    assert page.tags.count("svg") == 2
    assert page.tags.count("table") == 3  # losses, statistics, best-of-n
    assert "script" not in page.tags
    assert "link" not in page.tags  # styles are inline
    # nothing but in-page references (#...) and data: URIs
    assert all(v.startswith(("#", "data:")) for _, _, v in page.loads), page.loads
    assert "url(http" not in text
    assert "@import" not in text
    stats = rp.stage_stats(str(NESTED), min_reward=0.5)
    for name in ("reward_std", "win_rate", "zero_variance", "longest_share", "below_min"):
        assert f"<th>{name}</th>" in text
    for loss in stats["loss"].to_list():
        assert f"{loss:.4f}" in text
