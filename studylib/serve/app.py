"""Serve a trained run over HTTP: FastAPI app, `studylib serve`, and a server subprocess for notebooks and tests.

    studylib serve <run-id or run dir> --port 8000 [--backend onnx|torch] [--precision fp32|int8]

Endpoints
- POST /predict         one image (multipart field "file") -> top-k labels with probabilities
- POST /predict/batch   several images (multipart field "files", repeated) -> one result per image
- GET  /health          {"status": "ok", ...} once the model is loaded
- GET  /metadata        model, dataset, classes, preprocessing, limits and a summary of the train record
- GET  /                a small HTML page: choose an image, see its prediction

Preprocessing is the evaluation's: studylib.data.cache.decode(image, image_size), then the run's
mean/std (studylib.serve.export.normalise). A client's mistake is a 4xx with {"error": ..., "status": ...}:
not an image, a truncated image, too many bytes or pixels, the wrong content type, an empty body,
too many files. Inference runs in a small thread pool off the event loop, on one session loaded at start.
"""
from __future__ import annotations

import argparse
import asyncio
import atexit
import html
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from fastapi import Request  # module level: FastAPI resolves the endpoints' string annotations here
from PIL import Image, UnidentifiedImageError

from studylib.errors import ParameterError

IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")  # what PIL may open; never EPS/PSD and friends
ACCEPTED_PART_TYPES = ("image/", "application/octet-stream")
BACKENDS = ("onnx", "torch")
PRECISIONS = ("fp32", "int8")


@dataclass(frozen=True)
class Limits:
    max_file_bytes: int = 10_000_000       # one image
    max_request_bytes: int = 64_000_000    # a whole request body
    max_pixels: int = 40_000_000           # width x height, checked from the header before decoding
    max_files: int = 32                    # images in one /predict/batch request


class ApiError(Exception):
    """A client's mistake: an HTTP status and one sentence."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


# ---------------------------------------------------------------- the model behind the server

class Predictor:
    """Image bytes -> top-k labels, with the run's preprocessing and one backend session."""

    def __init__(self, run: str, backend: str = "onnx", precision: str = "fp32", threads: int = 0,
                 top_k: int = 5, limits: Limits = Limits(), spinning: bool = False):
        from studylib.serve import export
        if backend not in BACKENDS:
            raise ParameterError("backend", backend, f"one of {', '.join(BACKENDS)}")
        if precision not in PRECISIONS:
            raise ParameterError("precision", precision, f"one of {', '.join(PRECISIONS)}")
        if backend == "torch" and precision != "fp32":
            raise ParameterError("precision", precision, "'fp32' with backend 'torch' (int8 is an ONNX Runtime model)")
        if threads < 0:
            raise ParameterError("threads", threads, "zero (the backend's default) or a positive integer")
        self.folder, self.record = export.resolve_run(run)
        self.classes: list[str] = self.record["classes"]
        if top_k < 1:
            raise ParameterError("top_k", top_k, "a positive integer")
        top_k = min(top_k, len(self.classes))
        self.backend, self.precision, self.threads, self.top_k, self.limits = backend, precision, threads, top_k, limits
        self.spinning = spinning
        self.image_size = int(self.record["image_size"])
        self.mean, self.std = self.record["data"]["mean"], self.record["data"]["std"]
        self.normalise = export.Normaliser(self.mean, self.std)
        if backend == "onnx":
            self.model_file = export.ensure_onnx(self.folder, self.record, int8=precision == "int8")
            self._run = export.session_predict(export.onnx_session(self.model_file, threads, spinning))
        else:
            import torch
            from studylib.train.run import load_checkpoint
            if threads:
                torch.set_num_threads(threads)
            self.model_file = self.folder / export.FILES["checkpoint"]
            self._run = export.torch_predict(load_checkpoint(self.record, "cpu"))
        self.warm_up()

    def warm_up(self) -> None:
        self._run(np.zeros((1, 3, self.image_size, self.image_size), dtype=np.float32))

    def open_image(self, data: bytes, name: str = "file") -> Image.Image:
        """Check a client's bytes and open them as an image: header only, nothing decoded yet."""
        lim = self.limits
        if not data:
            raise ApiError(400, f"'{name}' is empty; send the bytes of an image")
        if len(data) > lim.max_file_bytes:
            raise ApiError(413, f"'{name}' has {len(data)} bytes, but an image may have at most {lim.max_file_bytes}")
        try:
            img = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        except Image.DecompressionBombError as err:
            raise ApiError(413, f"'{name}' has too many pixels ({err}); at most {lim.max_pixels} are allowed") from None
        except UnidentifiedImageError:
            raise ApiError(415, f"'{name}' is not an image this server reads ({', '.join(IMAGE_FORMATS)})") from None
        except Exception as err:  # a malformed header: the client's bytes, not the server
            raise ApiError(422, f"'{name}' could not be read as an image: {type(err).__name__}: {err}") from None
        w, h = img.size
        if w < 1 or h < 1:
            raise ApiError(422, f"'{name}' is {w}x{h} pixels: an image needs at least one")
        if w * h > lim.max_pixels:
            raise ApiError(413, f"'{name}' is {w}x{h} pixels, but an image may have at most {lim.max_pixels} pixels")
        return img

    def preprocess(self, data: bytes, name: str = "file") -> np.ndarray:
        """Bytes -> 3 x S x S uint8 array, exactly as the evaluation decoded the test split."""
        from studylib.data.cache import decode
        img = self.open_image(data, name)
        try:
            with img:
                return decode(img, self.image_size).numpy()
        except Exception as err:  # truncated or corrupt image data
            raise ApiError(422, f"'{name}' could not be decoded as an image: {type(err).__name__}: {err}") from None

    def logits(self, images_u8: list[np.ndarray]) -> np.ndarray:
        """uint8 images -> logits: the run's normalisation (bit for bit the evaluation's), then the model."""
        return self._run(self.normalise(np.stack(images_u8)))

    def predict(self, files: list[tuple[str, bytes]], top_k: int | None = None) -> list[dict]:
        """[(name, bytes)] -> one result per image: top-1 and the top-k labels with probabilities."""
        images = [self.preprocess(data, name) for name, data in files]
        logits = self.logits(images).astype(np.float64)
        z = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        k = top_k or self.top_k
        out = []
        for (name, _), p in zip(files, probs):
            order = np.argsort(-p, kind="stable")[:k]
            out.append({"file": name, "top1": self.classes[order[0]], "top1_index": int(order[0]),
                        "predictions": [{"label": self.classes[i], "index": int(i), "probability": float(p[i])}
                                        for i in order]})
        return out

    def metadata(self) -> dict:
        r = self.record
        test = r.get("test") or {}
        return {
            "run_id": r["run_id"], "model": r["model"], "dataset": r["dataset"], "classes": self.classes,
            "image_size": self.image_size, "backend": self.backend, "precision": self.precision,
            "model_file": str(self.model_file), "threads": self.threads, "spinning": self.spinning, "top_k": self.top_k,
            "preprocessing": {"decode": "studylib.data.cache.decode: RGB, resize to image_size x image_size, bilinear",
                              "mean": self.mean, "std": self.std, "normalisation": r["data"].get("normalisation")},
            "limits": asdict(self.limits),
            "record": {
                "test_top1": test.get("top1"), "test_top5": test.get("top5"),
                "balanced_accuracy": test.get("balanced_accuracy"), "param_count": r.get("param_count"),
                "size_mb": r.get("size_mb"), "gmacs": r.get("gmacs"), "epochs": r["params"].get("epochs"),
                "train_seconds": r.get("train_seconds"), "device": r.get("device"),
                "pretrained": r.get("pretrained"), "finished_at": r.get("finished_at"),
            },
        }


# ---------------------------------------------------------------- the HTTP app

class _BodyLimit:
    """ASGI middleware: a request body over the limit is refused with 413 (Content-Length or counted)."""

    class TooLarge(Exception):
        pass

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await _send_json(send, 413, f"the request body has {int(declared)} bytes, but at most {self.max_bytes} are allowed")
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise ApiError(413, f"the request body has more than {self.max_bytes} bytes, the most allowed")
            return message

        await self.app(scope, counted, send)


async def _send_json(send, status: int, message: str):
    body = json.dumps({"error": message, "status": status}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def create_app(run: str, backend: str = "onnx", precision: str = "fp32", threads: int = 0, workers: int = 1,
               top_k: int = 5, limits: Limits = Limits(), spinning: bool = False):
    """The FastAPI app serving one trained run. workers = inferences that may run at the same time."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Query
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.exceptions import HTTPException

    if workers < 1:
        raise ParameterError("workers", workers, "a positive integer")
    predictor = Predictor(run, backend, precision, threads, top_k, limits, spinning)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="infer")

    @asynccontextmanager
    async def lifespan(app):
        yield
        pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title=f"studylib: {predictor.record['model']} on {predictor.record['dataset']}",
                  description=__doc__.split("\n\n")[0], version="1", lifespan=lifespan)
    app.state.predictor = predictor
    app.add_middleware(_BodyLimit, max_bytes=limits.max_request_bytes)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message, "status": status}, status_code=status)

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return error(exc.status, exc.message)

    @app.exception_handler(HTTPException)
    async def _http_error(request, exc: HTTPException):
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc: RequestValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error(422, f"{where}: {first.get('msg')}")

    async def read_files(request: Request, field: str, most: int) -> list[tuple[str, bytes]]:
        ctype = request.headers.get("content-type", "")
        if not ctype.lower().startswith("multipart/form-data"):
            raise ApiError(415, f"send multipart/form-data with the image in field '{field}', not {ctype or 'no content type'!r}")
        form = await request.form(max_files=most, max_fields=most + 8)
        try:
            parts = form.getlist(field)
            if not parts:
                raise ApiError(400, f"no file in form field '{field}'; send {'an image' if most == 1 else 'images'} there")
            files = []
            for i, part in enumerate(parts):
                if isinstance(part, str):
                    raise ApiError(400, f"form field '{field}' must hold a file upload, not text")
                name = part.filename or f"{field}[{i}]"
                kind = (part.content_type or "application/octet-stream").lower()
                if not kind.startswith(ACCEPTED_PART_TYPES):
                    raise ApiError(415, f"'{name}' was sent as {kind!r}; send an image type (image/*) or application/octet-stream")
                if part.size is not None and part.size > limits.max_file_bytes:
                    raise ApiError(413, f"'{name}' has {part.size} bytes, but an image may have at most {limits.max_file_bytes}")
                files.append((name, await part.read()))
            return files
        finally:
            await form.close()

    async def infer(files, k):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(pool, predictor.predict, files, k)

    top_k_query = Query(None, ge=1, le=len(predictor.classes), description="how many labels to return")

    @app.post("/predict", summary="Classify one image (multipart field 'file')")
    async def predict(request: Request, top_k: int | None = top_k_query):
        files = await read_files(request, "file", 1)
        return JSONResponse((await infer(files, top_k))[0])

    @app.post("/predict/batch", summary="Classify several images (multipart field 'files', repeated)")
    async def predict_batch(request: Request, top_k: int | None = top_k_query):
        files = await read_files(request, "files", limits.max_files)
        return JSONResponse({"results": await infer(files, top_k)})

    @app.get("/health")
    async def health():
        return {"status": "ok", "run_id": predictor.record["run_id"], "backend": backend, "precision": precision}

    @app.get("/metadata")
    async def metadata():
        return predictor.metadata()

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return PAGE.replace("{title}", html.escape(f"{predictor.record['model']} on {predictor.record['dataset']}"))

    return app


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{font-family:sans-serif;max-width:40em;margin:2em auto}img{max-width:16em;display:block;margin:1em 0}
#label{font-size:1.6em;font-weight:bold}td{padding:0 1em 0 0}.error{color:#b00}</style></head>
<body><h1>{title}</h1>
<form id="form"><input type="file" id="file" name="file" accept="image/*"> <button type="submit" id="send">Classify</button></form>
<img id="preview" alt="">
<p id="label"></p><table id="topk"></table>
<script>
const form = document.getElementById("form"), input = document.getElementById("file");
const label = document.getElementById("label"), table = document.getElementById("topk");
input.addEventListener("change", () => {
  if (input.files.length) document.getElementById("preview").src = URL.createObjectURL(input.files[0]);
});
form.addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!input.files.length) { label.textContent = "Choose an image first."; return; }
  const body = new FormData(); body.append("file", input.files[0]);
  label.className = ""; label.textContent = "..."; table.innerHTML = "";
  const reply = await fetch("predict", {method: "POST", body});
  const data = await reply.json();
  if (!reply.ok) { label.className = "error"; label.textContent = data.error; return; }
  label.textContent = data.top1;
  for (const p of data.predictions) {
    const row = table.insertRow();
    row.insertCell().textContent = p.label;
    row.insertCell().textContent = (100 * p.probability).toFixed(1) + " %";
  }
  label.dataset.done = "1";
});
</script></body></html>
"""


# ---------------------------------------------------------------- `studylib serve`

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
    parser.add_argument("--log-level", default="warning")


def run(args: argparse.Namespace) -> int:
    try:
        return _serve(args)
    except ParameterError as err:
        print(f"studylib serve: {err}", file=sys.stderr)
        return 2


def _serve(args: argparse.Namespace) -> int:
    import uvicorn
    if not 0 <= args.port <= 65535:
        raise ParameterError("port", args.port, "between 0 and 65535")
    for name in ("max_file_bytes", "max_pixels", "max_files", "max_request_bytes"):
        if getattr(args, name) < 1:
            raise ParameterError(name.replace("_", "-"), getattr(args, name), "a positive integer")
    limits = Limits(max_file_bytes=args.max_file_bytes, max_pixels=args.max_pixels, max_files=args.max_files,
                    max_request_bytes=args.max_request_bytes)
    # PIL's own decompression-bomb guard at the same limit (it warns above it and refuses twice it);
    # open_image checks the size from the header first and answers 413, so the warning is noise here.
    Image.MAX_IMAGE_PIXELS = limits.max_pixels
    import warnings
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    app = create_app(args.run, args.backend, args.precision, args.threads, args.workers, args.top_k, limits,
                     spinning=args.spinning)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)
    return 0


# ---------------------------------------------------------------- a server subprocess (notebooks, tests)

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
