"""Each run's training cost on every vm of the price book: measured where it ran, projected only through
a measured speed ratio, else "not measured".

A ratio between two machines is measured when the results hold runs of the same model and parameters
(seed and execution settings aside) on both. Nothing is extrapolated from specifications.
"""
from __future__ import annotations

import json
from collections import defaultdict
from statistics import median

import pandas as pd

from studylib.record import TrainRecord
from studylib.stages.cost.machines import Machines, record_label
from studylib.stages.cost.measures import priced
from studylib.stages.cost.readers import seed_of

NOT_MEASURED = "not measured"
# Parameters that change where or how fast a run trains, not what it trains: two runs that differ
# only in these measure the same work, so their speed ratio is a ratio between machines.
EXECUTION_PARAMS = {"device", "amp", "channels_last", "compile", "profile", "output_dir", "root", "seed"}
COLUMNS = ["run_id", "dataset", "model", "seed", "machine", "price per hour", "currency", "status", "ratio",
           "evidence", "train_seconds", "train_cost"]


def run_key(rec: TrainRecord) -> str:
    """What a run trains, independent of where and how fast: its parameters less the execution ones."""
    p = {k: v for k, v in rec.params.items() if k not in EXECUTION_PARAMS}
    return json.dumps(p, sort_keys=True, default=str)


def epoch_seconds(rec: TrainRecord) -> float | None:
    """Median wall seconds of one epoch (training steps plus validation pass)."""
    if not rec.history:
        return None
    return median(e.seconds + e.val_seconds for e in rec.history)


def projections_table(trains: list[TrainRecord], machines: Machines) -> pd.DataFrame:
    """One row per run and vm entry: its training cost there, with the status and the evidence."""
    label_of = {r.run_id: record_label(r) for r in trains}
    entry_of_label = {label: machines.entry(label) for label in set(label_of.values())}
    # median epoch seconds per (what was trained, hardware)
    speed: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in trains:
        s = epoch_seconds(r)
        if s:
            speed[(run_key(r), label_of[r.run_id])].append(s)
    rows = []
    for r in trains:
        here = label_of[r.run_id]
        mine = entry_of_label[here]
        key = run_key(r)
        for name, p in machines.book.vms().items():
            row = {"run_id": r.run_id, "dataset": r.dataset, "model": r.model, "seed": seed_of(r),
                   "machine": name, "price per hour": p.price, "currency": p.currency}
            if name == mine:
                row.update(status="measured", ratio=1.0, evidence=f"ran on {here}", train_seconds=r.train_seconds,
                           train_cost=priced(r.train_seconds, p.price))
                rows.append(row)
                continue
            there = [label for label, m in entry_of_label.items() if m == name and label != here]
            pairs = [(label, speed[(key, label)]) for label in there if speed.get((key, label))]
            if pairs and speed.get((key, here)):
                label, secs_there = pairs[0]
                ratio = median(secs_there) / median(speed[(key, here)])
                secs = r.train_seconds * ratio
                row.update(status="projected", ratio=ratio,
                           evidence=f"{len(secs_there)} run(s) of the same model and parameters on {label} vs "
                                    f"{len(speed[(key, here)])} on {here} (median epoch seconds)",
                           train_seconds=secs, train_cost=priced(secs, p.price))
            else:
                row.update(status=NOT_MEASURED, ratio=None, evidence="no run of the same model and parameters "
                           "on this machine's hardware", train_seconds=None, train_cost=None)
            rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)
