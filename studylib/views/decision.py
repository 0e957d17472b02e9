"""The decision page (decision.ipynb): which model to pick, per dataset, from the study's records only.

Per model (a group of seeds, as in the results chapter): test top-1 with its 95% interval and its paired
difference from the best (studylib.uncertainty); its serving numbers from the deploy records (ONNX
Runtime, batch 1, on the deploy machine's CPU: DeployRecord.models); its size (the train record's fp32
weights); its training cost from the cost record (training minutes where the cost stage did not run or
left a run unpriced). From these: the Pareto fronts, four recommendations as sentences with their
numbers, and what would change the answer, each claim read from a record or said to be not measured.
An input that is missing (no deploy, no cost, no test predictions) becomes a sentence, never an error.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import matplotlib.pyplot as plt
import matplotlib.ticker as ticker
import pandas as pd

from studylib.record import CostRecord, ModelServing
from studylib.stages.cost.measures import pareto_front
from studylib.stages.cost.readers import read_records
from studylib.stages.cost.tables import cheapest_to_target
from studylib.views.format import doc_link, percent, points
from studylib.views.results import accuracy_comparison, legend_below, place_labels, verdict

SERVING = ["latency_ms", "throughput", "batch_size", "fp32_mb", "int8_mb", "fp32_top1", "int8_top1"]
TARGET_COLUMNS = ["run_id", "dataset", "model", "seed", "target", "epoch", "seconds", "cost", "currency", "machine"]


@dataclass
class Decision:
    """One dataset's answer: the models table, the picks and their sentences, what would change them."""
    dataset: str
    models: pd.DataFrame                     # accuracy_comparison's columns + size, serving, training cost
    cost_column: str                         # "train_cost" (priced) or "train_minutes"
    currency: str | None
    picks: dict[str, str | None] = field(default_factory=dict)        # kind -> model label
    sentences: dict[str, str] = field(default_factory=dict)           # kind -> sentence
    changes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def latest_cost(records: list[dict]) -> tuple[CostRecord | None, dict | None]:
    """The study's last successful cost record, typed, and the raw record (for its notebook)."""
    raw = [r for r in records if r.get("stage") == "cost" and r.get("status", "ok") == "ok"]
    return (CostRecord.model_validate(raw[-1]), raw[-1]) if raw else (None, None)


def serving_by_run(records: list[dict]) -> dict[str, ModelServing]:
    """Each measured train run's ONNX Runtime numbers from the deploy records (the last deploy wins)."""
    out = {}
    for d in read_records(records).deploys:
        out.update({m.run_id: m for m in d.models})
    return out


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and not pd.isna(v)]
    return sum(values) / len(values) if values else None


def models_table(runs: pd.DataFrame, records: list[dict], dataset: str) -> tuple[pd.DataFrame, list[str], str | None]:
    """accuracy_comparison's rows with each model's size (MB), serving numbers, training minutes and cost
    (means over its runs that have them). Returns the table, notes, and the training cost's currency."""
    table, notes = accuracy_comparison(runs, records, dataset)
    if table.empty:
        return table, notes, None
    trains = {r.run_id: r for r in read_records(records).trains}
    serving = serving_by_run(records)
    cost, _ = latest_cost(records)
    priced = {row["run_id"]: row for row in (cost.runs if cost else []) if row.get("training_cost") is not None}
    currencies = {row.get("currency") for row in priced.values()}
    extra = []
    for ids in table.run_ids:
        served = [serving[i] for i in ids if i in serving]
        extra.append({"size_mb": _mean(trains[i].size_mb for i in ids if i in trains),
                      "epochs": _mean(len(trains[i].history) for i in ids if i in trains),
                      "train_minutes": _mean(trains[i].train_seconds / 60 for i in ids if i in trains),
                      "train_cost": _mean(priced[i]["training_cost"] for i in ids if i in priced)
                      if all(i in priced for i in ids) else None,
                      **{k: _mean(getattr(s, k) for s in served) for k in SERVING}})
    extra = pd.DataFrame(extra, index=table.index)
    # a grouping setting of the same name (epochs, batch_size) is in the label already: the measured value wins
    table = pd.concat([table.drop(columns=[c for c in extra.columns if c in table.columns]), extra], axis=1)
    return table, notes, (currencies.pop() if len(currencies) == 1 else None)


def targets_frame(records: list[dict], dataset: str) -> pd.DataFrame:
    """Time (and cost) to each val top-1 target per run: the cost record's rows, else the train records'."""
    cost, _ = latest_cost(records)
    if cost and cost.targets:
        t = pd.DataFrame(cost.targets)
    else:
        t = pd.DataFrame([{"run_id": r.run_id, "dataset": r.dataset, "model": r.model, "seed": r.params.get("seed"),
                           "target": float(k), "epoch": r.epoch_to_target.get(k), "seconds": s, "cost": None,
                           "currency": None, "machine": None}
                          for r in read_records(records).trains for k, s in r.time_to_target.items()],
                         columns=TARGET_COLUMNS)
    return t[t["dataset"] == dataset] if not t.empty else t


def decide(runs: pd.DataFrame, records: list[dict], dataset: str) -> Decision:
    """The dataset's models table, the four picks with their sentences, and what would change them."""
    table, notes, currency = models_table(runs, records, dataset)
    priced = not table.empty and table["train_cost"].notna().all()
    d = Decision(dataset, table, "train_cost" if priced else "train_minutes", currency if priced else None, notes=notes)
    if table.empty:
        d.sentences["most_accurate"] = f"No training run on {dataset} finished, so there is nothing to recommend."
        return d
    best = table.iloc[0]
    has_intervals = table["top1_low"].notna().any()
    near = table[table.within_noise.eq(True)] if has_intervals else table.iloc[:1]
    d.picks["most_accurate"] = best.label
    d.sentences["most_accurate"] = most_accurate_sentence(best, near)
    if not has_intervals:
        d.notes.append("No run of this dataset recorded its test predictions, so no interval was computed and "
                       "'within noise of the best' means the best model alone.")
    d.picks["fastest"], d.sentences["fastest"] = fastest_sentence(best, near, table)
    d.picks["smallest"], d.sentences["smallest"] = smallest_sentence(best, near)
    d.picks["cheapest"], d.sentences["cheapest"] = cheapest_sentence(targets_frame(records, dataset), table, records)
    d.changes = what_would_change(d, records)
    return d


def _interval(row) -> str:
    if pd.isna(row.top1_low):
        return "no interval: no test predictions recorded"
    return f"95% interval {percent(row.top1_low)}–{percent(row.top1_high)}%, {int(row.seeds)} seed(s) × {int(row.images)} test images"


def _versus(row) -> str:
    if row.best:
        return "the most accurate model itself"
    return f"test top-1 {percent(row.top1)}%, {points(row['diff'])} points from the best (95% interval " \
           f"{points(row.diff_low)} to {points(row.diff_high)})"


def most_accurate_sentence(best, near: pd.DataFrame) -> str:
    others = [m for m in near.label if m != best.label]
    text = f"**Most accurate: {best.label}**, test top-1 {percent(best.top1)}% ({_interval(best)})."
    if others:
        text += f" Within noise of it: {', '.join(others)}."
    elif not pd.isna(best.top1_low):
        text += " Every other model is below it beyond noise."
    return text


def fastest_sentence(best, near: pd.DataFrame, table: pd.DataFrame) -> tuple[str | None, str]:
    timed = near.dropna(subset=["latency_ms"])
    if timed.empty:
        why = ("no deploy record lists ONNX Runtime numbers for these models" if table["latency_ms"].isna().all()
               else "no model within noise of the best has a serving measurement")
        return None, f"**Fastest to serve within noise of the best**: not measured ({why})."
    pick = timed.sort_values("latency_ms", kind="stable").iloc[0]
    text = (f"**Fastest to serve within noise of the best: {pick.label}**, {pick.latency_ms:.1f} ms per image at "
            f"batch 1 with ONNX Runtime on the study's CPU ({pick.throughput:.0f} images/s at batch {int(pick.batch_size)}); "
            f"{_versus(pick)}.")
    if not pick.best and not pd.isna(best.latency_ms):
        text += f" The most accurate model takes {best.latency_ms:.1f} ms."
    return pick.label, text


def smallest_sentence(best, near: pd.DataFrame) -> tuple[str | None, str]:
    sized = near.dropna(subset=["size_mb"])
    if sized.empty:
        return None, "**Smallest within noise of the best**: not measured."
    pick = sized.sort_values("size_mb", kind="stable").iloc[0]
    text = f"**Smallest within noise of the best: {pick.label}**, {pick.size_mb:.1f} MB of fp32 weights; {_versus(pick)}."
    if not pd.isna(pick.int8_mb) and not pd.isna(pick.int8_top1):
        text += (f" Quantised to int8 it takes {pick.int8_mb:.1f} MB and scores {percent(pick.int8_top1)}% test top-1 "
                 f"(fp32 ONNX: {percent(pick.fp32_top1)}%).")
    return pick.label, text


def cheapest_sentence(targets: pd.DataFrame, table: pd.DataFrame, records: list[dict]) -> tuple[str | None, str]:
    cheapest = cheapest_to_target(targets) if not targets.empty else pd.DataFrame()
    if cheapest.empty:
        return None, "**Cheapest to train to a target**: no run reached any validation target."
    row = cheapest.sort_values("target").iloc[-1]
    label = next((lab for lab, ids in zip(table.label, table.run_ids) if row.run_id in ids), row.model)
    runs = targets["run_id"].nunique()
    money = (f"{row.cost:.4f} {row.currency} on {row.machine}" if not pd.isna(row.cost) else
             "not priced (" + ("the cost stage did not run" if latest_cost(records)[0] is None
                               else f"no price for {row.machine}") + ")")
    return label, (f"**Cheapest to train to validation top-1 ≥ {row.target:g}** (the highest target any run reached; "
                   f"{int(row['runs reaching it'])} of {runs} runs reached it): **{label}** (seed {row.seed}), "
                   f"{row.seconds / 60:.1f} minutes of training to epoch {int(row.epoch)}, {money}.")


def what_would_change(d: Decision, records: list[dict]) -> list[str]:
    """Sentences on what could change the picks: each read from the records, or labelled not measured here."""
    t, out = d.models, []
    study = read_records(records)
    trains = [r for r in study.trains if r.dataset == d.dataset]
    near = t[t.within_noise.eq(True) & ~t.best.eq(True)]
    if len(near):
        out.append(f"**More seeds or a larger test split.** {len(near)} model(s) are within noise of {t.iloc[0].label}; "
                   f"with {seeds_range(t.seeds)} per model and {int(t.images.max())} test "
                   "images, these runs cannot order them, and more of either would narrow the intervals.")
    if t.seeds.max() == 1:
        out.append("Every model ran one seed, so its interval covers the test images only: it is too narrow by "
                   "the seed-to-seed spread, which this study did not measure.")
    rising = [(r.label, r.gain, int(r.epochs)) for r in last_epoch_gains(t, trains).itertuples() if r.gain > 0.01]
    if rising:
        out.append("**More epochs.** Validation top-1 was still rising in the last epoch: " + "; ".join(
            f"{m} by {100 * g:.1f} points at epoch {e}" for m, g, e in rising) + ". What more epochs change is not "
            "measured here.")
    if t["epochs"].nunique() > 1:
        out.append("The models did not train for the same number of epochs (" + ", ".join(
            f"{m}: {e:.0f}" for m, e in zip(t.label, t.epochs)) + "), so the ranking compares budgets as well as models.")
    starts = {r.pretrained if isinstance(r.pretrained, bool) else "run" for r in trains}   # a string: a source run
    if starts == {False}:
        out.append("**Pretrained weights.** Every run trained from random initialisation; what pretrained weights "
                   "would change is not measured here (the study `transfer`, `make transfer`, fine-tunes weights "
                   "pretrained on CIFAR-10; a grid with `pretrained: true` measures ImageNet weights).")
    elif starts == {True}:
        out.append("**Training from scratch.** Every run fine-tuned pretrained weights; training from random "
                   "initialisation is not measured here.")
    elif "run" in starts:
        out.append("**Pretraining.** Some of these runs fine-tuned weights that another run of this study trained; "
                   "the chapter 'Does pretraining help?' compares them with training from scratch.")
    out.append(gpu_sentence(trains, records))
    for tune in (x for x in study.tunes if x.dataset == d.dataset):
        raw = next((r for r in records if r.get("run_id") == tune.run_id), None)
        out.append(f"**Tuning.** A search of {tune.n_trials} trials for {tune.model} changed its test top-1 by "
                   f"{points(tune.test_gain)} points against the default hyperparameters "
                   f"({doc_link('tuning chapter', raw)}); the other models kept the grid's hyperparameters.")
    return out


def seeds_range(seeds: pd.Series) -> str:
    """'1 seed', '3 seeds' or '1–3 seeds'."""
    lo, hi = int(seeds.min()), int(seeds.max())
    return f"{hi} seed{'s' * (hi > 1)}" if lo == hi else f"{lo}–{hi} seeds"


def last_epoch_gains(t: pd.DataFrame, trains: list) -> pd.DataFrame:
    """Per model: the mean over its runs of the last epoch's change in validation top-1, and its epochs."""
    by_id = {r.run_id: r for r in trains}
    rows = []
    for label, ids, epochs in zip(t.label, t.run_ids, t.epochs):
        gains = [by_id[i].history[-1].val_top1 - by_id[i].history[-2].val_top1
                 for i in ids if i in by_id and len(by_id[i].history) > 1]
        if gains:
            rows.append({"label": label, "gain": sum(gains) / len(gains), "epochs": epochs})
    return pd.DataFrame(rows, columns=["label", "gain", "epochs"])


def gpu_sentence(trains: list, records: list[dict]) -> str:
    """What a GPU would change: measured where runs used one, or the cost chapter's projections, or not measured."""
    gpus = sorted({r.hardware.get("gpu_name") for r in trains if r.device.startswith("cuda") and r.hardware.get("gpu_name")})
    cost, raw = latest_cost(records)
    chapter = doc_link("cost chapter", raw) if cost else "cost chapter (not run for this study)"
    if gpus:
        return f"**A GPU.** Runs on {', '.join(gpus)} are in this study; the {chapter} compares their cost per run."
    cpus = sorted({r.hardware.get("cpu_model") or "unknown CPU" for r in trains})
    gpu_vms = {k for k, p in (cost.prices if cost else {}).items() if p.get("gpu") and p.get("kind") == "vm"}
    ids = {r.run_id for r in trains}
    rows = [p for p in (cost.projections if cost else []) if p.get("run_id") in ids and p.get("machine") in gpu_vms]
    projected = sorted({p["machine"] for p in rows if p.get("status") == "projected"})
    if projected:
        return (f"**A GPU.** Every run trained on the CPU ({', '.join(cpus)}); the {chapter} projects them onto "
                f"{', '.join(projected)} through a measured speed ratio.")
    return (f"**A GPU.** Every run trained on the CPU ({', '.join(cpus)}); no run of the same settings ran on a GPU, "
            f"so what a GPU would change (training time and cost, and with them the cheapest pick) is not measured "
            f"here: the {chapter} lists each GPU machine's cost as not measured.")


def scope_sentence(study: str, datasets: list[str], records: list[dict]) -> str:
    """What the page read: the study, its datasets, and which stages' records it found."""
    ok = [r for r in records if r.get("status", "ok") == "ok"]
    count = {s: sum(r.get("stage") == s for r in ok) for s in ("train", "deploy", "cost")}
    served = len(serving_by_run(records))
    return (f"This page reads study *{study}*: {len(datasets)} dataset(s) ({', '.join(datasets) or 'none'}), "
            f"{count['train']} successful training run(s), {count['deploy']} deploy record(s) with serving numbers "
            f"for {served} run(s), and " + ("a cost record." if count["cost"] else
                                             "no cost record (training minutes stand in for training cost)."))


def not_measured(d: Decision, axis: str) -> str:
    """The sentence shown instead of a Pareto figure whose axis no model has measured."""
    what = {"latency_ms": "serving latency: no deploy record of this study lists ONNX Runtime numbers for these "
                          "models (the deploy stage measures them)",
            "size_mb": "model size: no train record gives it"}.get(axis, "training cost: no run has it")
    return f"**{d.dataset}**, accuracy against {what}."


def summary_table(d: Decision) -> pd.DataFrame:
    """The decision's models as the book shows them: accuracy, verdict, latency, size and training cost or time."""
    t = d.models
    if t.empty:
        return t
    cost_heading = f"training cost ({d.currency})" if d.cost_column == "train_cost" else "training (min)"
    fmt = (lambda v: f"{v:.4f}") if d.cost_column == "train_cost" else (lambda v: f"{v:.1f}")
    return pd.DataFrame({
        "model": t.label, "test top-1 (%)": t.top1.map(percent),
        "95% interval (%)": [f"{percent(lo)} – {percent(hi)}" if not pd.isna(lo) else "—" for lo, hi in zip(t.top1_low, t.top1_high)],
        "compared with the best": t.apply(verdict, axis=1),
        "latency, batch 1 (ms)": t.latency_ms.map(lambda v: "not measured" if pd.isna(v) else f"{v:.1f}"),
        "size (MB)": t.size_mb.map(lambda v: "—" if pd.isna(v) else f"{v:.1f}"),
        cost_heading: t[d.cost_column].map(lambda v: "—" if pd.isna(v) else fmt(v)),
    })


AXES = {"latency_ms": ("serving latency, batch 1, ONNX Runtime (ms)", "accuracy against serving latency"),
        "size_mb": ("model size, fp32 weights (MB)", "accuracy against model size")}


def pareto_figure(d: Decision, x: str):
    """Test top-1 (bar: 95% interval) against one cost, a point per model, the Pareto front drawn; None when
    no model has that cost measured."""
    xlabel, title = AXES.get(x, (f"training cost ({d.currency})" if x == "train_cost" else "training time (minutes)",
                                 "accuracy against training cost" if x == "train_cost" else "accuracy against training time"))
    t = d.models.dropna(subset=[x]) if not d.models.empty else d.models
    if t.empty:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.6))
    front = pareto_front(t, x, "top1")
    y = 100 * t.top1
    err = [100 * (t.top1 - t.top1_low).fillna(0), 100 * (t.top1_high - t.top1).fillna(0)]
    f = t[front].sort_values(x)
    ax.step(f[x], 100 * f.top1, where="post", color="C3", lw=1.5, zorder=1)
    ax.scatter(f[x], 100 * f.top1, s=160, facecolors="none", edgecolors="C3", lw=1.5, zorder=3,
               label="on the Pareto front (red line)")
    for mask, style in ((t.best.eq(True), {"fmt": "*", "ms": 12, "color": "C1", "label": "most accurate"}),
                        (t.within_noise.eq(True) & ~t.best.eq(True), {"fmt": "o", "color": "C0", "label": "within noise of it"}),
                        (~t.within_noise.eq(True), {"fmt": "o", "color": "0.6", "label": "below it beyond noise"})):
        if mask.any():
            ax.errorbar(t[x][mask], y[mask], yerr=[e[mask] for e in err], capsize=3, lw=1, **style)
    if t[x].min() > 0 and t[x].max() > 10 * t[x].min():
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set(xlabel=xlabel, ylabel="test top-1 (%)", title=f"{d.dataset}: {title}")
    ax.grid(alpha=0.3)
    legend_below(fig, [ax])
    place_labels(ax, t[x].tolist(), y.tolist(), t.label.tolist())
    return fig
