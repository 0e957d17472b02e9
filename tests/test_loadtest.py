"""The load-test client ends, with one sentence, when its server fails: it never waits forever (issue 14 item 10)."""
import socket
import threading
import time

import pytest

from studylib.serve import loadtest


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (bound once, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_failed_warm_up_request_ends_the_load_test_with_its_error():
    images = [loadtest.ImageFile("a.png", b"not an image", "image/png")]
    url = f"http://127.0.0.1:{closed_port()}"
    outcome = {}

    def run():
        try:
            outcome["result"] = loadtest.load_test(url, images, concurrency=4, max_requests=10, max_seconds=1,
                                                   warmup=2, timeout=2)
        except Exception as err:   # what the notebook's cell would raise
            outcome["error"] = err

    t0 = time.perf_counter()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "load_test still waits 30 s after its warm-up requests failed"
    assert time.perf_counter() - t0 < 30
    err = outcome.get("error")
    assert isinstance(err, RuntimeError), outcome
    assert str(err).startswith("the load test's warm-up request to ") and "ConnectionRefusedError" in str(err), err
    assert str(err).count(". ") == 0 and str(err).endswith("."), err     # one sentence


def test_a_server_that_never_answers_ends_the_warm_up():
    """A server that accepts connections but never answers: the warm-up request times out, the test ends."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    try:
        url = f"http://127.0.0.1:{server.getsockname()[1]}"
        t0 = time.perf_counter()
        with pytest.raises(RuntimeError, match="warm-up"):
            loadtest.load_test(url, [loadtest.ImageFile("a.png", b"x", "image/png")], concurrency=2,
                               max_requests=4, max_seconds=1, warmup=1, timeout=1)
        assert time.perf_counter() - t0 < 20
    finally:
        server.close()
