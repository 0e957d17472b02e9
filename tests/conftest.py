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


@pytest.fixture(scope="session")
def smoke_study(study_env, tmp_path_factory):
    """params/smoke.yaml through the real CLI on two Dask workers, rerun, then the book built.

    Shared by tests/test_grid.py and tests/test_book.py (one grid run per session)."""
    import subprocess
    import time
    from types import SimpleNamespace

    base = tmp_path_factory.mktemp("smoke")
    env = {**os.environ, **study_env, "STUDYLIB_RUNS": str(base / "runs"),
           "STUDYLIB_RESULTS": str(base / "results"), "STUDYLIB_BOOK": str(base / "book")}
    grid = [str(VENV_BIN / "studylib"), "grid", "params/smoke.yaml"]
    t0 = time.perf_counter()
    first = subprocess.run(grid + ["--workers", "2"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    t1 = time.perf_counter()
    done = {p.name: p.stat().st_mtime_ns for p in (base / "book" / "train").glob("*.ipynb")}
    second = subprocess.run(grid + ["--no-report"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    t2 = time.perf_counter()
    build = subprocess.run([str(VENV_BIN / "jupyter-book"), "build", str(base / "book")], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=900)
    t3 = time.perf_counter()
    return SimpleNamespace(base=base, env=env, first=first, second=second, build=build, mtimes=done,
                           book=base / "book", html=base / "book" / "_build" / "html",
                           results=base / "results" / "smoke",
                           seconds={"grid": t1 - t0, "rerun": t2 - t1, "build": t3 - t2})


@pytest.fixture
def browser():
    """A headless Chromium (tests/browser.py finds it) through Playwright, shared by the browser tests."""
    from browser import ARGS, NO_BROWSER, find_browser
    from playwright.sync_api import sync_playwright

    path = find_browser()
    if path is None:
        pytest.skip(NO_BROWSER)
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=path, args=ARGS)
        try:
            yield launched
        finally:
            launched.close()

