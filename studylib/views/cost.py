"""What cost.ipynb shows: the cost tables (studylib.stages.cost.tables) as a reader needs them, dollars
first, as text with human column names and units; the sentences around them; its figures are in
studylib.views.cost_figures."""
from __future__ import annotations

import html

import pandas as pd

from studylib.stages.cost.measures import NOT_REACHED
from studylib.stages.cost.prices import THIS_MACHINE, PriceBook
from studylib.stages.cost.projections import NOT_MEASURED
from studylib.stages.cost.tables import PHASES, CostTables
from studylib.views.format import column, decimals_for, number, percent, table

NOT_PRICED = "no price"


class Text(str):
    """A string to glue into the book: shown without quotes, as plain text or Markdown, here or pasted
    into another page ({glue}`cost/<page>.ipynb::key`)."""

    def _repr_pretty_(self, p, cycle):
        p.text(str(self))

    def _repr_markdown_(self):
        return str(self)


def money(values: pd.Series, missing: str = NOT_PRICED) -> pd.Series:
    """Amounts of money as text, one number of decimals per column: at least cents, and two significant
    digits for the largest amount when it is under a cent."""
    d = max(2, decimals_for(values.tolist(), 2))
    return values.map(lambda x: number(x, decimals=d, missing=missing))


def unit(currency: str) -> str:
    """A column name's unit: ' (USD)', or nothing when no row is priced."""
    return f" ({currency})" if currency else ""


def currency_of(frame: pd.DataFrame) -> str:
    """The one currency of a frame's priced rows ('USD'), several joined ('EUR/USD'), or '' when none is priced."""
    return "/".join(sorted(frame["currency"].dropna().unique())) if "currency" in frame and not frame.empty else ""


def _labels(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """The index a reader sees: model and seed (dataset first when the study has several); the run id's
    hash added where two runs would otherwise share a row."""
    keys = (["dataset"] if frame["dataset"].nunique() > 1 else []) + keys
    out = frame.assign(seed=frame["seed"].map(lambda s: number(s, missing="—"))) if "seed" in keys else frame
    if "run_id" in frame and out.drop_duplicates("run_id").duplicated(keys).any():
        out = out.assign(run=frame["run_id"].str.rsplit("-", n=1).str[-1])
        keys = keys + ["run"]
    return out.set_index(keys)


# --- what it cost ------------------------------------------------------------------------

def study_total(t: CostTables) -> Text:
    """One paragraph: what the whole study cost, per phase, on which machine at which price."""
    if t.runs.empty:
        return Text("No train run of this study succeeded, so there is nothing to price.")
    c = t.costs
    currency = currency_of(c) or "?"
    phases = {p: c[p].sum(min_count=1) if c[p].notna().all() else None for p in PHASES}
    machines = [f"`{r['hardware']}` priced as *{r['priced as']}* at {r['price per hour']:g} {r['currency']} per hour"
                for _, r in t.machines.iterrows() if pd.notna(r["price per hour"])]
    unpriced = [f"`{r['hardware']}`" for _, r in t.machines.iterrows() if pd.isna(r["price per hour"])]
    hours = t.breakdown[list(PHASES)].fillna(0).to_numpy().sum()
    lines = []
    if all(v is not None for v in phases.values()) and "/" not in currency:
        total = sum(phases.values())
        lines.append(f"**The whole study cost {number(total, decimals=max(2, decimals_for([total], 2)))} {currency}** "
                     f"for {_duration(hours)} of machine time: "
                     + ", ".join(f"{p} {number(v, decimals=max(2, decimals_for([v], 2)))}" for p, v in phases.items()) + ".")
    else:
        why = ("part of it ran on hardware that no entry of the price book matches" if unpriced or currency == "?"
               else f"its parts are priced in several currencies ({currency})")
        lines.append(f"The study used {_duration(hours)} of machine time; its total has no price because {why}.")
    if machines:
        lines.append("Runs on " + "; ".join(machines) + ".")
    if unpriced:
        lines.append("Not priced: runs on " + ", ".join(unpriced) + " (no entry of `prices.yaml` matches this "
                     "hardware; set the notebook's `this_machine_price` or `hardware_prices` to price it).")
    return Text(" ".join(lines))


def _duration(hours: float) -> str:
    return f"{number(hours * 60, 2)} minutes" if hours < 2 else f"{number(hours, 3)} hours"


def models_view(t: CostTables) -> pd.DataFrame:
    """Per model: its runs, mean test top-1, minutes and cost of one run (training and evaluation), and all
    its runs with its tuning; cheapest run first."""
    runs = t.runs[t.runs["stage"] == "train"] if not t.runs.empty else t.runs
    if runs.empty:
        return pd.DataFrame()
    cur = unit(currency_of(runs))
    costs = t.costs[~t.costs["model"].str.startswith("(")].set_index(["dataset", "model"])
    g = runs.assign(run_cost=runs["training_cost"] + runs["evaluation_cost"]).groupby(["dataset", "model"])
    view = pd.DataFrame({"runs": g.size(), "test top-1 (%, mean)": g["test top-1"].mean(),
                         "minutes per run": g["training_seconds"].mean() / 60,
                         f"cost per run{cur}": g["run_cost"].mean()})
    tuned = costs["tuning"].fillna(0) > 0
    if tuned.any():
        view[f"tuning{cur}"] = costs["tuning"]
    view[f"all runs and tuning{cur}"] = costs[["training", "evaluation", "tuning"]].sum(axis=1, min_count=3)
    view = view.sort_values(f"cost per run{cur}")
    if view.index.get_level_values("dataset").nunique() == 1:
        view = view.droplevel("dataset")
    money_columns = [c for c in view if c.startswith(("cost per run", "tuning", "all runs"))]
    out = table(view.drop(columns=money_columns), {"minutes per run": 3})
    out["test top-1 (%, mean)"] = view["test top-1 (%, mean)"].map(percent)
    for c in money_columns:
        out[c] = money(view[c])
    return out


def runs_view(runs: pd.DataFrame) -> pd.DataFrame:
    """One line per priced run: its test top-1, training minutes, what training and evaluating it cost, and
    its total with the tuning and data prep charged to it."""
    if runs.empty:
        return pd.DataFrame()
    cur = unit(currency_of(runs))
    # a run the tune notebook trained (the tuned configuration) is marked as such next to its seed
    seeds = [f"{number(s, missing='—')} (tuned)" if stage == "tune" else s for s, stage in zip(runs["seed"], runs["stage"])]
    frame = _labels(runs.assign(seed=seeds, order=runs["seed"]).sort_values(["dataset", "model", "order", "stage"]),
                    ["model", "seed"])
    view = pd.DataFrame({"test top-1 (%)": frame["test top-1"].map(percent),
                         "training (min)": column(frame["training_seconds"] / 60)})
    view[f"training and evaluation{cur}"] = money(frame["training_cost"] + frame["evaluation_cost"])
    view[f"with tuning and data prep{cur}"] = money(frame["total_cost"])
    return view


def targets_view(targets: pd.DataFrame) -> pd.DataFrame:
    """Per model and validation top-1 target that some run reached: what the cheapest of its runs paid to get
    there, and the minutes; 'not reached' where none of the model's runs got there."""
    reached = unreached = None
    if not targets.empty:
        reached = targets.dropna(subset=["seconds"])
        unreached = set(unreached_targets(targets))
    if reached is None or reached.empty:
        return pd.DataFrame()
    cur = currency_of(reached) or "cost"
    d = max(2, decimals_for(reached["cost"].tolist(), 2))
    rows = {}
    for (ds, model), g in targets.groupby(["dataset", "model"], sort=True):
        row = {}
        for t, tg in g.groupby("target"):
            if t in unreached:
                continue
            hit = tg.dropna(subset=["seconds"]).sort_values(["cost", "seconds"])
            if hit.empty:
                row[t] = NOT_REACHED
                continue
            best = hit.iloc[0]
            some = f", {len(hit)} of {len(tg)} runs" if len(hit) < len(tg) else ""
            row[t] = f"{number(best['cost'], decimals=d, missing=NOT_PRICED)} ({number(best['seconds'] / 60)} min{some})"
        rows[(ds, model)] = row
    view = pd.DataFrame.from_dict(rows, orient="index")
    view = view[sorted(view.columns)]
    view.columns = [f"val top-1 ≥ {number(100 * t)}%: {cur} (minutes)" for t in view.columns]
    view.index.names = ["dataset", "model"]
    return view.droplevel("dataset") if view.index.get_level_values("dataset").nunique() == 1 else view


def unreached_targets(targets: pd.DataFrame) -> list[float]:
    """The validation top-1 targets that no run of the study reached."""
    if targets.empty:
        return []
    hit = targets.groupby("target")["seconds"].apply(lambda s: s.notna().any())
    return sorted(float(t) for t, ok in hit.items() if not ok)


# --- machines and prices -----------------------------------------------------------------

def machines_view(machines: pd.DataFrame) -> pd.DataFrame:
    """The hardware in the records, the price entry it is priced at and its price, and its records per stage."""
    if machines.empty:
        return pd.DataFrame()
    view = machines.set_index("hardware")
    out = table(view[[c for c in view if c.endswith(" records")]].rename(columns=lambda c: c.replace("_", " ")))
    out.insert(0, "price per hour", [f"{p:g} {c}" if pd.notna(p) else NOT_PRICED
                                     for p, c in zip(view["price per hour"], view["currency"])])
    out.insert(0, "priced as", view["priced as"])
    return out


def prices_view(book: PriceBook) -> pd.DataFrame:
    """Every entry of the price book: who sells it, what it is, its price and unit, and the day it was recorded."""
    rows = {name: {"provider": p.provider, "what": p.instance,
                   "price": f"{p.price:g} {p.currency} per {p.unit}" if p.price is not None else "not set",
                   "recorded": p.date.isoformat()} for name, p in book.prices.items()}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("price entry")


def sources_html(book: PriceBook) -> str:
    """Each price's source, folded away under one line (HTML for the book)."""
    items = "".join(f"<li><b>{html.escape(name)}</b>: {html.escape(p.source)}</li>" for name, p in book.prices.items())
    return f"<details><summary>Where each price comes from</summary><ul>{items}</ul></details>"


def this_machine_text(book: PriceBook, labels: list[str]) -> Text:
    """Which host ran this notebook, and how it is priced."""
    p = book.prices[THIS_MACHINE]
    where = ", ".join(f"`{label}`" for label in labels)
    if p.price is None:
        return Text(f"This notebook ran on {where}; the user set no price for it, so its runs are priced by the "
                    "entry that matches their hardware, or not at all.")
    return Text(f"This notebook ran on {where}, priced at {p.price:g} {p.currency} per {p.unit} as the user set.")


# --- serving and other machines ----------------------------------------------------------

def serving_view(serving: pd.DataFrame) -> pd.DataFrame:
    """Per deploy record: what was served, its test top-1, throughput and latency, and a million predictions' cost."""
    if serving.empty:
        return pd.DataFrame()
    cur = unit(currency_of(serving))
    frame = serving.assign(served=serving["backend"] + " " + serving["precision"])
    frame = frame.set_index(["model", "served"] if frame["dataset"].nunique() == 1 else ["dataset", "model", "served"])
    view = table(frame[["throughput (pred/s)", "p50 latency c=1 (ms)"]].rename(columns={
        "throughput (pred/s)": "predictions/s", "p50 latency c=1 (ms)": "median latency, one client (ms)"}))
    view.insert(0, "test top-1 (%)", frame["test top-1"].map(percent))
    view[f"per million predictions{cur}"] = money(frame["cost per million predictions"])
    return view


def projection_matrix(projections: pd.DataFrame) -> pd.DataFrame:
    """Runs by machine: the training cost as measured there or projected through a measured speed ratio;
    'not measured' otherwise. Only machines where at least one run's cost is known get a column; empty
    when nothing is projected (each run is then known only where it ran, as the per-run table shows)."""
    if projections.empty or not (projections["status"] == "projected").any():
        return pd.DataFrame()
    known = projections[projections["status"] != NOT_MEASURED]
    d = max(2, decimals_for(known["train_cost"].dropna().tolist(), 2))

    def cell(r):
        if r["status"] == NOT_MEASURED:
            return NOT_MEASURED
        if r["train_cost"] is None or pd.isna(r["train_cost"]):
            return NOT_PRICED
        tag = "" if r["status"] == "measured" else " (projected)"
        return f"{number(r['train_cost'], decimals=d)} {r['currency']}{tag}"

    p = projections[projections["machine"].isin(known["machine"].unique())]
    p = _labels(p.assign(cell=p.apply(cell, axis=1)), ["model", "seed"])
    keys = list(p.index.names)
    return p.reset_index().pivot_table(index=keys, columns="machine", values="cell", aggfunc="first").rename_axis(columns=None)


def measured_machines(projections: pd.DataFrame) -> list[str]:
    """The machines of the price book where some run's training cost was measured (where it ran)."""
    return sorted(set(projections.loc[projections["status"] == "measured", "machine"])) if not projections.empty else []


def unmeasured_machines(projections: pd.DataFrame) -> list[str]:
    """The machines of the price book where no run's training cost is measured or projected."""
    if projections.empty:
        return []
    known = set(projections.loc[projections["status"] != NOT_MEASURED, "machine"])
    return sorted(set(projections["machine"]) - known)


# --- time, AutoML, notes -----------------------------------------------------------------

def time_view(breakdown: pd.DataFrame) -> pd.DataFrame:
    """Machine time per phase, per model (in minutes when the study took under two hours, else hours)."""
    if breakdown.empty:
        return pd.DataFrame()
    scale, unit = time_unit(breakdown)
    frame = breakdown.set_index(["dataset", "model"])[list(PHASES)] * scale
    if frame.index.get_level_values("dataset").nunique() == 1:
        frame = frame.droplevel("dataset")
    return table(frame.rename(columns={p: f"{p} ({unit})" for p in PHASES}), 2)


def time_unit(breakdown: pd.DataFrame) -> tuple[float, str]:
    """(factor from hours, unit name): minutes for a study under two machine-hours, else hours."""
    hours = breakdown[list(PHASES)].fillna(0).to_numpy().sum() if not breakdown.empty else 0
    return (60.0, "min") if hours < 2 else (1.0, "h")


def automl_view(automl: pd.DataFrame) -> pd.DataFrame:
    """Study 000's published rows (system, variant, dataset, accuracy, node-hours, total), with our best
    test top-1 and our cheapest cost to match it where this study ran that dataset."""
    if automl.empty:
        return pd.DataFrame()
    view = automl.rename(columns={"accuracy (published)": "accuracy", "node-hours (published)": "node-hours",
                                  "total (published)": "total"}).set_index(["system", "variant", "dataset"])
    out = table(view[["node-hours"]])
    out.insert(0, "accuracy (%)", view["accuracy"].map(percent))
    out[f"total{unit(currency_of(automl))}"] = money(view["total"])
    if (automl["our runs"] > 0).any():
        ours = view["our runs"] > 0
        out["our best test top-1 (%)"] = [percent(v) if o else "not run here"
                                          for v, o in zip(view["our best test top-1"], ours)]
        costs = pd.to_numeric(view["our cost to match (val)"], errors="coerce")
        d = max(2, decimals_for(costs.dropna().tolist(), 2))
        out["our cost to match it"] = [("not run here" if not o else NOT_REACHED if v == NOT_REACHED
                                        else number(c, decimals=d, missing=NOT_PRICED))
                                       for v, c, o in zip(view["our cost to match (val)"], costs, ours)]
    return out


def notes_markdown(notes: list[str]) -> Text:
    """The tables' notes as a Markdown list (or nothing)."""
    return Text("\n".join(f"- {html.escape(n)}" for n in notes)) if notes else Text("")

