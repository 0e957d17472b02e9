"""The training setup, written once: data, model, batches, optimizer, schedule and loss for one TrainParams.

`prepare(params, data, device)` is what train (`run.train_run`), tune (each Optuna trial) and
`studylib bench` build before their first step, so all three train the same thing the same way.
It resolves the run's precision and memory format (amp and channels_last may be "auto": see
`train.speed`) once, and returns the choice as Prepared.speed: the loop's autocast, the model's and
the batches' memory format all follow it.
It seeds the global random number generators right before building the model: a model's initial
weights depend on its seed alone, not on what ran before in the process (tune loads the data
once and then builds one model per trial). With `pretrained` naming a run of the study, the
backbone's weights then come from that run's checkpoint (the head stays new), and the batches are
normalised with that run's mean and std, the inputs its backbone learned on.
The optimizer has a parameter group for the backbone (lr x backbone_lr_factor) and one for the head
(lr); every schedule scales both, so their ratio holds throughout.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import nn

from studylib.data.cache import TensorSplit, channel_stats, load_split
from studylib.data.loader import IMAGENET_MEAN, IMAGENET_STD, TensorBatches
from studylib.data.registry import Dataset, load_dataset
from studylib.models import create_model, is_head, load_backbone
from studylib.params import TrainParams, source_record, source_run_dir
from studylib.train.muon import MuonSGD
from studylib.train.speed import Speed, resolve


@dataclass
class RunData:
    """A run's three splits as uint8 tensors, and the normalisation its batches use."""
    dataset: Dataset
    splits: dict[str, TensorSplit]
    mean: list[float]
    std: list[float]
    normalisation: str


@dataclass
class Prepared:
    """Everything a training loop needs, built by `prepare`."""
    model: nn.Module           # the weights: what is counted, profiled and saved
    step_model: nn.Module      # what the loop calls: the model, or torch.compile(model) with params.compile
    train: TensorBatches
    val: TensorBatches
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    loss_fn: nn.Module
    speed: Speed               # the resolved amp and channels_last, and how they were chosen


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_run_data(params: TrainParams) -> RunData:
    """The dataset's three splits as uint8 tensors at the run's image size (from the cache when warm)."""
    ds = load_dataset(params.dataset, params.root, seed=params.seed, val_fraction=params.val_fraction)
    splits = {s: load_split(ds.cache_key, s, ds.splits[s], params.image_size) for s in ("train", "val", "test")}
    if params.train_limit and params.train_limit < len(splits["train"]):
        g = torch.Generator().manual_seed(params.seed)
        keep = torch.randperm(len(splits["train"]), generator=g)[: params.train_limit].sort().values
        tr = splits["train"]
        splits["train"] = TensorSplit(tr.images[keep], tr.labels[keep], [tr.names[i] for i in keep.tolist()],
                                      tr.skipped, tr.seconds, tr.cache_hit, tr.path)
    if isinstance(params.pretrained, str):
        source = source_record(params.pretrained)
        mean, std = source["data"]["mean"], source["data"]["std"]
        how = f"mean/std of pretrained run {source['run_id']} ({source['data']['normalisation']})"
    elif params.pretrained:
        mean, std, how = IMAGENET_MEAN, IMAGENET_STD, "ImageNet mean/std (pretrained weights)"
    else:
        mean, std = channel_stats(splits["train"].images)
        how = "train split's channel mean/std"
    return RunData(ds, splits, mean, std, how)


def batches(data: RunData, split: str, params: TrainParams, device: str, train: bool,
            speed: Optional[Speed] = None) -> TensorBatches:
    """A split's batches: for training shuffled, augmented and all of one size (`train_batch_size`; the
    last, smaller batch is dropped, so BatchNorm never sees a batch of one image); for evaluation every
    image, at least 256 a batch.

    Their memory format is speed's (default: resolved from params, as `prepare` does).
    """
    s = data.splits[split]
    speed = speed or resolve(params, device)
    return TensorBatches(s.images, s.labels, train_batch_size(data, params) if train else max(256, params.batch_size),
                         mean=data.mean, std=data.std, device=device, shuffle=train,
                         augment=train and params.augment, seed=params.seed, drop_last=train,
                         channels_last=speed.channels_last, flip=params.flip,
                         low_res_epochs=params.low_res_epochs, low_res_size=params.low_res_size)


def train_batch_size(data: RunData, params: TrainParams) -> int:
    """The training batch size: params.batch_size, or the whole train split when it is smaller."""
    return max(1, min(params.batch_size, len(data.splits["train"])))


def steps_per_epoch(data: RunData, params: TrainParams) -> int:
    """Training steps in one pass over the train split (full batches only: the rest waits for the next epoch's shuffle)."""
    return len(data.splits["train"]) // train_batch_size(data, params)


def build_model(params: TrainParams, num_classes: int, device: str, channels_last: bool) -> nn.Module:
    """The run's model: ImageNet weights with pretrained=True; with a run as `pretrained`, that run's
    backbone weights and a new head."""
    model = create_model(params.model, num_classes, params.pretrained is True, params.finetune, params.head,
                         image_size=params.image_size)
    if isinstance(params.pretrained, str):
        load_backbone(model, torch.load(source_run_dir(params.pretrained) / "model.pt", map_location="cpu",
                                        weights_only=True))
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


WHITENING_IMAGES = 5000


def fit_to_data(model: nn.Module, data: RunData, params: TrainParams, device: str) -> None:
    """Weights a model sets from the training images before its first step, when it trains from scratch:
    airbench's whitening conv, from the first WHITENING_IMAGES training images normalised as its batches are."""
    if not hasattr(model, "fit_whitening") or params.pretrained is not False:
        return
    x = data.splits["train"].images[:WHITENING_IMAGES].float()
    mean = torch.tensor(data.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(data.std).view(1, 3, 1, 1) * 255
    model.fit_whitening(((x - mean) / std).to(device))


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float,
                    backbone_lr_factor: float = 1.0, muon_lr: float = 0.24) -> torch.optim.Optimizer:
    """Adam, AdamW, SGD (Nesterov momentum 0.9) or Muon over the trainable parameters, in two groups: the
    backbone's at lr x backbone_lr_factor, the head's at lr (a group without trainable parameters is left out).
    A model with its own `lr_factor(name, optimizer)` (airbench: BatchNorm shifts at 64x) splits them further;
    such a group's weight decay is divided by its factor, so each step decays its weights by the same amount.
    "muon": the conv filters (4-D weights) step by Muon at muon_lr (x backbone_lr_factor in the backbone) without
    weight decay, the rest by SGD as above (`train.muon.MuonSGD`).

    The fused implementation (one kernel for all parameters) when every parameter is a float
    tensor on the CPU or a CUDA device: for models of many small tensors it is several times
    faster than the per-parameter loop (`studylib bench` measures the step it is part of).
    """
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups: dict[tuple[bool, float], dict] = {}
    filters: dict[bool, dict] = {}                      # muon: the conv filters, by head or backbone
    for n, p in trainable:
        head = is_head(model, n)
        part = 1 if head else backbone_lr_factor
        if name == "muon" and p.ndim == 4:
            filters.setdefault(head, {"params": [], "lr": muon_lr * part, "muon": True})["params"].append(p)
            continue
        factor = model.lr_factor(n, name) if hasattr(model, "lr_factor") else 1.0   # a model's own recipe (airbench)
        group = groups.setdefault((head, factor), {"params": [], "lr": lr * factor * part,
                                                   "weight_decay": weight_decay / factor})
        group["params"].append(p)
    groups = [groups[k] for k in sorted(groups)]
    if name == "muon":
        return MuonSGD(groups + [filters[k] for k in sorted(filters)])
    fused = {"fused": True} if trainable and all(
        p.device.type in ("cpu", "cuda") and p.is_floating_point() for _, p in trainable) else {}
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay, **fused)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, **fused)
    return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay, **fused)


def optimizer_for(model: nn.Module, params: TrainParams) -> torch.optim.Optimizer:
    """`build_optimizer` with a run's parameters."""
    return build_optimizer(model, params.optimizer, params.lr, params.weight_decay, params.backbone_lr_factor,
                           params.muon_lr)


def build_schedule(optimizer, name: str, total_steps: int):
    """The learning-rate schedule over `total_steps` steps: cosine, one-cycle, linear (from the peak
    straight down to 0, airbench94_muon's) or constant. Each parameter group's schedule peaks at the
    group's own learning rate."""
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps))
    if name == "onecycle":
        total = max(1, total_steps)
        # OneCycleLR divides by zero when pct_start * total_steps == 1 (4 steps at 0.25): warm up a bit longer then.
        pct = 0.25 if 0.25 * total != 1 else 0.3
        peaks = [g["lr"] for g in optimizer.param_groups]
        cycle = "momentum" in optimizer.defaults or "betas" in optimizer.defaults   # MuonSGD: its momenta stay
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peaks, total_steps=total, pct_start=pct,
                                                   cycle_momentum=cycle)
    if name == "linear":
        total = max(1, total_steps)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1 - step / total))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def prepare(params: TrainParams, data: RunData, device: str, total_steps: Optional[int] = None,
            speed: Optional[Speed] = None) -> Prepared:
    """Resolve the precision and memory format, seed, then build the model (compiled for the step
    with params.compile), the train and val batches, the optimizer, the schedule and the loss.

    The schedule spans `total_steps` steps: by default params.epochs passes over the train split;
    the bench passes its own count (warm-up and measured passes). speed: a setting chosen by the
    caller (the bench measures the loop in the one "auto" will choose); default `speed.resolve`.
    """
    speed = speed or resolve(params, device)
    seed_everything(params.seed)
    model = build_model(params, len(data.dataset.classes), device, speed.channels_last)
    fit_to_data(model, data, params, device)
    step_model = torch.compile(model) if params.compile else model
    train = batches(data, "train", params, device, train=True, speed=speed)
    val = batches(data, "val", params, device, train=False, speed=speed)
    optimizer = optimizer_for(model, params)
    steps = params.epochs * len(train) if total_steps is None else total_steps
    schedule = build_schedule(optimizer, params.schedule, steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=params.label_smoothing)
    return Prepared(model, step_model, train, val, optimizer, schedule, loss_fn, speed)
