"""Serve a trained run over HTTP: the FastAPI app, its request limits, its JSON errors and the upload page.

Endpoints
- POST /predict         one image (multipart field "file") -> top-k labels with probabilities
- POST /predict/batch   several images (multipart field "files", repeated) -> one result per image
- GET  /health          {"status": "ok", ...} once the model is loaded
- GET  /metadata        model, dataset, classes, preprocessing, limits and a summary of the train record
- GET  /                a small HTML page: choose an image, see its prediction

The model behind it is studylib.serve.predictor.Predictor; `studylib serve` (studylib.serve.server)
runs the app on uvicorn. A client's mistake is a 4xx with {"error": ..., "status": ...}: not an image,
a truncated image, too many bytes or pixels, the wrong content type, an empty body, too many files.
Inference runs in a small thread pool off the event loop, on one session loaded at start.
"""
from __future__ import annotations

import asyncio
import html
import json
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException

from studylib.errors import ParameterError
from studylib.serve.predictor import ApiError, Limits, Predictor

ACCEPTED_PART_TYPES = ("image/", "application/octet-stream")


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


async def _send_json(send, status: int, message: str):
    body = json.dumps({"error": message, "status": status}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def create_app(run: str, backend: str = "onnx", precision: str = "fp32", threads: int = 0, workers: int = 1,
               top_k: int = 5, limits: Limits = Limits(), spinning: bool = False):
    """The FastAPI app serving one trained run. workers = inferences that may run at the same time."""
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
