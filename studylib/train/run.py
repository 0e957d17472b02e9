"""One training run, start to finish: data, model, loop, one test evaluation, checkpoint, record.

train.ipynb calls `train_run(params)` and shows what it returns; tune.ipynb calls the same
pieces for each trial, so there is one training loop in the study.
"""
from __future__ import annotations

import random
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from studylib import environment
from studylib.data.cache import TensorSplit, channel_stats, load_split
from studylib.data.registry import Dataset, load_dataset
from studylib.data.loader import IMAGENET_MEAN, IMAGENET_STD, TensorBatches
from studylib.train.metrics import classification_report
from studylib.models import count_parameters, create_model, gmacs, size_mb
from studylib.params import TrainParams
from studylib.paths import runs_dir
from studylib.train.profiling import UtilisationSampler, peak_memory
from studylib.record import TrainRecord, run_id
from studylib.util import atomic_write, atomic_write_json, now
from studylib.train.loop import build_optimizer, build_schedule, evaluate, fit, time_to_targets


@dataclass
class RunData:
    dataset: Dataset
    splits: dict[str, TensorSplit]
    mean: list[float]
    std: list[float]
    normalisation: str


@dataclass
class TrainResult:
    record: dict
    model: nn.Module
    data: RunData
    test_logits: torch.Tensor
    output_dir: Path


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_run_data(params: TrainParams) -> RunData:
    """The dataset's three splits as uint8 tensors at the run's image size (from the cache when warm)."""
    ds = load_dataset(params.dataset, params.root, seed=params.seed, val_fraction=params.val_fraction)
    splits = {s: load_split(ds.name if ds.name != "imagefolder" else f"imagefolder-{Path(ds.root).name}",
                            s, ds.splits[s], params.image_size) for s in ("train", "val", "test")}
    if params.train_limit and params.train_limit < len(splits["train"]):
        g = torch.Generator().manual_seed(params.seed)
        keep = torch.randperm(len(splits["train"]), generator=g)[: params.train_limit].sort().values
        tr = splits["train"]
        splits["train"] = TensorSplit(tr.images[keep], tr.labels[keep], [tr.names[i] for i in keep.tolist()],
                                      tr.skipped, tr.seconds, tr.cache_hit, tr.path)
    if params.pretrained:
        mean, std, how = IMAGENET_MEAN, IMAGENET_STD, "ImageNet mean/std (pretrained weights)"
    else:
        mean, std = channel_stats(splits["train"].images)
        how = "train split's channel mean/std"
    return RunData(ds, splits, mean, std, how)


def batches(data: RunData, split: str, params: TrainParams, device: str, train: bool) -> TensorBatches:
    s = data.splits[split]
    return TensorBatches(s.images, s.labels, params.batch_size if train else max(256, params.batch_size),
                         mean=data.mean, std=data.std, device=device, shuffle=train,
                         augment=train and params.augment, seed=params.seed, drop_last=False,
                         channels_last=params.channels_last and device.startswith("cuda"))


def build_model(params: TrainParams, num_classes: int, device: str) -> nn.Module:
    model = create_model(params.model, num_classes, params.pretrained, params.finetune, params.head,
                         image_size=params.image_size).to(device)
    if params.channels_last and device.startswith("cuda"):
        model = model.to(memory_format=torch.channels_last)
    return model


def peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def save_checkpoint(model: nn.Module, path: Path) -> None:
    state = getattr(model, "_orig_mod", model).state_dict()
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(record: dict, device: str = "cpu") -> nn.Module:
    """Rebuild a trained run's model from its record and checkpoint (weights_only=True)."""
    p = record["params"]
    model = create_model(p["model"], record["num_classes"], False, p.get("finetune", "all"), p.get("head", "linear"),
                         image_size=p["image_size"])
    state = torch.load(record["checkpoint"], map_location=device, weights_only=True)
    model.load_state_dict(state)
    return model.to(device).eval()


def train_run(params: TrainParams, progress: bool = True, on_epoch=None) -> TrainResult:
    started = now()
    rid = run_id("train", params.run_params())
    out_dir = Path(params.output_dir) if params.output_dir else runs_dir() / rid
    device = environment.resolve_device(params.device)
    seed_everything(params.seed)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)  # this run's peak, not the process's

    data = load_run_data(params)
    num_classes = len(data.dataset.classes)
    model = build_model(params, num_classes, device)
    total, trainable = count_parameters(model)
    macs = gmacs(model, params.image_size)

    step_model = model
    if params.compile:
        step_model = torch.compile(model)
    train_b = batches(data, "train", params, device, train=True)
    val_b = batches(data, "val", params, device, train=False)
    optimizer = build_optimizer(model, params.optimizer, params.lr, params.weight_decay)
    schedule = build_schedule(optimizer, params.schedule, params.lr, params.epochs * len(train_b))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=params.label_smoothing)

    # CPU (and GPU) utilisation sampled on a thread while the model trains and is tested: every run.
    with UtilisationSampler(device) as sampler:
        t0 = time.perf_counter()
        fitted = fit(step_model, train_b, val_b, epochs=params.epochs, optimizer=optimizer, schedule=schedule,
                     loss_fn=loss_fn, device=device, amp=params.amp, early_stopping=params.early_stopping,
                     on_epoch=on_epoch, progress=progress)
        train_seconds = time.perf_counter() - t0
        history = fitted["history"]

        # The test split, touched once.
        t1 = time.perf_counter()
        test_logits, test_labels, _ = evaluate(step_model, batches(data, "test", params, device, train=False), device, params.amp)
        eval_seconds = time.perf_counter() - t1
    report = classification_report(test_logits, test_labels, data.dataset.classes)
    peak_mb = peak_memory_mb(device)

    profile = {**sampler.summary(), **peak_memory(device), "operators": None}
    if params.profile:  # torch.profiler over a few more steps, on copies: the trained weights stay as they are
        from studylib.train.profiling import profile_steps
        profile["operators"] = profile_steps(model, train_b, optimizer, loss_fn, device, params.amp)

    checkpoint = out_dir / "model.pt"
    save_checkpoint(model, checkpoint)
    tts, tte = time_to_targets(history, params.targets)
    median_step = None
    if history:
        steps = len(train_b)
        median_step = float(np.median([h.seconds / steps for h in history]))
    record = TrainRecord(
        run_id=rid, params=params.model_dump(), dataset=params.dataset, model=params.model,
        pretrained=params.pretrained, device=device, hardware=environment.hardware(device),
        versions=environment.versions(), classes=data.dataset.classes, num_classes=num_classes,
        image_size=params.image_size, param_count=total, trainable_params=trainable, size_mb=size_mb(model),
        gmacs=macs,
        data={
            "root": data.dataset.root, "notes": data.dataset.notes,
            "sizes": {s: len(t) for s, t in data.splits.items()},
            "skipped": {s: t.skipped for s, t in data.splits.items()},
            "cache": {s: {"path": t.path, "seconds": t.seconds, "hit": t.cache_hit} for s, t in data.splits.items()},
            "normalisation": data.normalisation, "mean": data.mean, "std": data.std,
        },
        history=history, test=report, train_seconds=train_seconds,
        first_step_seconds=fitted["first_step_seconds"],
        compile_seconds=(fitted["first_step_seconds"] - median_step) if params.compile and median_step else None,
        eval_seconds=eval_seconds, time_to_target=tts, epoch_to_target=tte,
        peak_memory_mb=peak_mb, profile=profile, checkpoint=str(checkpoint),
        started_at=started, finished_at=now(),
    ).model_dump(mode="json")
    atomic_write_json(out_dir / "record.json", record)
    return TrainResult(record, model, data, test_logits, out_dir)
