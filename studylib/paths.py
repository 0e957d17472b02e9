"""Where the study keeps things: the project root, run outputs, data and the tensor cache; the names that become paths.

Every location can be moved with an environment variable, so tests and other hosts
can point the study elsewhere without touching code. A name that becomes part of a path (model,
dataset, study, run id, stage) matches NAME, checked in one place (`check_name`); a path derived from
a root and such names is built by `inside`, which refuses one that would leave the root.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from studylib.errors import ParameterError

# letters, digits, '_', '.' and '-', starting with a letter or a digit: no '/', no '..' component, no
# markup, safe as a file name and in Markdown (timm's pretrained tags such as resnet18.a1_in1k fit it)
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,159}")
NAME_ALLOWED = ("a name of ASCII letters, digits, '_', '.' and '-' that starts with a letter or a digit "
                "(at most 160 characters)")


def check_name(parameter: str, name) -> str:
    """`name` when it may become part of a path; else the one-sentence ParameterError naming `parameter`."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ParameterError(parameter, name, NAME_ALLOWED)
    return name


def inside(root: str | os.PathLike, *parts: str | os.PathLike) -> Path:
    """root/parts..., refused with a ParameterError when it would resolve outside `root` (a '..', an absolute
    part, a symlink out)."""
    base = Path(root).resolve()
    path = Path(root).joinpath(*parts)
    if not path.resolve().is_relative_to(base):
        raise ParameterError("path", str(Path(*parts)) if parts else str(path), f"a path inside {base}")
    return path


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
