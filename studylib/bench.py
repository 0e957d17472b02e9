"""`studylib bench`: how close the study's training loop runs to this machine's limit.

For each model, image size and batch size, in one process, with the same model and optimizer:

(a) a bare training step on in-memory random tensors: the study's own `train_step` (forward, loss,
    zero_grad, backward, optimizer step) without the schedule step; the ceiling for this model on
    this machine;
(b) the study's own loop, `studylib.train.loop.train_epoch`, over the real training split through
    the real data path (tensor cache, `TensorBatches`, augmentation, schedule, running metrics).

Both pass over the same number of images in the same batch sizes, so their ratio is fair. They
are interleaved so that other load on the machine hits both alike: on a CPU a bare step runs after
each step of the loop and is taken out of the loop's clock; on CUDA whole passes alternate
(a b, b a, ...). Each round is one pass of each; the medians over rounds are reported. Warm-up
steps run first, are excluded from both, and are reported (`warmup_seconds`; with `--compile`,
the warm-up time above the steady step time is `compile_seconds`). On CUDA every clock is read
after a synchronise. Inference is measured too: batch-1 latency and batch-64 throughput, in eval
mode without gradients.

One CSV row per model is appended to results/bench/benchmark-train-<precision>-<layout>-pt<torch>-<device>.csv
(named like timm's results files); `studylib.views.bench.load_bench_table()` reads them for the book's
methods chapter.

`--overhead STUDY` prints studylib.study.overhead's report instead: where a collected study's
notebook time went.
"""
from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

import pandas as pd
import torch

from studylib import environment
from studylib.errors import ParameterError
from studylib.models import count_parameters, gmacs
from studylib.params import TrainParams
from studylib.study.expand import load_grid
from studylib.study.overhead import print_overhead
from studylib.train.loop import autocast, synchronize, train_epoch, train_step
from studylib.train.profiling import FirstBatches
from studylib.train.setup import load_run_data, prepare, steps_per_epoch
from studylib.util import atomic_write, now
from studylib.views.bench import bench_dir, layout_name, precision_name

DEFAULT_MODELS = ["mobilenet_v3_small", "shufflenet_v2_x1_0"]

COLUMNS = [
    "model", "dataset", "image_size", "batch_size", "precision", "layout", "compile", "device", "device_name",
    "torch_threads", "images", "rounds", "interleave",
    "bare_samples_per_sec", "loop_samples_per_sec", "loop_ratio", "bare_step_ms", "loop_step_ms",
    "data_wait_share", "warmup_steps", "warmup_seconds", "compile_seconds",
    "infer_latency_ms", "infer_batch_size", "infer_samples_per_sec",
    "param_count", "gmacs", "torch", "git_sha", "measured_at",
]


# ---------------------------------------------------------------- names

def device_tag(device: str) -> str:
    """'cpu', or timm's style for a GPU: cu<CUDA version>-<GPU name>, e.g. cu132-h100-80gb-hbm3."""
    if not device.startswith("cuda"):
        return "cpu"
    name = torch.cuda.get_device_name(torch.device(device)).lower()
    name = re.sub(r"\b(nvidia|geforce)\b", "", name)
    name = re.sub(r"[^a-z0-9]+", "-", name).strip("-")
    return f"cu{(torch.version.cuda or '').replace('.', '')}-{name}"


def torch_tag() -> str:
    """pt<major><minor><patch>, as timm names its files (2.4.0 -> pt240)."""
    return "pt" + "".join(torch.__version__.split("+")[0].split(".")[:3])


def csv_name(precision: str, layout: str, device: str) -> str:
    return f"benchmark-train-{precision}-{layout}-{torch_tag()}-{device_tag(device)}.csv"


# ---------------------------------------------------------------- measuring

def _bare_steps(model, optimizer, loss_fn, inputs: dict, sizes: list[int], device: str, amp: bool,
                per_step: bool = False):
    """One bare training step per batch size in `sizes`; seconds in all (or per step).

    The step is the loop's `train_step` on random tensors already on the device, with no schedule
    step (the optimizer and its schedule are the loop's, sized to the loop's steps), no data path
    and no running metrics: what the loop does beyond this is what the ratio measures.
    """
    times = []
    synchronize(device)
    start = t = time.perf_counter()
    for b in sizes:
        x, y = inputs[b]
        train_step(model, x, y, optimizer, None, loss_fn, device, amp)
        if per_step:
            synchronize(device)
            now = time.perf_counter()
            times.append(now - t)
            t = now
    synchronize(device)
    return times if per_step else time.perf_counter() - start


def _inference(model, image_size: int, batch_size: int, device: str, amp: bool, memory_format,
               latency_calls: int, throughput_calls: int, warmup: int) -> dict:
    """Batch-1 latency (median ms over single synchronised calls) and batch-N throughput, eval mode."""
    def batch(n):
        return torch.randn(n, 3, image_size, image_size, device=device).contiguous(memory_format=memory_format)

    model.eval()
    first = []
    try:
        with torch.no_grad(), autocast(device, amp):
            x1, xb = batch(1), batch(batch_size)
            for x in (x1, xb):              # warm-up, each shape (compilation happens here)
                for _ in range(max(1, warmup)):
                    synchronize(device)
                    t = time.perf_counter()
                    model(x)
                    synchronize(device)
                    first.append((x.shape[0], time.perf_counter() - t))
            lat = []
            for _ in range(latency_calls):
                synchronize(device)
                t = time.perf_counter()
                model(x1)
                synchronize(device)
                lat.append(time.perf_counter() - t)
            synchronize(device)
            t = time.perf_counter()
            for _ in range(throughput_calls):
                model(xb)
            synchronize(device)
            seconds = time.perf_counter() - t
    finally:
        model.train()
    latency = statistics.median(lat)
    per_batch = seconds / throughput_calls
    excess = sum(max(0.0, s - (latency if n == 1 else per_batch)) for n, s in first)
    return {"infer_latency_ms": latency * 1e3, "infer_batch_size": batch_size,
            "infer_samples_per_sec": batch_size / per_batch, "infer_warmup_excess": excess}


def bench_one(params, rounds: int = 3, warmup: int = 5, infer: bool = True, infer_batch_size: int = 64,
              latency_calls: int = 50, throughput_calls: int = 10, interleave: str = "auto") -> dict:
    """Measure (a) the bare step and (b) the study's loop for one TrainParams; returns one CSV row.

    interleave: "step" runs a bare step after each step of the loop (on a CPU shared with other
    work, both then share the same moments of load); "pass" alternates whole passes (on CUDA,
    where a synchronise per step would take the loop's CPU-GPU overlap away); "auto" picks step
    on a CPU and pass on CUDA. The setup is train's and tune's (`studylib.train.setup.prepare`), its
    schedule sized to the loop's warm-up and measured passes.
    """
    device = environment.resolve_device(params.device)
    data = load_run_data(params)
    num_classes = len(data.dataset.classes)
    per_pass = steps_per_epoch(data, params)
    warm_loop = min(warmup, per_pass)
    setup = prepare(params, data, device, total_steps=warm_loop + rounds * per_pass)
    step_model, train_b, optimizer, schedule, loss_fn = (setup.step_model, setup.train, setup.optimizer,
                                                         setup.schedule, setup.loss_fn)
    total_params, _ = count_parameters(setup.model)
    macs = gmacs(setup.model, params.image_size)

    sizes = train_b.batch_sizes()
    images = sum(sizes)
    fmt = train_b.memory_format
    g = torch.Generator(device="cpu").manual_seed(params.seed)
    inputs = {b: (torch.randn(b, 3, params.image_size, params.image_size, generator=g).to(device).contiguous(memory_format=fmt),
                  torch.randint(0, num_classes, (b,), generator=g).to(device)) for b in sorted(set(sizes))}

    # Warm-up, excluded from both measurements: bare steps at the full batch size, one at each other
    # size (the last, smaller batch), then the loop's own first steps.
    full = max(sizes)
    warm_sizes = [full] * max(1, warmup) + [b for b in sorted(set(sizes)) if b != full]
    t_warm = time.perf_counter()
    warm_times = _bare_steps(step_model, optimizer, loss_fn, inputs, warm_sizes, device, params.amp, per_step=True)
    if warm_loop:
        train_epoch(step_model, FirstBatches(train_b, warm_loop), optimizer, schedule, loss_fn, device, params.amp)
    synchronize(device)
    warmup_seconds = time.perf_counter() - t_warm

    if interleave == "auto":
        interleave = "pass" if device.startswith("cuda") else "step"
    bare, loop, wait = [], [], []
    for r in range(rounds):
        if interleave == "step":
            # After each step of the loop, a bare step of the same size, timed on its own and taken
            # out of the loop's clock: both see the same moments of the machine's other load.
            hooked: list[float] = []

            def bare_step(k: int) -> None:
                synchronize(device)  # the loop's own queued work stays on the loop's clock
                hooked.append(_bare_steps(step_model, optimizer, loss_fn, inputs, [sizes[k]], device, params.amp))

            stats = train_epoch(step_model, train_b, optimizer, schedule, loss_fn, device, params.amp, step_hook=bare_step)
            bare.append(sum(hooked))
            loop.append(stats["seconds"] - sum(hooked))
        else:  # whole passes, alternating which goes first
            for what in (("bare", "loop") if r % 2 == 0 else ("loop", "bare")):
                if what == "bare":
                    bare.append(_bare_steps(step_model, optimizer, loss_fn, inputs, sizes, device, params.amp))
                else:
                    stats = train_epoch(step_model, train_b, optimizer, schedule, loss_fn, device, params.amp)
                    loop.append(stats["seconds"])
        if stats["images"] != images:
            raise RuntimeError(f"the loop saw {stats['images']} images, the bare steps {images}")
        wait.append(stats["data_wait"] / loop[-1])
    bare_s, loop_s = statistics.median(bare), statistics.median(loop)
    row = {
        "model": params.model, "dataset": params.dataset, "image_size": params.image_size,
        "batch_size": params.batch_size, "precision": precision_name(params.amp, device),
        "layout": layout_name(params.channels_last, device), "compile": params.compile, "device": device,
        "device_name": environment.hardware(device)["gpu_name"] or environment.cpu_model(),
        "torch_threads": torch.get_num_threads(), "images": images, "rounds": rounds, "interleave": interleave,
        "bare_samples_per_sec": images / bare_s, "loop_samples_per_sec": images / loop_s,
        # the ratio of each round's adjacent pair, then the median: drift in other load cancels out
        "loop_ratio": statistics.median(b / lp for b, lp in zip(bare, loop)),
        "bare_step_ms": bare_s / len(sizes) * 1e3, "loop_step_ms": loop_s / len(sizes) * 1e3,
        "data_wait_share": statistics.median(wait),
        "warmup_steps": len(warm_sizes) + warm_loop, "warmup_seconds": warmup_seconds,
        "compile_seconds": None,
        "infer_latency_ms": None, "infer_batch_size": None, "infer_samples_per_sec": None,
        "param_count": total_params, "gmacs": macs, "torch": torch.__version__,
        "git_sha": environment.git_sha(), "measured_at": now(),
    }
    excess = sum(max(0.0, t - b * bare_s / images) for t, b in zip(warm_times, warm_sizes))
    if infer:
        inf = _inference(step_model, params.image_size, infer_batch_size, device, params.amp, fmt,
                         latency_calls, throughput_calls, warmup)
        excess += inf.pop("infer_warmup_excess")
        row.update(inf)
    if params.compile:
        row["compile_seconds"] = excess
    return row


def append_row(row: dict, out_dir: Optional[str | Path] = None) -> Path:
    """Append one row to its timm-style CSV in out_dir (default results/bench): written to a temp name, then renamed."""
    path = Path(out_dir or bench_dir()) / csv_name(row["precision"], row["layout"], row["device"])
    path.parent.mkdir(parents=True, exist_ok=True)
    new = pd.DataFrame([row], columns=COLUMNS)
    table = pd.concat([pd.read_csv(path), new], ignore_index=True) if path.is_file() else new
    return atomic_write(path, lambda tmp: table.to_csv(tmp, index=False, float_format="%.6g"))


# ---------------------------------------------------------------- CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0]
    parser.add_argument("--model", nargs="+", default=None,
                        help=f"models to measure (default: {' '.join(DEFAULT_MODELS)}, or every model of --grid)")
    parser.add_argument("--grid", default=None,
                        help="take models, dataset, image size, batch size and training settings from a grid "
                             "file's train cells, e.g. params/quick.yaml (--model then filters them)")
    parser.add_argument("--dataset", default=None, help="dataset (default: the study's default, clothing10)")
    parser.add_argument("--image-size", type=int, default=None, help="pixels (default 64, the quick study's)")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch size (default 64)")
    parser.add_argument("--train-limit", type=int, default=None,
                        help="training images per pass (default 0: the whole training split)")
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="bf16 autocast, CUDA only (default: the study's setting, on)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="channels_last memory layout, CUDA only (default: the study's setting, on)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the model (default: the study's setting, off)")
    parser.add_argument("--rounds", type=int, default=3, help="measured passes of each of (a) and (b), alternating (default 3)")
    parser.add_argument("--warmup", type=int, default=5, help="warm-up steps before measuring, excluded and reported (default 5)")
    parser.add_argument("--interleave", choices=["auto", "step", "pass"], default="auto",
                        help="alternate (a) and (b) after every step, or by whole passes (default auto: step on a CPU, pass on CUDA)")
    parser.add_argument("--no-infer", dest="infer", action="store_false", help="skip the inference measurements")
    parser.add_argument("--infer-batch-size", type=int, default=64, help="batch size of the inference throughput (default 64)")
    parser.add_argument("--latency-calls", type=int, default=50, help="timed batch-1 calls (default 50)")
    parser.add_argument("--throughput-calls", type=int, default=10, help="timed batches for the inference throughput (default 10)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for PyTorch (default: PyTorch's choice, as in training)")
    parser.add_argument("--out-dir", default=None, help="the folder the CSV goes to (default results/bench)")
    parser.add_argument("--overhead", metavar="STUDY", default=None,
                        help="instead of benchmarking: where a collected study's notebook time went "
                             "(kernel start-up, imports, training and evaluation, plots), per notebook and per stage")


def configurations(args) -> list:
    """The TrainParams to measure, every one validated before any measurement starts."""
    for name in ("rounds", "infer_batch_size", "latency_calls", "throughput_calls", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ParameterError(f"--{name.replace('_', '-')}", getattr(args, name), "a positive integer")
    if args.warmup < 0:
        raise ParameterError("--warmup", args.warmup, "zero or more")
    given = {k: v for k, v in {"dataset": args.dataset, "image_size": args.image_size, "batch_size": args.batch_size,
                               "train_limit": args.train_limit, "device": args.device, "amp": args.amp,
                               "channels_last": args.channels_last, "compile": args.compile}.items() if v is not None}
    if args.grid:
        _, cells = load_grid(args.grid)
        bases, seen = [], set()
        for c in cells["train"]:
            p = {k: v for k, v in c.params.items() if k not in ("seed", "epochs", "early_stopping", "profile", "targets")}
            key = tuple(sorted((k, str(v)) for k, v in p.items()))
            if key not in seen and (not args.model or p["model"] in args.model):
                seen.add(key)
                bases.append(p)
        if args.model and not bases:
            raise ParameterError("--model", " ".join(args.model), f"a model of {args.grid}'s train cells")
    else:
        bases = [{"model": m, "image_size": 64} for m in (args.model or DEFAULT_MODELS)]
    out = []
    for base in bases:
        values = {**base, **given}
        try:
            out.append(TrainParams.from_mapping(values))
        except ParameterError as err:
            flag = "--" + err.parameter.replace("_", "-")
            raise ParameterError(flag if err.parameter in given or err.parameter == "model" else err.parameter,
                                 err.value, err.allowed) from None
    return out


def run(args) -> int:
    if args.overhead:
        return print_overhead(args.overhead)
    try:
        configs = configurations(args)
    except ParameterError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    failed = 0
    try:
        for params in configs:
            try:
                _bench_and_print(params, args)
            except Exception as err:  # one configuration that cannot run (data missing...) does not stop the rest
                failed += 1
                print(f"  FAILED: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
    finally:
        torch.set_num_threads(threads)
    return 1 if failed else 0


def _bench_and_print(params, args) -> None:
    """Measure one configuration, append its row, print what was measured."""
    device = environment.resolve_device(params.device)
    ignored = [f for f, on in (("--amp", params.amp), ("--channels-last", params.channels_last)) if on]
    note = f" ({' and '.join(ignored)} apply on CUDA only, as in training)" if ignored and device == "cpu" else ""
    print(f"{params.model}: {params.image_size} px, batch {params.batch_size}, {params.dataset}, {device}, "
          f"{torch.get_num_threads()} threads{note}", flush=True)
    row = bench_one(params, rounds=args.rounds, warmup=args.warmup, infer=args.infer,
                    infer_batch_size=args.infer_batch_size, latency_calls=args.latency_calls,
                    throughput_calls=args.throughput_calls, interleave=args.interleave)
    path = append_row(row, args.out_dir)
    print(f"  (a) bare step  {row['bare_samples_per_sec']:9.1f} images/s  ({row['bare_step_ms']:.1f} ms/step)\n"
          f"  (b) study loop {row['loop_samples_per_sec']:9.1f} images/s  ({row['loop_step_ms']:.1f} ms/step)\n"
          f"  loop / bare    {row['loop_ratio']:9.3f}   data wait {row['data_wait_share']:.1%} of the loop's time"
          f"   [{row['images']} images per pass, median of {row['rounds']} rounds interleaved by {row['interleave']}; "
          f"warm-up {row['warmup_steps']} steps, {row['warmup_seconds']:.1f} s, excluded]", flush=True)
    if row["compile_seconds"] is not None:
        print(f"  compile        {row['compile_seconds']:9.1f} s (warm-up above the steady step time)")
    if row["infer_latency_ms"] is not None:
        print(f"  inference      batch 1: {row['infer_latency_ms']:.2f} ms median latency; "
              f"batch {row['infer_batch_size']}: {row['infer_samples_per_sec']:.1f} images/s", flush=True)
    print(f"  -> {path}", flush=True)
