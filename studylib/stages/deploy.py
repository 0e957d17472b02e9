"""The deploy stage (notebooks/deploy.ipynb): its parameters, the served-against-offline check, its record.

The work itself lives in studylib.serve.export (files and their checks), studylib.serve.benchmark (every
model's ONNX Runtime numbers), studylib.serve.predictor and studylib.serve.server (the model and the server)
and studylib.serve.loadtest (the client's measurements); the notebook's tables and figures are in
studylib.views.deploy.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from pydantic import field_validator, model_validator

from studylib import environment
from studylib.errors import ParameterError
from studylib.params import NonNegativeInt, PositiveInt, StageParams
from studylib.record import DeployRecord, run_id
from studylib.serve.benchmark import SpeedSettings
from studylib.serve.export import resolve_run
from studylib.serve.predictor import Predictor


class DeployParams(StageParams):
    """Parameters of deploy.ipynb: one trained run, exported, served and put under load."""
    stage: ClassVar[str] = "deploy"

    run: str = ""                        # a train run id (a folder in runs/) or a run folder
    backend: Literal["onnx", "torch"] = "onnx"
    precision: Literal["fp32", "int8"] = "fp32"
    threads: NonNegativeInt = 0          # backend intra-op threads; 0 lets the backend choose
    workers: PositiveInt = 1             # inferences the server runs at the same time
    spinning: bool = False               # ONNX Runtime threads spin-wait between runs
    top_k: PositiveInt = 5               # labels per prediction
    concurrency: list[int] = [1, 4, 16]  # load-test client counts
    max_requests: PositiveInt = 1000     # per concurrency level (and for the in-process ceiling)
    max_seconds: float = 15.0            # per concurrency level
    paired_rounds: PositiveInt = 10      # HTTP overhead: alternating rounds of HTTP and in-process requests
    warmup: NonNegativeInt = 5           # uncounted requests per client before each level (and batch-1 calls per model)
    calibration_images: PositiveInt = 64   # train images for int8 calibration (every model's)
    serving_runs: list[str] = []         # train runs of run's dataset timed side by side (the grid: each model's best-val run); run always is
    latency_calls: PositiveInt = 20      # per model: timed batch-1 ONNX Runtime calls (the median is reported)
    batch_size: PositiveInt = 64         # per model: images per call for the throughput
    throughput_calls: PositiveInt = 3    # per model: timed batches for the throughput
    deploy_run_id: str = ""              # the record's run id (the grid passes its cell's); "" means derived

    @field_validator("run")
    @classmethod
    def _run(cls, v):
        resolve_run(v)
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

    @field_validator("serving_runs")
    @classmethod
    def _serving_runs(cls, v):
        for run in v:
            try:
                resolve_run(run)
            except ParameterError as err:
                raise ParameterError("serving_runs", run, f"a list of {err.allowed}") from None
        return v

    @model_validator(mode="after")
    def _one_dataset(self):
        def data(run: str) -> str:
            record = resolve_run(run)[1]
            root = record["params"].get("root") or ""
            return f"{record['dataset']} ({root})" if root else record["dataset"]
        served = data(self.run)
        for run in self.serving_runs:
            if data(run) != served:
                raise ParameterError("serving_runs", run, f"a list of train runs on run's data, {served} (this one is on {data(run)})")
        return self

    def train_run(self) -> tuple[Path, dict]:
        return resolve_run(self.run)

    def server_options(self) -> dict:
        return {"backend": self.backend, "precision": self.precision, "threads": self.threads,
                "workers": self.workers, "top_k": self.top_k, "spinning": self.spinning}

    def measured_runs(self) -> list[str]:
        """The runs whose serving numbers the table shows: serving_runs in order, with run among them."""
        ids = {run: resolve_run(run)[1]["run_id"] for run in [self.run, *self.serving_runs]}
        given = self.serving_runs if ids[self.run] in {ids[r] for r in self.serving_runs} else [self.run, *self.serving_runs]
        first = {}
        for run in given:   # each run once, in its first place
            first.setdefault(ids[run], run)
        return list(first.values())

    def speed_settings(self) -> SpeedSettings:
        """How every model is timed: the served precision and threads, the per-model call counts."""
        return SpeedSettings(precision=self.precision, threads=self.threads, spinning=self.spinning,
                             latency_calls=self.latency_calls, batch_size=self.batch_size,
                             throughput_calls=self.throughput_calls, warmup=self.warmup)

    def predictor(self, folder) -> Predictor:
        """The server's Predictor with the server's settings, for in-process measurements."""
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


def make_record(params: DeployParams, train_record: dict, exported, served: dict, levels: list[dict],
                ceiling: dict, pair: dict, server: dict, started_at: str, finished_at: str,
                models: list[dict] | None = None) -> dict:
    """The deploy stage's record, validated against studylib.record.DeployRecord.

    pair: studylib.serve.loadtest.paired's result; the HTTP overhead is its HTTP p50 minus its in-process p50.
    models: studylib.serve.benchmark.measure_runs's rows, one per model."""
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
        server=server, models=models or [], started_at=started_at, finished_at=finished_at,
    ).model_dump(mode="json")
