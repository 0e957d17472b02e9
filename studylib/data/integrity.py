"""Integrity checks of a loaded dataset: every image read once, the checksum list, duplicates, crop boxes.

`check_integrity(ds)` reads every file (fetching it first in lazy mode) and decodes it: zero-byte
files, unreadable or truncated images, odd colour modes, crop boxes outside their image, duplicates
by content hash (a train image that is also in test is leakage), and the dataset's checksum list
where it has one (clothing10's SHA256SUMS). Problems are listed, never fatal: training skips what it
cannot decode. Decoding is bounded: an image over registry.MAX_PIXELS is refused from its header, and the
threads together decode at most DECODE_PIXELS pixels at once.
"""
from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from studylib.data.registry import MAX_PIXELS, Dataset, check_pixels
from studylib.data.splits import SPLITS

CHECKSUM_LISTS = {"SHA256SUMS": "sha256", "SHA512SUMS": "sha512", "SHA1SUMS": "sha1", "MD5SUMS": "md5"}

# kind -> what it means for the study
PROBLEM_KINDS = {
    "missing file": "listed in the checksum list but not in the dataset",
    "checksum mismatch": "the file differs from the checksum list",
    "not in checksum list": "an image the checksum list does not vouch for",
    "zero-byte file": "skipped by training",
    "unreadable image": "skipped by training",
    "truncated image": "skipped by training",
    "too many pixels": "skipped by training",
    "odd colour mode": "converted to RGB by training",
    "crop box outside image": "cropped to the part inside the image",
    "duplicate across splits": "leakage: the same image is in two splits",
    "duplicate within split": "the image counts twice",
}


# Pixels the integrity pass decodes at once, over all its threads: 2 of the largest images (each at most
# MAX_PIXELS), i.e. at most about 0.5 GB of RGBA pixels, where 8 threads of the largest would hold 2 GB.
DECODE_PIXELS = 2 * MAX_PIXELS


class PixelBudget:
    """At most `limit` pixels held by decodes at once: a thread waits until its image's share is free."""

    def __init__(self, limit: int):
        self.limit, self.free = limit, limit
        self.cond = threading.Condition()

    @contextmanager
    def hold(self, pixels: int):
        pixels = min(pixels, self.limit)  # an image larger than the budget waits to decode alone
        with self.cond:
            self.cond.wait_for(lambda: self.free >= pixels)
            self.free -= pixels
        try:
            yield
        finally:
            with self.cond:
                self.free += pixels
                self.cond.notify_all()


@dataclass
class ImageFacts:
    split: str
    index: int
    path: str          # relative to the dataset root
    label: int
    nbytes: int = 0
    sha256: str = ""
    width: int = 0
    height: int = 0
    mode: str = ""
    format: str = ""
    kind: str = ""     # a PROBLEM_KINDS key when the file itself is bad
    error: str = ""


@dataclass
class Integrity:
    facts: list[ImageFacts]
    problems: list[dict]              # {kind, split, path, detail, effect}
    checksums: dict | None            # the checksum list's verification, or None when there is none
    seconds: float                    # the whole pass: every file read (fetched, in lazy mode) and decoded
    workers: int

    def counts(self) -> dict[str, int]:
        return dict(Counter(p["kind"] for p in self.problems))


def _problem(kind: str, split: str, path: str, detail: str) -> dict:
    return {"kind": kind, "split": split, "path": path, "detail": detail, "effect": PROBLEM_KINDS[kind]}


def _is_truncation(err: Exception) -> bool:
    return isinstance(err, EOFError) or "truncat" in str(err).lower()


def _inspect(ds: Dataset, split: str, i: int, budget: PixelBudget) -> ImageFacts:
    items = ds.splits[split]
    f = ImageFacts(split, i, items.name(i) if items.paths is None else ds.relative(items.paths[i]), items.labels[i])
    try:
        if items.array is not None:
            data = np.ascontiguousarray(items.array[i]).tobytes()
            f.nbytes, f.sha256 = len(data), hashlib.sha256(data).hexdigest()
            f.height, f.width = items.array.shape[1:3]
            f.mode, f.format = "RGB", "array"
            return f
        with open(items.local_path(i), "rb") as fh:
            data = fh.read()
    except Exception as err:
        f.kind, f.error = "unreadable image", f"{type(err).__name__}: {err}"
        return f
    f.nbytes, f.sha256 = len(data), hashlib.sha256(data).hexdigest()
    if not data:
        f.kind, f.error = "zero-byte file", "0 bytes"
        return f
    try:
        img = Image.open(io.BytesIO(data))
        f.width, f.height, f.mode, f.format = img.width, img.height, img.mode, img.format or ""
        check_pixels(img)  # refused from its header when it has too many pixels
    except Image.DecompressionBombError as err:  # over MAX_PIXELS, or over PIL's own limit at open
        f.kind, f.error = "too many pixels", str(err)
        return f
    except Exception as err:  # a file cut inside its header fails here already
        f.kind = "truncated image" if _is_truncation(err) else "unreadable image"
        f.error = f"{type(err).__name__}: {err}"
        return f
    try:
        if img.format == "JPEG":
            # every byte is still entropy-decoded (a truncated file fails the same way), only the
            # inverse DCT runs at 1/8 scale
            img.draft(img.mode, (max(1, img.width // 8), max(1, img.height // 8)))
        with budget.hold(img.width * img.height):  # the size to decode (a JPEG's after draft)
            img.load()  # the decode: a truncated file fails here, not at open
    except Exception as err:
        f.kind = "truncated image" if _is_truncation(err) else "unreadable image"
        f.error = f"{type(err).__name__}: {err}"
    return f


# --- the checksum list -------------------------------------------------------------------------

def _checksum_list(ds: Dataset) -> tuple[str, str, Path] | None:
    """(file name, algorithm, local path) of the dataset's checksum list, fetched if remote."""
    store = ds.store
    base = ds.local_root()
    for name, algo in CHECKSUM_LISTS.items():
        for candidate in (name, name.lower(), f"{name}.txt", f"{name.lower()}.txt"):
            if store is not None:
                if candidate in store.files:
                    return candidate, algo, store.ensure(store.local / candidate)
            elif (base / candidate).is_file():
                return candidate, algo, base / candidate
    return None


def read_checksums(path: Path) -> dict[str, str]:
    """relative path -> hex digest from a `sha256sum`-style list ("<hex>  ./path" or "<hex> *path")."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        digest, _, name = line.partition(" ")
        name = name.strip().lstrip("*")
        while name.startswith("./"):
            name = name[2:]
        out[name] = digest.lower()
    return out


def _verify_checksums(ds: Dataset, facts: list[ImageFacts], problems: list[dict]) -> dict | None:
    found = _checksum_list(ds)
    if found is None:
        return None
    name, algo, path = found
    t0 = time.perf_counter()
    listed = read_checksums(path)
    by_path = {f.path: f for f in facts}
    store, base = ds.store, ds.local_root()
    verified = mismatched = missing = 0
    for rel, want in listed.items():
        fact = by_path.get(rel)
        if fact is not None and algo == "sha256" and fact.sha256 and not fact.kind == "unreadable image":
            got = fact.sha256
        else:
            try:
                local = store.ensure(store.local / rel) if store is not None else base / rel
                got = hashlib.new(algo, Path(local).read_bytes()).hexdigest()
            except (FileNotFoundError, OSError):
                missing += 1
                problems.append(_problem("missing file", "", rel, f"listed in {name}"))
                continue
        if got == want:
            verified += 1
        else:
            mismatched += 1
            problems.append(_problem("checksum mismatch", fact.split if fact else "", rel,
                                     f"{algo} {got[:12]}… but {name} says {want[:12]}…"))
    unlisted = [f for f in facts if f.path not in listed and f.format != "array"]
    for f in unlisted:
        problems.append(_problem("not in checksum list", f.split, f.path, f"not in {name}"))
    return {"file": name, "algorithm": algo, "listed": len(listed), "verified": verified,
            "mismatched": mismatched, "missing": missing, "unlisted_images": len(unlisted),
            "seconds": round(time.perf_counter() - t0, 4)}


# --- duplicates and crop boxes -----------------------------------------------------------------

def _duplicates(ds: Dataset, facts: list[ImageFacts]) -> list[dict]:
    """Same bytes in more than one place: across splits is leakage, within a split a double count."""
    groups = defaultdict(list)
    for f in facts:
        if f.nbytes and f.sha256:
            groups[f.sha256].append(f)
    order = {s: k for k, s in enumerate(SPLITS)}
    out = []
    for members in groups.values():
        if len(members) < 2:
            continue
        members.sort(key=lambda f: (order.get(f.split, 9), f.path))
        first = members[0]
        for other in members[1:]:
            kind = "duplicate across splits" if other.split != first.split else "duplicate within split"
            detail = f"same bytes as {first.split}/{first.path}" if kind.endswith("splits") else f"same bytes as {first.path}"
            if other.label != first.label:
                detail += f" (labelled '{ds.classes[first.label]}' there, '{ds.classes[other.label]}' here)"
            out.append(_problem(kind, other.split, other.path, detail))
    return out


def _box_problems(ds: Dataset, facts: list[ImageFacts]) -> list[dict]:
    out = []
    for f in facts:
        boxes = ds.splits[f.split].boxes
        if boxes is None or boxes[f.index] is None or f.kind:
            continue
        x0, y0, x1, y1 = boxes[f.index]
        if x0 < 0 or y0 < 0 or x1 > f.width or y1 > f.height or x1 <= x0 or y1 <= y0:
            out.append(_problem("crop box outside image", f.split, f.path,
                                f"box {boxes[f.index]} on a {f.width}x{f.height} image"))
    return out


def check_integrity(ds: Dataset, workers: int = 0) -> Integrity:
    """Read every image once (fetching it first in lazy mode), verify the checksum list, find duplicates."""
    if not workers:  # fetching waits on the network, decoding on the CPU: more threads for lazy fetching
        lazy = ds.store is not None and ds.store.mode == "lazy"
        workers = min(32, 4 * (os.cpu_count() or 1)) if lazy else min(8, os.cpu_count() or 1)
    t0 = time.perf_counter()
    jobs = [(s, i) for s in SPLITS for i in range(len(ds.splits[s]))]
    budget = PixelBudget(DECODE_PIXELS)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        facts = list(pool.map(lambda job: _inspect(ds, *job, budget), jobs))
    problems = [_problem(f.kind, f.split, f.path, f.error) for f in facts if f.kind]
    problems += [_problem("odd colour mode", f.split, f.path, f"mode {f.mode}")
                 for f in facts if not f.kind and f.mode and f.mode != "RGB"]
    problems += _box_problems(ds, facts)
    problems += _duplicates(ds, facts)
    checksums = _verify_checksums(ds, facts, problems)
    return Integrity(facts, problems, checksums, time.perf_counter() - t0, workers)
