"""What a run's machine was doing: utilisation over the run, peak memory, and the top operators.

- `UtilisationSampler`: a background thread that samples CPU utilisation (psutil: the whole
  machine and this process) and, on CUDA, GPU utilisation and memory (NVML, nvidia-ml-py)
  every `interval` seconds while a block of code runs. `train_run` wraps training and the
  test pass in one, for every run; its summary goes into the record's `profile`.
- `profile_steps`: torch.profiler over a few steps of the study's own loop
  (`studylib.train.loop.train_epoch`, data path included) on a copy of the model and optimizer,
  so the trained weights are untouched. Called by `train_run` when `profile=True`.
- `peak_memory`: the process's peak resident memory and, on CUDA, PyTorch's peak allocation.
"""
from __future__ import annotations

import copy
import os
import resource
import threading
import time
from typing import Optional

import pandas as pd
import psutil
import torch
from torch.profiler import ProfilerActivity, profile
from torch.profiler import schedule as profiler_schedule

from studylib.train.loop import synchronize, train_epoch


# ---------------------------------------------------------------- utilisation over a run

def _nvml_handle(device: str):
    """(pynvml module, handle) for the CUDA device, or (None, None) without a GPU or NVML."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None, None
    try:
        import pynvml  # lazy: NVML is there only on a machine with an NVIDIA driver
        pynvml.nvmlInit()
    except Exception:  # nvidia-ml-py missing, or no driver
        return None, None
    index = torch.device(device).index
    index = torch.cuda.current_device() if index is None else index
    try:  # CUDA_VISIBLE_DEVICES renumbers devices; NVML does not: match by UUID
        uuid = str(torch.cuda.get_device_properties(index).uuid)
        handle = pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
    except Exception:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    return pynvml, handle


def _stats(values: list[float]) -> tuple[Optional[float], Optional[float]]:
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    return sum(vals) / len(vals), max(vals)


class UtilisationSampler:
    """Sample CPU (and GPU) utilisation on a thread while the `with` block runs.

    cpu_percent: the whole machine, all processes (psutil, 0-100); process_cpu_percent: this
    process's share of all cores (0-100); gpu_percent: the share of time a kernel ran on the GPU
    (NVML, 0-100); rss_mb and gpu_memory_mb: resident and GPU memory in use.
    """

    def __init__(self, device: str = "cpu", interval: float = 0.5, max_points: int = 300):
        self.device, self.interval, self.max_points = device, interval, max_points
        self.rows: list[tuple] = []
        self.gpu_name: Optional[str] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> "UtilisationSampler":
        self._proc = psutil.Process()
        self._cpus = psutil.cpu_count() or 1
        self._proc.cpu_percent(None)     # the first call only starts psutil's interval
        self._nvml, self._gpu = _nvml_handle(self.device)
        if self._gpu is not None:
            name = self._nvml.nvmlDeviceGetName(self._gpu)
            self.gpu_name = name.decode() if isinstance(name, bytes) else name
        self._t0 = time.perf_counter()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="utilisation-sampler", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        gpu = gpu_mem = None
        if self._gpu is not None:
            try:
                gpu = float(self._nvml.nvmlDeviceGetUtilizationRates(self._gpu).gpu)
                gpu_mem = self._nvml.nvmlDeviceGetMemoryInfo(self._gpu).used / 2**20
            except Exception:
                pass
        self.rows.append((time.perf_counter() - self._t0, psutil.cpu_percent(None),
                          self._proc.cpu_percent(None) / self._cpus, self._proc.memory_info().rss / 2**20,
                          gpu, gpu_mem))

    def _loop(self) -> None:
        psutil.cpu_percent(None)   # psutil keeps this interval per thread: start it on this one
        while not self._stop.wait(self.interval):
            self._sample()
        last = self.rows[-1][0] if self.rows else 0.0
        if time.perf_counter() - self._t0 - last > self.interval / 4:  # the tail since the last sample
            self._sample()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._gpu is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass

    def summary(self) -> dict:
        """Means and maxima over the samples, and a timeline of at most `max_points` points."""
        cols = list(zip(*self.rows)) if self.rows else [[]] * 6
        t, cpu, proc, rss, gpu, gpu_mem = (list(c) for c in cols)
        step = max(1, -(-len(t) // self.max_points))
        keep = slice(None, None, step)
        cpu_mean, cpu_max = _stats(cpu)
        proc_mean, proc_max = _stats(proc)
        gpu_mean, gpu_max = _stats(gpu)
        r = lambda v: None if v is None else round(v, 2)  # noqa: E731
        return {
            "sampling_interval_seconds": self.interval, "samples": len(t),
            "sampled_seconds": r(t[-1]) if t else 0.0, "cpu_count": getattr(self, "_cpus", os.cpu_count()),
            "cpu_percent_mean": r(cpu_mean), "cpu_percent_max": r(cpu_max),
            "process_cpu_percent_mean": r(proc_mean), "process_cpu_percent_max": r(proc_max),
            "rss_peak_sampled_mb": r(max(rss)) if rss else None,
            "gpu_name": self.gpu_name, "gpu_percent_mean": r(gpu_mean), "gpu_percent_max": r(gpu_max),
            "gpu_memory_peak_mb": r(_stats(gpu_mem)[1]),
            "timeline": {"seconds": [r(v) for v in t[keep]], "cpu_percent": [r(v) for v in cpu[keep]],
                         "process_cpu_percent": [r(v) for v in proc[keep]], "rss_mb": [r(v) for v in rss[keep]],
                         "gpu_percent": [r(v) for v in gpu[keep]]},
        }


def peak_memory(device: str) -> dict:
    """Peak resident memory of this process (MB) and, on CUDA, PyTorch's peak allocated and reserved memory."""
    out = {"host_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
           "cuda_peak_allocated_mb": None, "cuda_peak_reserved_mb": None}
    if device.startswith("cuda") and torch.cuda.is_available():
        out["cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        out["cuda_peak_reserved_mb"] = torch.cuda.max_memory_reserved(device) / 2**20
    return out


# ---------------------------------------------------------------- torch.profiler over a few steps

class FirstBatches:
    """The first `n` batches of a TensorBatches (one shuffled pass's worth of order)."""

    def __init__(self, batches, n: int):
        self.batches, self.n = batches, n

    def __len__(self) -> int:
        return min(self.n, len(self.batches))

    def __iter__(self):
        for k, batch in enumerate(self.batches):
            if k >= self.n:
                return
            yield batch


def profile_steps(model, train_batches, optimizer, loss_fn, device: str, amp: bool, steps: int = 5,
                  warmup: int = 2, top: int = 15) -> dict:
    """torch.profiler's summary of `steps` steps of the training loop, after `warmup` unprofiled ones.

    The steps run on deep copies of the model and optimizer, so the trained weights, their
    optimizer state and the batches' epoch counter are as they were. Returns the top operators
    by self time (CPU time on a CPU, device time on a GPU) as rows and as torch's text table.
    Profiling slows the steps down: timings belong to the history and to `studylib bench`.
    """
    steps = max(1, min(steps, len(train_batches) - 1)) if len(train_batches) > 1 else 1
    warmup = max(0, min(warmup, len(train_batches) - steps))
    model_copy, optimizer_copy = copy.deepcopy((model, optimizer))  # one memo: the copy steps the copy
    epoch = getattr(train_batches, "epoch", None)
    cuda = device.startswith("cuda") and torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sort_by = "self_device_time_total" if cuda else "self_cpu_time_total"
    if not cuda:  # Kineto (torch.profiler's backend) logs a spurious error when it finds no GPU
        os.environ.setdefault("KINETO_LOG_LEVEL", "5")
    captured = {}
    rng = torch.random.get_rng_state()
    try:
        with profile(activities=activities, schedule=profiler_schedule(wait=0, warmup=warmup, active=steps, repeat=1),
                     on_trace_ready=lambda p: captured.setdefault("events", p.key_averages()),
                     record_shapes=False, profile_memory=True) as prof:
            stats = train_epoch(model_copy, FirstBatches(train_batches, warmup + steps), optimizer_copy, None,
                                loss_fn, device, amp, step_hook=lambda _: prof.step())
            synchronize(device)
    finally:
        torch.random.set_rng_state(rng)
        if epoch is not None:
            train_batches.epoch = epoch
    events = captured.get("events") or prof.key_averages()
    total_self = sum(getattr(e, sort_by) for e in events) or 1.0
    rows = []
    for e in sorted(events, key=lambda e: getattr(e, sort_by), reverse=True)[:top]:
        rows.append({
            "name": e.key, "calls": e.count,
            "self_cpu_ms": e.self_cpu_time_total / 1e3, "cpu_total_ms": e.cpu_time_total / 1e3,
            "self_device_ms": e.self_device_time_total / 1e3 if cuda else None,
            "self_share": getattr(e, sort_by) / total_self,
            "self_cpu_memory_mb": e.self_cpu_memory_usage / 2**20,
        })
    return {
        "steps": steps, "warmup_steps": warmup, "device": device, "sort_by": sort_by,
        "images": stats["images"], "top_operators": rows,
        "table": events.table(sort_by=sort_by, row_limit=top, max_name_column_width=48),
    }


# ---------------------------------------------------------------- what train.ipynb shows

def utilisation_table(record: dict):
    """Utilisation and peak memory of a run, one row per measure, from its record's profile."""
    p = record.get("profile") or {}
    rows = [
        ("CPU, whole machine (%)", p.get("cpu_percent_mean"), p.get("cpu_percent_max")),
        ("CPU, this process, share of all cores (%)", p.get("process_cpu_percent_mean"), p.get("process_cpu_percent_max")),
        (f"GPU ({p.get('gpu_name')}) busy (%)" if p.get("gpu_name") else "GPU busy (%)", p.get("gpu_percent_mean"), p.get("gpu_percent_max")),
        ("GPU memory in use (MB)", None, p.get("gpu_memory_peak_mb")),
        ("resident memory, sampled (MB)", None, p.get("rss_peak_sampled_mb")),
        ("resident memory, process peak (MB)", None, p.get("host_peak_rss_mb")),
        ("CUDA memory allocated by PyTorch, peak (MB)", None, p.get("cuda_peak_allocated_mb")),
    ]
    frame = pd.DataFrame(rows, columns=["measure", "mean", "max"]).set_index("measure")
    frame.attrs["samples"] = p.get("samples")
    return frame.dropna(how="all").round(1)


def utilisation_figure(record: dict):
    """CPU (and GPU) utilisation over the run: training epochs, then the test pass."""
    import matplotlib.pyplot as plt  # lazy: only the notebook draws
    p = record.get("profile") or {}
    line = p.get("timeline") or {}
    fig, ax = plt.subplots(figsize=(10, 3))
    t = line.get("seconds") or []
    for key, label in (("cpu_percent", "CPU, whole machine"), ("process_cpu_percent", "CPU, this process"),
                       ("gpu_percent", "GPU busy")):
        values = line.get(key) or []
        if t and any(v is not None for v in values):
            ax.plot(t, [float("nan") if v is None else v for v in values], label=label)
    elapsed = 0.0
    for h in record.get("history") or []:  # epoch boundaries, from the history's clocks
        elapsed += h["seconds"] + h["val_seconds"]
        ax.axvline(elapsed, color="grey", lw=0.5, ls=":")
    ax.set(xlabel="seconds since training started", ylabel="utilisation (%)", ylim=(0, 105),
           title=f"Utilisation, sampled every {p.get('sampling_interval_seconds')} s (dotted: end of each epoch)")
    if ax.lines:
        ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def operators_frame(record: dict):
    """torch.profiler's top operators (profile=True), or None when the run was not profiled."""
    ops = (record.get("profile") or {}).get("operators")
    if not ops:
        return None
    frame = pd.DataFrame(ops["top_operators"]).set_index("name")
    frame["self_share"] = (100 * frame["self_share"]).round(1)
    frame = frame.rename(columns={"self_share": "self time (%)"}).dropna(axis=1, how="all")
    frame.attrs["steps"] = ops["steps"]
    return frame.round(3)
