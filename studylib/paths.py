"""Where the study keeps things: the project root, run outputs, data and the tensor cache.

Every location can be moved with an environment variable, so tests and other hosts
can point the study elsewhere without touching code.
"""
from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """The repository root (STUDYLIB_HOME overrides it)."""
    if "STUDYLIB_HOME" in os.environ:
        return Path(os.environ["STUDYLIB_HOME"]).resolve()
    here = Path(__file__).resolve().parent.parent
    if (here / "pyproject.toml").exists():
        return here
    return Path.cwd()


def data_dir() -> Path:
    """Where datasets live: the embedded one and any downloaded by torchvision."""
    return Path(os.environ.get("STUDYLIB_DATA", project_root() / "data"))


def cache_dir() -> Path:
    """The decoded uint8 tensor cache."""
    return Path(os.environ.get("STUDYLIB_CACHE", project_root() / ".cache" / "tensors"))


def runs_dir() -> Path:
    """One folder per run: checkpoint and record."""
    return Path(os.environ.get("STUDYLIB_RUNS", project_root() / "runs"))


def results_dir() -> Path:
    return Path(os.environ.get("STUDYLIB_RESULTS", project_root() / "results"))


def book_dir() -> Path:
    return Path(os.environ.get("STUDYLIB_BOOK", project_root() / "book"))
