"""Measure a served model from the client's side, and the same work in-process (the ceiling).

- single_stream: every image once, one request at a time (reference study 004 queried its
  endpoint this way); each reply's top-1 and latency.
- load_test: `concurrency` clients, each with one keep-alive connection, send requests back to
  back; bounded by a request count and a time limit; p50/p90/p99 latency and throughput.
- in_process: the server's own per-request work (bytes -> decode -> normalise -> model -> top-k)
  called directly, one image at a time, plus the model call alone and a batched pass.

The HTTP client is the standard library's http.client with prebuilt multipart bodies, so the
client adds as little as it can to what is measured. Latencies are wall-clock milliseconds.
"""
from __future__ import annotations

import http.client
import io
import json
import mimetypes
import threading
import time
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np
import torch

from studylib.data.registry import load_dataset


@dataclass
class ImageFile:
    name: str
    data: bytes
    content_type: str
    source: str = ""          # where it came from: the dataset's name for the item (its path, or "#index")


def multipart(field: str, files: list[ImageFile]) -> tuple[bytes, str]:
    """A multipart/form-data body with each file in `field`, and its Content-Type header."""
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for f in files:
        out.write(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{f.name}\"\r\n"
                  f"Content-Type: {f.content_type}\r\n\r\n".encode())
        out.write(f.data)
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


class Client:
    """One keep-alive HTTP connection (http.client reopens it when the server closes it)."""

    def __init__(self, url: str, timeout: float = 30):
        u = urlsplit(url)
        self.conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None,
                headers: dict | None = None) -> tuple[int, dict | str, float]:
        """-> (status, JSON reply (or text), seconds from sending to the last byte of the reply)."""
        h = dict(headers or {})
        if content_type:
            h["Content-Type"] = content_type
        for attempt in (0, 1):
            t0 = time.perf_counter()
            try:
                try:
                    self.conn.request(method, path, body=body, headers=h)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the server answered (413) and closed before reading the whole body: read its answer
                reply = self.conn.getresponse()
                data = reply.read()
                seconds = time.perf_counter() - t0
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()  # the server closed a kept-alive connection: reconnect once
                if attempt:
                    raise
        if reply.getheader("Content-Type", "").startswith("application/json"):
            return reply.status, json.loads(data), seconds
        return reply.status, data.decode(errors="replace"), seconds

    def predict(self, image: ImageFile, prepared: tuple[bytes, str] | None = None):
        body, ctype = prepared or multipart("file", [image])
        return self.request("POST", "/predict", body, ctype)

    def close(self):
        self.conn.close()


def test_images(record: dict, split: str = "test") -> list[ImageFile]:
    """The split's images as a client would send them, in the order of the run's tensor cache.

    A file on disk is sent as its own bytes; an in-memory image (CIFAR) or a cropped one (Stanford
    Dogs boxes) is sent as lossless PNG, so the server decodes exactly the pixels the evaluation saw.
    Images the cache skipped as undecodable are left out, as they were from the evaluation.
    """
    p = record["params"]
    items = load_dataset(p["dataset"], p.get("root", ""), seed=p.get("seed", 0),
                         val_fraction=p.get("val_fraction", 0.1)).splits[split]
    skipped = {s["name"] for s in record["data"]["skipped"].get(split, [])}
    out = []
    for i in range(len(items)):
        name = items.name(i)
        if name in skipped:
            continue
        if items.paths is not None and (items.boxes is None or items.boxes[i] is None):
            with open(items.paths[i], "rb") as f:
                data = f.read()
            ctype = mimetypes.guess_type(items.paths[i])[0] or "application/octet-stream"
            out.append(ImageFile(name.rsplit("/", 1)[-1], data, ctype, name))
        else:
            buf = io.BytesIO()
            with items.load(i) as img:
                img.convert("RGB").save(buf, "PNG")
            out.append(ImageFile(f"{split}-{i}.png", buf.getvalue(), "image/png", name))
    return out


def percentiles(seconds) -> dict:
    ms = np.asarray(seconds, dtype=np.float64) * 1000
    if not len(ms):
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "mean_ms": None}
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "mean_ms": float(ms.mean())}


def single_stream(url: str, images: list[ImageFile], timeout: float = 30) -> dict:
    """Every image once, one request at a time: status, top-1 index and latency per image."""
    client = Client(url, timeout)
    status, top1, seconds, errors = [], [], [], []
    try:
        for img in images:
            code, reply, dt = client.predict(img)
            status.append(code)
            seconds.append(dt)
            top1.append(reply["top1_index"] if code == 200 else -1)
            if code != 200:
                errors.append({"file": img.name, "status": code, "reply": reply})
    finally:
        client.close()
    return {"images": len(images), "sources": [img.source for img in images], "status": status,
            "top1_index": top1, "seconds": seconds, "errors": errors, **percentiles(seconds)}


def load_test(url: str, images: list[ImageFile], concurrency: int, max_requests: int = 2000,
              max_seconds: float = 20, warmup: int = 5, timeout: float = 30) -> dict:
    """`concurrency` clients send /predict requests back to back until max_requests or max_seconds.

    Each client first sends `warmup` requests that are not counted. Throughput is completed
    requests (any status) per second of the measured window; errors are replies other than 200.
    A warm-up request that fails (refused, dropped, timed out), or a warm-up that outlasts its bound
    (`warmup` requests of at most `timeout` seconds each, tried twice), raises RuntimeError with one
    sentence: the clients still waiting are released, nothing waits forever.
    """
    if concurrency < 1 or max_requests < 1 or max_seconds <= 0:
        raise ValueError("concurrency and max_requests must be positive, max_seconds above zero")
    bodies = [multipart("file", [img]) for img in images]
    lock = threading.Lock()
    issued = 0
    latencies: list[float] = []
    failures: list[int] = []
    ready = threading.Barrier(concurrency + 1)
    start = threading.Event()
    deadline = [0.0]
    warmup_errors: list[BaseException] = []

    def worker(k: int):
        nonlocal issued
        client = Client(url, timeout)
        try:
            try:
                for j in range(warmup):
                    client.predict(images[(k + j) % len(images)], bodies[(k + j) % len(images)])
            except Exception as err:   # the server is down or broken: release everyone waiting at the barrier
                warmup_errors.append(err)
                ready.abort()
                return
            try:
                ready.wait()
            except threading.BrokenBarrierError:   # another client's warm-up failed, or the main thread gave up
                return
            start.wait()
            while True:
                with lock:
                    if issued >= max_requests or time.perf_counter() >= deadline[0]:
                        return
                    i = issued
                    issued += 1
                s = time.perf_counter()
                try:
                    code, _, dt = client.predict(images[i % len(images)], bodies[i % len(images)])
                except (OSError, http.client.HTTPException):  # a timeout or a dropped connection
                    code, dt = 0, time.perf_counter() - s
                    client.close()
                with lock:
                    latencies.append(dt)
                    if code != 200:
                        failures.append(code)
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(concurrency)]
    for t in threads:
        t.start()
    bound = warmup * timeout * 2 + 5   # each warm-up request may be tried twice (Client.request reconnects once)
    try:
        ready.wait(bound)
    except threading.BrokenBarrierError:
        if warmup_errors:
            err = warmup_errors[0]
            raise RuntimeError(f"the load test's warm-up request to {url}/predict failed "
                               f"({type(err).__name__}: {err}), so nothing was measured.") from None
        raise RuntimeError(f"the load test's warm-up requests to {url}/predict did not finish within {bound:g} s "
                           f"({warmup} per client, {timeout:g} s each at most), so nothing was measured.") from None
    t0 = time.perf_counter()
    deadline[0] = t0 + max_seconds
    start.set()
    for t in threads:
        t.join(max_seconds + timeout + 5)
    elapsed = time.perf_counter() - t0
    return {"concurrency": concurrency, "requests": len(latencies), "errors": len(failures),
            "seconds": elapsed, "throughput": len(latencies) / elapsed if elapsed > 0 else 0.0,
            **percentiles(latencies)}


def in_process(predictor, images: list[ImageFile], max_requests: int = 2000, max_seconds: float = 20,
               warmup: int = 5, batch_size: int = 32) -> dict:
    """The server's per-request work without HTTP: the ceiling for the same backend and threads.

    latency: Predictor.predict on one image's bytes (decode, normalise, model, top-k), back to back;
    model: the backend call alone on one preprocessed image; batch: images/s of the model alone
    on batches of `batch_size`.
    """
    for j in range(warmup):
        predictor.predict([(images[j % len(images)].name, images[j % len(images)].data)])
    seconds = []
    t0 = time.perf_counter()
    i = 0
    while i < max_requests and time.perf_counter() - t0 < max_seconds:
        img = images[i % len(images)]
        s = time.perf_counter()
        predictor.predict([(img.name, img.data)])
        seconds.append(time.perf_counter() - s)
        i += 1
    elapsed = time.perf_counter() - t0

    tensors = [predictor.preprocess(img.data, img.name) for img in images[: max(batch_size, 64)]]
    one = [tensors[0]]
    model_seconds = []
    t1 = time.perf_counter()
    while len(model_seconds) < max_requests and time.perf_counter() - t1 < max_seconds / 4:
        s = time.perf_counter()
        predictor.logits(one)
        model_seconds.append(time.perf_counter() - s)

    batch = [tensors[k % len(tensors)] for k in range(batch_size)]
    predictor.logits(batch)
    n, t2 = 0, time.perf_counter()
    while time.perf_counter() - t2 < max_seconds / 4 and n < max_requests:
        predictor.logits(batch)
        n += batch_size
    batch_elapsed = time.perf_counter() - t2
    return {"requests": len(seconds), "seconds": elapsed, "throughput": len(seconds) / elapsed if elapsed else 0.0,
            **percentiles(seconds),
            "model_only": percentiles(model_seconds),
            "batch": {"batch_size": batch_size, "images": n,
                      "images_per_second": n / batch_elapsed if batch_elapsed else 0.0},
            "threads": predictor.threads, "torch_threads": torch.get_num_threads()}


def paired(url: str, predictor, images: list[ImageFile], rounds: int = 10, per_round: int = 30,
           warmup: int = 5, timeout: float = 30) -> dict:
    """HTTP at concurrency 1 and in-process, measured in alternating rounds of `per_round` requests.

    On a machine whose load changes from second to second, measuring the two paths one after the
    other compares different moments; alternating them gives each the same mix of moments, so their
    difference (the HTTP overhead) is not an artefact of when each ran.
    """
    client = Client(url, timeout)
    bodies = [multipart("file", [img]) for img in images]
    http_s, local_s = [], []
    try:
        for j in range(warmup):
            img = images[j % len(images)]
            client.predict(img, bodies[j % len(images)])
            predictor.predict([(img.name, img.data)])
        k = 0
        for _ in range(rounds):
            for side in ("http", "in_process"):
                for j in range(per_round):
                    i = (k + j) % len(images)
                    s = time.perf_counter()
                    if side == "http":
                        code, _, dt = client.predict(images[i], bodies[i])
                        if code != 200:
                            raise RuntimeError(f"the server answered {code} to a valid image ({images[i].name})")
                        http_s.append(dt)
                    else:
                        predictor.predict([(images[i].name, images[i].data)])
                        local_s.append(time.perf_counter() - s)
            k += per_round
    finally:
        client.close()
    h, p = percentiles(http_s), percentiles(local_s)
    return {"rounds": rounds, "per_round": per_round, "http": h, "in_process": p,
            "overhead_p50_ms": h["p50_ms"] - p["p50_ms"]}
