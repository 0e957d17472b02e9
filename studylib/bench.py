"""`studylib bench`: how close the study's training loop runs to this machine's limit.

For each model, image size and batch size, in one process: (a) a bare training step on in-memory random tensors (the
study's own `train_step` without the schedule step) in each of the four settings of precision and memory format, fp32
or bf16 autocast x NCHW or channels_last: the fastest is the ceiling for this model on this machine; (b) the study's
own loop (`train.loop.train_epoch` over the real training split through the real data path) in the study's setting:
what amp/channels_last "auto" resolves to (`studylib.train.speed`), or what --amp/--channels-last or the grid fix.

All pass over the same images in the same batch sizes, interleaved so that other load on the machine hits them alike:
on a CPU the four bare steps run after each step of the loop (in rotating order) and are taken out of its clock; on
CUDA whole passes alternate, in an order rotating from round to round. Medians over rounds are reported; the loop's
ratio to the ceiling is the median of the rounds' ratios. Bare steps in the loop's memory format step the loop's model
and optimizer, the other format a copy with its own optimizer. Warm-up steps (in every setting) are excluded and
reported (`warmup_seconds`; with `--compile`, the warm-up time above the steady step time is `compile_seconds`); on
CUDA every clock is read after a synchronise. Inference is measured in the loop's setting: batch-1 latency and batch-64
throughput, eval mode, no gradients. When "auto" chose the loop's setting and this measurement makes it choose another,
the loop is measured again (once) in the new one, so that the row shows the setting the study will train in.

A CSV row per model and setting goes to results/bench/benchmark-train-pt<torch>-<device>.csv (timm's naming),
which train runs read to resolve "auto" and `studylib.views.bench` shows. `--overhead STUDY` prints instead
studylib.study.overhead's report: where a study's notebook time went.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd
import torch

from studylib import environment
from studylib.errors import ParameterError
from studylib.models import count_parameters, gmacs
from studylib.params import TrainParams
from studylib.study.expand import check_data_folder, load_grid
from studylib.study.overhead import print_overhead
from studylib.train.loop import autocast, synchronize, train_epoch, train_step
from studylib.train.profiling import FirstBatches
from studylib.train.setup import load_run_data, optimizer_for, prepare, steps_per_epoch
from studylib.train.speed import (MEMORY_FORMATS, SETTINGS, Speed, bare_column, bench_dir, choose, csv_name,
                                  device_name, resolve, setting_name)
from studylib.util import atomic_write, now

DEFAULT_MODELS = ["mobilenet_v3_small", "shufflenet_v2_x1_0"]
# Grid cells alike in STEP_KEYS share one bench row (study 003's arms: one smallvgg3 step, three weight decays/augments);
# RUN_ONLY_KEYS are not part of the step, which runs at the full image size for the bench's own rounds
RUN_ONLY_KEYS = ("seed", "epochs", "early_stopping", "profile", "targets", "low_res_epochs", "low_res_size")
STEP_KEYS = ("model", "dataset", "root", "image_size", "batch_size", "optimizer", "amp", "channels_last", "compile",
             "device", "pretrained", "finetune", "head", "train_limit")
COLUMNS = [
    "model", "dataset", "image_size", "batch_size", "precision", "layout", "setting_source", "compile", "device",
    "device_name", "torch_threads", "images", "rounds", "interleave",
    *[bare_column(*s) for s in SETTINGS], "fastest", "ceiling_samples_per_sec",
    "bare_samples_per_sec", "loop_samples_per_sec", "loop_ratio", "setting_ratio", "bare_step_ms", "loop_step_ms",
    "data_wait_share", "warmup_steps", "warmup_seconds", "compile_seconds", "infer_latency_ms", "infer_batch_size",
    "infer_samples_per_sec", "param_count", "gmacs", "torch", "git_sha", "measured_at"]


# ---------------------------------------------------------------- measuring
@dataclass
class Bare:
    """One setting's bare step: the model and optimizer it steps, its inputs per batch size, autocast or not."""
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    inputs: dict
    amp: bool


def _bare_settings(setup, params: TrainParams, device: str, num_classes: int, sizes: list[int]) -> dict:
    """The four settings' bare steps. The loop's memory format steps the loop's model and optimizer
    (sized to the loop's steps, no schedule step); the other format a copy with an optimizer of its own."""
    other = "nchw" if setup.speed.layout == "nhwc" else "nhwc"
    twin = copy.deepcopy(setup.model).to(memory_format=MEMORY_FORMATS[other])
    models = {setup.speed.layout: (setup.step_model, setup.optimizer),
              other: (torch.compile(twin) if params.compile else twin,
                      optimizer_for(twin, params))}
    g = torch.Generator(device="cpu").manual_seed(params.seed)
    base = {b: (torch.randn(b, 3, params.image_size, params.image_size, generator=g),
                torch.randint(0, num_classes, (b,), generator=g)) for b in sorted(set(sizes))}
    out = {}
    for precision, layout in SETTINGS:
        inputs = {b: (x.to(device).contiguous(memory_format=MEMORY_FORMATS[layout]), y.to(device))
                  for b, (x, y) in base.items()}
        model, optimizer = models[layout]
        out[(precision, layout)] = Bare(model, optimizer, inputs, precision == "bf16")
    return out


def _bare_steps(bare: Bare, loss_fn, sizes: list[int], device: str, per_step: bool = False):
    """One bare training step per batch size in `sizes`, seconds in all (or per step): the loop's `train_step`
    on tensors already on the device, without schedule, data path or running metrics (what the ratio measures)."""
    times = []
    synchronize(device)
    start = t = time.perf_counter()
    for b in sizes:
        x, y = bare.inputs[b]
        train_step(bare.model, x, y, bare.optimizer, None, loss_fn, device, bare.amp)
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


def _rounds(setup, bares: dict, sizes: list[int], device: str, rounds: int, interleave: str):
    """Measured rounds: each one pass of the loop and one of each setting's bare step, interleaved.
    Returns (seconds per setting per round, loop seconds per round, data-wait share per round)."""
    bare: dict = {s: [] for s in SETTINGS}
    loop, wait = [], []
    for r in range(rounds):
        if interleave == "step":
            # After each step of the loop, one bare step of the same size in each setting (the order
            # rotating step by step), timed on its own and taken out of the loop's clock.
            hooked: dict = {s: [] for s in SETTINGS}

            def bare_step(k: int) -> None:
                synchronize(device)  # the loop's own queued work stays on the loop's clock
                for s in SETTINGS[k % 4:] + SETTINGS[:k % 4]:
                    hooked[s].append(_bare_steps(bares[s], setup.loss_fn, [sizes[k]], device))

            stats = train_epoch(setup.step_model, setup.train, setup.optimizer, setup.schedule, setup.loss_fn,
                                device, setup.speed.amp, step_hook=bare_step)
            for s in SETTINGS:
                bare[s].append(sum(hooked[s]))
            loop.append(stats["seconds"] - sum(sum(v) for v in hooked.values()))
        else:  # whole passes, the order rotating from round to round
            order = ["loop", *SETTINGS]
            for what in order[r % 5:] + order[:r % 5]:
                if what == "loop":
                    stats = train_epoch(setup.step_model, setup.train, setup.optimizer, setup.schedule,
                                        setup.loss_fn, device, setup.speed.amp)
                    loop.append(stats["seconds"])
                else:
                    bare[what].append(_bare_steps(bares[what], setup.loss_fn, sizes, device))
        if stats["images"] != sum(sizes):
            raise RuntimeError(f"the loop saw {stats['images']} images, the bare steps {sum(sizes)}")
        wait.append(stats["data_wait"] / loop[-1])
    return bare, loop, wait


def _measure(params: TrainParams, data, device: str, speed: Speed, rounds: int, warmup: int, interleave: str,
             infer: bool, infer_args: dict) -> dict:
    """One measurement: the loop in `speed`'s setting against the four bare settings; one CSV row."""
    num_classes = len(data.dataset.classes)
    per_pass = steps_per_epoch(data, params)
    warm_loop = min(warmup, per_pass)
    setup = prepare(params, data, device, total_steps=warm_loop + rounds * per_pass, speed=speed)
    total_params, _ = count_parameters(setup.model)
    macs = gmacs(setup.model, params.image_size)
    sizes = setup.train.batch_sizes()
    images = sum(sizes)
    bares = _bare_settings(setup, params, device, num_classes, sizes)

    # Warm-up, excluded: in each setting bare steps at the full batch size and one at each other size; the loop's first steps.
    full = max(sizes)
    warm_sizes = [full] * max(1, warmup) + [b for b in sorted(set(sizes)) if b != full]
    t_warm = time.perf_counter()
    warm_times = {s: _bare_steps(bares[s], setup.loss_fn, warm_sizes, device, per_step=True) for s in SETTINGS}
    if warm_loop:
        train_epoch(setup.step_model, FirstBatches(setup.train, warm_loop), setup.optimizer, setup.schedule,
                    setup.loss_fn, device, setup.speed.amp)
    synchronize(device)
    warmup_seconds = time.perf_counter() - t_warm

    bare, loop, wait = _rounds(setup, bares, sizes, device, rounds, interleave)
    bare_s = {s: statistics.median(v) for s, v in bare.items()}
    fastest = min(bare_s, key=bare_s.get)
    mine = (speed.precision, speed.layout)
    loop_s = statistics.median(loop)
    row = {
        "model": params.model, "dataset": params.dataset, "image_size": params.image_size,
        "batch_size": params.batch_size, "precision": speed.precision, "layout": speed.layout,
        "setting_source": speed.source, "compile": params.compile, "device": device,
        "device_name": device_name(device), "torch_threads": torch.get_num_threads(), "images": images,
        "rounds": rounds, "interleave": interleave,
        **{bare_column(*s): images / bare_s[s] for s in SETTINGS},
        "fastest": setting_name(*fastest), "ceiling_samples_per_sec": images / bare_s[fastest],
        "bare_samples_per_sec": images / bare_s[mine], "loop_samples_per_sec": images / loop_s,
        # each round's adjacent pair, then the median: drift in other load cancels out
        "loop_ratio": statistics.median(b / lp for b, lp in zip(bare[fastest], loop)),
        "setting_ratio": statistics.median(b / lp for b, lp in zip(bare[mine], loop)),
        "bare_step_ms": bare_s[fastest] / len(sizes) * 1e3, "loop_step_ms": loop_s / len(sizes) * 1e3,
        "data_wait_share": statistics.median(wait),
        "warmup_steps": len(SETTINGS) * len(warm_sizes) + warm_loop, "warmup_seconds": warmup_seconds,
        "compile_seconds": None, "infer_latency_ms": None, "infer_batch_size": None, "infer_samples_per_sec": None,
        "param_count": total_params, "gmacs": macs, "torch": torch.__version__,
        "git_sha": environment.git_sha(), "measured_at": now(),
    }
    excess = sum(max(0.0, t - b * bare_s[s] / images) for s in SETTINGS for t, b in zip(warm_times[s], warm_sizes))
    if infer:
        inf = _inference(setup.step_model, params.image_size, device=device, amp=speed.amp,
                         memory_format=speed.memory_format, warmup=warmup, **infer_args)
        excess += inf.pop("infer_warmup_excess")
        row.update(inf)
    if params.compile:
        row["compile_seconds"] = excess
    return row


def bench_one(params: TrainParams, rounds: int = 3, warmup: int = 5, infer: bool = True, infer_batch_size: int = 64,
              latency_calls: int = 50, throughput_calls: int = 10, interleave: str = "auto") -> dict:
    """Measure (a) the bare step in four settings and (b) the study's loop for one TrainParams; one CSV row.

    interleave: "step" (after each step of the loop) or "pass" (whole passes: on CUDA a synchronise per
    step would take the loop's CPU-GPU overlap away); "auto": step on a CPU, pass on CUDA. The loop's
    setting is what a train run would resolve now (`train.speed.resolve`, from the rows already written).
    """
    device = environment.resolve_device(params.device)
    if interleave == "auto":
        interleave = "pass" if device.startswith("cuda") else "step"
    data = load_run_data(params)
    infer_args = {"batch_size": infer_batch_size, "latency_calls": latency_calls, "throughput_calls": throughput_calls}
    row = _measure(params, data, device, speed := resolve(params, device), rounds, warmup, interleave, infer, infer_args)
    # What "auto" chooses once this row is written: when not the loop's setting, measure the loop again in it.
    precision, layout, source = choose(row, device, params.amp, params.channels_last)
    if (precision, layout) != (speed.precision, speed.layout):
        print(f"  this measurement makes 'auto' choose {setting_name(precision, layout)} ({source}): "
              f"measuring again with the loop in it", flush=True)
        speed = Speed(amp=precision == "bf16", channels_last=layout == "nhwc", source=source)
        row = _measure(params, data, device, speed, rounds, warmup, interleave, infer, infer_args)
    return row


def append_row(row: dict, out_dir: Optional[str | Path] = None) -> Path:
    """Append one row to its timm-style CSV in out_dir (default results/bench): written to a temp name, then renamed."""
    path = Path(out_dir or bench_dir()) / csv_name(row["device"])
    path.parent.mkdir(parents=True, exist_ok=True)
    new = pd.DataFrame([row], columns=COLUMNS)
    table = pd.concat([pd.read_csv(path), new], ignore_index=True).reindex(columns=COLUMNS) if path.is_file() else new
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
    parser.add_argument("--data", default=None, help="an image folder to measure on instead, as `studylib grid --data`")
    parser.add_argument("--image-size", type=int, default=None, help="pixels (default 64, the quick study's)")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch size (default 64)")
    parser.add_argument("--train-limit", type=int, default=None, help="training images per pass (default 0: the whole training split)")
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="the loop in bf16 autocast, or not (default: the study's setting, 'auto')")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="the loop in channels_last memory format, or not (default: the study's setting, 'auto')")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the model (default: the study's setting, off)")
    parser.add_argument("--rounds", type=int, default=3, help="measured passes of the loop and of each bare setting, interleaved (default 3)")
    parser.add_argument("--warmup", type=int, default=5, help="warm-up steps (in each setting) before measuring, excluded and reported (default 5)")
    parser.add_argument("--interleave", choices=["auto", "step", "pass"], default="auto",
                        help="alternate (a) and (b) after every step, or by whole passes (default: step on a CPU, pass on CUDA)")
    parser.add_argument("--no-infer", dest="infer", action="store_false", help="skip the inference measurements")
    parser.add_argument("--infer-batch-size", type=int, default=64, help="batch size of the inference throughput (default 64)")
    parser.add_argument("--latency-calls", type=int, default=50, help="timed batch-1 calls (default 50)")
    parser.add_argument("--throughput-calls", type=int, default=10, help="timed batches for the inference throughput (default 10)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch (default: PyTorch's choice, as in training)")
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
        _, cells = load_grid(args.grid, data=args.data)
        bases, seen = [], set()
        for c in cells["train"]:
            p = {k: v for k, v in c.params.items() if k not in RUN_ONLY_KEYS}
            key = tuple(str(p.get(k)) for k in STEP_KEYS)   # one row per step that runs differently
            if key not in seen and (not args.model or p["model"] in args.model):
                seen.add(key)
                bases.append(p)
        if args.model and not bases:
            raise ParameterError("--model", " ".join(args.model), f"a model of {args.grid}'s train cells")
    else:
        where = {"dataset": "imagefolder", "root": str(check_data_folder(args.data))} if args.data else {}
        bases = [{"model": m, "image_size": 64, **where} for m in (args.model or DEFAULT_MODELS)]
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
    print(f"{params.model}: {params.image_size} px, batch {params.batch_size}, {params.dataset}, "
          f"{environment.resolve_device(params.device)}, {torch.get_num_threads()} threads", flush=True)
    row = bench_one(params, rounds=args.rounds, warmup=args.warmup, infer=args.infer,
                    infer_batch_size=args.infer_batch_size, latency_calls=args.latency_calls,
                    throughput_calls=args.throughput_calls, interleave=args.interleave)
    path = append_row(row, args.out_dir)
    study = setting_name(row["precision"], row["layout"])
    for s in SETTINGS:
        name = setting_name(*s)
        marks = [m for m, on in (("fastest", name == row["fastest"]), ("the study's", name == study)) if on]
        print(f"  (a) bare step  {name:9} {row[bare_column(*s)]:9.1f} images/s  {' and '.join(marks)}")
    print(f"  (b) study loop {study:9} {row['loop_samples_per_sec']:9.1f} images/s  ({row['setting_source']})\n"
          f"  loop / fastest bare {row['loop_ratio']:6.3f}   loop / bare in its own setting {row['setting_ratio']:.3f}"
          f"   data wait {row['data_wait_share']:.1%} of the loop's time\n"
          f"  [{row['images']} images per pass, median of {row['rounds']} rounds interleaved by {row['interleave']}; "
          f"warm-up {row['warmup_steps']} steps, {row['warmup_seconds']:.1f} s, excluded]", flush=True)
    if row["compile_seconds"] is not None:
        print(f"  compile        {row['compile_seconds']:9.1f} s (warm-up above the steady step time)")
    if row["infer_latency_ms"] is not None:
        print(f"  inference ({study}) batch 1: {row['infer_latency_ms']:.2f} ms median latency; "
              f"batch {row['infer_batch_size']}: {row['infer_samples_per_sec']:.1f} images/s", flush=True)
    print(f"  -> {path}", flush=True)
