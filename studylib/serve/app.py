"""Serve a trained run over HTTP: the FastAPI app, its request limits, its JSON errors and the upload page.

Endpoints
- POST /predict         one image (multipart field "file") -> top-k labels with probabilities
- POST /predict/batch   several images (multipart field "files", repeated) -> one result per image
- GET  /health          {"status": "ok", ...} once the model is loaded, with the admission counters
- GET  /metadata        model, dataset, classes, preprocessing, limits and a summary of the train record
- GET  /                a small HTML page: choose an image, see its prediction

The model behind it is studylib.serve.predictor.Predictor; `studylib serve` (studylib.serve.server)
runs the app on uvicorn. Every error is JSON, {"error": ..., "status": ...}, with no path or traceback.
A client's mistake is a 4xx: not an image, a truncated image, too many bytes or pixels (per image, from
its header, and per request), the wrong content type, an empty body, too many files, a Host or Origin
that is not this server's (DNS rebinding, cross-site POSTs).

Under load the server stays bounded: at most limits.max_queue prediction requests are inside it at once
(being read, waiting or running); the next gets 503 at once, its body read and discarded, never kept.
Parts over 1 MB wait on disk (Starlette's spooled files) and are decoded from there. A request that has not
finished after limits.request_timeout seconds gets 408 (its body had not all arrived) or 503, and work
whose client has gone (or timed out) is dropped: taken off the queue, or stopped before its next image.
Inference runs in a small thread pool off the event loop, so /health answers while it works.
"""
from __future__ import annotations

import asyncio
import html
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException

from studylib.errors import ParameterError
from studylib.serve.predictor import ApiError, Limits, Predictor, Stopped

ACCEPTED_PART_TYPES = ("image/", "application/octet-stream")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


class _BodyLimit:
    """ASGI middleware: a request body over the limit is refused with 413 (Content-Length or counted)."""

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


def host_of(value: str) -> str:
    """'Host' or 'Origin' header -> its host name, lower case, without scheme, port or IPv6 brackets."""
    value = value.strip().lower().split("://", 1)[-1].split("/", 1)[0]
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class _HostGuard:
    """ASGI middleware: only requests addressed to an allowed host name, and no request sent by a page of
    another origin. A rebound DNS name (a page at evil.example whose name now points at 127.0.0.1) arrives
    with Host: evil.example; a cross-site form POST arrives with Origin: http://evil.example. Both get 403."""

    def __init__(self, app, allowed: set[str]):
        self.app, self.allowed = app, allowed

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            host = host_of(headers.get(b"host", b"").decode("latin-1"))
            origin = headers.get(b"origin", b"").decode("latin-1")
            names = ", ".join(sorted(self.allowed))
            if host not in self.allowed:
                return await _send_json(send, 403, f"host {host!r} is not one this server answers to ({names}); "
                                                   "start it with --allowed-host NAME to add one")
            if origin and host_of(origin) not in self.allowed:
                return await _send_json(send, 403, f"requests from pages of origin {origin!r} are refused; "
                                                   f"this server takes them from {names}")
        await self.app(scope, receive, send)


async def _send_json(send, status: int, message: str, headers: dict | None = None):
    body = json.dumps({"error": message, "status": status}).encode()
    extra = [(k.lower().encode(), str(v).encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *extra]})
    await send({"type": "http.response.body", "body": body})


def create_app(run: str, backend: str = "onnx", precision: str = "fp32", threads: int = 0, workers: int = 1,
               top_k: int = 5, limits: Limits = Limits(), spinning: bool = False,
               allowed_hosts: tuple[str, ...] = ()):
    """The FastAPI app serving one trained run. workers = inferences that may run at the same time;
    allowed_hosts = host names besides 127.0.0.1, localhost and ::1 that clients may address it by."""
    if workers < 1:
        raise ParameterError("workers", workers, "a positive integer")
    predictor = Predictor(run, backend, precision, threads, top_k, limits, spinning)
    pools = [ThreadPoolExecutor(max_workers=workers, thread_name_prefix="infer")]
    counts = {"in_progress": 0, "served": 0, "busy": 0, "dropped": 0, "timed_out": 0}

    @asynccontextmanager
    async def lifespan(app):
        yield
        pools[0].shutdown(wait=False, cancel_futures=True)   # queued work dropped; a later start gets a new pool
        pools[0] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="infer")

    app = FastAPI(title=f"studylib: {predictor.record['model']} on {predictor.record['dataset']}",
                  description=__doc__.split("\n\n")[0], version="1", lifespan=lifespan)
    app.state.predictor = predictor
    app.add_middleware(_BodyLimit, max_bytes=limits.max_request_bytes)
    app.add_middleware(_HostGuard, allowed={host_of(h) for h in (*LOCAL_HOSTS, *allowed_hosts)})

    def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return error(exc.status, exc.message, exc.headers)

    @app.exception_handler(HTTPException)
    async def _http_error(request, exc: HTTPException):
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc: RequestValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error(422, f"{where}: {first.get('msg')}")

    @app.exception_handler(Exception)
    async def _server_error(request, exc: Exception):
        # the server's own fault: the traceback goes to the server's log, never to the client
        if isinstance(exc, MemoryError):
            return error(503, "the server ran out of memory for this request; send fewer or smaller images, "
                              "or retry later", {"Retry-After": "5"})
        return error(500, "internal server error")

    async def read_files(request: Request, field: str, most: int):
        """The request's form and its image parts as (name, file): small parts in memory, larger on disk."""
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
                part.file.seek(0)
                files.append((name, part.file))
            return form, files
        except BaseException:
            await form.close()
            raise

    async def client_gone(request: Request) -> None:
        """Returns when the client disconnects (after its body, the next ASGI message is the disconnect)."""
        while (await request.receive())["type"] != "http.disconnect":
            pass

    async def infer(request: Request, images, k):
        """Run the prediction in the pool; if the client goes first, drop it (queued: cancelled; running:
        stopped before its next image)."""
        stop = threading.Event()
        work = asyncio.ensure_future(asyncio.get_running_loop().run_in_executor(pools[0], predictor.predict_opened, images, k, stop))
        gone = asyncio.ensure_future(client_gone(request))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                counts["dropped"] += 1
                raise ApiError(499, "the client closed the connection before its prediction ran")
            return work.result()
        finally:
            if not work.done():
                stop.set()
                work.cancel()
            gone.cancel()

    async def handle(request: Request, field: str, most: int, k: int | None):
        """Admission, then the body, the headers' checks and the prediction, all within request_timeout."""
        if counts["in_progress"] >= limits.max_queue:
            counts["busy"] += 1
            await drain(request)
            raise ApiError(503, f"the server is busy ({limits.max_queue} requests are in progress); retry in a moment",
                           {"Retry-After": "1"})
        counts["in_progress"] += 1
        stage, form = "body", None
        try:
            async with asyncio.timeout(limits.request_timeout):
                form, files = await read_files(request, field, most)
                stage = "prediction"
                images = predictor.open_all(files)   # headers only: sizes and pixel budgets before any decode
                results = await infer(request, images, k)
        except TimeoutError:
            counts["timed_out"] += 1
            if stage == "body":
                raise ApiError(408, f"the request body did not arrive within {limits.request_timeout:g} s") from None
            raise ApiError(503, f"the prediction did not finish within {limits.request_timeout:g} s; retry with fewer "
                                "images", {"Retry-After": "1"}) from None
        except Stopped:
            counts["dropped"] += 1
            raise ApiError(499, "the prediction was stopped") from None
        finally:
            counts["in_progress"] -= 1
            if form is not None:
                await form.close()
        counts["served"] += 1
        return results

    async def drain(request: Request) -> None:
        """Read and discard a refused request's body (bounded by the body limit and the timeout), so the
        client sees the reply instead of a reset connection; nothing of it is kept."""
        try:
            async with asyncio.timeout(min(limits.request_timeout, 5)):
                async for _ in request.stream():
                    pass
        except Exception:  # too slow or too long: the 503 goes out all the same
            pass

    top_k_query = Query(None, ge=1, le=len(predictor.classes), description="how many labels to return")

    @app.post("/predict", summary="Classify one image (multipart field 'file')")
    async def predict(request: Request, top_k: int | None = top_k_query):
        return JSONResponse((await handle(request, "file", 1, top_k))[0])

    @app.post("/predict/batch", summary="Classify several images (multipart field 'files', repeated)")
    async def predict_batch(request: Request, top_k: int | None = top_k_query):
        return JSONResponse({"results": await handle(request, "files", limits.max_files, top_k)})

    @app.get("/health")
    async def health():
        return {"status": "ok", "run_id": predictor.record["run_id"], "backend": backend, "precision": precision,
                **counts}

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
