"""What a run ran on: hardware, thread counts and library versions, for the run record."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from functools import lru_cache
from importlib import metadata
from typing import Iterable

import torch

from studylib import __version__
from studylib.paths import project_root


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@lru_cache(maxsize=1)
def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project_root(),
                             capture_output=True, text=True, timeout=5)
        sha = out.stdout.strip()
        if not sha:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=project_root(), capture_output=True, text=True, timeout=5)
        return sha + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def hardware(device: str) -> dict:
    gpu = None
    if device.startswith("cuda") and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(torch.device(device))
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu_name": gpu,
        "platform": platform.platform(),
    }


def package_versions(names: Iterable[str]) -> dict[str, str | None]:
    """Installed versions from the packages' metadata (None where one is missing): recording a
    version imports nothing (importing timm alone costs a second of every run's start-up)."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def versions(extra: Iterable[str] = ()) -> dict:
    """The software a record was made with: python, torch, torchvision, timm, studylib and its git
    commit, and the packages named in `extra`."""
    return {"python": sys.version.split()[0], "torch": torch.__version__,
            **package_versions(("torchvision", "timm", *extra)), "studylib": __version__, "git_sha": git_sha()}


def resolve_device(device: str) -> str:
    """'auto' means CUDA when present, else CPU."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
