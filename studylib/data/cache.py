"""Decode each split once into a uint8 tensor, cached on disk.

The cache file is keyed by dataset, split, image size and a fingerprint of the files'
contents, so a later run at the same size reuses it and an edited file invalidates it.
Every image is turned upright (its EXIF orientation), brought to 8-bit RGB (16-bit samples scaled, not
clipped; transparency composited on white) and resized to image_size x image_size (aspect ratio not kept,
as reference study 002 did); images that cannot be decoded are skipped and listed, never fatal.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from studylib.data.registry import Items
from studylib.paths import cache_dir
from studylib.util import atomic_write

CACHE_FORMAT = 2  # bump when the decode or resize policy changes (2: EXIF orientation, 16-bit, alpha on white)


@dataclass
class TensorSplit:
    images: torch.Tensor          # N x 3 x S x S uint8
    labels: torch.Tensor          # N int64
    names: list[str]              # path (or index) of each kept image
    skipped: list[dict] = field(default_factory=list)  # {"name", "error"} for undecodable images
    seconds: float = 0.0          # time to build (or load) this split
    cache_hit: bool = False
    path: str = ""

    def __len__(self) -> int:
        return len(self.labels)


def decode(img: Image.Image, size: int) -> torch.Tensor:
    """PIL image -> 3 x size x size uint8 tensor. The one preprocessing used by train, eval and serving:
    upright by its EXIF orientation, 8-bit RGB (see to_rgb), resized bilinearly to size x size."""
    if img.format == "JPEG":
        img.draft("RGB", (size, size))  # let libjpeg decode at a reduced scale when it can
    img = to_rgb(ImageOps.exif_transpose(img))
    img = img.resize((size, size), Image.BILINEAR, reducing_gap=3.0)
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


WHITE = (255, 255, 255)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB: 16- and 32-bit integer samples scaled by 1/257 (65535 -> 255; PIL's own
    convert clips them, so a 16-bit PNG came out white), float samples taken as 0..1, and transparency
    (an alpha channel or a palette's transparent colour) composited on white instead of dropped."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        a = np.asarray(img, dtype=np.float64)
        a = a * 255 if img.mode == "F" else a / 257
        img = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info or img.mode in ("RGBa", "La", "PA"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, WHITE + (255,)), rgba)
    return img if img.mode == "RGB" else img.convert("RGB")


def _decode_all(items: Items, size: int) -> TensorSplit:
    images, labels, names, skipped = [], [], [], []
    for i in range(len(items)):
        try:
            with items.load(i) as img:
                images.append(decode(img, size))
        except Exception as err:  # truncated, zero-byte, not an image: listed, never fatal
            skipped.append({"name": items.name(i), "error": f"{type(err).__name__}: {err}"})
            continue
        labels.append(items.labels[i])
        names.append(items.name(i))
    stacked = torch.stack(images) if images else torch.empty(0, 3, size, size, dtype=torch.uint8)
    return TensorSplit(stacked, torch.tensor(labels, dtype=torch.int64), names, skipped)


def cache_path(dataset: str, split: str, size: int, fingerprint: str) -> Path:
    return cache_dir() / dataset / f"{split}-{size}px-v{CACHE_FORMAT}-{fingerprint[:20]}.pt"


def load_split(dataset: str, split: str, items: Items, size: int) -> TensorSplit:
    """The split as tensors: from the cache when its key matches, else decoded and cached."""
    t0 = time.perf_counter()
    path = cache_path(dataset, split, size, items.fingerprint())
    if path.exists():
        try:
            blob = torch.load(path, weights_only=True)
            out = TensorSplit(blob["images"], blob["labels"], blob["names"], blob["skipped"], cache_hit=True)
        except Exception:
            path.unlink(missing_ok=True)  # a damaged cache file is rebuilt, not trusted
            return load_split(dataset, split, items, size)
    else:
        out = _decode_all(items, size)
        atomic_write(path, lambda tmp: torch.save({"images": out.images, "labels": out.labels, "names": out.names,
                                                   "skipped": out.skipped}, tmp))
    out.seconds = time.perf_counter() - t0
    out.path = str(path)
    return out


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (unbiased) in [0, 1] of a N x 3 x H x W uint8 tensor.

    Computed from each channel's 256-bin histogram in float64: exact, and no float copy of the
    whole split (which would need 8 bytes per pixel)."""
    values = torch.arange(256, dtype=torch.float64) / 255
    mean, std = [], []
    for c in range(images.shape[1]):
        hist = torch.bincount(images[:, c].reshape(-1), minlength=256).to(torch.float64)
        n = hist.sum()
        m = (hist * values).sum() / n
        var = (hist * (values - m) ** 2).sum() / (n - 1)
        mean.append(m.item())
        std.append(var.sqrt().item())
    return mean, std
