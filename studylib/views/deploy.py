"""Figures and tables of deploy.ipynb: every model's serving numbers, the served run's exports side by side,
latency and throughput under load. Tables come back as text: human column names with units, and one
number of decimals per column (whole numbers without any)."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

MISSING = "—"
FORMAT_NAMES = {"pytorch": "PyTorch checkpoint", "torch_export": "torch.export program", "onnx": "ONNX, fp32",
                "onnx_int8": "ONNX, int8"}
SERVING_COLUMNS = {"model": "model", "latency_ms": "batch-1 latency (ms)", "throughput": "throughput (images/s)",
                   "fp32_mb": "fp32 size (MB)", "int8_mb": "int8 size (MB)", "fp32_top1": "fp32 test top-1 (%)",
                   "int8_top1": "int8 test top-1 (%)"}


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def fixed(values, digits: int = 3, scale: float = 1.0, decimals: int | None = None, smallest: bool = False) -> list[str]:
    """Numbers as text with one number of decimals: enough for `digits` significant digits of the largest
    (of the smallest above zero, with smallest=True; or exactly `decimals`); a column of whole numbers gets
    none; a missing value is a dash."""
    nums = [float(v) * scale for v in values if not _missing(v)]
    if decimals is None:
        shown = [abs(v) for v in nums if v] if smallest else [abs(v) for v in nums]
        ref = (min if smallest else max)(shown, default=0.0)
        if all(v == int(v) for v in nums) or ref >= 10 ** (digits - 1):
            decimals = 0
        else:
            decimals = digits - 1 if ref == 0 else digits - 1 - math.floor(math.log10(ref))
    return [MISSING if _missing(v) else f"{float(v) * scale:,.{decimals}f}" for v in values]


def serving_table(models: list[dict]) -> pd.DataFrame:
    """One row per model (DeployRecord.models, in its order): ONNX Runtime batch-1 latency and batch throughput
    on this CPU, the fp32 and int8 ONNX file sizes, and both files' test top-1 in percent."""
    t = pd.DataFrame(models, columns=[*SERVING_COLUMNS, "batch_size"])
    out = pd.DataFrame({"model": t["model"]})
    out[SERVING_COLUMNS["latency_ms"]] = fixed(t["latency_ms"], digits=2, smallest=True)   # 0.81 next to 36.30
    out[SERVING_COLUMNS["throughput"]] = fixed(t["throughput"], decimals=0)
    for k in ("fp32_mb", "int8_mb"):
        out[SERVING_COLUMNS[k]] = fixed(t[k])
    for k in ("fp32_top1", "int8_top1"):
        out[SERVING_COLUMNS[k]] = fixed(t[k], scale=100, decimals=1)
    return out.set_index("model")


def export_table(summary: dict) -> pd.DataFrame:
    """One row per format: file size, agreement with PyTorch on the test split, test top-1."""
    checks = summary["checks"]
    files = {f: summary["files"].get(f, summary["files"]["checkpoint"]) for f in checks}
    diffs = [c["max_abs_diff"] for c in checks.values()]
    return pd.DataFrame({
        "format": [FORMAT_NAMES.get(f, f) for f in checks],
        "file": [Path(files[f]).name for f in checks],
        "size (MB)": fixed([summary["sizes_mb"].get(f, summary["sizes_mb"]["checkpoint"]) for f in checks]),
        "largest logit difference from PyTorch": ["0" if d == 0 else f"{d:.1e}" for d in diffs],
        "top-1 agrees with PyTorch (% of test images)": fixed([c["top1_agreement"] for c in checks.values()], scale=100, decimals=1),
        "test top-1 (%)": fixed([c["top1"] for c in checks.values()], scale=100, decimals=1),
        "export (s)": fixed([summary["seconds"].get(f) for f in checks], decimals=1),
    }).set_index("format")


def latency_table(levels: list[dict], ceiling: dict | None = None) -> pd.DataFrame:
    """One row per load-test level (HTTP, n clients), and the in-process ceiling last."""
    rows = [{"where": f"HTTP, {lv['concurrency']} client{'s' if lv['concurrency'] > 1 else ''}", **lv} for lv in levels]
    if ceiling:
        rows.append({"where": "in-process, 1 caller", "concurrency": 1, "requests": ceiling["requests"], "errors": 0,
                     "seconds": ceiling["seconds"], "throughput": ceiling["throughput"],
                     **{k: ceiling[k] for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms")}})
    t = pd.DataFrame(rows)
    out = pd.DataFrame({"where": t["where"], "requests": fixed(t["requests"]), "errors": fixed(t["errors"]),
                        "window (s)": fixed(t["seconds"], decimals=1),
                        "throughput (requests/s)": fixed(t["throughput"], decimals=0)})
    for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms"):
        out[f"{k[:-3]} latency (ms)"] = fixed(t[k])
    return out.set_index("where")


def latency_plot(levels: list[dict], ceiling: dict | None = None):
    """Latency percentiles and throughput against the number of concurrent clients."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    cs = [lv["concurrency"] for lv in levels]
    for q, style in (("p50_ms", "o-"), ("p90_ms", "s--"), ("p99_ms", "^:")):
        a.plot(cs, [lv[q] for lv in levels], style, label=f"HTTP {q[:3]}")
    if ceiling:
        a.axhline(ceiling["p50_ms"], color="grey", lw=1, label="in-process p50")
    a.set(xscale="log", yscale="log", xlabel="concurrent clients", ylabel="latency (ms)", title="Latency")
    a.set_xticks(cs, [str(c) for c in cs])
    a.legend(fontsize=8)
    b.plot(cs, [lv["throughput"] for lv in levels], "o-", label="HTTP")
    if ceiling:
        b.axhline(ceiling["throughput"], color="grey", lw=1, label="in-process, 1 caller")
    b.set(xscale="log", xlabel="concurrent clients", ylabel="requests per second", title="Throughput", ylim=(0, None))
    b.set_xticks(cs, [str(c) for c in cs])
    b.legend(fontsize=8)
    fig.tight_layout()
    return fig
