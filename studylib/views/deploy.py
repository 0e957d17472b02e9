"""Figures and tables of deploy.ipynb: the exports side by side, latency and throughput under load."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd


def export_table(summary: dict) -> pd.DataFrame:
    """One row per format: file size, agreement with PyTorch on the test split, test top-1."""
    rows = []
    for fmt, check in summary["checks"].items():
        rows.append({"format": fmt, "file": Path(summary["files"].get(fmt, summary["files"]["checkpoint"])).name,
                     "size (MB)": summary["sizes_mb"].get(fmt, summary["sizes_mb"]["checkpoint"]),
                     "max |logit diff| vs PyTorch": check["max_abs_diff"],
                     "top-1 agreement vs PyTorch": check["top1_agreement"], "test top-1": check["top1"],
                     "export seconds": summary["seconds"].get(fmt)})
    return pd.DataFrame(rows).set_index("format")


def latency_table(levels: list[dict], ceiling: dict | None = None) -> pd.DataFrame:
    """One row per load-test level (HTTP, n clients), and the in-process ceiling last."""
    rows = [{"where": f"HTTP, {lv['concurrency']} client{'s' if lv['concurrency'] > 1 else ''}", **lv} for lv in levels]
    if ceiling:
        rows.append({"where": "in-process, 1 caller", "concurrency": 1, "requests": ceiling["requests"], "errors": 0,
                     "seconds": ceiling["seconds"], "throughput": ceiling["throughput"],
                     **{k: ceiling[k] for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms")}})
    return pd.DataFrame(rows).set_index("where")


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
