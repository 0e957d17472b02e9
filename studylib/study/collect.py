"""`studylib collect STUDY`: every run record of a study into tables, and the readers for them.

The grid's manifest (results/<study>/cells.json) lists the cells a study owns; collect reads each
executed notebook's `record` scrap with scrapbook (or the failure the runner stored with a failed
notebook) and writes, together (studylib.study.durable.replace_together: a reader never sees files of two
collects, even after one was killed between its renames):

- results/<study>/runs.parquet and runs.csv: one row per run, every stage, with `stage` and `status`
  columns and the record's scalar fields flattened (train adds test_top1, images_per_second, ...);
- results/<study>/epochs.parquet: one row per run and epoch (the train histories);
- results/<study>/records.jsonl: every full record, plus where its notebook is and how long it took.

Every record passes through studylib.errors.redact on its way into a table: no secret reaches one.

Read them with load_runs(study), load_epochs(study) and load_records(study, stage=None).
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from studylib.errors import redact
from studylib.paths import book_dir, check_name, inside, results_dir
from studylib.study import book
from studylib.study.durable import replace_together, roll_forward
from studylib.study.execute import glued_record, valid_record
from studylib.study.manifest import failed_path, read_manifest

ORDER = ["run_id", "stage", "status", "error", "dataset", "model", "seed", "image_size", "pretrained",
         "param_count", "params_m", "size_mb", "gmacs", "test_top1", "test_top5", "balanced_accuracy",
         "macro_f1", "val_top1", "best_val_top1", "epochs_run", "train_seconds", "train_minutes",
         "images_per_second", "epoch_seconds", "data_wait_seconds", "first_step_seconds", "eval_seconds",
         "peak_memory_mb", "device", "notebook_seconds", "startup_seconds", "cells_seconds", "wall_seconds",
         "started_at", "finished_at", "worker", "notebook"]


def study_dir(study: str) -> Path:
    return inside(results_dir(), check_name("study", study))


def _scalar(v) -> bool:
    return v is None or isinstance(v, (str, bool, int, float))


def read_cell(cell: dict, book: Path) -> Optional[dict]:
    """The record of one cell (ok or failed), with its notebook path and execution times; None if not run."""
    import nbformat  # lazy: only reading a study's notebooks needs it, not the notebooks that load its tables

    out = inside(book, cell["notebook"])
    record, path = valid_record(out, cell["stage"]), out
    if record is None:
        path = failed_path(out)
        if not path.is_file():
            return None
    meta = nbformat.read(path, as_version=4).metadata.get("studylib", {})
    if path != out:   # a failed run: the failed record the notebook glued, else the runner's
        glued = glued_record(path)
        record = glued if glued and glued.get("status") == "failed" else meta.get("record") or {
            "run_id": cell["run_id"], "stage": cell["stage"], "status": "failed", "params": cell["params"],
            "error": "unknown: the failed notebook carries no error"}
    record = redact(dict(record))   # a notebook written before secrets were refused may still hold one
    record["notebook"] = str(path.relative_to(book))
    record["execution"] = meta.get("execution", {})
    record["title"] = cell.get("title", "")
    return record


def train_columns(r: dict) -> dict:
    """The train record's headline numbers as flat columns."""
    hist = r.get("history") or []
    test = r.get("test") or {}
    vals = [h["val_top1"] for h in hist]
    early = (r.get("params") or {}).get("early_stopping", 0)
    return {
        "params_m": r["param_count"] / 1e6 if r.get("param_count") is not None else None,
        "test_top1": test.get("top1"), "test_top5": test.get("top5"),
        "balanced_accuracy": test.get("balanced_accuracy"), "macro_f1": test.get("macro_f1"),
        # val top-1 of the weights the run saved: the best epoch with early stopping, else the last
        "val_top1": (max(vals) if early else vals[-1]) if vals else None,
        "best_val_top1": max(vals) if vals else None,
        "epochs_run": len(hist),
        "train_minutes": r["train_seconds"] / 60 if r.get("train_seconds") is not None else None,
        "images_per_second": float(np.median([h["images_per_second"] for h in hist])) if hist else None,
        "epoch_seconds": float(np.median([h["seconds"] for h in hist])) if hist else None,
        "data_wait_seconds": float(sum(h["data_wait_seconds"] for h in hist)) if hist else None,
        **{f"seconds_to_{k}": v for k, v in (r.get("time_to_target") or {}).items()},
    }


def flatten(r: dict) -> dict:
    """One row: scalar parameters, scalar fields (one level of nested dicts as parent_child), stage extras."""
    row = {k: v for k, v in (r.get("params") or {}).items() if _scalar(v)}
    for k, v in r.items():
        if k in ("params", "history", "execution"):
            continue
        if _scalar(v):
            row[k] = v
        elif isinstance(v, dict):
            row.update({f"{k}_{k2}": v2 for k2, v2 in v.items() if _scalar(v2)})
    row.update({k: v for k, v in (r.get("execution") or {}).items() if _scalar(v)})
    if r.get("stage") == "train" and r.get("status") == "ok":
        row.update(train_columns(r))
    return row


def epochs_frame(records: list[dict]) -> pd.DataFrame:
    rows = []
    for r in records:
        if r.get("status") != "ok" or not isinstance(r.get("history"), list):
            continue
        p = r.get("params") or {}
        elapsed = 0.0
        for h in r["history"]:
            elapsed += h.get("seconds", 0) + h.get("val_seconds", 0)
            rows.append({"run_id": r["run_id"], "stage": r["stage"], "dataset": r.get("dataset", p.get("dataset")),
                         "model": r.get("model", p.get("model")), "seed": p.get("seed"), **h,
                         "elapsed_seconds": elapsed})
    return pd.DataFrame(rows)


def _tidy(df: pd.DataFrame) -> pd.DataFrame:
    """Columns in a readable order; mixed-type object columns as text so parquet can hold them."""
    if df.empty:
        return df
    first = [c for c in ORDER if c in df.columns]
    df = df[first + sorted(c for c in df.columns if c not in first)]
    for col in df.columns:
        if df[col].dtype == object:
            kinds = {type(v) for v in df[col] if v is not None and not (isinstance(v, float) and math.isnan(v))}
            if len(kinds) > 1:
                df[col] = df[col].map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
    return df


def collect(study: str, quiet: bool = False) -> pd.DataFrame:
    """Read every cell of the study and write runs.parquet/.csv, epochs.parquet and records.jsonl."""
    manifest = read_manifest(study)
    book = Path(manifest.get("book") or book_dir())
    records, missing = [], 0
    for cell in manifest["cells"]:
        r = read_cell(cell, book)
        if r is None:
            missing += 1
        else:
            records.append(r)
    runs = _tidy(pd.DataFrame([flatten(r) for r in records]))
    if not runs.empty:
        runs = runs.drop(columns="study", errors="ignore")
        runs.insert(1, "study", study)
    epochs = epochs_frame(records)
    out = study_dir(study)
    replace_together({
        out / "runs.parquet": lambda p: runs.to_parquet(p, index=False),
        out / "runs.csv": lambda p: runs.to_csv(p, index=False),
        out / "epochs.parquet": lambda p: epochs.to_parquet(p, index=False),
        out / "records.jsonl": lambda p: Path(p).write_text("".join(json.dumps(r) + "\n" for r in records)),
    })
    if not quiet:
        ok = int((runs.status == "ok").sum()) if not runs.empty else 0
        print(f"collect {study}: {ok} ok, {len(records) - ok} failed, {missing} not run yet -> {out}/runs.parquet")
    return runs


def load_runs(study: str) -> pd.DataFrame:
    """One row per run of the study, every stage (run `studylib collect STUDY` first)."""
    roll_forward(study_dir(study))   # a collect killed between its renames: its tables, all of them
    path = study_dir(study) / "runs.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run `studylib grid params/{study}.yaml` or `studylib collect {study}`.")
    return pd.read_parquet(path)


def load_epochs(study: str) -> pd.DataFrame:
    roll_forward(study_dir(study))
    path = study_dir(study) / "epochs.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run `studylib collect {study}` first.")
    return pd.read_parquet(path)


def load_records(study: str, stage: Optional[str] = None) -> list[dict]:
    """Every full record of the study (ok and failed), optionally of one stage."""
    roll_forward(study_dir(study))
    path = study_dir(study) / "records.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run `studylib collect {study}` first.")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if stage is None or r.get("stage") == stage]


# CLI --------------------------------------------------------------------------------------------

def add_arguments(parser) -> None:
    parser.add_argument("study", help="the study's name (the `study:` of its grid file)")
    parser.add_argument("--no-report", dest="report", action="store_false",
                        help="only the tables: skip the report pages (decision, methods, results) and the book's table of contents")


def run(args) -> int:
    try:
        collect(args.study)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.report:
        return book.write_report(args.study)
    return 0
