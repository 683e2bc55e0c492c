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
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from raft_polars._export import table_cell
from raft_polars.errors import MissingDependencyError
from raft_polars.selection import Reduction, check_reduction

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "INSTALL_HINT",
    "html_report",
    "loss_rises",
    "report_figure",
    "save_figure",
    "save_report",
]

INSTALL_HINT = "pip install 'raft-polars[plot]'"

# the loss of each reduction (docs/semantics.md), on the figure's axis and in the page
_LOSS_AXIS = {"token": "loss (mean token NLL)", "sequence": "loss (mean of response mean NLLs)"}
_LOSS_NOTE = {
    "token": "the pooled token mean NLL of the selected responses",
    "sequence": "the mean over the selected responses of each response's mean token NLL",
}


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


def _drawable(*arrays: Any) -> tuple[list[Any], str]:
    """``arrays`` as matplotlib can draw them on one axis: a value that is not
    finite left out (NaN), and all of them divided by a power of ten when the
    largest is beyond 1e100 (the returned label suffix says by which): ticks
    over a span beyond float64's range failed ("arange: cannot compute
    length")."""
    drawn = [np.where(np.isfinite(a), a, np.nan) for a in arrays]
    finite = np.concatenate([np.abs(a[np.isfinite(a)]) for a in drawn] or [np.zeros(0)])
    top = float(finite.max()) if finite.size else 0.0
    if top <= 1e100:
        return drawn, ""
    power = int(np.floor(np.log10(top)))
    return [a / 10.0**power for a in drawn], f" (x 1e{power})"


def report_figure(
    table: pl.DataFrame, *, title: str | None = None, reduction: Reduction = "token"
) -> Figure:
    """Draw the loss and the rewards per stage of a :func:`~raft_polars.stage_losses` table.

    The upper panel shows the loss per stage, with the stages where it rose marked
    (red triangle and shaded band); the lower one the mean selected reward against
    the mean reward of all candidates, the gap between them (the reward lift)
    shaded. The stages are drawn in order, one place each, labelled with their
    ids (exact at any size; a gap between ids takes no more room).

    Parameters
    ----------
    table
        The per-stage table: ``stage``, ``loss``, ``reward_best_mean``,
        ``reward_mean`` (other columns are ignored).
    title
        Figure title.
    reduction
        The reduction of the table's losses (``"token"`` or ``"sequence"``, as
        in :func:`~raft_polars.stage_losses`), which the loss axis names.

    Returns
    -------
    matplotlib.figure.Figure
        With an Agg canvas attached; save it with :func:`save_figure`.

    Raises
    ------
    MissingDependencyError
        matplotlib is not installed.
    RaftInputError
        ``reduction`` is neither ``"token"`` nor ``"sequence"``.

    Examples
    --------
    >>> import polars as pl
    >>> table = pl.DataFrame({"stage": [0, 1, 2], "loss": [1.5, 1.1, 1.3],
    ...                       "reward_best_mean": [0.4, 0.6, 0.7],
    ...                       "reward_mean": [0.1, 0.3, 0.5]})
    >>> fig = report_figure(table, title="run 7")
    >>> [ax.get_ylabel() for ax in fig.axes]
    ['loss (mean token NLL)', 'reward']
    >>> report_figure(table, reduction="sequence").axes[0].get_ylabel()
    'loss (mean of response mean NLLs)'
    """
    check_reduction(reduction)
    _require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    table = table.sort("stage")
    stages = _positions(table)
    loss = table["loss"].cast(pl.Float64).fill_null(float("nan")).to_numpy()
    best = table["reward_best_mean"].cast(pl.Float64).fill_null(float("nan")).to_numpy()
    mean = table["reward_mean"].cast(pl.Float64).fill_null(float("nan")).to_numpy()
    rose = table["stage"].is_in(loss_rises(table)).to_numpy()
    previous = table["loss"].cast(pl.Float64).shift(1).forward_fill().fill_null(float("nan"))
    with np.errstate(over="ignore", invalid="ignore"):
        rise = loss - previous.to_numpy()
    (loss,), loss_unit = _drawable(loss)
    (best, mean), reward_unit = _drawable(best, mean)

    fig = Figure(figsize=(8.0, 6.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_reward = fig.subplots(2, 1, sharex=True)
    if title:
        fig.suptitle(title, parse_math=False)  # a path or a title with "$" is text
    if table.height == 0:
        for ax in (ax_loss, ax_reward):
            ax.text(0.5, 0.5, "no stages", ha="center", va="center", transform=ax.transAxes)
    for stage in stages[rose]:  # a band over 60% of the gap to the neighbours
        for ax in (ax_loss, ax_reward):
            ax.axvspan(stage - 0.3, stage + 0.3, color="tab:red", alpha=0.08, lw=0)

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
                f"+{up:.4f}" if abs(up) < 1e6 else f"+{up:.4g}",
                (x, y),
                textcoords="offset points",
                xytext=(0, 10),
                ha="center",
                color="tab:red",
                fontsize=8,
            )
    ax_loss.set_ylabel(f"{_LOSS_AXIS[reduction]}{loss_unit}")
    ax_loss.set_title("SFT loss of the selected responses per stage", fontsize=10)

    ax_reward.plot(stages, best, marker="o", color="tab:green", label="selected (mean)")
    ax_reward.plot(stages, mean, marker="s", color="tab:gray", label="all candidates (mean)")
    ax_reward.fill_between(stages, mean, best, color="tab:green", alpha=0.12, label="reward lift")
    ax_reward.set_ylabel(f"reward{reward_unit}")
    ax_reward.set_xlabel("stage")
    ax_reward.set_title("selected vs mean reward per stage", fontsize=10)
    for ax in (ax_loss, ax_reward):
        ax.grid(True, alpha=0.3)
        if table.height:
            ax.legend(loc="best", fontsize=8)
    _stage_ticks(ax_reward, table)
    return fig


def _positions(table: pl.DataFrame) -> Any:
    """The x positions of the stages of ``table`` (sorted by stage): 0, 1, ...
    in order. Stage ids drawn as x values lost their own: float64 holds whole
    numbers up to 2**53, so that stages 2**53 and 2**53 + 1 were drawn on top of
    each other; the ids are the ticks' labels (:func:`_stage_ticks`)."""
    return np.arange(table.height, dtype=np.float64)


def _stage_ticks(ax: Any, table: pl.DataFrame) -> None:
    """Label the stage positions of ``ax`` with the exact stage ids of
    ``table``: every stage up to 25, beyond that the whole positions
    matplotlib picks."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    ids = [str(stage) for stage in table["stage"].to_list()]
    if len(ids) <= 25:
        ax.set_xticks(range(len(ids)), ids)
        return

    def label(x: float, _: object) -> str:
        return ids[int(x)] if x == int(x) and 0 <= x < len(ids) else ""

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.xaxis.set_major_formatter(FuncFormatter(label))


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
    table: pl.DataFrame,
    path: str | Path,
    *,
    title: str | None = None,
    reduction: Reduction = "token",
    dpi: int = 120,
) -> Path:
    """:func:`report_figure` then :func:`save_figure` (PNG, SVG or PDF by extension).

    Returns
    -------
    Path
        ``path``.
    """
    return save_figure(report_figure(table, title=title, reduction=reduction), path, dpi=dpi)


# --- the HTML report ---------------------------------------------------------------


def _svg(figure: Figure) -> str:
    """``figure`` as inline SVG (text kept as text, no external references)."""
    import io

    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    return text[text.index("<svg") :]


# stages whose best-of-n curves are told apart by a legend; beyond, by a colour scale
_LEGEND_STAGES = 10
# curves drawn at most (evenly spaced stages, the first and the last among them)
_CURVES_DRAWN = 50


def _draw_curves(ax_curves: Any, stats: pl.DataFrame, curves: pl.DataFrame) -> None:
    """The best-of-n curves of every stage (of at most ``_CURVES_DRAWN`` of them,
    evenly spaced, the title says so), and the measured win rates against their
    ceiling on a second axis. Up to ``_LEGEND_STAGES`` stages the legend names
    each curve; beyond, a colour scale from the first stage to the last does:
    a legend of 60 entries took the figure's room (and matplotlib warned)."""
    ordered = curves.sort("stage", "n")
    expected, curve_unit = _drawable(ordered["expected_best"].cast(pl.Float64).to_numpy())
    ordered = ordered.with_columns(pl.Series("expected_best", expected[0]))
    stages = ordered["stage"].unique(maintain_order=True)
    shown = stages
    if len(stages) > _CURVES_DRAWN:
        shown = stages.gather(np.unique(np.linspace(0, len(stages) - 1, _CURVES_DRAWN).round()))
    scale = None
    if len(stages) > _LEGEND_STAGES:
        from matplotlib import colormaps
        from matplotlib.colors import Normalize

        scale = (colormaps["viridis"], Normalize(0, len(stages) - 1))
    place = {stage: i for i, stage in enumerate(stages.to_list())}
    for stage, part in ordered.filter(pl.col("stage").is_in(shown.implode())).group_by(
        "stage", maintain_order=True
    ):
        n = part["n"].to_numpy()
        if scale is None:
            ax_curves.plot(
                n, part["expected_best"].to_numpy(), marker=".", label=f"stage {stage[0]}"
            )
        else:
            color = scale[0](scale[1](place[stage[0]]))
            ax_curves.plot(n, part["expected_best"].to_numpy(), lw=1, color=color)
    if scale is not None:
        from matplotlib.cm import ScalarMappable

        bar = ax_curves.figure.colorbar(
            ScalarMappable(norm=scale[1], cmap=scale[0]), ax=ax_curves, pad=0.12, aspect=30
        )
        bar.set_ticks([0, len(stages) - 1], labels=[str(stages[0]), str(stages[-1])])
        bar.set_label("stage", fontsize=8)
    if curves.height:
        n = np.arange(1, int(curves["n"].max()) + 1)  # type: ignore[arg-type]
        ceiling = n / (n + 1)
        twin = ax_curves.twinx()
        twin.plot(n, ceiling, ls="--", color="black", lw=1, label="win-rate ceiling n/(n+1)")
        rates = stats.join(curves.group_by("stage").agg(pl.col("n").max()), on="stage")
        twin.scatter(
            rates["n"].to_numpy(),
            rates["win_rate"].cast(pl.Float64).to_numpy(),
            marker="*",
            s=90,
            color="tab:red",
            label="measured win rate (n = K)",
        )
        twin.set_ylim(0, 1.05)
        twin.set_ylabel("win rate")
        twin.legend(loc="lower right", fontsize=7)
    some = f" ({len(shown)} of {len(stages)} stages)" if len(shown) < len(stages) else ""
    ax_curves.set_title(f"best-of-n: expected best reward of n candidates{some}", fontsize=10)
    ax_curves.set_xlabel("n")
    ax_curves.set_ylabel(f"expected best reward{curve_unit}")


def _stats_figure(stats: pl.DataFrame, curves: pl.DataFrame) -> Figure:
    """Spread, best-of-n, win rate, length bias and group statistics per stage."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10.0, 7.5), layout="constrained")
    FigureCanvasAgg(fig)
    (ax_spread, ax_curves), (ax_length, ax_groups) = fig.subplots(2, 2)
    stats = stats.sort("stage")
    stages = _positions(stats)

    def column(name: str) -> Any:
        return stats[name].cast(pl.Float64).fill_null(float("nan")).to_numpy()

    (best, mean, best_std, std), unit = _drawable(
        column("reward_best_mean"), column("reward_mean"),
        column("reward_best_std"), column("reward_std"),
    )  # fmt: skip
    ax_spread.errorbar(
        stages,
        best,
        yerr=best_std,
        marker="o",
        capsize=3,
        color="tab:green",
        label="selected: mean ± std",
    )
    ax_spread.errorbar(
        stages + 0.05,
        mean,
        yerr=std,
        marker="s",
        capsize=3,
        color="tab:gray",
        label="all candidates: mean ± std",
    )
    ax_spread.set_title(f"reward per stage, with its spread{unit}", fontsize=10)
    ax_spread.set_xlabel("stage")

    _draw_curves(ax_curves, stats, curves)

    ax_length.plot(
        stages,
        column("length_mean"),
        marker="s",
        color="tab:gray",
        label="all candidates: mean tokens",
    )
    ax_length.plot(
        stages,
        column("length_selected_mean"),
        marker="o",
        color="tab:blue",
        label="selected: mean tokens",
    )
    twin_l = ax_length.twinx()
    twin_l.plot(
        stages,
        column("longest_share"),
        ls=":",
        marker="^",
        color="tab:orange",
        label="share selected = longest",
    )
    twin_l.plot(
        stages,
        column("length_reward_corr"),
        ls="--",
        marker="v",
        color="tab:purple",
        label="Spearman(reward, length)",
    )
    twin_l.set_ylim(-1.05, 1.05)
    twin_l.legend(loc="lower right", fontsize=7)
    ax_length.set_title("length bias per stage", fontsize=10)
    ax_length.set_xlabel("stage")

    prompts = column("prompts")
    with np.errstate(invalid="ignore", divide="ignore"):
        ax_groups.bar(
            stages - 0.2,
            column("zero_variance") / prompts,
            width=0.4,
            color="tab:gray",
            label="zero-variance prompts (share)",
        )
        ax_groups.bar(
            stages + 0.2,
            column("below_min") / prompts,
            width=0.4,
            color="tab:red",
            label="left out by min_reward (share)",
        )
    ax_groups.set_ylim(0, 1)
    ax_groups.set_title("dead groups and min_reward per stage", fontsize=10)
    ax_groups.set_xlabel("stage")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_spread, ax_curves, ax_length, ax_groups):
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # no curves (a log without rows): no legend
            ax.legend(loc="upper left", fontsize=7)
    ax_curves.xaxis.set_major_locator(MaxNLocator(integer=True))  # n
    for ax in (ax_spread, ax_length, ax_groups):
        _stage_ticks(ax, stats)
    return fig


def _html_table(table: pl.DataFrame) -> str:
    """``table`` as HTML, each cell as ``raft-polars stats`` prints it (a null as
    a dash)."""
    import html

    def cell(value: object) -> str:
        return "&ndash;" if value is None else html.escape(table_cell(value))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    rows = "".join(
        "<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in table.iter_rows()
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


_LOSS_COLUMNS = (
    "stage", "loss", "prompts", "candidates", "selected", "tokens",
    "reward_best_mean", "reward_mean", "reward_lift", "ties", "below_min",
)  # fmt: skip
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 2em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; }
th { background: #f3f3f3; } tbody tr:nth-child(even) { background: #fafafa; }
figure { margin: 1em 0; } svg { max-width: 100%; height: auto; }
p.note { color: #555; font-size: 0.9em; }
"""


def html_report(
    stats: pl.DataFrame,
    curves: pl.DataFrame,
    *,
    title: str,
    source: str = "",
    reduction: Reduction = "token",
) -> str:
    """One self-contained HTML page: the per-stage table and the figures, inline.

    Parameters
    ----------
    stats
        A :func:`~raft_polars.stage_stats` table.
    curves
        A :func:`~raft_polars.best_of_n` table.
    title, source
        The page title and the log's name.
    reduction
        The reduction of the table's losses (``"token"`` or ``"sequence"``, as
        in :func:`~raft_polars.stage_stats`), which the page and the loss axis
        name.

    Returns
    -------
    str
        The page; it loads nothing from outside itself (styles and figures are
        inline, the figures as SVG).
    """
    import html

    check_reduction(reduction)
    _require_matplotlib()
    losses = [c for c in stats.columns if c in _LOSS_COLUMNS]
    extra = [c for c in stats.columns if c not in _LOSS_COLUMNS]
    trend = _svg(report_figure(stats, title=None, reduction=reduction))
    detail = _svg(_stats_figure(stats, curves))
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
<p class="note">Log: {html.escape(source)}. Losses are {_LOSS_NOTE[reduction]};
every column is defined in the project's docs/semantics.md.</p>
<h2 id="stages">Per-stage statistics</h2>
{_html_table(stats.select(losses))}
{_html_table(stats.select(["stage", *extra]))}
<h2 id="trend">Loss and rewards per stage</h2>
<figure id="figure-trend">{trend}</figure>
<h2 id="statistics">Spread, best-of-n, win rate, length bias, dead groups</h2>
<figure id="figure-statistics">{detail}</figure>
<p class="note">Best-of-n: the expected best reward of n of a prompt's candidates drawn
without replacement, in closed form (for 0/1 rewards, pass@n); the dashed line is the
win rate n/(n+1) that the best of n reaches against one more candidate when rewards
have no ties, the stars the measured win rate of the selection.</p>
<h2 id="best-of-n">Best-of-n table</h2>
{_html_table(curves)}
</body>
</html>
"""
