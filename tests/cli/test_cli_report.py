"""``raft-polars report``: a real PNG (or SVG/PDF) of the trend; matplotlib optional."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from cli_helpers import DATA, assert_one_line_error, run

from raft_polars import stage_losses
from raft_polars.report import loss_rises, report_figure

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
