"""The figures of cost.ipynb: accuracy against training cost and against serving latency (the Pareto
front of the models), and where the machine time went. Labels never hide under a legend or each other
(the results page's legend_below and place_labels)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from studylib.stages.cost.measures import pareto_front
from studylib.stages.cost.tables import PHASES
from studylib.views.cost import currency_of, time_unit, unit
from studylib.views.results import legend_below, place_labels

LATENCY = "p50 latency c=1 (ms)"


def per_model(points: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Each model (and machine) as one point: the mean of its runs, with the runs' lowest and highest x and y."""
    keys = ["model", "machine"] if "machine" in points else ["model"]
    g = points.dropna(subset=[x, y]).groupby(keys, sort=True)
    out = pd.DataFrame({x: g[x].mean(), y: g[y].mean(), "x_low": g[x].min(), "x_high": g[x].max(),
                        "y_low": g[y].min(), "y_high": g[y].max(), "runs": g.size()})
    return out.reset_index()


def pareto_figure(runs: pd.DataFrame, serving: pd.DataFrame):
    """Per dataset: test top-1 against one run's training cost, and under it against the median serving
    latency of one client; each model a point (its runs' mean, bars spanning its runs), the Pareto front
    joined. One panel per row, so the figure keeps its text size in the book's column."""
    datasets = sorted(runs["dataset"].dropna().unique()) if not runs.empty else []
    n = max(1, len(datasets))
    fig, axes = plt.subplots(2 * n, 1, figsize=(7.5, 4.2 * 2 * n), squeeze=False)
    axes = axes[:, 0].reshape(n, 2)
    if not datasets:
        for ax in axes[0]:
            ax.text(0.5, 0.5, "no successful train runs", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
        return fig
    pending = []
    for (a, b), ds in zip(axes, datasets):
        g = runs[(runs["dataset"] == ds) & (runs["stage"] == "train")]
        pending.append(_pareto_panel(a, g.assign(run_cost=g["training_cost"] + g["evaluation_cost"]), "run_cost",
                                     f"training and evaluating one run{unit(currency_of(g))}",
                                     f"{ds}: accuracy against training cost"))
        s = serving[serving["dataset"] == ds] if not serving.empty else serving
        if s.empty or s[LATENCY].dropna().empty:
            b.text(0.5, 0.5, "no deploy records for this dataset", ha="center", va="center", transform=b.transAxes)
            b.set_title(f"{ds}: accuracy against serving latency")
            b.set_axis_off()
        else:
            pending.append(_pareto_panel(b, s, LATENCY, "median latency of one client (ms)",
                                         f"{ds}: accuracy against serving latency"))
    legend_below(fig, list(axes.flat))   # one legend under the panels, then the layout fixed
    for ax, points, labels in filter(None, pending):
        place_labels(ax, points.iloc[:, 0], points.iloc[:, 1], labels, fontsize=9)
    return fig


def _pareto_panel(ax, g: pd.DataFrame, x: str, xlabel: str, title: str):
    """One panel's points, bars and front; returns (axes, points, labels) for the labels placed last."""
    ax.set(xlabel=xlabel, ylabel="test top-1 (%)", title=title)
    ax.grid(alpha=0.3)
    m = per_model(g.assign(**{"test top-1": g["test top-1"] * 100}), x, "test top-1")
    if m.empty:
        ax.text(0.5, 0.5, "no priced runs", ha="center", va="center", transform=ax.transAxes)
        return None
    front = pareto_front(m, x, "test top-1")
    spread = m["runs"] > 1
    if spread.any():
        s = m[spread]
        ax.errorbar(s[x], s["test top-1"], xerr=[s[x] - s["x_low"], s["x_high"] - s[x]],
                    yerr=[s["test top-1"] - s["y_low"], s["y_high"] - s["test top-1"]],
                    fmt="none", ecolor="0.75", elinewidth=1, label="lowest to highest of its runs")
    if (~front).any():
        ax.scatter(m.loc[~front, x], m.loc[~front, "test top-1"], color="0.45", zorder=3, label="beaten on both")
    f = m[front].sort_values(x)
    ax.plot(f[x], f["test top-1"], "o-", color="C3", zorder=4, label="Pareto front")
    ax.margins(0.12)
    several = "machine" in m and m["machine"].nunique() > 1
    labels = [f"{r['model']} @ {r['machine']}" if several else str(r["model"]) for _, r in m.iterrows()]
    return ax, m[[x, "test top-1"]], labels


def breakdown_figure(breakdown: pd.DataFrame):
    """Stacked horizontal bars: machine time in data prep, tuning, training and evaluation, per model."""
    fig, ax = plt.subplots(figsize=(7.5, 0.4 * max(3, len(breakdown)) + 1.8))
    if breakdown.empty:
        ax.text(0.5, 0.5, "no successful train runs", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    scale, unit = time_unit(breakdown)
    one = breakdown["dataset"].nunique() == 1
    labels = [m if one else f"{d} / {m}" for d, m in zip(breakdown["dataset"], breakdown["model"])]
    left = [0.0] * len(breakdown)
    for i, phase in enumerate(PHASES):
        vals = (breakdown[phase].fillna(0).astype(float) * scale).tolist()
        ax.barh(labels, vals, left=left, color=f"C{i}", label=phase)
        left = [a + b for a, b in zip(left, vals)]
    ax.invert_yaxis()
    ax.set(xlabel={"min": "minutes", "h": "hours"}[unit] + " of machine time", title="Where the time went")
    ax.grid(axis="x", alpha=0.3)
    legend_below(fig, [ax])
    return fig
