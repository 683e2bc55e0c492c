"""A figure of the RAFT trend: loss per stage and selected vs mean reward per stage.

Plotting is optional: matplotlib is imported inside the functions that draw, and
its absence raises :class:`~raft_polars.errors.MissingDependencyError` with the
install command (``pip install 'raft-polars[plot]'``). Figures are drawn with the
Agg canvas, without pyplot, so nothing changes the caller's matplotlib backend.

Examples
--------
>>> import polars as pl
>>> from raft_polars.report import loss_rises
>>> table = pl.DataFrame({"stage": [0, 1, 2, 3], "loss": [1.2, 0.9, 1.0, None]})
>>> loss_rises(table)
[2]
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from raft_polars.errors import MissingDependencyError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["INSTALL_HINT", "loss_rises", "report_figure", "save_figure", "save_report"]

INSTALL_HINT = "pip install 'raft-polars[plot]'"


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401 - only checks that it is there
    except ImportError as exc:
        msg = (
            f"the report needs matplotlib, which is not installed; install it with: {INSTALL_HINT}"
        )
        raise MissingDependencyError(msg) from exc


def loss_rises(table: pl.DataFrame) -> list[int]:
    """The stages whose loss is higher than at the previous stage that has a loss.

    Parameters
    ----------
    table
        A :func:`~raft_polars.stage_losses` table (``stage``, ``loss``, sorted by
        stage); a null loss (nothing selected) is skipped over.

    Returns
    -------
    list of int
        Stage ids, in stage order.

    Examples
    --------
    >>> import polars as pl
    >>> loss_rises(pl.DataFrame({"stage": [3, 5, 8], "loss": [0.5, None, 0.7]}))
    [8]
    """
    previous = pl.col("loss").shift(1).forward_fill()
    rose = table.sort("stage").filter((pl.col("loss") > previous).fill_null(False))
    return [int(s) for s in rose["stage"].to_list()]


def report_figure(table: pl.DataFrame, *, title: str | None = None) -> Figure:
    """Draw the loss and the rewards per stage of a :func:`~raft_polars.stage_losses` table.

    The upper panel shows the loss per stage, with the stages where it rose marked
    (red triangle and shaded band); the lower one the mean selected reward against
    the mean reward of all candidates, the gap between them (the reward lift)
    shaded.

    Parameters
    ----------
    table
        The per-stage table: ``stage``, ``loss``, ``reward_best_mean``,
        ``reward_mean`` (other columns are ignored).
    title
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
        With an Agg canvas attached; save it with :func:`save_figure`.

    Raises
    ------
    MissingDependencyError
        matplotlib is not installed.

    Examples
    --------
    >>> import polars as pl
    >>> table = pl.DataFrame({"stage": [0, 1, 2], "loss": [1.5, 1.1, 1.3],
    ...                       "reward_best_mean": [0.4, 0.6, 0.7],
    ...                       "reward_mean": [0.1, 0.3, 0.5]})
    >>> fig = report_figure(table, title="run 7")
    >>> [ax.get_ylabel() for ax in fig.axes]
    ['loss (mean token NLL)', 'reward']
    """
    _require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    table = table.sort("stage")
    stages = table["stage"].cast(pl.Float64).to_numpy()
    loss = table["loss"].cast(pl.Float64).fill_null(float("nan")).to_numpy()
    best = table["reward_best_mean"].cast(pl.Float64).fill_null(float("nan")).to_numpy()
    mean = table["reward_mean"].cast(pl.Float64).fill_null(float("nan")).to_numpy()
    rose = table["stage"].is_in(loss_rises(table)).to_numpy()
    previous = table["loss"].cast(pl.Float64).shift(1).forward_fill().fill_null(float("nan"))
    rise = loss - previous.to_numpy()

    fig = Figure(figsize=(8.0, 6.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_reward = fig.subplots(2, 1, sharex=True)
    if title:
        fig.suptitle(title)
    if table.height == 0:
        for ax in (ax_loss, ax_reward):
            ax.text(0.5, 0.5, "no stages", ha="center", va="center", transform=ax.transAxes)
    # the band around a marked stage spans 60% of the gap to its neighbours
    half = 0.3 * float(np.diff(stages).min()) if table.height > 1 else 0.3
    for stage in stages[rose]:
        for ax in (ax_loss, ax_reward):
            ax.axvspan(stage - half, stage + half, color="tab:red", alpha=0.08, lw=0)

    ax_loss.plot(stages, loss, marker="o", color="tab:blue", label="loss")
    if rose.any():
        ax_loss.scatter(
            stages[rose],
            loss[rose],
            marker="^",
            s=140,
            color="tab:red",
            zorder=3,
            label="loss rose",
        )
        for x, y, up in zip(stages[rose], loss[rose], rise[rose], strict=True):
            ax_loss.annotate(
                f"+{up:.4f}",
                (x, y),
                textcoords="offset points",
                xytext=(0, 10),
                ha="center",
                color="tab:red",
                fontsize=8,
            )
    ax_loss.set_ylabel("loss (mean token NLL)")
    ax_loss.set_title("SFT loss of the selected responses per stage", fontsize=10)

    ax_reward.plot(stages, best, marker="o", color="tab:green", label="selected (mean)")
    ax_reward.plot(stages, mean, marker="s", color="tab:gray", label="all candidates (mean)")
    ax_reward.fill_between(stages, mean, best, color="tab:green", alpha=0.12, label="reward lift")
    ax_reward.set_ylabel("reward")
    ax_reward.set_xlabel("stage")
    ax_reward.set_title("selected vs mean reward per stage", fontsize=10)
    for ax in (ax_loss, ax_reward):
        ax.grid(True, alpha=0.3)
        if table.height:
            ax.legend(loc="best", fontsize=8)
    if 0 < table.height <= 25:
        ax_reward.set_xticks(stages, [str(int(s)) for s in stages])
    else:
        ax_reward.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


def save_figure(
    figure: Figure, path: str | Path, *, fmt: str | None = None, dpi: int = 120
) -> Path:
    """Write ``figure`` to ``path`` (format from ``fmt`` or the file extension).

    Returns
    -------
    Path
        ``path``.
    """
    _require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not isinstance(figure.canvas, FigureCanvasAgg):
        FigureCanvasAgg(figure)
    figure.savefig(path, format=fmt, dpi=dpi)
    return Path(path)


def save_report(
    table: pl.DataFrame, path: str | Path, *, title: str | None = None, dpi: int = 120
) -> Path:
    """:func:`report_figure` then :func:`save_figure` (PNG, SVG or PDF by extension).

    Returns
    -------
    Path
        ``path``.
    """
    return save_figure(report_figure(table, title=title), path, dpi=dpi)
