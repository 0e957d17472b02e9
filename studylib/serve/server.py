"""`studylib serve`: run the HTTP app on uvicorn, and the same command as a subprocess for notebooks and tests.

    studylib serve <run-id or run dir> --port 8000 [--backend onnx|torch] [--precision fp32|int8]

A run folder that cannot be served (an unreadable record.json, a model file that does not load, an int8
model that was never calibrated, a read-only folder that would need an export) stops it before it listens,
with one sentence naming the file and exit code 2, and nothing written into the folder.
`add_arguments`/`run` are the command (studylib.cli dispatches to them); `ServerProcess` starts it on
127.0.0.1 and a free port, waits for /health, and stops it when its `with` block ends.
"""
from __future__ import annotations

import argparse
import atexit
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from pathlib import Path

from PIL import Image

from studylib.errors import ParameterError, StudyError
from studylib.serve.app import create_app
from studylib.serve.predictor import Limits


LIMIT_CONCURRENCY = 256
LIMIT_NAMES = ("max_file_bytes", "max_pixels", "max_files", "max_request_bytes", "max_request_pixels", "max_queue",
               "request_timeout")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="a train run id (a folder in runs/) or a run folder")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--backend", default="onnx", help="onnx (ONNX Runtime, default) or torch")
    parser.add_argument("--precision", default="fp32", help="fp32 (default) or int8 (ONNX Runtime only)")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads of the backend (0: its default)")
    parser.add_argument("--workers", type=int, default=1, help="inferences that may run at the same time")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--spinning", action="store_true",
                        help="let ONNX Runtime's threads spin-wait between runs (off by default: on a small machine "
                             "they take cores the event loop and the clients need)")
    parser.add_argument("--max-file-bytes", type=int, default=Limits.max_file_bytes)
    parser.add_argument("--max-pixels", type=int, default=Limits.max_pixels)
    parser.add_argument("--max-files", type=int, default=Limits.max_files)
    parser.add_argument("--max-request-bytes", type=int, default=Limits.max_request_bytes)
    parser.add_argument("--max-request-pixels", type=int, default=Limits.max_request_pixels,
                        help="pixels one request may decode in all (a JPEG counts at its reduced decoding scale)")
    parser.add_argument("--max-queue", type=int, default=Limits.max_queue,
                        help="prediction requests inside the server at once (read, waiting or running); the next gets 503")
    parser.add_argument("--request-timeout", type=float, default=Limits.request_timeout,
                        help="seconds a prediction request may take, its body included (then 408 or 503)")
    parser.add_argument("--limit-concurrency", type=int, default=LIMIT_CONCURRENCY,
                        help="open connections uvicorn accepts before it answers 503 itself (a backstop above --max-queue)")
    parser.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                        help="a host name clients may address the server by, besides 127.0.0.1, localhost and ::1 "
                             "(repeat it; --host's own name is added)")
    parser.add_argument("--log-level", default="warning")


def run(args: argparse.Namespace) -> int:
    try:
        return _serve(args)
    except StudyError as err:
        print(f"studylib serve: {err}", file=sys.stderr)
        return 2


def _serve(args: argparse.Namespace) -> int:
    import uvicorn  # lazy: only the serving process needs it; notebooks and tests start it as a subprocess
    if not 0 <= args.port <= 65535:
        raise ParameterError("port", args.port, "between 0 and 65535")
    if args.limit_concurrency < 1:
        raise ParameterError("limit-concurrency", args.limit_concurrency, "a positive integer")
    limits = Limits(**{name: getattr(args, name) for name in LIMIT_NAMES})   # each checked there
    # PIL's own decompression-bomb guard at the same limit (it warns above it and refuses twice it);
    # open_image checks the size from the header first and answers 413, so the warning is noise here.
    Image.MAX_IMAGE_PIXELS = limits.max_pixels
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    hosts = tuple(args.allowed_host) + (() if args.host in ("0.0.0.0", "::", "") else (args.host,))
    app = create_app(args.run, args.backend, args.precision, args.threads, args.workers, args.top_k, limits,
                     spinning=args.spinning, allowed_hosts=hosts)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False,
                limit_concurrency=args.limit_concurrency)
    return 0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerProcess:
    """`studylib serve` as a subprocess on 127.0.0.1 and a free port; a context manager that stops it.

        with ServerProcess(run_id) as server:
            urllib.request.urlopen(server.url + "/health")
    """

    def __init__(self, run: str, *, host: str = "127.0.0.1", port: int | None = None, timeout: float = 300,
                 log_path: str | Path | None = None, **options):
        self.host, self.port = host, port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        cmd = [sys.executable, "-m", "studylib.cli", "serve", str(run), "--host", host, "--port", str(self.port)]
        for key, value in options.items():
            flag = "--" + key.replace("_", "-")
            if value is True:
                cmd.append(flag)
            elif value not in (False, None):
                cmd += [flag, str(value)]
        self.command = cmd
        # The server's output goes to a file, never to a pipe nobody reads (a full pipe would stall it).
        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix="studylib-serve-", suffix=".log")
            os.close(fd)
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        atexit.register(self.stop)  # a kernel that exits without `with` still stops its server
        t0 = time.perf_counter()
        try:
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.perf_counter() - t0

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.log_path.read_text(errors="replace")
                raise RuntimeError(f"the server exited with code {self.process.returncode} before it was healthy:\n{err[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"the server at {self.url} was not healthy after {timeout} s")

    def alive(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=5) as reply:
                return reply.status == 200
        except OSError:
            return False

    def stop(self, timeout: float = 10) -> int | None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if not self._log.closed:
            self._log.close()
        return self.process.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
