"""The model behind the server: a trained run's exported model, its preprocessing, and top-k labels.

`Predictor(run)` loads one backend session (ONNX Runtime, fp32 or int8, or the PyTorch checkpoint)
and turns a client's image bytes into top-k labels with probabilities. Preprocessing is the
evaluation's: studylib.data.cache.decode(image, image_size), then the run's mean/std
(studylib.serve.export.Normaliser). A client's mistake raises ApiError: an HTTP status and one sentence.
"""
from __future__ import annotations

import io
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from studylib.data.cache import decode
from studylib.errors import ParameterError
from studylib.serve.export import (FILES, Normaliser, ensure_onnx, onnx_session, resolve_run, session_predict,
                                   torch_predict)
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


class ApiError(Exception):
    """A client's mistake: an HTTP status and one sentence."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


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
            self._run = session_predict(onnx_session(self.model_file, threads, spinning))
        else:
            if threads:
                torch.set_num_threads(threads)
            self.model_file = self.folder / FILES["checkpoint"]
            self._run = torch_predict(load_checkpoint(self.record, "cpu"))
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
