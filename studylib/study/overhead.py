"""Where an executed notebook's wall time went: kernel start-up, setup, training and evaluation, the rest.

The methods chapter's runner-overhead table, and `studylib bench --overhead STUDY`: papermill's
clocks (read by studylib.study.execute) set against the seconds each record timed for its work.
"""
from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Optional

import pandas as pd

from studylib.paths import book_dir
from studylib.study.collect import load_records
from studylib.study.execute import cell_clocks, glued_record, timing

COLUMNS = ["notebook", "run_id", "stage", "status", "wall_seconds", "notebook_seconds", "startup_seconds",
           "setup_seconds", "work_seconds", "after_seconds", "other_seconds", "work_share"]
SUMMED = ["wall_seconds", "startup_seconds", "setup_seconds", "work_seconds", "after_seconds", "other_seconds"]


def work_seconds(record: dict) -> float:
    """Seconds a stage's record spent training and evaluating (0 for stages that do neither)."""
    if not record or record.get("status") != "ok":
        return 0.0
    if record.get("stage") == "train":
        return float(record.get("train_seconds") or 0) + float(record.get("eval_seconds") or 0)
    if record.get("stage") == "tune":  # the trials, and the train runs of the best and default settings
        return sum(float(record.get(k) or 0) for k in ("process_seconds", "retrain_seconds", "default_seconds"))
    return 0.0


def _utc(stamp: str) -> datetime:
    t = datetime.fromisoformat(stamp)
    return t.astimezone(timezone.utc).replace(tzinfo=None) if t.tzinfo else t  # papermill's are naive UTC


def work_cell(cells: list[dict], finished_at: Optional[str]) -> int:
    """Index of the cell that did the work: the one running when the record was finished, else the longest."""
    if finished_at:
        done = _utc(finished_at)
        for i, c in enumerate(cells):
            if c.get("start_time") and c.get("end_time") and _utc(c["start_time"]) <= done <= _utc(c["end_time"]):
                return i
    return max(range(len(cells)), key=lambda i: float(cells[i]["duration"])) if cells else 0


def runner_overhead(notebook_paths: Iterable[str | Path]) -> pd.DataFrame:
    """One row per executed notebook: where its wall time went, from papermill's clocks and its record.

    wall_seconds: the grid runner's clock around papermill when it recorded one, else papermill's
    duration; startup_seconds: papermill's start to the first cell (kernel start-up); setup_seconds:
    the cells before the work cell (the cell running when the record was finished; imports,
    parameter checks) plus that cell's time outside
    training and evaluation (more imports, data from the cache, model building, checkpoint);
    work_seconds: training and evaluation as the record timed them (train: train_seconds +
    eval_seconds); after_seconds: the cells after it (tables, figures, glue); other_seconds: the rest
    (papermill between cells and writing the notebook, the runner). work_share = work / wall.
    Notebooks without papermill's duration (still running, never executed) are left out.
    """
    import nbformat  # lazy: only this report reads notebooks, not the notebooks that import collect

    rows = []
    for path in notebook_paths:
        path = Path(path)
        nb = nbformat.read(path, as_version=4)
        clock = timing(nb)
        if clock["notebook_seconds"] is None:  # still running, or never run by papermill: no clock to read
            continue
        meta = nb.metadata.get("studylib", {})
        # a book page glues no record, but its clocks still count
        record = glued_record(path) or meta.get("record") or {}
        cells = [c for c in cell_clocks(nb) if c.get("duration") is not None]
        notebook_seconds = float(clock["notebook_seconds"])
        wall = float(meta.get("execution", {}).get("wall_seconds") or notebook_seconds)
        startup = clock.get("startup_seconds")
        durations = [float(c["duration"]) for c in cells]
        work = work_seconds(record)
        k = work_cell(cells, record.get("finished_at"))
        setup = sum(durations[:k]) + (durations[k] - work if durations else 0.0)
        after = sum(durations[k + 1:])
        rows.append({
            "notebook": str(path), "run_id": record.get("run_id"),
            "stage": record.get("stage") or meta.get("cell", {}).get("stage"), "status": record.get("status"),
            "wall_seconds": wall, "notebook_seconds": notebook_seconds, "startup_seconds": startup,
            "setup_seconds": setup, "work_seconds": work, "after_seconds": after,
            "other_seconds": wall - (startup or 0.0) - sum(durations),
            "work_share": work / wall if wall else None,
        })
    return pd.DataFrame(rows, columns=COLUMNS)


def overhead_by_stage(frame: pd.DataFrame) -> pd.DataFrame:
    """runner_overhead's rows summed per stage, plus an `all` row: the share of notebook wall time in training and evaluation.

    With one grid worker (the default) the notebooks run one after another, so `all` is the share
    of the grid's wall time; with several workers they overlap and it is the share of worker time.
    """
    if frame.empty:
        return pd.DataFrame(columns=["stage", "notebooks", *SUMMED, "work_share", "median_startup_seconds"])
    parts = [(stage, g) for stage, g in frame.groupby("stage", sort=False)] + [("all", frame)]
    out = pd.DataFrame([{"stage": s, "notebooks": len(g), **{c: g[c].sum() for c in SUMMED},
                         "median_startup_seconds": g["startup_seconds"].median()} for s, g in parts])
    out["work_share"] = out["work_seconds"] / out["wall_seconds"]
    return out


def study_notebooks(study: str) -> list[Path]:
    """The executed notebooks of a collected study (results/<study>/records.jsonl), in run order."""
    return [book_dir() / r["notebook"] for r in load_records(study) if r.get("notebook")
            and (book_dir() / r["notebook"]).is_file()]


def print_overhead(study: str) -> int:
    """`studylib bench --overhead STUDY`: the table per notebook, then per stage."""
    try:
        frame = runner_overhead(study_notebooks(study))
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(frame.drop(columns=["notebook"]).round(2).to_string(index=False))
        print()
        print(overhead_by_stage(frame).round(3).to_string(index=False))
    return 0
