"""The deploy stage (notebooks/deploy.ipynb): its parameters, its checks and tables, its record.

The work itself lives in studylib.serve.export (files and their checks), studylib.serve.app (the server)
and studylib.serve.loadtest (the client's measurements); this module puts their results side by side.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, field_validator

from studylib.errors import ParameterError


class DeployParams(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    run: str = ""                        # a train run id (a folder in runs/) or a run folder
    backend: Literal["onnx", "torch"] = "onnx"
    precision: Literal["fp32", "int8"] = "fp32"
    threads: int = 0                     # backend intra-op threads; 0 lets the backend choose
    workers: int = 1                     # inferences the server runs at the same time
    spinning: bool = False               # ONNX Runtime threads spin-wait between runs
    top_k: int = 5
    concurrency: list[int] = [1, 4, 16]  # load-test client counts
    max_requests: int = 1000             # per concurrency level (and for the in-process ceiling)
    max_seconds: float = 15.0            # per concurrency level
    paired_rounds: int = 10              # HTTP overhead: alternating rounds of HTTP and in-process requests
    warmup: int = 5                      # uncounted requests per client before each level
    calibration_images: int = 256        # train images for int8 calibration
    deploy_run_id: str = ""              # the record's run id (the grid passes its cell's); "" means derived

    @classmethod
    def from_namespace(cls, namespace: dict) -> "DeployParams":
        from studylib.params import validate_mapping
        return validate_mapping(cls, {k: namespace[k] for k in cls.model_fields if k in namespace}, "deploy")

    @field_validator("run")
    @classmethod
    def _run(cls, v):
        from studylib.serve.export import resolve_run
        resolve_run(v)
        return v

    @field_validator("workers", "top_k", "max_requests", "calibration_images", "paired_rounds")
    @classmethod
    def _positive(cls, v, info):
        if v < 1:
            raise ParameterError(info.field_name, v, "a positive integer")
        return v

    @field_validator("threads", "warmup")
    @classmethod
    def _non_negative(cls, v, info):
        if v < 0:
            raise ParameterError(info.field_name, v, "zero or more")
        return v

    @field_validator("max_seconds")
    @classmethod
    def _seconds(cls, v):
        if not v > 0:
            raise ParameterError("max_seconds", v, "a positive number of seconds")
        return v

    @field_validator("concurrency")
    @classmethod
    def _concurrency(cls, v):
        if not v or any(c < 1 or c > 256 for c in v):
            raise ParameterError("concurrency", v, "a non-empty list of client counts between 1 and 256")
        return v

    def train_run(self) -> tuple[Path, dict]:
        from studylib.serve.export import resolve_run
        return resolve_run(self.run)

    def server_options(self) -> dict:
        return {"backend": self.backend, "precision": self.precision, "threads": self.threads,
                "workers": self.workers, "top_k": self.top_k, "spinning": self.spinning}

    def predictor(self, folder):
        """The server's Predictor with the server's settings, for in-process measurements."""
        from studylib.serve.app import Predictor
        return Predictor(str(folder), self.backend, self.precision, self.threads, self.top_k, spinning=self.spinning)


def served_format(backend: str, precision: str) -> str:
    """The export whose offline top-1 the server must reproduce."""
    return "pytorch" if backend == "torch" else ("onnx_int8" if precision == "int8" else "onnx")


def served_check(stream: dict, exported, backend: str, precision: str) -> dict:
    """Served top-1 against offline top-1, image by image (the same model file offline, and PyTorch)."""
    served = np.asarray(stream["top1_index"])
    same = exported.offline_top1[served_format(backend, precision)]
    pytorch = exported.offline_top1["pytorch"]
    if stream["sources"] != exported.names:
        raise ValueError(f"the {len(served)} served images are not the offline pass's {len(same)} test images, in its order")
    mismatches = [{"image": exported.names[i], "served": int(served[i]), "offline": int(same[i])}
                  for i in np.flatnonzero(served != same)]
    return {
        "images": int(len(served)), "format": served_format(backend, precision),
        "agreement": float((served == same).mean()), "mismatches": mismatches,
        "agreement_with_pytorch": float((served == pytorch).mean()),
        "top1": float((served == exported.labels).mean()),
        "errors": stream["errors"],
        **{k: stream[k] for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms")},
    }


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
    rows = [{"where": f"HTTP, {lv['concurrency']} client{'s' if lv['concurrency'] > 1 else ''}", **lv} for lv in levels]
    if ceiling:
        rows.append({"where": "in-process, 1 caller", "concurrency": 1, "requests": ceiling["requests"], "errors": 0,
                     "seconds": ceiling["seconds"], "throughput": ceiling["throughput"],
                     **{k: ceiling[k] for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms")}})
    return pd.DataFrame(rows).set_index("where")


def latency_plot(levels: list[dict], ceiling: dict | None = None):
    import matplotlib.pyplot as plt
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


def make_record(params: DeployParams, train_record: dict, exported, served: dict, levels: list[dict],
                ceiling: dict, pair: dict, server: dict, started_at: str, finished_at: str) -> dict:
    """The deploy stage's record, validated against studylib.record.DeployRecord.

    pair: studylib.serve.loadtest.paired's result; the HTTP overhead is its HTTP p50 minus its in-process p50."""
    from studylib import environment
    from studylib.record import DeployRecord, run_id
    s = exported.summary
    checks, sizes = s["checks"], s["sizes_mb"]
    int8 = checks.get("onnx_int8")
    c1 = next((lv for lv in levels if lv["concurrency"] == 1), levels[0])
    p = {**params.model_dump(exclude={"deploy_run_id"}), "run": train_record["run_id"]}
    rid = params.deploy_run_id or run_id("deploy", {"dataset": train_record["dataset"], "model": train_record["model"], **p})
    return DeployRecord(
        run_id=rid, params=p, train_run_id=train_record["run_id"], dataset=train_record["dataset"],
        model=train_record["model"], image_size=train_record["image_size"], backend=params.backend,
        precision=params.precision, device="cpu", hardware=environment.hardware("cpu"),
        versions=environment.versions(extra=("onnx", "onnxruntime", "onnxscript", "fastapi", "uvicorn", "starlette")),
        export=s, sizes_mb=sizes, pytorch_top1=checks["pytorch"]["top1"], onnx_top1=checks["onnx"]["top1"],
        int8_top1=int8["top1"] if int8 else None,
        int8_top1_change=(int8["top1"] - checks["onnx"]["top1"]) if int8 else None,
        int8_size_ratio=(sizes["onnx_int8"] / sizes["onnx"]) if int8 else None,
        served=served, served_agreement=served["agreement"], served_top1=served["top1"],
        load=levels, throughput=max(lv["throughput"] for lv in levels), latency_p50_ms=c1["p50_ms"],
        ceiling={**ceiling, "paired": pair}, inprocess_p50_ms=ceiling["p50_ms"], http_overhead_ms=pair["overhead_p50_ms"],
        server=server, started_at=started_at, finished_at=finished_at,
    ).model_dump(mode="json")
