"""CIFAR-10 from whichever copy is at hand, decoded once, with a validation split written once.

The root (default data/cifar10) may hold, looked for in this order:
1. torchvision's own format (`cifar-10-batches-py/`, what `torchvision.datasets.CIFAR10(download=True)`
   writes): the original lossless arrays;
2. the JPEG export as a folder: `train/<class>/*.jpg` and `test/<class>/*.jpg`;
3. the JPEG export as its archive `cifar10-jpg.tar.gz` (or the root is that file itself), checked
   against the SHA256SUMS file beside it when there is one.
With none of them, torchvision downloads the original when allowed and online; offline, one sentence
says what to fetch and where to put it.

JPEGs are decoded once into uint8 arrays kept in the cache folder (keyed by the archive's SHA-256, or by
the folder's file names, sizes and times), so a later load takes well under a second.

Validation: 5,000 training images (500 per class), stratified, seed 0, the same for every run whatever
its seed (as clothing10 ships one val split); the chosen image names are written once to
splits/cifar10-<source>-val.csv and every later load takes them from there.
"""
from __future__ import annotations

import csv
import hashlib
import io
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from studylib.data.integrity import read_checksums
from studylib.data.registry import Dataset, Items, register_dataset
from studylib.data.splits import splits_dir, stratified_split
from studylib.errors import DatasetUnavailable
from studylib.paths import cache_dir
from studylib.util import atomic_write

ARCHIVE = "cifar10-jpg.tar.gz"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
VAL_FRACTION = 0.1    # 5,000 of CIFAR-10's 50,000 training images, 500 per class
VAL_SEED = 0
ORIGINAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


def find_source(root: Path) -> tuple[str, Path] | None:
    """('torchvision' | 'folder' | 'archive', path) for the first copy found at `root`, or None."""
    if root.is_file() and root.name.endswith(".tar.gz"):
        return "archive", root
    if (root / "cifar-10-batches-py").is_dir():
        return "torchvision", root
    if (root / "train").is_dir() and (root / "test").is_dir():
        return "folder", root
    if (root / ARCHIVE).is_file():
        return "archive", root / ARCHIVE
    return None


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_archive(path: Path) -> str:
    """The archive's SHA-256, checked against SHA256SUMS beside it when that file lists it."""
    digest = sha256_of(path)
    sums = path.parent / "SHA256SUMS"
    if sums.is_file():
        listed = read_checksums(sums)
        if path.name in listed and listed[path.name] != digest:
            raise DatasetUnavailable(f"dataset 'cifar10': '{path}' has SHA-256 {digest}, but {sums} lists "
                                     f"{listed[path.name]}; the file is damaged or another one: fetch it again.")
    return digest


def _split_class(name: str) -> tuple[str, str] | None:
    """('train' | 'test', class) for a member name like train/cat/0001.jpg (any leading folder), else None."""
    parts = Path(name).parts
    if len(parts) < 3 or not name.lower().endswith((".jpg", ".jpeg", ".png")):
        return None
    split, cls = parts[-3], parts[-2]
    return (split, cls) if split in ("train", "test") and cls in CLASSES else None


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _arrays(named: dict[str, list[tuple[str, bytes]]]) -> dict[str, np.ndarray]:
    """{split: images (N x 32 x 32 x 3), split_labels, split_names} from {split: [(name, bytes)]}, names sorted."""
    out = {}
    with ThreadPoolExecutor(2) as pool:
        for split, files in named.items():
            files.sort()
            out[split] = np.stack(list(pool.map(_decode, [b for _, b in files], chunksize=512)))
            out[f"{split}_labels"] = np.array([CLASSES.index(_split_class(n)[1]) for n, _ in files], dtype=np.int64)
            out[f"{split}_names"] = np.array(["/".join(Path(n).parts[-3:]) for n, _ in files])
    return out


def _read_archive(path: Path) -> dict[str, list[tuple[str, bytes]]]:
    named: dict[str, list[tuple[str, bytes]]] = {"train": [], "test": []}
    with tarfile.open(path, "r:gz") as tar:
        for member in tar:
            where = _split_class(member.name) if member.isfile() else None
            if where:
                named[where[0]].append((member.name, tar.extractfile(member).read()))
    return named


def _read_folder(root: Path) -> dict[str, list[tuple[str, bytes]]]:
    named: dict[str, list[tuple[str, bytes]]] = {"train": [], "test": []}
    for split in named:
        for p in sorted((root / split).glob("*/*")):
            if _split_class(p.relative_to(root).as_posix()):
                named[split].append((p.relative_to(root).as_posix(), p.read_bytes()))
    return named


def _folder_key(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.glob("t*/*/*")):
        st = p.stat()
        h.update(f"{p.relative_to(root)} {st.st_size} {st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def decoded(kind: str, path: Path) -> dict[str, np.ndarray]:
    """The JPEG export's splits as arrays, decoded on the first load and read from the cache after."""
    key = verify_archive(path) if kind == "archive" else _folder_key(path)
    cached = cache_dir() / f"cifar10-jpg-{key[:16]}.npz"
    if cached.exists():
        with np.load(cached) as z:
            return {k: z[k] for k in z.files}
    arrays = _arrays(_read_archive(path) if kind == "archive" else _read_folder(path))
    if not all(len(arrays[f"{s}_labels"]) for s in ("train", "test")):
        raise DatasetUnavailable(f"dataset 'cifar10': '{path}' holds no train/<class>/*.jpg and test/<class>/*.jpg "
                                 f"images of the classes {', '.join(CLASSES)}.")
    cached.parent.mkdir(parents=True, exist_ok=True)
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:   # a file object: np.savez would add ".npz" to a path
            np.savez(f, **arrays)
    atomic_write(cached, write)
    return arrays


def _torchvision_arrays(root: Path, download: bool) -> dict[str, np.ndarray]:
    import torchvision.datasets as tvd  # lazy: only the original arrays need it
    out = {}
    for split in ("train", "test"):
        try:
            tv = tvd.CIFAR10(root=str(root), train=split == "train", download=download)
        except Exception as err:
            raise DatasetUnavailable(
                f"dataset 'cifar10' is not in '{root}' and could not be downloaded ({type(err).__name__}); "
                f"put the JPEG export {ARCHIVE} (with its SHA256SUMS) or torchvision's cifar-10-batches-py "
                f"(from {ORIGINAL_URL}) in '{root}', or run once online.") from err
        out[split] = tv.data
        out[f"{split}_labels"] = np.asarray(tv.targets, dtype=np.int64)
        out[f"{split}_names"] = np.array([f"{split}#{i}" for i in range(len(tv.targets))])
    return out


def val_indices(names: np.ndarray, labels: np.ndarray, source: str) -> list[int]:
    """The fixed validation images among train: read from the split file, or chosen and written once."""
    path = splits_dir() / f"cifar10-{source}-val.csv"
    index = {str(n): i for i, n in enumerate(names)}
    if path.exists():
        with open(path, newline="") as f:
            chosen = [row["name"] for row in csv.DictReader(f)]
        missing = [n for n in chosen if n not in index]
        if missing:
            raise DatasetUnavailable(f"the validation split file '{path}' lists '{missing[0]}', which this "
                                     "CIFAR-10 copy does not have; delete the file to choose the split again.")
        return [index[n] for n in chosen]
    _, held = stratified_split(labels.tolist(), VAL_FRACTION, VAL_SEED)
    held = sorted(held)

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["name", "label"])
            w.writerows([names[i], CLASSES[labels[i]]] for i in held)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, write)
    return held


@register_dataset("cifar10", own_splits=True, downloads=True)
def cifar10(root: str, download: bool, **_) -> Dataset:
    """CIFAR-10's official 50,000/10,000 split as in-memory arrays, with a fixed 5,000-image val carved from train."""
    found = find_source(Path(root))
    if found is None:
        if not download:
            raise DatasetUnavailable(f"dataset 'cifar10' is not in '{root}': put the JPEG export {ARCHIVE} (with its "
                                     f"SHA256SUMS) or torchvision's cifar-10-batches-py (from {ORIGINAL_URL}) there.")
        found = ("torchvision", Path(root))
    kind, path = found
    arrays = _torchvision_arrays(path, download) if kind == "torchvision" else decoded(kind, path)
    names, labels = arrays["train_names"], arrays["train_labels"]
    held = val_indices(names, labels, "original" if kind == "torchvision" else "jpg")
    keep = np.setdiff1d(np.arange(len(labels)), held)
    splits = {"train": Items(labels=labels[keep].tolist(), array=arrays["train"][keep]),
              "val": Items(labels=labels[held].tolist(), array=arrays["train"][held]),
              "test": Items(labels=arrays["test_labels"].tolist(), array=arrays["test"])}
    source = {"torchvision": "torchvision's original arrays", "folder": "the JPEG export (folder)",
              "archive": f"the JPEG export ({path.name})"}[kind]
    if kind == "archive" and (path.parent / "SHA256SUMS").is_file():   # `decoded` refused it on a mismatch
        source += ", its SHA-256 as SHA256SUMS lists"
    notes = {"source": f"{source} at {path}",
             "val": f"{len(held):,} of train ({len(held) // len(CLASSES)} per class), stratified, seed {VAL_SEED}, "
                    f"fixed for every run (splits/cifar10-{'original' if kind == 'torchvision' else 'jpg'}-val.csv)"}
    return Dataset("cifar10", list(CLASSES), splits, str(path), notes)
