"""The bench's tables for the methods chapter: reading the CSVs `studylib bench` writes, the table of
the four bare-step settings against the study's loop, and the study's own train runs against them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import pandas as pd

from studylib.train.speed import DEFAULT, MARGIN, SETTINGS, bare_column, bench_dir, device_type, read_bench, setting_name

# what load_bench_table shows by default: the rest stays in the CSV
SUMMARY = ["model", "image_size", "batch_size", "precision", "layout", "setting_source", "compile", "device",
           "device_name", "torch_threads", "images", "rounds", *[bare_column(*s) for s in SETTINGS], "fastest",
           "ceiling_samples_per_sec", "loop_samples_per_sec", "loop_ratio", "setting_ratio", "data_wait_share",
           "infer_latency_ms", "infer_samples_per_sec", "measured_at"]
# a setting as the book names it
SETTING_LABELS = {setting_name(p, f): f"{p} {'channels_last' if f == 'nhwc' else 'NCHW'}" for p, f in SETTINGS}
# a bench row's machine and shape: the bare step's speed depends on these, not on the dataset or the loop's setting
MACHINE = ["model", "image_size", "batch_size", "compile", "device", "device_name", "torch_threads"]


def load_bench_table(results_dir: Optional[str | Path] = None, full: bool = False,
                     latest: bool = True) -> Optional[pd.DataFrame]:
    """Every benchmark-train-pt*.csv under <results_dir>/bench as one table, or None when there is none.

    results_dir: the study's results folder (default studylib.paths.results_dir()); a folder that
    holds the CSVs itself works too. latest: keep the newest row per model and setting (a rerun
    replaces the row in the book); full: every column of the CSV, else SUMMARY's.
    """
    folder = bench_dir(results_dir)
    if results_dir and not folder.is_dir():
        folder = Path(results_dir)
    table = read_bench(folder)
    if table is None:
        return None
    if latest:
        key = [*MACHINE, "dataset", "precision", "layout"]
        table = table.sort_values("measured_at").drop_duplicates(key, keep="last")
    table = table.sort_values(["device", "compile", "image_size", "batch_size", "model"]).reset_index(drop=True)
    return table if full else table[[c for c in SUMMARY if c in table]]


def _whole(value) -> str:
    return "" if pd.isna(value) else f"{value:,.0f}"


def speed_table(bench: pd.DataFrame) -> pd.DataFrame:
    """The methods chapter's table, one row per bench row: the bare step's images/s in each of the four
    settings (★ the fastest: this model's ceiling here), the study's setting (the loop's), the loop's
    images/s and its share of the ceiling. Image size, batch size and device appear as columns only
    when they vary (`bench_note` says them otherwise)."""
    out = pd.DataFrame({"model": bench.model})
    for col, heading in (("image_size", "image (px)"), ("batch_size", "batch"), ("device_name", "device")):
        if bench[col].nunique() > 1:
            out[heading] = bench[col].map(_whole) if col != "device_name" else bench[col]
    for p, f in SETTINGS:
        name = setting_name(p, f)
        out[f"{SETTING_LABELS[name]} (images/s)"] = [
            _whole(v) + (" ★" if fastest == name else "") for v, fastest in zip(bench[bare_column(p, f)], bench.fastest)]
    out["study's setting"] = [SETTING_LABELS.get(setting_name(p, f), "") for p, f in zip(bench.precision, bench.layout)]
    out["loop (images/s)"] = bench.loop_samples_per_sec.map(_whole)
    out["loop / fastest"] = bench.loop_ratio.map(lambda r: "" if pd.isna(r) else f"{r:.0%}")
    return out.reset_index(drop=True)


def bench_note(bench: pd.DataFrame) -> str:
    """One sentence on what the table's rows share: shape, machine, images per pass, rounds, when."""
    def one(col: str, fmt: str) -> Optional[str]:
        values = bench[col].dropna().unique()
        return fmt.format(values[0]) if len(values) == 1 else None

    parts = [one("image_size", "{:.0f} px"), one("batch_size", "batch {:.0f}"), one("device_name", "on {}"),
             one("torch_threads", "{:.0f} threads"), one("images", "{:.0f} training images per pass"),
             one("rounds", "the median of {:.0f} rounds")]
    days = sorted({str(m)[:10] for m in bench.measured_at})
    defaults = "; ".join(f"{SETTING_LABELS[setting_name(*DEFAULT[k])]} on a {k.upper() if k == 'cpu' else 'GPU'}"
                         for k in sorted({device_type(d) for d in bench.device}))
    when = days[0] if len(days) == 1 else f"{days[0]} to {days[-1]}"
    return (f"Bare training step and the study's loop, images per second ({', '.join(p for p in parts if p)}; "
            f"measured {when}). ★ marks each model's fastest setting, its ceiling on this machine; "
            "\"loop / fastest\" is the study's loop against it, step by step on the same moments of load. "
            f"The study trains in the default setting ({defaults}) unless another one is more than "
            f"{MARGIN:.0%} faster; between two settings within {MARGIN:.0%} of each other it keeps the one "
            "closer to the default, so that its runs do not change setting on a measurement's noise.")


def runs_against_bench(runs: pd.DataFrame, bench: Optional[pd.DataFrame]) -> pd.DataFrame:
    """The study's own train runs against the bench: does the grid train as fast as this machine allows?
    One row per model and setting that both have.

    runs: results.load_runs() (train rows: images_per_second is the median epoch's; precision and
    memory_format are what each run trained in); bench: load_bench_table(full=True), its newest row of
    the same model, image size, batch size, torch.compile, device, CPU/GPU name and thread count. The
    run's speed is set against the bare step in its own setting and against the fastest one (the ceiling).
    A run slower than the bench's loop was slowed by its surroundings (other jobs, its thread count, ...).
    """
    cols = ["model", "image_size", "batch_size", "precision", "layout", "compile", "device", "torch_threads", "runs",
            "run_samples_per_sec", "bare_samples_per_sec", "ceiling_samples_per_sec", "fastest", "run_ratio"]
    need = {"stage", "status", "images_per_second", "hardware_torch_threads", "precision", "memory_format"}
    if bench is None or runs.empty or not need <= set(runs):
        return pd.DataFrame(columns=cols)
    train = runs[(runs.stage == "train") & (runs.status == "ok") & runs.precision.notna()].copy()
    train["layout"] = train.memory_format
    train["device_name"] = train.hardware_gpu_name.fillna(train.hardware_cpu_model)
    train["torch_threads"] = train.hardware_torch_threads
    key = [*MACHINE, "precision", "layout"]
    measured = train.groupby(key, dropna=False).images_per_second.agg(["count", "median"]).reset_index()
    measured.columns = [*key, "runs", "run_samples_per_sec"]
    newest = bench.sort_values("measured_at").drop_duplicates(MACHINE, keep="last")
    bare = [bare_column(*s) for s in SETTINGS]
    joined = measured.merge(newest[[*MACHINE, *bare, "ceiling_samples_per_sec", "fastest"]], on=MACHINE)
    joined["bare_samples_per_sec"] = [row[bare_column(p, f)] for (_, row), p, f
                                      in zip(joined.iterrows(), joined.precision, joined.layout)]
    joined["run_ratio"] = joined.run_samples_per_sec / joined.ceiling_samples_per_sec
    return joined[cols].reset_index(drop=True)


def against_table(against: pd.DataFrame) -> pd.DataFrame:
    """runs_against_bench as the book shows it: human column names, whole images/s, percentages."""
    return pd.DataFrame({
        "model": against.model,
        "setting": [SETTING_LABELS.get(setting_name(p, f), "") for p, f in zip(against.precision, against.layout)],
        "runs": against.runs.map(_whole),
        "runs (images/s)": against.run_samples_per_sec.map(_whole),
        "bare step, same setting (images/s)": against.bare_samples_per_sec.map(_whole),
        "fastest bare step (images/s)": against.ceiling_samples_per_sec.map(_whole),
        "runs / fastest": against.run_ratio.map(lambda r: f"{r:.0%}"),
    })


def against_sentence(against: pd.DataFrame) -> str:
    """One sentence: the range of the study's runs' speed as a share of the fastest bare step's."""
    low, high = f"{against.run_ratio.min():.0%}", f"{against.run_ratio.max():.0%}"
    return f"The study's runs trained at {low if low == high else f'{low} to {high}'} of the fastest bare step's speed."
