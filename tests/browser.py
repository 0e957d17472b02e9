"""The one way the browser tests find a headless Chromium, and the one reason they skip without one.

Where it looks, in order: $STUDYLIB_CHROMIUM (a browser of your choice; a path that does not exist means
none), Debian's /usr/bin/chromium (what .ci/run installs), `chromium` on PATH, then Playwright's own
download (`playwright install chromium`). tests/test_serve.py and tests/test_book.py mark their browser
tests with `needs_browser` and take the `browser` fixture of conftest.py.
"""
from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

import pytest

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]
NO_BROWSER = ("no headless Chromium here: neither $STUDYLIB_CHROMIUM, Debian's /usr/bin/chromium, chromium on PATH "
              "nor Playwright's own (playwright install chromium); .ci/run installs Debian's")


def playwright_chromium() -> str | None:
    """The Chromium Playwright downloaded, if it did (and Playwright itself is installed)."""
    try:
        from playwright.sync_api import sync_playwright
        with sync_playwright() as p:
            path = p.chromium.executable_path
    except Exception:  # no playwright, or its driver cannot start: no browser from it
        return None
    return path if path and Path(path).is_file() else None


@functools.lru_cache(maxsize=1)
def find_browser() -> str | None:
    """The path of a Chromium to launch, or None."""
    chosen = os.environ.get("STUDYLIB_CHROMIUM")
    if chosen is not None:
        return chosen if Path(chosen).is_file() else None
    for path in ("/usr/bin/chromium", shutil.which("chromium")):
        if path and Path(path).is_file():
            return path
    return playwright_chromium()


needs_browser = pytest.mark.skipif(find_browser() is None, reason=NO_BROWSER)
