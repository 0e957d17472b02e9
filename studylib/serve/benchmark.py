"""Every trained model's serving numbers side by side: ONNX Runtime on this CPU, one row per run (record.ModelServing).

For each run: its exports by studylib.serve.export.export_run (fp32 ONNX and int8 ONNX, written into the
run folder as for `studylib serve`; the PyTorch comparison passes are left to the served run's full export),
then, in this process, one ONNX Runtime session on the fp32 or int8 file: batch-1 latency (the median of
`latency_calls` single calls after `warmup` uncounted ones) and throughput (images per second over
`throughput_calls` batches of `batch_size`, after one uncounted batch). The inputs are real test images,
normalised as in evaluation. Sizes and test top-1 are the export's own: file sizes in MB (10^6 bytes), top-1
of ONNX Runtime's logits on every cached test image.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch

from studylib.errors import ParameterError
from studylib.record import ModelServing
from studylib.serve.export import ExportResult, export_run, normalise, onnx_session, resolve_run, run_data, session_predict

PRECISION_FILES = {"fp32": "onnx", "int8": "onnx_int8"}   # precision -> ExportResult.files key


@dataclass(frozen=True)
class SpeedSettings:
    """How each model is timed: which file, ONNX Runtime's threads, how many calls."""
    precision: str = "fp32"          # fp32 | int8: the ONNX file timed
    threads: int = 0                 # intra-op threads; 0 lets ONNX Runtime choose
    spinning: bool = False           # ONNX Runtime threads spin-wait between runs
    latency_calls: int = 20          # timed batch-1 calls
    batch_size: int = 64             # images per call for the throughput
    throughput_calls: int = 3        # timed batches
    warmup: int = 3                  # uncounted batch-1 calls first

    def __post_init__(self):
        if self.precision not in PRECISION_FILES:
            raise ParameterError("precision", self.precision, f"one of {', '.join(PRECISION_FILES)}")
        for name in ("latency_calls", "batch_size", "throughput_calls"):
            if getattr(self, name) < 1:
                raise ParameterError(name, getattr(self, name), "a positive integer")
        if self.warmup < 0 or self.threads < 0:
            bad = "warmup" if self.warmup < 0 else "threads"
            raise ParameterError(bad, getattr(self, bad), "zero or a positive integer")


def speed(predict, one: np.ndarray, batch: np.ndarray, settings: SpeedSettings) -> dict:
    """Batch-1 latency (median ms) and batch throughput (images/s) of predict(float32 N x 3 x S x S)."""
    for _ in range(settings.warmup):
        predict(one)
    seconds = []
    for _ in range(settings.latency_calls):
        t0 = time.perf_counter()
        predict(one)
        seconds.append(time.perf_counter() - t0)
    predict(batch)   # the first call at a new batch shape allocates: not counted
    t0 = time.perf_counter()
    for _ in range(settings.throughput_calls):
        predict(batch)
    elapsed = time.perf_counter() - t0
    return {"latency_ms": statistics.median(seconds) * 1e3,
            "throughput": len(batch) * settings.throughput_calls / elapsed}


def speed_inputs(record: dict, batch_size: int, data=None) -> tuple[np.ndarray, np.ndarray]:
    """(the first test image, a batch of batch_size test images repeated as needed), normalised as in evaluation."""
    data = data or run_data(record)
    images = data.splits["test"].images
    if not len(images):
        raise ValueError(f"run {record['run_id']} has no test images to time its model on")
    picked = images[torch.arange(batch_size) % len(images)]
    x = normalise(picked, record["data"]["mean"], record["data"]["std"]).numpy()
    return x[:1], x


def serving_numbers(record: dict, exported: ExportResult, settings: SpeedSettings, data=None) -> dict:
    """One run's row: its export's sizes and test top-1, and the timed file's latency and throughput."""
    if "onnx_int8" not in exported.files:
        raise ValueError(f"run {record['run_id']} was exported without its int8 model: export it with int8=True")
    one, batch = speed_inputs(record, settings.batch_size, data)
    session = onnx_session(exported.files[PRECISION_FILES[settings.precision]], settings.threads, settings.spinning)
    timed = speed(session_predict(session), one, batch, settings)
    s = exported.summary
    return ModelServing(
        model=record["model"], run_id=record["run_id"], latency_ms=timed["latency_ms"], throughput=timed["throughput"],
        batch_size=settings.batch_size, fp32_mb=s["sizes_mb"]["onnx"], int8_mb=s["sizes_mb"]["onnx_int8"],
        fp32_top1=s["checks"]["onnx"]["top1"], int8_top1=s["checks"]["onnx_int8"]["top1"],
    ).model_dump(mode="json")


def measure_runs(runs: list[str], settings: SpeedSettings, calibration_images: int,
                 exported: dict[str, ExportResult] | None = None, progress=None) -> list[dict]:
    """Each run's ModelServing row, in the order given (a run given twice, once). `exported`: run id -> an
    export_run result already made (the served run's), reused instead of exporting again."""
    exported = dict(exported or {})
    rows, seen = [], set()
    for run in runs:
        folder, record = resolve_run(run)
        if record["run_id"] in seen:
            continue
        seen.add(record["run_id"])
        t0 = time.perf_counter()
        data = run_data(record)
        done = exported.get(record["run_id"]) or export_run(str(folder), calibration_images=calibration_images, data=data,
                                                            check_pytorch=False)   # sizes and ONNX top-1 are all a row needs
        rows.append(serving_numbers(record, done, settings, data))
        if progress:
            progress(f"{record['model']}: {time.perf_counter() - t0:.0f} s")
    return rows
