"""Shared fixtures: every test writes runs, caches and results under its own temporary folders."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def study_env(tmp_path_factory):
    """Environment variables that point the study's outputs at a session temp dir (cache shared by tests)."""
    base = tmp_path_factory.mktemp("study")
    env = {
        "STUDYLIB_CACHE": str(base / "cache"),
        "STUDYLIB_RUNS": str(base / "runs"),
        "STUDYLIB_RESULTS": str(base / "results"),
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def make_jpeg(path: Path, color=(200, 30, 30), size=(40, 30)):
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, "JPEG")
    return path


@pytest.fixture
def tiny_imagefolder(tmp_path):
    """root/<split>/<class>/*.jpg with 3 classes of flat colours: learnable in one epoch."""
    colours = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220)}
    counts = {"train": 12, "val": 3, "test": 3}
    for split, n in counts.items():
        for cls, c in colours.items():
            for i in range(n):
                jitter = (i * 7) % 30
                make_jpeg(tmp_path / "tiny" / split / cls / f"{i}.jpg", tuple(max(0, v - jitter) for v in c))
    return tmp_path / "tiny"
