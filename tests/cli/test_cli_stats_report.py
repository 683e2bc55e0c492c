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


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--force"], "--force goes with --per-prompt -o OUT"),
        (["--per-prompt", "-o", "OUT", "--format", "csv"], "--format applies to printed tables"),
        (["--per-prompt", "-o", "OUT", "--reduction", "sequence"], "not --per-prompt"),
        (["--best-of-n", "--reduction", "sequence"], "not --best-of-n"),
        (["--best-of-n", "--strategy", "top_n", "--n", "2"], "do not apply to it"),
        (["--best-of-n", "--min-reward", "0.5"], "do not apply to it"),
        (["--best-of-n", "--strategy", "global", "--fraction", "0.5"], "do not apply to it"),
    ],
)
def test_stats_refuses_options_it_would_ignore(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], message: str
) -> None:
    """An option that would not change the output is an error, not silently
    ignored (as -o without --per-prompt already was)."""
    out = str(tmp_path / "pp.jsonl")
    result = run(capsys, "stats", NESTED, *(out if o == "OUT" else o for o in options))
    assert result.code == 2
    assert message in result.err
    assert not list(tmp_path.iterdir())


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


class _Tables(HTMLParser):
    """The text of every cell of every table, row by row."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        del attrs
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.cell = []

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self.cell is not None:
            self.tables[-1][-1].append("".join(self.cell))
            self.cell = None


def _aligned(text: str) -> list[dict[str, str]]:
    """The rows of an aligned table of ``raft-polars stats`` (no cell holds a space)."""
    head, *rows = (line.split() for line in text.splitlines())
    return [dict(zip(head, row, strict=True)) for row in rows]


def _html_rows(table: list[list[str]]) -> list[dict[str, str]]:
    head, *rows = table
    return [{k: "-" if v == "\N{EN DASH}" else v for k, v in zip(head, row, strict=True)}
            for row in rows]  # fmt: skip


def test_html_tables_are_the_aligned_tables_of_stats(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every cell of the report's tables as ``raft-polars stats`` (and ``--best-of-n``)
    prints it: a float from 1e15 on as 1.0000e+300, not its 301 digits and 4
    decimals (a 306-character cell)."""
    pytest.importorskip("matplotlib")
    log = tmp_path / "log.parquet"
    pl.DataFrame(
        {
            "stage": [0, 0, 1, 1, 1, 2, 2],
            "prompt": [0, 0, 0, 0, 1, 0, 0],
            "cand": [0, 1, 0, 1, 0, 0, 1],
            "reward": [1e300, -1e300, 1e16, 3e16, 2.5e15, 0.25, 0.125],
            "logprobs": [[-1.0], [-2.0], [-1e20], [-0.5, -0.25], [-3.0], [-0.1], []],
        }
    ).write_parquet(log)
    out = tmp_path / "report.html"
    assert run(capsys, "report", log, "-o", out).code == 0
    tables = _Tables()
    tables.feed(out.read_text(encoding="utf-8"))
    losses, statistics, curves = (_html_rows(t) for t in tables.tables)
    page = [dict(a, **b) for a, b in zip(losses, statistics, strict=True)]
    stats = run(capsys, "stats", log)
    assert stats.code == 0
    assert page == _aligned(stats.out)
    best_of_n = run(capsys, "stats", log, "--best-of-n")
    assert best_of_n.code == 0
    assert curves == _aligned(best_of_n.out)
    # independently of stats: cells written as docs/cli.md says
    assert (page[0]["reward_best_mean"], page[0]["reward_mean"]) == ("1.0000e+300", "0.0000")
    assert (page[1]["reward_best_mean"], page[1]["loss"]) == ("1.6250e+16", "1.2500")
    assert (curves[1]["n"], curves[1]["expected_best"]) == ("2", "1.0000e+300")
    longest = max(len(v) for row in [*page, *curves] for v in row.values())
    assert longest <= len("-1.0000e+300"), longest
