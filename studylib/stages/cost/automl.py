"""Reference study 000's published AutoML rows next to our runs on the same dataset, and what it cost us
to first reach each published accuracy on our validation split."""
from __future__ import annotations

import math
from collections import defaultdict

import pandas as pd

from studylib.record import TrainRecord
from studylib.stages.cost.measures import NOT_REACHED, hours, priced, time_to_accuracy
from studylib.stages.cost.prices import PriceBook
from studylib.stages.cost.readers import seed_of

NOT_RUN = "not run here"


def automl_table(book: PriceBook, trains: list[TrainRecord], runs: pd.DataFrame) -> pd.DataFrame:
    """Study 000's published rows next to our runs on the same dataset, and our cheapest cost to match each accuracy."""
    by_dataset: dict[str, list[TrainRecord]] = defaultdict(list)
    for r in trains:
        by_dataset[r.dataset].append(r)
    cost_of = runs.set_index("run_id") if not runs.empty else None
    rows = []
    for pub in book.published:
        row = {"system": pub.system, "variant": pub.variant, "dataset": pub.dataset, "accuracy (published)": pub.accuracy,
               "node-hours (published)": pub.node_hours, "price per node-hour (published)": pub.price_per_node_hour,
               "total (published)": pub.total_price, "node-hours x price": round(pub.node_hours * pub.price_per_node_hour, 4),
               "currency": pub.currency, "note": pub.note}
        ours = by_dataset.get(pub.dataset, [])
        if not ours:
            row.update({"our runs": 0, "our best test top-1": NOT_RUN, "our best model": NOT_RUN,
                        "our cost to match (val)": NOT_RUN, "our model to match": NOT_RUN, "our time to match (h)": NOT_RUN})
            rows.append(row)
            continue
        best = max(ours, key=lambda r: r.test.top1)
        row.update({"our runs": len(ours), "our best test top-1": best.test.top1, "our best model": best.model})
        matches = []
        for r in ours:
            secs, epoch = time_to_accuracy(r.history, pub.accuracy)
            if secs is None:
                continue
            price = cost_of.loc[r.run_id, "price per hour"] if cost_of is not None else None
            matches.append((priced(secs, price) if price is not None and not pd.isna(price) else math.inf, secs, r, epoch))
        if matches:
            c, secs, r, epoch = min(matches, key=lambda m: (m[0], m[1]))
            row.update({"our cost to match (val)": None if math.isinf(c) else c,
                        "our model to match": f"{r.model} (seed {seed_of(r)}, epoch {epoch})",
                        "our time to match (h)": hours(secs)})
        else:
            row.update({"our cost to match (val)": NOT_REACHED, "our model to match": NOT_REACHED,
                        "our time to match (h)": NOT_REACHED})
        rows.append(row)
    return pd.DataFrame(rows)
