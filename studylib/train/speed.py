"""Which precision and memory format a run trains in: what its parameters say, or for "auto" what
`studylib bench` measured fastest for its model on this machine.

`amp` (bf16 autocast) and `channels_last` are each True, False or "auto". A setting is a pair
(precision, layout): fp32 or bf16, nchw or nhwc (channels_last). "auto" reads the newest bench row
of the same model, image size, batch size, torch.compile, device and CPU/GPU name from
results/bench/benchmark-train-*.csv (the bench measures the bare training step in all four
settings) and takes the fastest setting that the parameters allow, but only when its bare step is
more than MARGIN faster than the device's default (and among settings within MARGIN of each other,
a fixed order of preference: `choose`); otherwise, and without any bench row, the default
(DEFAULT). `resolve` returns the choice with a sentence saying how it was made, which the
run's record keeps.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

import pandas as pd
import torch

from studylib import environment
from studylib.params import TrainParams
from studylib.paths import results_dir as default_results_dir

PRECISIONS = ("fp32", "bf16")
LAYOUTS = ("nchw", "nhwc")
SETTINGS = [(p, f) for p in PRECISIONS for f in LAYOUTS]   # the bench measures each of these four
MEMORY_FORMATS = {"nchw": torch.contiguous_format, "nhwc": torch.channels_last}

# Without a bench row, and whenever no setting is clearly faster: channels_last helped every model
# measured on this CPU (issue 17), and bf16 is the fast path of every recent GPU.
DEFAULT = {"cpu": ("fp32", "nhwc"), "cuda": ("bf16", "nhwc")}

# "auto" leaves the default only for a setting whose bare step is more than 10% faster: runs a few
# minutes apart on this shared 2-core VM differ by more than 5%, and a run should not change its
# precision (and so its numbers) on a measurement's noise.
MARGIN = 0.10


def setting_name(precision: str, layout: str) -> str:
    """'fp32-nhwc', ...: how a setting is named in the bench's rows and the records."""
    return f"{precision}-{layout}"


def bare_column(precision: str, layout: str) -> str:
    """The bench column holding the bare step's images/s in this setting."""
    return f"bare_{precision}_{layout}_samples_per_sec"


def device_type(device: str) -> str:
    return "cuda" if str(device).startswith("cuda") else "cpu"


def device_name(device: str) -> str:
    """The GPU's name on CUDA, else the CPU model: the machine a bench row was measured on."""
    return environment.hardware(device)["gpu_name"] or environment.cpu_model()


@dataclass(frozen=True)
class Speed:
    """A run's resolved precision and memory format, and how they were chosen."""
    amp: bool
    channels_last: bool
    source: str

    @property
    def precision(self) -> str:
        return "bf16" if self.amp else "fp32"

    @property
    def layout(self) -> str:
        return "nhwc" if self.channels_last else "nchw"

    @property
    def memory_format(self) -> torch.memory_format:
        return MEMORY_FORMATS[self.layout]


def bench_dir(results_dir: Optional[str | Path] = None) -> Path:
    """<results>/bench: the benchmark CSVs (results_dir defaults to studylib.paths.results_dir())."""
    return Path(results_dir or default_results_dir()) / "bench"


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


def csv_name(device: str) -> str:
    """One file per torch version and device: every setting is a column of its rows."""
    return f"benchmark-train-{torch_tag()}-{device_tag(device)}.csv"


def read_bench(folder: Optional[str | Path] = None) -> Optional[pd.DataFrame]:
    """Every row of every benchmark-train-pt*.csv in `folder` (default: bench_dir()), with its file
    name in `file`; None when there is none. Files of the bench's earlier one-setting format (named
    benchmark-train-<precision>-<layout>-...) are not read."""
    files = sorted(Path(folder or bench_dir()).glob("benchmark-train-pt*.csv"))
    frames = [pd.read_csv(f).assign(file=f.name) for f in files]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else None


def latest_row(table: Optional[pd.DataFrame], params: TrainParams, device: str) -> Optional[Mapping]:
    """The newest bench row of this run's model, image size, batch size, compile, device type and
    CPU/GPU name (the bare step does not depend on the dataset beyond its class count), or None."""
    if table is None:
        return None
    kind = table.device.astype(str).map(device_type)
    match = table[(table.model == params.model) & (table.image_size == params.image_size)
                  & (table.batch_size == params.batch_size) & (table["compile"].astype(bool) == params.compile)
                  & (kind == device_type(device)) & (table.device_name == device_name(device))]
    if match.empty:
        return None
    return match.sort_values("measured_at").iloc[-1].to_dict()


def choose(row: Optional[Mapping], device: str, amp: bool | str = "auto",
           channels_last: bool | str = "auto") -> tuple[str, str, str]:
    """(precision, layout, how it was chosen) for the given amp/channels_last values and bench row.

    Fixed values stay. For "auto" the candidates are the settings the fixed values allow; the chosen
    one is the first, in order of preference, whose bare step is within MARGIN of the fastest
    candidate's. The order: the device's DEFAULT (within the fixed values), then a setting that
    changes only its layout (the arithmetic stays the default's), then one that changes only its
    precision, then the rest. So the default stays unless another setting is more than MARGIN
    faster, and two settings within MARGIN of each other do not swap places from one bench run to the next.
    """
    fixed_p = None if amp == "auto" else ("bf16" if amp else "fp32")
    fixed_f = None if channels_last == "auto" else ("nhwc" if channels_last else "nchw")
    default_p, default_f = DEFAULT[device_type(device)]
    default = (fixed_p or default_p, fixed_f or default_f)
    if fixed_p and fixed_f:
        return (*default, "parameters")
    if row is None:
        return (*default, "default: no bench row for this model, image size, batch size and machine")
    candidates = [(p, f) for p, f in SETTINGS if (fixed_p in (None, p)) and (fixed_f in (None, f))]
    speed = {s: row.get(bare_column(*s)) for s in candidates}
    speed = {s: float(v) for s, v in speed.items() if v is not None and not math.isnan(float(v))}
    when = f"bench row measured_at {row.get('measured_at')}"
    if not speed:
        return (*default, f"default: {when} measured none of its settings")
    preference = sorted(speed, key=lambda s: (s != default, s[0] != default[0], s[1] != default[1]))
    fastest = max(speed.values())
    chosen = next(s for s in preference if speed[s] * (1 + MARGIN) >= fastest)
    if chosen == default:
        return (*default, f"default: {when} has no setting more than {MARGIN:.0%} faster")
    base = speed.get(default)
    gain = f"{speed[chosen] / base - 1:.0%} faster than {setting_name(*default)}" if base else "the default not measured"
    return (*chosen, f"{when}: {setting_name(*chosen)}, {gain}")


def resolve(params: TrainParams, device: str, results_dir: Optional[str | Path] = None) -> Speed:
    """The precision and memory format this run trains in (see the module's docstring)."""
    row = None
    if params.amp == "auto" or params.channels_last == "auto":
        row = latest_row(read_bench(bench_dir(results_dir)), params, device)
    precision, layout, source = choose(row, device, params.amp, params.channels_last)
    return Speed(amp=precision == "bf16", channels_last=layout == "nhwc", source=source)
