"""Every table of cost.ipynb, from a study's records and the price book: what each run cost per phase,
time and cost to accuracy, serving, other machines, where the time went, and AutoML's published rows.

A run is priced on the machine it ran on. Tuning is the whole search's machine time, charged to the run
it produced; data prep is the dataset's data_prep record, paid once per dataset, else the run's own
tensor-cache build. A stage with no records costs nothing, and a note says so.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import pandas as pd

from studylib.record import DeployRecord, TrainRecord, TuneRecord
from studylib.stages.cost.automl import automl_table
from studylib.stages.cost.machines import NO_PRICE, Machines, check_hardware_prices, host_labels, record_label
from studylib.stages.cost.measures import hours, per_million, priced, time_to_accuracy
from studylib.stages.cost.prices import THIS_MACHINE, PriceBook
from studylib.stages.cost.projections import projections_table
from studylib.stages.cost.readers import (StudyRecords, data_prep_seconds, deploy_latency_ms, deploy_throughput,
                                          latest_per_search, read_records, seed_of, train_cache_seconds)

PHASES = ("data prep", "tuning", "training", "evaluation")
RUN_COLUMNS = ["run_id", "stage", "dataset", "model", "seed", "device", "hardware", "machine", "price per hour",
               "currency", "test top-1", "epochs", "data_prep_seconds", "data_prep_cost", "data prep source",
               "tuning_seconds", "tuning_cost", "tuning source", "training_seconds", "training_cost",
               "evaluation_seconds", "evaluation_cost", "total_seconds", "total_cost"]
TARGET_COLUMNS = ["run_id", "dataset", "model", "seed", "target", "epoch", "seconds", "hours", "cost", "currency",
                  "machine", "recorded seconds"]


@dataclass
class CostTables:
    """The notebook's tables (one DataFrame each) and the notes on what they leave out or assume."""
    machines: pd.DataFrame
    runs: pd.DataFrame
    targets: pd.DataFrame
    cheapest: pd.DataFrame
    serving: pd.DataFrame
    projections: pd.DataFrame
    breakdown: pd.DataFrame
    costs: pd.DataFrame
    automl: pd.DataFrame
    notes: list[str]


def cost_tables(records: list[dict], book: PriceBook, this_machine: list[str] | None = None,
                hardware_prices: dict | None = None) -> CostTables:
    """Every table of cost.ipynb from the study's records (all stages; missing stages cost 0 and say so)."""
    machines = Machines(book, host_labels() if this_machine is None else list(this_machine), dict(hardware_prices or {}))
    check_hardware_prices(machines.hardware_prices, book)
    study = read_records(records)
    tunes, superseded = latest_per_search(study.tunes)
    notes = stage_notes(study, tunes, superseded)
    runs, targets = run_tables(study, tunes, machines, notes)
    return CostTables(
        machines=machines_table(study, machines),
        runs=runs, targets=targets, cheapest=cheapest_to_target(targets),
        serving=serving_table(study.deploys, study.trains, machines, notes),
        projections=projections_table(study.trains, machines),
        breakdown=time_breakdown(runs), costs=cost_breakdown(runs),
        automl=automl_table(book, study.trains, runs),
        notes=notes,
    )


def stage_notes(study: StudyRecords, tunes: list[TuneRecord], superseded: list[str]) -> list[str]:
    """What the tables leave out or assume: failed runs, superseded searches, stages with no records."""
    notes = []
    if study.failed_trains:
        notes.append(f"{study.failed_trains} failed train run(s) have no timings and are not priced.")
    if superseded:
        notes.append(f"{len(superseded)} earlier tune record(s) of a search that has a later one are not priced "
                     f"({', '.join(superseded)}): the latest record's tuning time covers every trial of the search.")
    if not tunes:
        notes.append("No tune records: tuning cost is 0 for every run (no run was tuned).")
    if not study.deploys:
        notes.append("No deploy records: no serving cost or serving latency.")
    if not study.preps:
        notes.append("No data_prep records: data-prep time is what each train run spent building its own "
                     "tensor cache (0 when the cache was already warm).")
    return notes


def machines_table(study: StudyRecords, machines: Machines) -> pd.DataFrame:
    """Every hardware label in the records, with the price entry it is priced at and how many runs ran on it."""
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in study.with_hardware():
        counts[record_label(r)][r.stage] += 1
    rows = []
    for label, by_stage in sorted(counts.items()):
        entry = machines.entry(label)
        price, currency = machines.book.price_of(entry)
        rows.append({"hardware": label, "priced as": entry or NO_PRICE, "price per hour": price, "currency": currency,
                     **{f"{s} records": by_stage.get(s, 0) for s in ("train", "tune", "deploy", "data_prep")}})
    return pd.DataFrame(rows, columns=["hardware", "priced as", "price per hour", "currency", "train records",
                                       "tune records", "deploy records", "data_prep records"])


def phase_costs(parts: dict[str, list[tuple]], book: PriceBook) -> tuple[dict, list[str]]:
    """Seconds and cost per phase from (seconds, machine) items, and the total when every part is priced
    in one currency (a phase whose parts are priced in two currencies has no cost, and so no total). A part with unknown seconds makes its phase unknown (None) and is named in the notes."""
    out, missing, total_c, complete, currencies = {}, [], 0.0, True, set()
    total_s = 0.0
    for phase, items in parts.items():
        key = phase.replace(" ", "_")
        if any(s is None for s, _ in items):
            out[f"{key}_seconds"] = out[f"{key}_cost"] = None
            missing.append(phase)
            complete = False
            continue
        secs, cost, phase_currencies = sum(s for s, _ in items), 0.0, set()
        for s, m in items:
            p, c = book.price_of(m)
            if p is None:
                cost = None
                break
            phase_currencies.add(c)
            cost += priced(s, p)
        if len(phase_currencies) > 1:   # dollars and euros do not add up: the phase has no cost
            cost = None
        currencies |= phase_currencies
        out[f"{key}_seconds"], out[f"{key}_cost"] = secs, cost
        total_s += secs
        if cost is None:
            complete = False
        else:
            total_c += cost
    out["total_seconds"] = total_s
    out["total_cost"] = total_c if complete and len(currencies) <= 1 else None
    return out, missing


def run_tables(study: StudyRecords, tunes: list[TuneRecord], machines: Machines,
               notes: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One priced row per successful train run (and per tuned run with no train record here), and its
    time and cost to each val top-1 target."""
    book = machines.book
    prep_by_dataset = defaultdict(list)
    for r in study.preps:
        prep_by_dataset[r.dataset].append(r)
    # tuning is charged to the run it produced (the tuned run); a tune record naming no run
    # is charged to every run of its dataset and model
    tune_for_run: dict[str, list[TuneRecord]] = defaultdict(list)
    tune_by_model: dict[tuple, list[TuneRecord]] = defaultdict(list)
    for t in tunes:
        if t.tuned_run_id:
            tune_for_run[t.tuned_run_id].append(t)
        else:
            tune_by_model[(t.dataset, t.model)].append(t)

    def prep_parts(dataset: str, own_cache_seconds: float, machine: str | None):
        if prep_by_dataset.get(dataset):
            return [(data_prep_seconds(p), machines.entry_of(p, machine)) for p in prep_by_dataset[dataset]], \
                "data_prep record (once per dataset)"
        return [(own_cache_seconds, machine)], "this run's cache build"

    rows, target_rows = [], []
    for r in study.trains:
        label = record_label(r)
        machine = machines.entry(label)
        price, currency = book.price_of(machine)
        prep, prep_source = prep_parts(r.dataset, train_cache_seconds(r), machine)
        tune_recs = tune_for_run.get(r.run_id, []) + tune_by_model.get((r.dataset, r.model), [])
        parts = {"data prep": prep,
                 "tuning": [(t.tuning_seconds, machines.entry_of(t, machine)) for t in tune_recs],
                 "training": [(r.train_seconds, machine)],
                 "evaluation": [(r.eval_seconds, machine)]}
        costs, missing = phase_costs(parts, book)
        notes += [f"{r.run_id}: its {ph} time is unknown, so its {ph} and total cost are left empty." for ph in missing]
        rows.append({"run_id": r.run_id, "stage": "train", "dataset": r.dataset, "model": r.model,
                     "seed": seed_of(r), "device": r.device, "hardware": label,
                     "machine": machine or NO_PRICE, "price per hour": price, "currency": currency,
                     "test top-1": r.test.top1, "epochs": len(r.history),
                     "data prep source": prep_source,
                     "tuning source": ", ".join(t.run_id for t in tune_recs) if tune_recs else "not tuned",
                     **costs})
        for t, recorded in sorted(r.time_to_target.items(), key=lambda kv: float(kv[0])):
            secs, epoch = time_to_accuracy(r.history, float(t))
            target_rows.append({"run_id": r.run_id, "dataset": r.dataset, "model": r.model, "seed": seed_of(r),
                                "target": float(t), "epoch": epoch, "seconds": secs, "hours": hours(secs),
                                "cost": priced(secs, price), "currency": currency, "machine": machine or NO_PRICE,
                                "recorded seconds": recorded})

    # a tuned run that is not among the train records gets its row from the tune record
    train_ids = {r.run_id for r in study.trains}
    for rid, ts in tune_for_run.items():
        if rid in train_ids:
            continue
        t = ts[-1]
        label = record_label(t) if t.hardware else None
        machine = machines.entry_of(t, THIS_MACHINE)
        price, currency = book.price_of(machine)
        retrain = None if t.tuned_reused else t.retrain_seconds
        prep, prep_source = prep_parts(t.dataset, 0.0, machine)
        parts = {"data prep": prep, "tuning": [(x.tuning_seconds, machines.entry_of(x, machine)) for x in ts],
                 "training": [(retrain, machine)]}
        # its test pass is not timed in the tune record: evaluation counts 0 here, and a note says so
        parts["evaluation"] = [(0.0, machine)]
        costs, missing = phase_costs(parts, book)
        if missing:
            notes.append(f"{rid}: the tuned run was trained by an earlier tune process and its train record is not "
                         "in the results, so its training cost is left empty.")
        notes.append(f"{rid}: the tuned run was trained by its tune notebook, whose record does not time its test "
                     "pass, so its evaluation counts 0.")
        rows.append({"run_id": rid, "stage": "tune", "dataset": t.dataset, "model": t.model,
                     "seed": seed_of(t), "device": t.device, "hardware": label or "unknown",
                     "machine": machine or NO_PRICE, "price per hour": price, "currency": currency,
                     "test top-1": t.tuned_test_top1, "epochs": t.epochs,
                     "data prep source": prep_source, "tuning source": ", ".join(x.run_id for x in ts), **costs})
    return pd.DataFrame(rows, columns=RUN_COLUMNS), pd.DataFrame(target_rows, columns=TARGET_COLUMNS)


def cheapest_to_target(targets: pd.DataFrame) -> pd.DataFrame:
    """DAWNBench's leaderboard: per dataset and target, the run that got there for the least (then fastest)."""
    reached = targets.dropna(subset=["seconds"])
    cols = ["dataset", "target", "model", "seed", "run_id", "epoch", "seconds", "cost", "currency", "machine", "runs reaching it"]
    if reached.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for (ds, t), g in reached.groupby(["dataset", "target"]):
        g = g.assign(_c=g["cost"].fillna(math.inf)).sort_values(["_c", "seconds"])
        best = g.iloc[0]
        rows.append({**{c: best[c] for c in cols[:-1] if c in best}, "dataset": ds, "target": t, "runs reaching it": len(g)})
    return pd.DataFrame(rows, columns=cols)


def serving_table(deploys: list[DeployRecord], trains: list[TrainRecord], machines: Machines,
                  notes: list[str]) -> pd.DataFrame:
    """Per deploy record: the served model's test top-1, best HTTP throughput, p50 latency at concurrency 1,
    and the cost of a million predictions on the machine that served them."""
    by_id = {r.run_id: r for r in trains}
    rows = []
    for d in deploys:
        train = by_id.get(d.train_run_id)
        if d.hardware:
            label = record_label(d)
        else:
            label = machines.this_machine[0] if machines.this_machine else None
            notes.append(f"{d.run_id}: the deploy record names no hardware; it is priced as this machine.")
        machine = machines.entry(label) if label else None
        price, currency = machines.book.price_of(machine)
        throughput = deploy_throughput(d)
        rows.append({"deploy run": d.run_id, "train run": d.train_run_id,
                     "dataset": train.dataset if train else d.dataset, "model": train.model if train else d.model,
                     "backend": d.backend, "precision": d.precision,
                     # the accuracy of what was served: an int8 model may differ from the trained one
                     "test top-1": d.served_top1,
                     "hardware": label, "machine": machine or NO_PRICE, "price per hour": price, "currency": currency,
                     "throughput (pred/s)": throughput, "p50 latency c=1 (ms)": deploy_latency_ms(d),
                     "cost per million predictions": per_million(price, throughput)})
    return pd.DataFrame(rows, columns=["deploy run", "train run", "dataset", "model", "backend", "precision", "test top-1",
                                       "hardware", "machine",
                                       "price per hour", "currency", "throughput (pred/s)", "p50 latency c=1 (ms)",
                                       "cost per million predictions"])


def time_breakdown(runs: pd.DataFrame) -> pd.DataFrame:
    """Hours per phase, per dataset and model (seeds summed); each tune search and each dataset's data prep
    counted once, however many rows they are charged to."""
    return phase_breakdown(runs, "seconds")


def cost_breakdown(runs: pd.DataFrame) -> pd.DataFrame:
    """What `time_breakdown` counts, priced: cost per phase, per dataset and model, in each run's currency
    (a `currency` column); a phase with an unpriced part is empty (NaN)."""
    return phase_breakdown(runs, "cost")


def phase_breakdown(runs: pd.DataFrame, what: str) -> pd.DataFrame:
    """Per dataset and model, the runs' `<phase>_<what>` summed over seeds ("seconds" come back as hours);
    a dataset's data prep is one row of its own, paid once; each tune search is counted once."""
    cols = ["dataset", "model", *PHASES] + (["currency"] if what == "cost" else [])
    if runs.empty:
        return pd.DataFrame(columns=cols)
    unit = hours if what == "seconds" else (lambda x: x)

    def total(values: pd.Series):
        return None if values.isna().any() else unit(float(values.sum()))

    rows = []
    for ds, g in runs.groupby("dataset", sort=True):
        currency = {"currency": "/".join(sorted(g["currency"].dropna().unique()))} if what == "cost" else {}
        # a dataset's data prep is paid once: its data_prep records', or every run's own cache build
        once = g["data prep source"].str.startswith("data_prep record")
        prep = g.loc[once, f"data_prep_{what}"].max() if once.all() else total(g[f"data_prep_{what}"])
        rows.append({"dataset": ds, "model": "(data prep, once per dataset)",
                     "data prep": None if prep is None or pd.isna(prep) else unit(prep),
                     "tuning": 0.0, "training": 0.0, "evaluation": 0.0, **currency})
        for model, m in g.groupby("model", sort=True):
            tuned = m[m["tuning source"] != "not tuned"].drop_duplicates("tuning source")
            rows.append({"dataset": ds, "model": model, "data prep": 0.0, "tuning": total(tuned[f"tuning_{what}"]),
                         "training": total(m[f"training_{what}"]), "evaluation": total(m[f"evaluation_{what}"]),
                         **currency})
    return pd.DataFrame(rows, columns=cols)
