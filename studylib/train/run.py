"""One training run, start to finish: setup, loop, one test evaluation, checkpoint, record.

train.ipynb calls `train_run(params)` and shows what it returns. The setup is `setup.prepare`'s
and the loop is `loop.fit`, the same that tune's trials and `studylib bench` use, so there is one
training loop in the study.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from studylib import environment
from studylib.models import count_parameters, create_model, gmacs, size_mb
from studylib.params import TrainParams
from studylib.paths import inside, runs_dir
from studylib.record import TrainRecord, run_id
from studylib.train.loop import evaluate, fit, time_to_targets, tta_views
from studylib.train.metrics import classification_report, images_digest
from studylib.train.profiling import UtilisationSampler, peak_memory, profile_steps
from studylib.train.setup import RunData, batches, load_run_data, prepare
from studylib.util import atomic_write, atomic_write_json, now


@dataclass
class TrainResult:
    record: dict
    model: nn.Module
    data: RunData
    test_logits: torch.Tensor
    output_dir: Path


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
    # a run as `pretrained`, checked again before any work (a grid validates a cell before its source has run)
    source = params.check_source() if isinstance(params.pretrained, str) else {}
    rid = run_id("train", params.run_params())
    out_dir = Path(params.output_dir) if params.output_dir else inside(runs_dir(), rid)
    device = environment.resolve_device(params.device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)  # this run's peak, not the process's

    data = load_run_data(params)
    num_classes = len(data.dataset.classes)
    setup = prepare(params, data, device)
    model = setup.model
    total, trainable = count_parameters(model)
    macs = gmacs(model, params.image_size)

    # CPU (and GPU) utilisation sampled on a thread while the model trains and is tested: every run.
    with UtilisationSampler(device) as sampler:
        t0 = time.perf_counter()
        fitted = fit(setup.step_model, setup.train, setup.val, epochs=params.epochs, optimizer=setup.optimizer,
                     schedule=setup.schedule, loss_fn=setup.loss_fn, device=device, amp=setup.speed.amp,
                     early_stopping=params.early_stopping, tta=params.tta,
                     lookahead=params.lookahead, on_epoch=on_epoch, progress=progress)
        train_seconds = time.perf_counter() - t0
        history = fitted["history"]

        # The test split, touched once.
        t1 = time.perf_counter()
        test_batches = batches(data, "test", params, device, train=False, speed=setup.speed)
        test_logits, test_labels, _ = evaluate(setup.step_model, test_batches, device, setup.speed.amp,
                                                 tta_views(params.tta))
        eval_seconds = time.perf_counter() - t1
    report = classification_report(test_logits, test_labels, data.dataset.classes)
    # which test images, in which order: runs with the same digest are compared image by image
    test = data.splits["test"]
    report["images_digest"] = images_digest([data.dataset.relative(n) for n in test.names], test.labels.tolist())
    memory = peak_memory(device)
    peak_mb = memory["cuda_peak_allocated_mb"] if device.startswith("cuda") else memory["host_peak_rss_mb"]

    profile = {**sampler.summary(), **memory, "operators": None}
    if params.profile:  # torch.profiler over a few more steps, on copies: the trained weights stay as they are
        profile["operators"] = profile_steps(model, setup.train, setup.optimizer, setup.loss_fn, device, setup.speed.amp)

    checkpoint = out_dir / "model.pt"
    save_checkpoint(model, checkpoint)
    tts, tte = time_to_targets(history, params.targets)
    median_step = None
    if history:
        steps = len(setup.train)
        median_step = float(np.median([h.seconds / steps for h in history]))
    record = TrainRecord(
        run_id=rid, params=params.model_dump(), dataset=params.dataset, model=params.model,
        pretrained=params.pretrained, source_run_id=source.get("run_id"), source_dataset=source.get("dataset"),
        device=device, hardware=environment.hardware(device),
        versions=environment.versions(), classes=data.dataset.classes, num_classes=num_classes,
        image_size=params.image_size, param_count=total, trainable_params=trainable, size_mb=size_mb(model),
        gmacs=macs, precision=setup.speed.precision, memory_format=setup.speed.layout,
        speed_source=setup.speed.source,
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
