"""``raft-polars report``: a real PNG (or SVG/PDF) of the trend; matplotlib optional."""

from __future__ import annotations

import struct
import sys
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from cli_helpers import DATA, assert_one_line_error, run
from hypothesis import given, settings
from hypothesis import strategies as st

from raft_polars import best_of_n, stage_losses, stage_stats
from raft_polars.errors import RaftInputError
from raft_polars.report import _stats_figure, html_report, loss_rises, report_figure

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def rising_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five stages whose loss falls, rises at stage 30, falls, rises at stage 50."""
    nll = {10: 1.6, 20: 1.1, 30: 1.3, 40: 0.7, 50: 0.9}
    rows = [
        {
            "stage": s,
            "prompt": p,
            "cand": c,
            "reward": 0.1 * c + s / 50,
            "logprobs": [-(nll[s] + 0.2 * (2 - c))] * 4,
        }
        for s in nll
        for p in range(3)
        for c in range(3)
    ]
    path = tmp_path_factory.mktemp("rising") / "log.parquet"
    pl.DataFrame(rows).write_parquet(path)
    return path


def test_loss_rises(rising_log: Path) -> None:
    assert loss_rises(stage_losses(rising_log)) == [30, 50]


def test_png(capsys: pytest.CaptureFixture[str], tmp_path: Path, rising_log: Path) -> None:
    out = tmp_path / "report.png"
    result = run(capsys, "report", rising_log, "-o", out, "--title", "rising")
    assert result.code == 0, result.err
    assert result.out == f"wrote {out} (5 stage(s))\n"
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert (width, height) == (960, 780)
    assert 20_000 < len(data) < 1_000_000
    assert [p.name for p in tmp_path.iterdir()] == ["report.png"]
    # replaced on a second run, without --force (a figure is cheap to redraw)
    assert run(capsys, "report", rising_log, "-o", out).code == 0


@pytest.mark.parametrize("suffix", [".png", ".html"])
def test_values_beyond_what_matplotlib_ticks(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, suffix: str
) -> None:
    # rewards from -1e308 to 1.7e308 (a mean of inf among them) and a loss of 1e300:
    # matplotlib's ticks failed with "arange: cannot compute length", a traceback
    log = tmp_path / "huge.parquet"
    pl.DataFrame(
        {
            "stage": [0, 0, 1, 1, 2, 2],
            "prompt": [0] * 6,
            "cand": [0, 1] * 3,
            "reward": [1e308, -1e308, 1.7e308, 1e307, -1e308, 5e307],
            "logprobs": [[-1.0], [-2.0], [-1e300], [-1.0], [-3.0], [-0.1]],
        }
    ).write_parquet(log)
    out = tmp_path / f"r{suffix}"
    result = run(capsys, "report", log, "-o", out)
    assert result.code == 0, result.err
    assert result.err == ""
    figure = report_figure(stage_losses(log))
    labels = [ax.get_ylabel() for ax in figure.axes]
    assert labels == ["loss (mean token NLL) (x 1e300)", "reward (x 1e308)"]
    drawn = np.asarray(figure.axes[1].lines[0].get_ydata(), dtype=float)
    assert drawn.tolist() == pytest.approx([1.0, 1.7, 0.5])


def test_long_layout_svg_and_pdf(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    args = [DATA / "synthetic_long" / "tokens", "--rewards", DATA / "synthetic_long" / "rewards"]
    assert run(capsys, "report", *args, "-o", tmp_path / "r.svg").code == 0
    assert b"<svg" in (tmp_path / "r.svg").read_bytes()[:2000]
    assert run(capsys, "report", *args, "-o", tmp_path / "r.pdf").code == 0
    assert (tmp_path / "r.pdf").read_bytes()[:5] == b"%PDF-"


def test_bad_figure_name(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, rising_log: Path
) -> None:
    assert_one_line_error(
        run(capsys, "report", rising_log, "-o", tmp_path / "r.gif"), "must be .png, .svg or .pdf"
    )
    assert not any(tmp_path.iterdir())


def test_without_matplotlib(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    rising_log: Path,
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    result = run(capsys, "report", rising_log, "-o", tmp_path / "r.png")
    assert_one_line_error(result, "pip install 'raft-polars[plot]'")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("title", ["a$x^$", "cost $5 vs $10"])
def test_a_title_with_dollars_is_plain_text(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, rising_log: Path, title: str
) -> None:
    """A title (or a log's path, the default title) holding ``$``: matplotlib read
    it as math, and ``a$x^$`` ended in its parser's traceback (exit 1)."""
    out = tmp_path / "fig.png"
    assert run(capsys, "report", rising_log, "-o", out, "--title", title).code == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    figure = report_figure(stage_losses(rising_log), title=title)
    assert figure.get_suptitle() == title


@settings(max_examples=25, deadline=None)
@given(
    ids=st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=32, unique=True).map(sorted)
)
def test_every_stage_has_its_own_place_and_exact_label(ids: list[int]) -> None:
    """Stage ids, however large (float64 holds whole numbers up to 2**53 only):
    each stage is drawn at its own x position, in order, and a labelled tick
    names its stage exactly; with up to 25 stages every stage is labelled. In
    the loss figure and the statistics figure of the HTML report alike."""
    log = pl.DataFrame(
        {
            "stage": pl.Series(ids, dtype=pl.Int64),
            "prompt": [0] * len(ids),
            "cand": [0] * len(ids),
            "reward": [0.5 + i for i in range(len(ids))],
            "logprobs": [[-1.0 - i % 3] for i in range(len(ids))],
        }
    )
    figures = [report_figure(stage_losses(log)), _stats_figure(stage_stats(log), best_of_n(log))]
    for figure, axes in zip(figures, ([1], [0, 2, 3]), strict=True):
        figure.canvas.draw()
        for index in axes:
            ax = figure.axes[index]
            xs = np.asarray(ax.lines[0].get_xdata(), dtype=float) if ax.lines else None
            if xs is not None:  # the positions of the stages, in order, apart
                assert len(xs) == len(ids)
                assert (np.diff(xs) > 0).all()
            labelled = {
                float(tick): text.get_text()
                for tick, text in zip(ax.get_xticks(), ax.get_xticklabels(), strict=True)
                if text.get_text()
            }
            assert labelled
            for tick, text in labelled.items():
                assert tick == int(tick), (tick, text)
                assert text == str(ids[int(tick)])
            if len(ids) <= 25:
                assert sorted(labelled.values(), key=int) == [str(i) for i in ids]


# the loss of the report's log under each reduction (docs/semantics.md's example:
# selected responses [-1.0] and [-0.2, -0.2, -0.2]), its axis label and the page's note
REDUCTIONS = {
    "token": ("0.4000", "loss (mean token NLL)", "the pooled token mean NLL of the"),
    "sequence": (
        "0.6000",
        "loss (mean of response mean NLLs)",
        "the mean over the selected responses of each response's mean token NLL",
    ),
}


@pytest.mark.parametrize("reduction", list(REDUCTIONS))
def test_the_report_names_the_reduction_shown(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, reduction: str
) -> None:
    """The page's note and the loss axis describe the loss of --reduction: with
    'sequence' they called the mean of response means the pooled token mean NLL."""
    loss, axis, note = REDUCTIONS[reduction]
    log = tmp_path / "log.parquet"
    pl.DataFrame(
        {
            "stage": [0, 0, 0, 0],
            "prompt": [0, 0, 1, 1],
            "cand": [0, 1, 0, 1],
            "reward": [1.0, 0.0, 1.0, 0.0],
            "logprobs": [[-1.0], [-5.0], [-0.2, -0.2, -0.2], [-5.0]],
        }
    ).write_parquet(log)
    html, svg = tmp_path / "r.html", tmp_path / "r.svg"
    assert run(capsys, "report", log, "-o", html, "--reduction", reduction).code == 0
    page = " ".join(html.read_text(encoding="utf-8").split())  # the note spans lines
    assert f"<td>{loss}</td>" in page
    assert f"Losses are {note}" in page
    assert f"<!-- {axis} -->" in page  # matplotlib writes each text as a comment
    assert ("pooled" in page) == (reduction == "token")
    assert run(capsys, "report", log, "-o", svg, "--reduction", reduction).code == 0
    figure = svg.read_text(encoding="utf-8")
    assert f"<!-- {axis} -->" in figure
    assert ("<!-- loss (mean token NLL) -->" in figure) == (reduction == "token")


def test_an_unknown_reduction_is_bad_input(rising_log: Path) -> None:
    table = stage_stats(rising_log)
    with pytest.raises(
        RaftInputError, match=r"reduction must be 'token' or 'sequence', got 'mean'"
    ):
        report_figure(table, reduction="mean")  # type: ignore[arg-type]
    with pytest.raises(
        RaftInputError, match=r"reduction must be 'token' or 'sequence', got 'mean'"
    ):
        html_report(table, best_of_n(rising_log), title="t", reduction="mean")  # type: ignore[arg-type]


@pytest.mark.parametrize("suffix", [".html", ".png"])
def test_a_log_without_rows_draws_no_empty_legend(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, suffix: str
) -> None:
    """A log with no rows: the best-of-n panel has nothing to label, and its legend
    wrote matplotlib's 'No artists with labels found to put in legend' to stderr."""
    log = tmp_path / "empty.parquet"
    pl.DataFrame(
        schema={"stage": pl.Int64, "prompt": pl.Int64, "cand": pl.Int64, "reward": pl.Float64,
                "logprobs": pl.List(pl.Float64)}
    ).write_parquet(log)  # fmt: skip
    out = tmp_path / f"r{suffix}"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run(capsys, "report", log, "-o", out)
    assert [str(w.message) for w in caught] == []
    assert (result.code, result.out, result.err) == (0, f"wrote {out} (0 stage(s))\n", "")
    figure = _stats_figure(stage_stats(log), best_of_n(log))
    curves = figure.axes[1]
    assert (curves.get_title(), curves.get_legend()) == (
        "best-of-n: expected best reward of n candidates",
        None,
    )
    assert all(ax.get_legend() is not None for ax in figure.axes if ax is not curves)


@pytest.mark.parametrize(("stages", "legend", "title"), [(8, 8, ""), (60, 0, " (50 of 60 stages)")])
def test_many_stages_are_told_apart_by_a_colour_scale(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, stages: int, legend: int, title: str
) -> None:
    """Up to 10 stages the best-of-n legend names each; beyond, a colour scale does
    (a legend of 60 entries took the figure's room and matplotlib warned on
    stderr), and at most 50 curves are drawn, the title says so."""
    log = tmp_path / "many.parquet"
    pl.DataFrame(
        {"stage": np.repeat(np.arange(stages), 2), "prompt": np.zeros(2 * stages, dtype=int),
         "cand": np.tile([0, 1], stages), "reward": np.linspace(0.0, 1.0, 2 * stages),
         "logprobs": [[-0.5, -0.1]] * (2 * stages)}
    ).write_parquet(log)  # fmt: skip
    out = tmp_path / "r.html"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run(capsys, "report", log, "-o", out)
    assert [str(w.message) for w in caught] == []
    assert (result.code, result.err) == (0, "")
    figure = _stats_figure(stage_stats(log), best_of_n(log))
    curves = figure.axes[1]
    assert curves.get_title() == f"best-of-n: expected best reward of n candidates{title}"
    assert len(curves.get_legend_handles_labels()[1]) == legend
    assert len(curves.get_lines()) == min(stages, 50)
    scales = [ax for ax in figure.axes if ax.get_label() == "<colorbar>"]
    assert len(scales) == (stages > 10)
