"""The bench's tables for the methods chapter: where `studylib bench` writes its CSVs, how it names a
setting, reading the CSVs back, and the study's own train runs against them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import pandas as pd

from studylib.paths import results_dir as default_results_dir

# what the book shows (load_bench_table's default): the rest stays in the CSV
SUMMARY = ["model", "image_size", "batch_size", "precision", "layout", "compile", "device", "torch_threads",
           "images", "bare_samples_per_sec", "loop_samples_per_sec", "loop_ratio", "data_wait_share",
           "infer_latency_ms", "infer_samples_per_sec", "warmup_seconds", "compile_seconds", "measured_at"]


def precision_name(amp: bool, device: str) -> str:
    """bf16 when autocast is on (CUDA only, as in training), else fp32."""
    return "bf16" if amp and device.startswith("cuda") else "fp32"


def layout_name(channels_last: bool, device: str) -> str:
    """nhwc when channels_last is on (CUDA only, as in training), else nchw."""
    return "nhwc" if channels_last and device.startswith("cuda") else "nchw"


def bench_dir(results_dir: Optional[str | Path] = None) -> Path:
    """<results>/bench: the benchmark CSVs (results_dir defaults to studylib.paths.results_dir())."""
    return Path(results_dir or default_results_dir()) / "bench"


def load_bench_table(results_dir: Optional[str | Path] = None, full: bool = False,
                     latest: bool = True) -> Optional[pd.DataFrame]:
    """Every benchmark-train-*.csv under <results_dir>/bench as one table, or None when there is none.

    results_dir: the study's results folder (default studylib.paths.results_dir()); a folder that
    holds the CSVs itself works too. latest: keep the newest row per model and setting (a rerun
    replaces the row in the book); full: every column of the CSV, else the ones the methods chapter shows.
    """
    folder = bench_dir(results_dir)
    if results_dir and not folder.is_dir():
        folder = Path(results_dir)
    files = sorted(folder.glob("benchmark-train-*.csv"))
    frames = [pd.read_csv(f).assign(file=f.name) for f in files]
    frames = [f for f in frames if len(f)]
    if not frames:
        return None
    table = pd.concat(frames, ignore_index=True)
    if latest:
        key = ["model", "dataset", "image_size", "batch_size", "precision", "layout", "compile", "device", "device_name",
               "torch_threads"]
        table = table.sort_values("measured_at").drop_duplicates(key, keep="last")
    table = table.sort_values(["device", "precision", "layout", "compile", "model"]).reset_index(drop=True)
    return table if full else table[[c for c in SUMMARY if c in table]]


def runs_against_bench(runs: pd.DataFrame, bench: Optional[pd.DataFrame]) -> pd.DataFrame:
    """The study's own train runs against the bench's bare step in the same setting: does the grid train
    as fast as the loop can? One row per model and setting that both have.

    runs: results.load_runs() (train rows: their images_per_second is the median epoch's);
    bench: load_bench_table(full=True). A setting is the model, image size, batch size, precision, layout,
    torch.compile, device, CPU/GPU name and thread count; the ratio is the runs' median over the bare step's.
    A run that trains slower than the bench's loop did was slowed by its surroundings (other jobs on the
    machine, the thread count its process was given, ...).
    """
    cols = ["model", "image_size", "batch_size", "precision", "layout", "compile", "device", "torch_threads", "runs",
            "run_samples_per_sec", "bare_samples_per_sec", "loop_samples_per_sec", "run_ratio"]
    need = {"stage", "status", "images_per_second", "hardware_torch_threads"}
    if bench is None or runs.empty or not need <= set(runs):
        return pd.DataFrame(columns=cols)
    train = runs[(runs.stage == "train") & (runs.status == "ok")].copy()
    train["precision"] = [precision_name(bool(a), d) for a, d in zip(train.amp, train.device)]
    train["layout"] = [layout_name(bool(c), d) for c, d in zip(train.channels_last, train.device)]
    train["device_name"] = train.hardware_gpu_name.fillna(train.hardware_cpu_model)
    train["torch_threads"] = train.hardware_torch_threads
    key = ["model", "image_size", "batch_size", "precision", "layout", "compile", "device", "device_name", "torch_threads"]
    measured = train.groupby(key, dropna=False).images_per_second.agg(["count", "median"]).reset_index()
    measured.columns = [*key, "runs", "run_samples_per_sec"]
    joined = measured.merge(bench[key + ["bare_samples_per_sec", "loop_samples_per_sec"]], on=key)
    joined["run_ratio"] = joined.run_samples_per_sec / joined.bare_samples_per_sec
    return joined[cols].reset_index(drop=True)
