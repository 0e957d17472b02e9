"""Both browser tests find their Chromium the same way and, where there is none, skip with the same reason
(issue 14 item 17: test_serve's launched /usr/bin/chromium unconditionally and failed on a fresh machine)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from browser import NO_BROWSER

ROOT = Path(__file__).resolve().parent.parent
BROWSER_TESTS = ["tests/test_serve.py::test_html_page_shows_the_prediction_in_chromium",
                 "tests/test_book.py::test_book_in_a_browser"]


@pytest.mark.slow
def test_both_browser_tests_skip_with_one_reason_where_no_browser_exists(tmp_path):
    env = {**os.environ, "STUDYLIB_CHROMIUM": str(tmp_path / "no-such-chromium")}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *BROWSER_TESTS],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    skipped = [line for line in out.stdout.splitlines() if line.startswith("SKIPPED")]
    assert out.returncode == 0 and "2 skipped" in out.stdout, out.stdout[-3000:]
    reasons = {line.split(": ", 1)[1] for line in skipped}
    assert reasons == {NO_BROWSER}, skipped
