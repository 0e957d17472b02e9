"""The HTTP server as a real uvicorn subprocess on 127.0.0.1: predictions, bad input, fuzz, the HTML page,
the load test, and deploy.ipynb end to end."""
import http.client
import io
import json
import random
import struct
import subprocess
import sys
import urllib.request
import zlib
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
from PIL import Image

from browser import needs_browser
from deploy_helpers import exported_run, trained_run
from studylib.errors import ParameterError
from studylib.record import DeployRecord
from studylib.serve import loadtest
from studylib.serve.export import run_data
from studylib.serve.loadtest import Client, ImageFile, multipart
from studylib.serve.predictor import Predictor
from studylib.serve.server import ServerProcess
from studylib.stages.deploy import DeployParams
from studylib.train.run import load_checkpoint

pytestmark = pytest.mark.slow
LIMITS = {"max_file_bytes": 200_000, "max_pixels": 1_000_000, "max_files": 4, "max_request_bytes": 1_000_000}


@pytest.fixture(scope="module")
def run(study_env):
    exported = exported_run()  # writes model.onnx before the server needs it
    rid, folder = trained_run()
    return rid, folder, json.loads((folder / "record.json").read_text()), exported


@pytest.fixture(scope="module")
def server(run):
    with ServerProcess(run[0], threads=1, **LIMITS) as s:
        yield s


@pytest.fixture(scope="module")
def images(run):
    return loadtest.test_images(run[2])


@pytest.fixture
def client(server):
    c = Client(server.url, timeout=30)
    yield c
    c.close()


def png_bytes(size=(40, 30), colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels: a decompression bomb's calling card."""
    data = bytearray(png_bytes((1, 1)))
    ihdr = bytearray(data[12:29])                 # b"IHDR" + 13 bytes of header
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


def post(client, files, path="/predict", field=None, content_type=None):
    body, ctype = multipart(field or ("file" if path == "/predict" else "files"), files)
    return client.request("POST", path, body, content_type or ctype)


def test_health_and_metadata(server, run, client):
    code, health, _ = client.request("GET", "/health")
    assert code == 200 and health["status"] == "ok" and health["run_id"] == run[0]
    code, meta, _ = client.request("GET", "/metadata")
    assert code == 200
    assert meta["classes"] == ["blue", "green", "red"] and meta["image_size"] == 32 and meta["backend"] == "onnx"
    assert meta["dataset"] == "imagefolder" and meta["model"] == "smallvgg1"
    assert meta["record"]["test_top1"] == run[2]["test"]["top1"]
    assert meta["preprocessing"]["mean"] == run[2]["data"]["mean"]
    assert meta["limits"]["max_pixels"] == LIMITS["max_pixels"]


def test_served_top1_equals_offline_on_every_test_image(server, run, images):
    exported = run[3]
    assert [i.source for i in images] == exported.names and [i.name for i in images] == [Path(n).name for n in exported.names]
    stream = loadtest.single_stream(server.url, images)
    assert stream["errors"] == [] and set(stream["status"]) == {200}
    np.testing.assert_array_equal(stream["top1_index"], exported.offline_top1["onnx"])
    np.testing.assert_array_equal(stream["top1_index"], exported.offline_top1["pytorch"])


def test_served_probabilities_are_the_offline_models(client, images, run):
    """Served = offline beyond the top-1 label: each served probability is the softmax of the trained
    PyTorch model's logits on the same test image, normalised with the run's own mean and std (computed
    here with torch from the record, not with the server's code)."""
    record = run[2]
    model = load_checkpoint(record)
    mean = torch.tensor(record["data"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(record["data"]["std"]).view(1, 3, 1, 1)
    x = run_data(record).splits["test"].images[:4].float() / 255
    with torch.no_grad():
        offline = torch.softmax(model((x - mean) / std), dim=1).numpy()
    code, batch, _ = post(client, images[:4], "/predict/batch")
    assert code == 200
    for i, result in enumerate(batch["results"]):
        served = {p["label"]: p["probability"] for p in result["predictions"]}
        assert served == pytest.approx(dict(zip(record["classes"], offline[i].tolist())), abs=1e-4)


def test_predict_reply_and_batch(client, images, run):
    code, one, _ = post(client, [images[0]])
    assert code == 200 and one["file"] == images[0].name
    probs = [p["probability"] for p in one["predictions"]]
    assert len(probs) == 3 and probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0)
    assert one["top1"] == one["predictions"][0]["label"] == run[2]["classes"][one["top1_index"]]
    code, top1_only, _ = client.request("POST", "/predict?top_k=1", *multipart("file", [images[0]]))
    assert code == 200 and len(top1_only["predictions"]) == 1
    code, batch, _ = post(client, images[:4], "/predict/batch")
    assert code == 200 and [r["file"] for r in batch["results"]] == [i.name for i in images[:4]]
    first = batch["results"][0]["predictions"]
    assert [p["label"] for p in first] == [p["label"] for p in one["predictions"]]
    assert [p["probability"] for p in first] == pytest.approx(probs, abs=1e-5)  # batched: same numbers, near enough


def test_preprocessing_is_the_evaluations(run, images):
    """In-process, both backends: served bytes decode to exactly the cached test tensors."""
    cached = run_data(run[2]).splits["test"].images
    for backend in ("onnx", "torch"):
        p = Predictor(run[0], backend=backend, threads=1)
        np.testing.assert_array_equal(np.stack([p.preprocess(i.data) for i in images]), cached.numpy())
        top1 = [r["top1_index"] for r in p.predict([(i.name, i.data) for i in images])]
        np.testing.assert_array_equal(top1, run[3].offline_top1["pytorch"])


BAD = {
    "not an image": (lambda imgs: post_args([ImageFile("a.jpg", b"hello, this is text" * 20, "image/jpeg")]), 415),
    "truncated jpeg": (lambda imgs: post_args([ImageFile("t.jpg", jpeg(imgs)[: len(jpeg(imgs)) // 2], "image/jpeg")]), 422),
    "truncated png": (lambda imgs: post_args([ImageFile("t.png", png_bytes((300, 200))[:-60], "image/png")]), 422),
    "too many pixels": (lambda imgs: post_args([ImageFile("big.png", png_bytes((1100, 1000)), "image/png")]), 413),
    "decompression bomb header": (lambda imgs: post_args([ImageFile("bomb.png", png_claiming(100_000, 100_000), "image/png")]), 413),
    "file over the byte limit": (lambda imgs: post_args([ImageFile("x.jpg", b"\xff" * 250_000, "image/jpeg")]), 413),
    "body over the request limit": (lambda imgs: post_args([ImageFile("x.jpg", b"\xff" * 150_000, "image/jpeg")] * 8,
                                                           "/predict/batch"), 413),
    "json content type": (lambda imgs: ("/predict", b'{"image": 1}', "application/json"), 415),
    "no content type": (lambda imgs: ("/predict", jpeg(imgs), None), 415),
    "text part": (lambda imgs: post_args([ImageFile("a.jpg", jpeg(imgs), "text/plain")]), 415),
    "empty body": (lambda imgs: ("/predict", b"", "multipart/form-data; boundary=xyz"), 400),
    "empty file": (lambda imgs: post_args([ImageFile("e.jpg", b"", "image/jpeg")]), 400),
    "missing boundary": (lambda imgs: ("/predict", b"--x\r\n\r\n", "multipart/form-data"), 400),
    "garbage multipart": (lambda imgs: ("/predict", b"\x00\x01garbage" * 50, "multipart/form-data; boundary=b"), 400),
    "wrong field": (lambda imgs: post_args([ImageFile("a.jpg", jpeg(imgs), "image/jpeg")], field="image"), 400),
    "two files to /predict": (lambda imgs: post_args([ImageFile("a.jpg", jpeg(imgs), "image/jpeg")] * 2), 400),
    "too many files": (lambda imgs: post_args([ImageFile("a.jpg", jpeg(imgs), "image/jpeg")] * 5, "/predict/batch"), 400),
    "one bad file in a batch": (lambda imgs: post_args([ImageFile("a.jpg", jpeg(imgs), "image/jpeg"),
                                                        ImageFile("b.jpg", b"nope", "image/jpeg")], "/predict/batch"), 415),
    "top_k out of range": (lambda imgs: ("/predict?top_k=9",) + multipart("file", [ImageFile("a.jpg", jpeg(imgs), "image/jpeg")]), 422),
}


def jpeg(imgs):
    return next(i.data for i in imgs if i.name.endswith(".jpg"))


def post_args(files, path="/predict", field=None):
    body, ctype = multipart(field or ("file" if path == "/predict" else "files"), files)
    return path, body, ctype


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gets_a_4xx_with_a_json_error(case, client, images, server):
    make, status = BAD[case]
    path, body, ctype = make(images)
    code, reply, _ = client.request("POST", path, body, ctype)
    assert code == status, reply
    assert isinstance(reply, dict) and reply["status"] == status and reply["error"]
    assert server.alive()


def test_chunked_body_over_the_limit_is_counted_and_refused(server):
    """No Content-Length to check up front: the server counts the bytes as they arrive."""
    body, ctype = multipart("file", [ImageFile("x.jpg", b"\xff" * 1_500_000, "image/jpeg")])
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("POST", "/predict", body=iter([body[i:i + 65536] for i in range(0, len(body), 65536)]),
                 headers={"Content-Type": ctype}, encode_chunked=True)
    reply = conn.getresponse()
    assert reply.status == 413 and "more than 1000000 bytes" in json.loads(reply.read())["error"]
    conn.close()
    assert server.alive()


def test_wrong_method_and_path_are_json_errors(client):
    assert client.request("GET", "/predict")[:2] == (405, {"error": "Method Not Allowed", "status": 405})
    assert client.request("GET", "/nope")[0] == 404


def fuzz_requests(images, n, seed=0):
    """n malformed or odd requests: mutated images, junk bodies, odd headers, too many files."""
    rng = random.Random(seed)
    valid = [i.data for i in images[:3]] + [png_bytes()]

    def mutate(data: bytes) -> bytes:
        b = bytearray(data)
        kind = rng.randrange(5)
        if kind == 0:
            return bytes(b[: rng.randrange(len(b))])
        if kind == 1:
            for _ in range(rng.randint(1, 20)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            return bytes(b)
        if kind == 2:
            at = rng.randrange(len(b))
            return bytes(b[:at] + rng.randbytes(rng.randint(1, 500)) + b[at:])
        if kind == 3:
            return rng.randbytes(rng.randint(0, 3000))
        return png_claiming(rng.randint(1, 200_000), rng.randint(1, 200_000))

    types = ["image/jpeg", "image/png", "application/octet-stream", "text/plain", "application/json", "image/x-bogus", ""]
    for _ in range(n):
        path = rng.choice(["/predict", "/predict/batch"])
        field = rng.choice(["file", "files", "image"])
        kind = rng.randrange(10)
        if kind < 6:
            files = [ImageFile(rng.choice(["a.jpg", "b.png", "", "../../etc/passwd", "ü.gif"]), mutate(rng.choice(valid)),
                               rng.choice(types) or "image/jpeg") for _ in range(rng.randint(1, 6))]
            body, ctype = multipart(field, files)
        elif kind == 6:
            body, ctype = rng.randbytes(rng.randint(0, 2000)), rng.choice(["multipart/form-data; boundary=zz",
                                                                           "multipart/form-data", "image/jpeg", "text/html"])
        elif kind == 7:
            body, ctype = multipart(field, [ImageFile("a.jpg", rng.choice(valid), "image/jpeg")])
            body = body[: rng.randrange(len(body))]  # cut mid-body: Content-Length matches the cut
        elif kind == 8:
            body, ctype = b"", rng.choice(["multipart/form-data; boundary=a", "", "application/x-www-form-urlencoded"])
        else:
            body, ctype = "&".join(f"f{k}=v" for k in range(rng.randint(1, 50))).encode(), "application/x-www-form-urlencoded"
        yield path, body, ctype or None


def test_fuzz_gets_no_5xx_and_the_server_stays_up(server, images):
    client = Client(server.url, timeout=30)
    statuses = []
    for path, body, ctype in fuzz_requests(images, 300):
        code, reply, _ = client.request("POST", path, body, ctype)
        statuses.append(code)
        assert code < 500, (path, ctype, reply)
        if code >= 400:
            assert isinstance(reply, dict) and reply.get("error"), reply
    assert len(statuses) == 300 and sum(s >= 400 for s in statuses) > 200
    code, reply, _ = client.predict(images[0])
    assert code == 200 and reply["top1"]
    assert server.alive() and server.process.poll() is None
    client.close()


def test_load_test_and_ceiling(server, images, run):
    level = loadtest.load_test(server.url, images, concurrency=4, max_requests=40, max_seconds=20, warmup=1)
    assert level["requests"] == 40 and level["errors"] == 0 and level["concurrency"] == 4
    assert level["p50_ms"] <= level["p90_ms"] <= level["p99_ms"] and level["throughput"] > 0
    capped = loadtest.load_test(server.url, images, concurrency=2, max_requests=10_000, max_seconds=0.5, warmup=0)
    assert capped["requests"] < 10_000 and capped["seconds"] < 10  # the time bound stops it (however few got through)
    ceiling = loadtest.in_process(Predictor(run[0], threads=1), images, max_requests=30, max_seconds=5, warmup=1)
    assert ceiling["requests"] == 30 and ceiling["p50_ms"] > 0 and ceiling["batch"]["images_per_second"] > 0
    assert ceiling["model_only"]["p50_ms"] <= ceiling["p99_ms"]
    pair = loadtest.paired(server.url, Predictor(run[0], threads=1), images, rounds=2, per_round=5, warmup=1)
    assert pair["http"]["p50_ms"] > 0 and pair["in_process"]["p50_ms"] > 0
    assert pair["overhead_p50_ms"] == pair["http"]["p50_ms"] - pair["in_process"]["p50_ms"]


@needs_browser
def test_html_page_shows_the_prediction_in_chromium(browser, server, images, client, tmp_path):
    path = tmp_path / images[0].name
    path.write_bytes(images[0].data)
    expected = client.predict(images[0])[1]["top1"]
    page = browser.new_page()
    try:
        page.goto(server.url + "/")
        assert "smallvgg1" in page.title()
        page.set_input_files("#file", str(path))
        page.click("#send")
        page.wait_for_selector("#label[data-done='1']", timeout=20_000)
        assert page.inner_text("#label") == expected
        assert page.locator("#topk tr").count() == 3
        bad = tmp_path / "not-an-image.jpg"
        bad.write_bytes(b"plain text")
        page.set_input_files("#file", str(bad))
        page.click("#send")
        page.wait_for_selector("#label.error", timeout=20_000)
        assert "not an image" in page.inner_text("#label")
    finally:
        page.close()


def test_cli_refuses_a_bad_run_in_one_sentence(study_env):
    out = subprocess.run([sys.executable, "-m", "studylib.cli", "serve", "no-such-run", "--port", "0"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "parameter 'run' is 'no-such-run'" in out.stderr and "Traceback" not in out.stderr


ROOT = Path(__file__).resolve().parent.parent


def test_deploy_notebook_end_to_end(run, tmp_path):
    import papermill as pm
    import scrapbook as sb
    out = tmp_path / "deploy.ipynb"
    pm.execute_notebook(str(ROOT / "notebooks" / "deploy.ipynb"), str(out), cwd=str(tmp_path), progress_bar=False,
                        kernel_name="python3", parameters=dict(run=run[0], concurrency=[1, 3], max_requests=30,
                                                               max_seconds=3.0, warmup=1, threads=1,
                                                               calibration_images=16, paired_rounds=2,
                                                               serving_runs=[trained_run("smallvgg2")[0]],
                                                               latency_calls=3, batch_size=8, throughput_calls=1))
    rec = DeployRecord.model_validate(sb.read_notebook(str(out)).scraps["record"].data)
    # every model's row: the served run first (its own export's numbers), then the second model
    assert [(m.model, m.run_id) for m in rec.models] == [("smallvgg1", run[0]), ("smallvgg2", trained_run("smallvgg2")[0])]
    served = rec.models[0]
    assert (served.fp32_top1, served.int8_top1) == (rec.onnx_top1, rec.int8_top1)
    assert (served.fp32_mb, served.int8_mb) == (rec.sizes_mb["onnx"], rec.sizes_mb["onnx_int8"])
    assert all(m.batch_size == 8 and m.int8_mb < m.fp32_mb and m.latency_ms > 0 for m in rec.models)
    nb = nbformat.read(out, as_version=4)
    tables = [o["data"]["text/html"] for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if "batch-1 latency (ms)" in o.get("data", {}).get("text/html", "")]
    assert len(tables) == 1 and all(m.model in tables[0] for m in rec.models)
    source = nbformat.read(ROOT / "notebooks" / "deploy.ipynb", as_version=4)
    assert all({"hide-input", "remove-input", "remove-cell"} & set(c.metadata.get("tags", []))
               for c in source.cells if c.cell_type == "code"), "the book hides every code cell"
    assert rec.status == "ok" and rec.stage == "deploy" and rec.train_run_id == run[0]
    assert rec.served["images"] == 18 and rec.served_agreement == 1.0 and rec.served["errors"] == []
    assert rec.served_top1 == rec.onnx_top1 == rec.pytorch_top1 == run[2]["test"]["top1"]
    assert [lv.concurrency for lv in rec.load] == [1, 3] and all(lv.errors == 0 and lv.requests > 0 for lv in rec.load)
    assert rec.latency_p50_ms == rec.load[0].p50_ms and rec.inprocess_p50_ms == rec.ceiling["p50_ms"]
    pair = rec.ceiling["paired"]
    assert pair["rounds"] == 2 and rec.http_overhead_ms == pair["http"]["p50_ms"] - pair["in_process"]["p50_ms"]
    assert rec.int8_top1 is not None and rec.int8_size_ratio < 1 and rec.export["calibration_images"] == 16
    assert rec.server["alive_after_load"] and rec.server["exit_code"] is not None
    with pytest.raises(OSError):  # stopped: nothing answers at its address any more
        urllib.request.urlopen(rec.server["url"] + "/health", timeout=2)


def test_deploy_parameters_are_checked_before_any_work(run):
    """What the notebook's validation cell runs: one sentence per bad parameter."""
    assert DeployParams.from_namespace({"run": run[0], "In": []}).concurrency == [1, 4, 16]
    bad = {"run": ("no-such-run", "parameter 'run' is 'no-such-run'"),
           "backend": ("tensorrt", "parameter 'backend' is 'tensorrt'"),
           "concurrency": ([0, 4], "between 1 and 256"),
           "max_seconds": (0, "a positive number of seconds"),
           "top_k": (0, "a positive integer")}
    for name, (value, message) in bad.items():
        with pytest.raises(ParameterError, match=message):
            DeployParams.from_namespace({"run": run[0], name: value})
