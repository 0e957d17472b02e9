"""The run record: one schema, defined here, written by every stage and read by every consumer.

Each stage notebook glues one scrap named `record` (scrapbook), a JSON dict that validates
as its stage's model in RECORD_TYPES; readers validate it against the same model. The run id is
a readable prefix plus a hash of the parameters, so the same parameters always name the same run.
"""
from __future__ import annotations

import hashlib
import json
from typing import Optional, Union

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from studylib.errors import redact
from studylib.paths import check_name


def params_hash(params: dict) -> str:
    blob = json.dumps(params, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def run_id(stage: str, params: dict) -> str:
    """`<stage>-<dataset>-<model>-s<seed>-<hash>`: readable, and unique to the parameters."""
    parts = [stage, params.get("dataset"), params.get("model"),
             f"s{params['seed']}" if "seed" in params else None]
    prefix = "-".join(str(p) for p in parts if p not in (None, ""))
    return check_name("run id", f"{prefix}-{params_hash(params)}")   # it names the run's folder and notebook


class Record(BaseModel):
    """What every stage's record holds. No record holds a secret: whatever a record is built from passes
    through studylib.errors.redact first (every stage's record type inherits this)."""
    model_config = ConfigDict(extra="allow", protected_namespaces=())
    run_id: str
    stage: str
    status: str = "ok"           # ok | failed
    params: dict
    error: Optional[str] = None

    @model_validator(mode="before")
    @classmethod
    def _no_secrets(cls, data):
        return redact(data) if isinstance(data, dict) else data


class EpochStats(BaseModel):
    epoch: int
    train_loss: float
    train_top1: float
    val_loss: float
    val_top1: float
    lr: float
    seconds: float               # wall time of the epoch's training steps
    val_seconds: float           # wall time of the epoch's validation pass
    images_per_second: float     # training images / seconds
    data_wait_seconds: float     # time the loop waited for batches


class TestMetrics(BaseModel):
    top1: float
    top5: float
    balanced_accuracy: float
    macro_f1: float
    per_class: list[dict]
    confusion_matrix: list[list[int]]
    # Each test image's predicted and true class, in the test split's order (the split does not depend on
    # the seed), so two runs on the same images compare image by image (studylib.uncertainty). Empty in
    # records written before they were kept.
    predictions: list[int] = []
    labels: list[int] = []
    images_digest: str = ""      # hash of the test images' names and labels in order: equal digests, same images


class TrainRecord(Record):
    stage: str = "train"
    dataset: str
    model: str
    pretrained: Union[bool, str]        # false, true (ImageNet weights) or the run id / run folder given as parameter
    source_run_id: Optional[str] = None     # the run whose backbone weights this run started from (None: scratch, ImageNet)
    source_dataset: Optional[str] = None    # the dataset that run trained on
    device: str
    hardware: dict
    versions: dict
    classes: list[str]
    num_classes: int
    image_size: int
    param_count: int
    trainable_params: int
    size_mb: float
    gmacs: float
    data: dict                   # split sizes, skipped images, cache paths and times, normalisation
    history: list[EpochStats]
    test: TestMetrics
    train_seconds: float         # all epochs, training and validation
    first_step_seconds: float    # the first step alone: warm-up (and compile, with compile=True)
    compile_seconds: Optional[float] = None
    # what the run trained in, params amp/channels_last resolved (studylib.train.speed): fp32 | bf16,
    # nchw | nhwc (channels_last), and how they were chosen ("parameters", "default: ...", "bench row ...")
    precision: Optional[str] = None
    memory_format: Optional[str] = None
    speed_source: Optional[str] = None
    eval_seconds: float          # the single pass over the test split
    time_to_target: dict[str, Optional[float]]  # val top-1 target -> train seconds to first reach it
    epoch_to_target: dict[str, Optional[int]]
    peak_memory_mb: float
    profile: Optional[dict] = None
    checkpoint: str
    started_at: str
    finished_at: str


def failed_record(stage: str, params: dict, error: str, rid: str | None = None) -> dict:
    """A failed run's record: its parameters and error, redacted as every record is."""
    return Record(run_id=rid or run_id(stage, params), stage=stage, status="failed",
                  params=params, error=error).model_dump(mode="json")


# --- stage "tune" (studylib/stages/tune.py, notebooks/tune.ipynb) ------------------------------------

class TuneTrial(BaseModel):
    number: int
    state: str                   # COMPLETE | PRUNED | FAIL | RUNNING | WAITING
    value: Optional[float]       # final val top-1 (None unless COMPLETE)
    params: dict
    intermediate: list[float]    # val top-1 reported after each epoch
    seconds: Optional[float]
    worker: Optional[str]        # host:pid that ran it


class TuneRecord(Record):
    stage: str = "tune"
    dataset: str
    model: str
    image_size: int
    epochs: int                  # the budget of one trial
    study_name: str
    storage: str                 # Optuna storage URL, password hidden
    search_space: dict           # parameter -> Optuna distribution as JSON
    pruner: str
    sampler: str
    device: str
    hardware: dict
    versions: dict
    n_trials: int                # total wanted (complete + pruned, all workers)
    trial_counts: dict[str, int] # per state, the whole study
    trials: list[TuneTrial]
    trials_this_process: list[int]
    best_trial: int
    best_params: dict
    best_val_top1: float         # the search's objective: validation, never test
    worst_trial: int
    worst_params: dict
    worst_val_top1: float
    default_val_top1: float      # default hyperparameters, same budget and loop
    val_gain: float
    retrained_val_top1: float    # the best configuration retrained by train_run (reproduces the trial on CPU)
    tuned_run_id: str
    tuned_test_top1: float
    tuned_reused: bool
    default_run_id: str
    default_test_top1: float
    default_reused: bool
    test_gain: float             # tuned - default test top-1
    complete_seconds: float      # summed trial durations, the whole study (all workers)
    pruned_seconds: float
    failed_seconds: float
    tuning_seconds: float        # complete + pruned + failed: the machine time the search cost
    epochs_trained: int
    epochs_saved_by_pruning: int
    process_seconds: float       # this process's wall time in the search
    data_seconds: float          # this process's data loading (once, reused by every trial)
    retrain_seconds: float       # train seconds of the best configuration's run (0 when reused)
    default_seconds: float       # train seconds of the default run (0 when reused)
    started_at: str
    finished_at: str


# --- stage "cost" (studylib/stages/cost, notebooks/cost.ipynb) ------------------------------------

class CostRecord(Record):
    stage: str = "cost"
    study: str
    prices: dict[str, dict]      # every price entry used (this machine's after the user's override)
    this_machine: list[str]      # the hardware labels priced as "this machine"
    machines: list[dict]         # hardware label -> price entry, for every hardware in the records
    runs: list[dict]             # one priced row per successful train run (and per tuned run)
    targets: list[dict]          # time- and cost-to-accuracy per run and val top-1 target (DAWNBench)
    cheapest: list[dict]         # per dataset and target, the cheapest run to reach it
    serving: list[dict]          # per deploy record: throughput, p50 latency, cost per million predictions
    projections: list[dict]      # per run and machine: measured, projected from a measured ratio, or not measured
    time_breakdown: list[dict]   # hours in data prep, tuning, training, evaluation per dataset and model
    automl: list[dict]           # study 000's published rows next to ours
    published_source: str
    notes: list[str]


# --- stage "data_prep" (studylib/stages/data_prep.py, notebooks/data_prep.ipynb) ------------------------

class DataPrepRecord(Record):
    stage: str = "data_prep"
    dataset: str
    root: str                    # as given, without credentials
    classes: list[str]
    num_classes: int
    sizes: dict[str, int]        # images per split
    problems: int                # every problem found (the dataset card lists them)
    problem_counts: dict[str, int]  # per kind: zero-byte file, truncated image, duplicate across splits, ...
    checksums: Optional[dict]    # the checksum list's verification (listed, verified, mismatched, missing)
    splits: dict                 # where the splits come from; the manifest's path when one was made
    mean: dict[str, list[float]] # image size (px) -> the train split's channel mean in [0, 1], as train computes it
    std: dict[str, list[float]]
    cache: list[dict]            # per image size and split: images, skipped, seconds, hit, path, mb
    storage: Optional[dict]      # object storage: mode, files, bytes, list/prefetch/fetch/first-pass seconds
    seconds: dict[str, float]    # open, integrity, splits, describe, cache, total
    hardware: dict
    versions: dict
    started_at: str
    finished_at: str


# --- stage "deploy" (studylib/stages/deploy.py, serve/, notebooks/deploy.ipynb) ---------

class LoadLevel(BaseModel):
    concurrency: int
    requests: int                # measured requests (warm-up excluded)
    errors: int                  # replies other than 200
    seconds: float               # the measured window
    throughput: float            # requests per second
    p50_ms: Optional[float]
    p90_ms: Optional[float]
    p99_ms: Optional[float]
    mean_ms: Optional[float]


class ModelServing(BaseModel):
    """One trained model served in-process by ONNX Runtime on the deploy machine's CPU (the deploy stage)."""
    model: str
    run_id: str                  # the train run measured
    latency_ms: float            # one image at a time (batch 1), median
    throughput: float            # images per second at batch_size
    batch_size: int
    fp32_mb: float               # the fp32 ONNX file
    int8_mb: Optional[float]     # the int8 (static quantisation) ONNX file; None when it was not made
    fp32_top1: float             # test top-1 of the fp32 ONNX model
    int8_top1: Optional[float]


class DeployRecord(Record):
    stage: str = "deploy"
    train_run_id: str            # the served train run
    dataset: str
    model: str
    image_size: int
    backend: str                 # onnx | torch
    precision: str               # fp32 | int8
    device: str
    hardware: dict
    versions: dict
    export: dict                 # files, sizes_mb, seconds; checks per format: max_abs_diff, top1_agreement, top1
    sizes_mb: dict[str, float]   # checkpoint, torch_export, onnx, onnx_int8
    pytorch_top1: float          # test top-1 of the checkpoint, recomputed offline
    onnx_top1: float
    int8_top1: Optional[float]
    int8_top1_change: Optional[float]  # int8 - fp32 ONNX test top-1
    int8_size_ratio: Optional[float]   # int8 / fp32 ONNX file size
    served: dict                 # every test image once: images, agreement with offline top-1, mismatches, latency
    served_agreement: float      # share of test images whose served top-1 equals the offline PyTorch top-1
    served_top1: float           # served top-1 accuracy on the test split
    load: list[LoadLevel]        # one row per concurrency
    throughput: float            # the best HTTP throughput over the concurrency levels, requests per second
    latency_p50_ms: float        # HTTP p50 at concurrency 1
    ceiling: dict                # in-process: latency percentiles, model-only latency, batched images/s; paired
    inprocess_p50_ms: float      # in-process p50 of the same per-request work
    http_overhead_ms: float      # HTTP p50 - in-process p50, measured in alternating rounds (ceiling.paired)
    server: dict                 # command, threads, workers, startup seconds, alive after the test
    models: list[ModelServing] = []  # every trained model's ONNX Runtime numbers on this CPU, not only the served run
    started_at: str
    finished_at: str


# --- reading records back ------------------------------------------------------------------------

RECORD_TYPES: dict[str, type[Record]] = {"data_prep": DataPrepRecord, "train": TrainRecord, "tune": TuneRecord,
                                         "deploy": DeployRecord, "cost": CostRecord}


def field_path(loc: tuple) -> str:
    """A pydantic error location as one readable path: ("history", 0, "lr") -> "history[0].lr"."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def invalid_field(stage: str, data: dict) -> Optional[str]:
    """None when `data` validates as the stage's record type; else the first field that failed, and why."""
    try:
        RECORD_TYPES.get(stage, Record).model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        return f"record field '{field_path(first['loc'])}': {first['msg']}"
    return None
