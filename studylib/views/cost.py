"""What cost.ipynb shows: the cost tables as readable views, and its two figures (Pareto front, time per phase)."""
from __future__ import annotations

import math

import pandas as pd

from studylib.stages.cost.machines import NO_PRICE
from studylib.stages.cost.measures import NOT_REACHED, pareto_front
from studylib.stages.cost.projections import NOT_MEASURED
from studylib.stages.cost.tables import PHASES


class Text(str):
    """A string to glue into the book: shown without quotes, as plain text or Markdown, here or pasted
    into another page ({glue}`cost/<page>.ipynb::key`)."""

    def _repr_pretty_(self, p, cycle):
        p.text(str(self))

    def _repr_markdown_(self):
        return str(self)


def _fmt(x, empty: str = "—") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return empty
    if isinstance(x, (int, float)):
        return f"{x:.4g}"
    return str(x)


def runs_view(runs: pd.DataFrame) -> pd.DataFrame:
    """One line per priced run: minutes, each phase's cost and the total, in the machine's currency."""
    if runs.empty:
        return pd.DataFrame()
    v = pd.DataFrame({
        "dataset": runs["dataset"], "model": runs["model"], "seed": runs["seed"], "stage": runs["stage"],
        "machine": runs["machine"], "test top-1": runs["test top-1"].map(lambda x: _fmt(x)),
        "train min": (runs["training_seconds"] / 60).map(_fmt),
        "data prep": runs["data_prep_cost"].map(_fmt), "tuning": runs["tuning_cost"].map(_fmt),
        "training": runs["training_cost"].map(lambda x: _fmt(x, NO_PRICE)),
        "evaluation": runs["evaluation_cost"].map(_fmt), "total": runs["total_cost"].map(_fmt),
        "currency": runs["currency"].fillna(""),
    })
    return v.sort_values(["dataset", "model", "seed"]).set_index(["dataset", "model", "seed"])


def targets_view(targets: pd.DataFrame) -> pd.DataFrame:
    """Runs by val top-1 target: 'minutes / cost' to the first epoch at or above it, else 'not reached'."""
    if targets.empty:
        return pd.DataFrame()

    def cell(r):
        if r["seconds"] is None or pd.isna(r["seconds"]):
            return NOT_REACHED
        money = NO_PRICE if pd.isna(r["cost"]) else f"{r['cost']:.4g} {r['currency']}"
        return f"{r['seconds'] / 60:.3g} min / {money} (epoch {int(r['epoch'])})"

    t = targets.assign(cell=targets.apply(cell, axis=1), target=targets["target"].map(lambda x: f"val top-1 ≥ {x:g}"),
                       seed=targets["seed"].fillna("—"))
    return t.pivot_table(index=["dataset", "model", "seed"], columns="target", values="cell", aggfunc="first")


def projection_matrix(projections: pd.DataFrame) -> pd.DataFrame:
    """Runs by machine: the training cost as measured or projected, else 'not measured'."""
    if projections.empty:
        return pd.DataFrame()

    def cell(r):
        if r["status"] == NOT_MEASURED or r["train_cost"] is None or pd.isna(r["train_cost"]):
            return NOT_MEASURED
        tag = "" if r["status"] == "measured" else " (projected)"
        return f"{r['train_cost']:.4g} {r['currency']}{tag}"

    p = projections.assign(cell=projections.apply(cell, axis=1), seed=projections["seed"].fillna("—"))
    return p.pivot_table(index=["dataset", "model", "seed", "run_id"], columns="machine", values="cell", aggfunc="first")


def pareto_figure(runs: pd.DataFrame, serving: pd.DataFrame):
    """Per dataset: test top-1 against training cost, and against p50 serving latency; the Pareto front joined."""
    import matplotlib.pyplot as plt  # lazy: only the cost notebook draws
    datasets = sorted(runs["dataset"].dropna().unique()) if not runs.empty else []
    n = max(1, len(datasets))
    fig, axes = plt.subplots(n, 2, figsize=(11, 3.8 * n), squeeze=False)
    if not datasets:
        for ax in axes[0]:
            ax.text(0.5, 0.5, "no successful train runs", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
    for (a, b), ds in zip(axes, datasets):
        g = runs[runs["dataset"] == ds]
        cur = "/".join(sorted(g["currency"].dropna().unique())) or "no price"
        _pareto_panel(a, g, "training_cost", "test top-1", f"training cost ({cur})", f"{ds}: accuracy vs training cost")
        s = serving[serving["dataset"] == ds] if not serving.empty else serving
        if s.empty or s["p50 latency c=1 (ms)"].dropna().empty:
            b.text(0.5, 0.5, "no deploy records for this dataset", ha="center", va="center", transform=b.transAxes)
            b.set_title(f"{ds}: accuracy vs serving latency")
            b.set_axis_off()
        else:
            _pareto_panel(b, s, "p50 latency c=1 (ms)", "test top-1", "p50 HTTP latency at concurrency 1 (ms)",
                          f"{ds}: accuracy vs serving latency")
    fig.tight_layout()
    return fig


def _pareto_panel(ax, g: pd.DataFrame, x: str, y: str, xlabel: str, title: str) -> None:
    g = g.dropna(subset=[x, y])
    ax.set(xlabel=xlabel, ylabel="test top-1", title=title)
    if g.empty:
        ax.text(0.5, 0.5, "no priced runs", ha="center", va="center", transform=ax.transAxes)
        return
    front = pareto_front(g, x, y)
    if (~front).any():
        ax.scatter(g.loc[~front, x], g.loc[~front, y], color="0.6", label="dominated")
    f = g[front].sort_values(x)
    ax.plot(f[x], f[y], "o-", color="C3", label="Pareto front")
    machines = g["machine"].nunique() > 1
    for _, r in g.iterrows():
        label = str(r["model"])
        same = g[(g["model"] == r["model"]) & (g["machine"] == r["machine"])]
        if "seed" in g and len(same) > 1:
            label += f" s{r['seed']}"
        if machines:
            label += f" @ {r['machine']}"
        ax.annotate(label, (r[x], r[y]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def breakdown_figure(breakdown: pd.DataFrame):
    """Stacked horizontal bars: hours in data prep, tuning, training and evaluation, per dataset and model."""
    import matplotlib.pyplot as plt  # lazy: only the cost notebook draws
    fig, ax = plt.subplots(figsize=(9, 0.45 * max(3, len(breakdown)) + 1.2))
    if breakdown.empty:
        ax.text(0.5, 0.5, "no successful train runs", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    labels = [f"{d} / {m}" for d, m in zip(breakdown["dataset"], breakdown["model"])]
    left = [0.0] * len(breakdown)
    for i, phase in enumerate(PHASES):
        vals = breakdown[phase].fillna(0).astype(float).tolist()
        ax.barh(labels, vals, left=left, color=f"C{i}", label=phase)
        left = [a + b for a, b in zip(left, vals)]
    ax.invert_yaxis()
    ax.set(xlabel="hours", title="Where the time went")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig
