"""The cost record: every table of the notebook as the CostRecord it glues for `studylib collect`."""
from __future__ import annotations

import json

import pandas as pd

from studylib.record import CostRecord
from studylib.stages.cost.prices import PriceBook
from studylib.stages.cost.tables import CostTables


def json_rows(frame: pd.DataFrame) -> list[dict]:
    """A frame as JSON-ready rows: NaN becomes null."""
    if frame is None or frame.empty:
        return []
    return json.loads(frame.reset_index(drop=frame.index.name is None).to_json(orient="records", date_format="iso"))


def cost_record(run_id: str, params: dict, study: str, book: PriceBook, tables: CostTables, this_machine: list[str]) -> dict:
    """The record cost.ipynb glues: the prices used and every table as JSON rows, validated as a CostRecord."""
    return CostRecord(
        run_id=run_id, params=params, study=study,
        prices={k: p.model_dump(mode="json") for k, p in book.prices.items()},
        this_machine=this_machine,
        machines=json_rows(tables.machines), runs=json_rows(tables.runs), targets=json_rows(tables.targets),
        cheapest=json_rows(tables.cheapest), serving=json_rows(tables.serving),
        projections=json_rows(tables.projections), time_breakdown=json_rows(tables.breakdown),
        automl=json_rows(tables.automl), published_source=book.published_source, notes=tables.notes,
    ).model_dump(mode="json")
