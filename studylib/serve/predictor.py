"""The model behind the server: a trained run's exported model, its preprocessing, and top-k labels.

`Predictor(run)` loads one backend session (ONNX Runtime, fp32 or int8, or the PyTorch checkpoint)
and turns a client's images (bytes or file objects) into top-k labels with probabilities, in two steps:
`open_all` reads only the headers and refuses an image or a request that would cost too much to decode
(pixels per image, and pixels to decode per request after JPEG's reduced-scale decoding); `predict_opened`
decodes and classifies. Preprocessing is the evaluation's: studylib.data.cache.decode(image, image_size),
then the run's mean/std (studylib.serve.export.Normaliser). A client's mistake raises ApiError: an HTTP
status and one sentence. A run folder that cannot be served raises ParameterError naming the file, before
anything is written into it.
"""
from __future__ import annotations

import io
import threading
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from studylib.data.cache import decode
from studylib.errors import ParameterError
from studylib.serve.export import FILES, Normaliser, ensure_onnx, load_or_refuse, onnx_session, resolve_run, session_predict, torch_predict
from studylib.train.run import load_checkpoint

IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")  # what PIL may open; never EPS/PSD and friends
BACKENDS = ("onnx", "torch")
PRECISIONS = ("fp32", "int8")


@dataclass(frozen=True)
class Limits:
    max_file_bytes: int = 10_000_000       # one image
    max_request_bytes: int = 64_000_000    # a whole request body
    max_pixels: int = 40_000_000           # width x height, checked from the header before decoding
    max_files: int = 32                    # images in one /predict/batch request
    max_request_pixels: int = 64_000_000   # pixels decoded for one request (JPEG at its reduced draft scale)
    max_queue: int = 8                     # prediction requests inside the server at once; the next gets 503
    request_timeout: float = 30.0          # seconds for a request's body, its wait and its prediction

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ParameterError(f.name.replace("_", "-"), value, f"a positive {'number' if f.type == 'float' else 'integer'}")


class ApiError(Exception):
    """A client's mistake (or the server too busy for it): an HTTP status, one sentence, optional headers."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


class Stopped(Exception):
    """The request's client has gone or its time ran out: the rest of its images are not decoded."""


class Predictor:
    """Image bytes -> top-k labels, with the run's preprocessing and one backend session."""

    def __init__(self, run: str, backend: str = "onnx", precision: str = "fp32", threads: int = 0,
                 top_k: int = 5, limits: Limits = Limits(), spinning: bool = False):
        if backend not in BACKENDS:
            raise ParameterError("backend", backend, f"one of {', '.join(BACKENDS)}")
        if precision not in PRECISIONS:
            raise ParameterError("precision", precision, f"one of {', '.join(PRECISIONS)}")
        if backend == "torch" and precision != "fp32":
            raise ParameterError("precision", precision, "'fp32' with backend 'torch' (int8 is an ONNX Runtime model)")
        if threads < 0:
            raise ParameterError("threads", threads, "zero (the backend's default) or a positive integer")
        self.folder, self.record = resolve_run(run)
        self.classes: list[str] = self.record["classes"]
        if top_k < 1:
            raise ParameterError("top_k", top_k, "a positive integer")
        top_k = min(top_k, len(self.classes))
        self.backend, self.precision, self.threads, self.top_k, self.limits = backend, precision, threads, top_k, limits
        self.spinning = spinning
        self.image_size = int(self.record["image_size"])
        self.mean, self.std = self.record["data"]["mean"], self.record["data"]["std"]
        self.normalise = Normaliser(self.mean, self.std)
        if backend == "onnx":
            self.model_file = ensure_onnx(self.folder, self.record, int8=precision == "int8")
            session = load_or_refuse(self.model_file, lambda: onnx_session(self.model_file, threads, spinning),
                                     "delete it and it is exported again from model.pt")
            self._run = session_predict(session)
        else:
            if threads:
                torch.set_num_threads(threads)
            self.model_file = self.folder / FILES["checkpoint"]
            self._run = torch_predict(load_or_refuse(self.model_file, lambda: load_checkpoint(self.record, "cpu")))
        self.warm_up()

    def warm_up(self) -> None:
        self._run(np.zeros((1, 3, self.image_size, self.image_size), dtype=np.float32))

    def open_image(self, data, name: str = "file") -> Image.Image:
        """Check a client's image (bytes or a binary file object) and open it: header only, nothing decoded.
        A JPEG is set to decode at the smallest scale libjpeg offers that still covers image_size
        (decode does the same), so its size afterwards is what decoding will cost."""
        lim = self.limits
        size = len(data) if isinstance(data, (bytes, bytearray)) else data.seek(0, io.SEEK_END)
        if not size:
            raise ApiError(400, f"'{name}' is empty; send the bytes of an image")
        if size > lim.max_file_bytes:
            raise ApiError(413, f"'{name}' has {size} bytes, but an image may have at most {lim.max_file_bytes}")
        if not isinstance(data, (bytes, bytearray)):
            data.seek(0)
        try:
            img = Image.open(io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data, formats=IMAGE_FORMATS)
        except Image.DecompressionBombError:
            raise ApiError(413, f"'{name}' has too many pixels; at most {lim.max_pixels} are allowed") from None
        except UnidentifiedImageError:
            raise ApiError(415, f"'{name}' is not an image this server reads ({', '.join(IMAGE_FORMATS)})") from None
        except MemoryError:
            raise
        except Exception as err:  # a malformed header: the client's bytes, not the server
            raise ApiError(422, f"'{name}' could not be read as an image: {type(err).__name__}: {err}") from None
        w, h = img.size
        if w < 1 or h < 1:
            raise ApiError(422, f"'{name}' is {w}x{h} pixels: an image needs at least one")
        if w * h > lim.max_pixels:
            raise ApiError(413, f"'{name}' is {w}x{h} pixels, but an image may have at most {lim.max_pixels} pixels")
        if img.format == "JPEG":
            img.draft("RGB", (self.image_size, self.image_size))
        return img

    def open_all(self, files: list[tuple]) -> list[tuple[str, Image.Image]]:
        """[(name, bytes or file)] -> [(name, opened image)], headers only; refuses (ApiError 413) a request
        whose images would decode to more than limits.max_request_pixels pixels in all."""
        opened: list[tuple[str, Image.Image]] = []
        try:
            for name, data in files:
                opened.append((name, self.open_image(data, name)))
            total = sum(img.size[0] * img.size[1] for _, img in opened)
            if total > self.limits.max_request_pixels:
                raise ApiError(413, f"the {len(opened)} images of this request decode to {total} pixels, but a request "
                                    f"may decode at most {self.limits.max_request_pixels}; send fewer or smaller images")
        except BaseException:
            for _, img in opened:
                img.close()
            raise
        return opened

    def decode_one(self, img: Image.Image, name: str = "file") -> np.ndarray:
        """An opened image -> 3 x S x S uint8 array, exactly as the evaluation decoded the test split."""
        try:
            with img:
                return decode(img, self.image_size).numpy()
        except MemoryError:
            raise  # the server's condition, not the client's image (the app answers 503)
        except Exception as err:  # truncated or corrupt image data
            raise ApiError(422, f"'{name}' could not be decoded as an image: {type(err).__name__}: {err}") from None

    def preprocess(self, data: bytes, name: str = "file") -> np.ndarray:
        """Bytes -> 3 x S x S uint8 array, exactly as the evaluation decoded the test split."""
        return self.decode_one(self.open_image(data, name), name)

    def logits(self, images_u8: list[np.ndarray]) -> np.ndarray:
        """uint8 images -> logits: the run's normalisation (bit for bit the evaluation's), then the model."""
        return self._run(self.normalise(np.stack(images_u8)))

    def predict(self, files: list[tuple[str, bytes]], top_k: int | None = None) -> list[dict]:
        """[(name, bytes or file)] -> one result per image: top-1 and the top-k labels with probabilities."""
        return self.predict_opened(self.open_all(files), top_k)

    def predict_opened(self, opened: list[tuple[str, Image.Image]], top_k: int | None = None,
                       stop: threading.Event | None = None) -> list[dict]:
        """open_all's images -> one result per image; raises Stopped before the next image once `stop` is set."""
        images = []
        try:
            for name, img in opened:
                if stop is not None and stop.is_set():
                    raise Stopped(name)
                images.append(self.decode_one(img, name))
        finally:
            for _, img in opened:
                img.close()
        logits = self.logits(images).astype(np.float64)
        z = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        k = top_k or self.top_k
        out = []
        for (name, _), p in zip(opened, probs):
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
            "model_file": self.model_file.name, "threads": self.threads, "spinning": self.spinning, "top_k": self.top_k,
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
