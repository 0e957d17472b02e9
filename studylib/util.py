"""Small helpers every layer uses: the clock's UTC stamp, atomic file writes, URIs and YAML files.

A leaf module: it imports only studylib.errors, so anything may import it. The redaction of secrets
(`redact`, `redact_url`) is studylib.errors', where the error messages need it; `redact_url` is
importable from here too, where callers have always found it.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import yaml

from studylib.errors import ParameterError, redact_url as redact_url  # noqa: F401  (re-exported)


_UMASK = os.umask(0)  # read the process's umask (the only way is to set it) ...
os.umask(_UMASK)      # ... and put it back


def now(timespec: str = "seconds") -> str:
    """The current UTC time as ISO 8601 (`timespec` as datetime.isoformat takes it)."""
    return datetime.now(timezone.utc).isoformat(timespec=timespec)


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call write(tmp) for a temporary file beside `path`, then rename it onto `path`.

    Readers never see half a file, and a write that fails leaves the old file (or none) and no
    temporary behind. The temporary keeps the suffix, for writers that go by it (pandas, torch).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f"{path.suffix}.tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the mode a plain open() would
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, data, indent: int | None = 1) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=indent))


def is_uri(root: str) -> bool:
    """True for `protocol://...` roots (file:// included); plain paths are not URIs."""
    return bool(re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*://", str(root or "")))


def read_yaml_file(path: str | os.PathLike, parameter: str, expected: str):
    """A YAML file's content, or the one-sentence ParameterError naming `parameter`: a missing file
    (`expected` says what it should be) or YAML that does not parse."""
    path = Path(path)
    if not path.is_file():
        raise ParameterError(parameter, str(path), expected)
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParameterError(parameter, str(path), f"valid YAML ({str(err).splitlines()[0]})") from None
