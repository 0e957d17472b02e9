"""The training loop: read it top to bottom like the methods section.

For each epoch: shuffle, take batches of in-memory tensors, take one `train_step` per batch (the
study's one training step, which `studylib bench` measures too), then validate. The clock is read
around exactly that work (after a CUDA synchronise), and the time spent waiting for batches is
counted separately. The test split is not touched here: `run.py` evaluates it once, after training.
"""
from __future__ import annotations

import contextlib
import time
from typing import Callable, Optional

import torch
from torch import nn

from studylib.data.loader import TensorBatches
from studylib.record import EpochStats
from studylib.train.speed import DEFAULT, device_type


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def autocast(device: str, amp: bool | str):
    """bf16 autocast when amp is on, on CUDA and on a CPU alike; fp32 when it is off.

    amp is the run's resolved setting (`train.speed.resolve`, which `setup.prepare` returns as
    Prepared.speed.amp). An unresolved "auto" means the device's default precision (speed.DEFAULT),
    never the bench's choice: a caller that passes params.amp trains as if no bench had run.
    """
    if amp == "auto":
        amp = DEFAULT[device_type(device)][0] == "bf16"
    if amp:
        return torch.autocast(device_type(device), dtype=torch.bfloat16)
    return contextlib.nullcontext()


def tta_views(tta: bool | str) -> str:
    """The views `evaluate` averages for a run's `tta` setting: False -> "none", True -> "flip", else itself."""
    return {False: "none", True: "flip"}.get(tta, tta)


def predict(model: nn.Module, x: torch.Tensor, views: str = "none") -> torch.Tensor:
    """Logits (float32) of one batch, averaged over test-time views.

    "none": the images as they are. "flip": each image and its mirror, averaged. "flip_translate":
    airbench's six views: the flip average of the images, weighted 1/2, and the flip averages of the
    images shifted by one pixel up-left and down-right (reflect padding), 1/4 each.
    """
    out = model(x).float()
    if views == "none":
        return out
    out = (out + model(x.flip(3)).float()) / 2
    if views == "flip":
        return out
    h, w = x.shape[-2:]
    padded = nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    shifted = [padded[:, :, :h, :w], padded[:, :, 2:, 2:]]
    return out / 2 + sum((model(v).float() + model(v.flip(3)).float()) / 2 for v in shifted) / 4


@torch.no_grad()
def evaluate(model: nn.Module, batches: TensorBatches, device: str, amp: bool = False, views: str = "none"):
    """(logits as float32 on CPU, labels on CPU, mean cross-entropy loss), each batch through `predict`
    with the given test-time views."""
    model.eval()
    logits, labels = [], []
    with autocast(device, amp):
        for x, y in batches:
            logits.append(predict(model, x, views))
            labels.append(y)
    model.train()
    if not logits:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long), float("nan")
    logits, labels = torch.cat(logits), torch.cat(labels)
    loss = nn.functional.cross_entropy(logits, labels).item()
    return logits.cpu(), labels.cpu(), loss


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer, schedule,
               loss_fn, device: str, amp: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One training step: forward and loss under autocast, zero_grad, backward, optimizer step, schedule step.

    Returns (outputs, loss). With schedule=None the learning rate stays where it is (the bench's
    bare step, whose optimizer belongs to the loop it is measured against).
    """
    with autocast(device, amp):
        out = model(x)
        loss = loss_fn(out, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if schedule is not None:
        schedule.step()
    return out, loss


def train_epoch(model, batches: TensorBatches, optimizer, schedule, loss_fn, device: str, amp: bool,
                step_hook: Optional[Callable[[int], None]] = None) -> dict:
    """One pass over the training batches, one `train_step` each (schedule=None: a fixed learning rate).

    Returns loss, top-1, seconds, data-wait and first-step seconds.
    """
    model.train()
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    data_wait = 0.0
    first_step = None
    synchronize(device)
    start = time.perf_counter()
    it = iter(batches)
    step = 0
    while True:
        t_wait = time.perf_counter()
        try:
            x, y = next(it)
        except StopIteration:
            break
        data_wait += time.perf_counter() - t_wait
        out, loss = train_step(model, x, y, optimizer, schedule, loss_fn, device, amp)
        total_loss += loss.detach() * len(y)
        correct += (out.argmax(1) == y).sum()
        seen += len(y)
        if first_step is None:
            synchronize(device)
            first_step = time.perf_counter() - start
        if step_hook is not None:
            step_hook(step)
        step += 1
    synchronize(device)
    seconds = time.perf_counter() - start
    return {"loss": total_loss.item() / max(1, seen), "top1": correct.item() / max(1, seen),
            "seconds": seconds, "data_wait": data_wait, "images": seen, "first_step": first_step or 0.0}


class Lookahead:
    """airbench's lookahead, a step hook: every 5 steps a moving average of the weights (and BatchNorm
    statistics) moves toward them and the weights are reset to it. Its decay grows as (step / total)^3
    up to 0.95^5, so early steps keep their own weights; after the last step the weights are the average."""

    EVERY = 5

    def __init__(self, model: nn.Module, total_steps: int):
        self.model, self.total, self.steps = model, max(1, total_steps), 0
        self.average = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def __call__(self, _step: int) -> None:
        self.steps += 1
        if self.steps % self.EVERY and self.steps < self.total:
            return
        # on the last step between two updates, the weights go back to the average as it stands
        decay = 0.95 ** 5 * (self.steps / self.total) ** 3 if self.steps % self.EVERY == 0 else 1.0
        for k, v in self.model.state_dict().items():
            if k in self.average:
                self.average[k].lerp_(v, 1 - decay)
                v.copy_(self.average[k])


def fit(model: nn.Module, train: TensorBatches, val: TensorBatches, *, epochs: int, optimizer, schedule,
        loss_fn, device: str, amp: bool = False, early_stopping: int = 0, tta: bool | str = False,
        lookahead: bool = False, on_epoch: Optional[Callable[[EpochStats], None]] = None,
        progress: bool = True) -> dict:
    """Train for `epochs`, validating after each. `on_epoch` may raise to stop (Optuna's pruner does).

    Returns {"history": [EpochStats], "first_step_seconds": float}. With early_stopping=N, training
    stops after N epochs without a better val top-1 and the best weights are restored.
    tta (the run's setting, `tta_views`) names the test-time views of validation. Six views cost six
    times one view's evaluation, so with tta "flip_translate" every epoch but the last validates with the
    images alone (1.6 s instead of the flip's 3.1 an epoch on the CIFAR-10 headline, about 3% of it) and
    the last, the model the test sees, with all six. lookahead=True trains with `Lookahead`.
    """
    from tqdm.auto import tqdm  # lazy: only the progress bar needs it
    history: list[EpochStats] = []
    best, best_state, stale = -1.0, None, 0
    first_step_seconds = 0.0
    bar = tqdm(range(1, epochs + 1), desc="epochs", disable=not progress, leave=True)
    hook = Lookahead(model, epochs * len(train)) if lookahead else None
    for epoch in bar:
        stats = train_epoch(model, train, optimizer, schedule, loss_fn, device, amp, step_hook=hook)
        if epoch == 1:
            first_step_seconds = stats["first_step"]
        epoch_finished = getattr(model, "epoch_finished", None)   # a net's own schedule (AirbenchNet's)
        if epoch_finished is not None:
            epoch_finished(epoch)
        synchronize(device)
        t_val = time.perf_counter()
        views = tta_views(tta)
        if views == "flip_translate" and epoch < epochs:
            views = "none"
        logits, labels, val_loss = evaluate(model, val, device, amp, views)
        synchronize(device)
        val_seconds = time.perf_counter() - t_val
        val_top1 = (logits.argmax(1) == labels).float().mean().item() if len(labels) else float("nan")
        row = EpochStats(epoch=epoch, train_loss=stats["loss"], train_top1=stats["top1"], val_loss=val_loss,
                         val_top1=val_top1, lr=optimizer.param_groups[0]["lr"], seconds=stats["seconds"],
                         val_seconds=val_seconds, images_per_second=stats["images"] / stats["seconds"],
                         data_wait_seconds=stats["data_wait"])
        history.append(row)
        bar.set_postfix(loss=f"{row.train_loss:.3f}", val_top1=f"{val_top1:.3f}", img_s=f"{row.images_per_second:.0f}")
        if on_epoch is not None:
            on_epoch(row)
        if early_stopping:
            if val_top1 > best:
                best, stale = val_top1, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
                if stale >= early_stopping:
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    return {"history": history, "first_step_seconds": first_step_seconds}


def time_to_targets(history: list[EpochStats], targets: list[float]) -> tuple[dict, dict]:
    """For each val top-1 target: cumulative seconds (train + val) and epoch at which it was first reached."""
    seconds, epochs = {}, {}
    for t in targets:
        elapsed, hit_s, hit_e = 0.0, None, None
        for row in history:
            elapsed += row.seconds + row.val_seconds
            if row.val_top1 >= t:
                hit_s, hit_e = elapsed, row.epoch
                break
        seconds[f"{t:g}"], epochs[f"{t:g}"] = hit_s, hit_e
    return seconds, epochs
