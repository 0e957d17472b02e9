"""Which datasets the study knows, what a loaded one is, and `load_dataset`: a registry in timm's style.

Each loader in studylib.data.sources carries one `@register_dataset(name, ...)`, a `DatasetSpec` that
says what the rest of the study asks about that dataset: does it need a root, can it be read item by
item from object storage, does it ship its own splits, can its loader download it, what is its default
root and its tensor-cache key. Importing any studylib.data module registers every dataset
(studylib/data/__init__.py imports the sources, as timm's models/__init__.py does); `DATASETS` is the
sorted list of names and `dataset_spec(name)` the lookup every other module asks.

`load_dataset(name, root, ...)` resolves a name to a `Dataset`: three `Items` (train, val, test), each a
list of images that can be loaded as PIL images, with labels and a content fingerprint for the tensor
cache (studylib.data.cache decodes them). A root may be an fsspec URI (s3://, gs://, file://), read
through a local mirror (studylib.data.storage). A split manifest written by data_prep for the root,
when there is one, fixes the splits (studylib.data.splits).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from studylib.data import storage
from studylib.data.splits import apply_manifest, carved_splits, manifest_path
from studylib.errors import ParameterError
from studylib.paths import data_dir
from studylib.util import is_uri


def shown_name(name: str) -> str:
    """A file or folder name as text that every table, record, manifest and page can hold: bytes that are
    not UTF-8 (which Python keeps as lone surrogates, and UTF-8 cannot encode) written as \\xNN."""
    return name if name.isascii() else os.fsencode(name).decode("utf-8", "backslashreplace")


# The most pixels the study decodes from one image (about 8000 x 8000: a 61-megapixel camera's photo passes):
# checked from the header, before any decode. PIL's own limit is a warning at 89M pixels and an error at 179M.
MAX_PIXELS = 64_000_000


def check_pixels(img: Image.Image) -> Image.Image:
    """An opened, not yet decoded image, refused with Image.DecompressionBombError when its header says it
    holds more than MAX_PIXELS pixels (a PNG of a few KB can decode to gigabytes)."""
    if img.width * img.height > MAX_PIXELS:
        img.close()
        raise Image.DecompressionBombError(f"{img.width} x {img.height} = {img.width * img.height:,} pixels, "
                                           f"more than the {MAX_PIXELS:,} the study decodes from one image")
    return img


def open_image(source) -> Image.Image:
    """Image.open(source), checked by check_pixels before anything is decoded."""
    return check_pixels(Image.open(source))


@dataclass
class Items:
    """One split: images by path (optionally with a crop box) or as an in-memory uint8 array."""
    labels: list[int]
    paths: list[str] | None = None
    boxes: list[tuple[int, int, int, int] | None] | None = None
    array: np.ndarray | None = None  # N x H x W x 3 uint8, for datasets that ship arrays (CIFAR)
    store: object | None = None      # a storage.RemoteRoot when the files come from object storage

    def __len__(self) -> int:
        return len(self.labels)

    def name(self, i: int) -> str:
        """Item i's path as shown (shown_name), or #i for an in-memory item; open it with local_path."""
        return shown_name(self.paths[i]) if self.paths is not None else f"#{i}"

    def local_path(self, i: int) -> str | Path:
        """Item i's file on local disk (fetched first when it comes lazily from object storage)."""
        return self.store.ensure(self.paths[i]) if self.store is not None else self.paths[i]

    def load(self, i: int, crop: bool = True) -> Image.Image:
        """Item i as a PIL image, cropped to its box when it has one (unless crop=False); an image over
        MAX_PIXELS is refused (open_image) before it is decoded."""
        if self.array is not None:
            return Image.fromarray(self.array[i])
        img = open_image(self.local_path(i))
        if crop and self.boxes is not None and self.boxes[i] is not None:
            img = img.crop(self.boxes[i])
        return img

    def subset(self, idx) -> "Items":
        idx = list(idx)
        return Items(labels=[self.labels[i] for i in idx],
                     paths=[self.paths[i] for i in idx] if self.paths is not None else None,
                     boxes=[self.boxes[i] for i in idx] if self.boxes is not None else None,
                     array=self.array[idx] if self.array is not None else None, store=self.store)

    def fingerprint(self) -> str:
        """A hash of every image's bytes, label and crop box: the cache key's content part.

        Files in object storage are hashed by their remote signature (size and ETag or mtime),
        so computing the key fetches nothing and both storage modes share one cache entry."""
        h = hashlib.sha256()
        h.update(np.asarray(self.labels, dtype=np.int64).tobytes())
        if self.array is not None:
            h.update(np.ascontiguousarray(self.array).tobytes())
        else:
            for i, p in enumerate(self.paths):
                h.update(os.fsencode(p))  # a file name need not be UTF-8 (its bytes, as on disk)
                if self.store is not None:
                    h.update(self.store.signature(p).encode())
                else:
                    with open(p, "rb") as f:
                        h.update(hashlib.sha256(f.read()).digest())
                if self.boxes is not None:
                    h.update(repr(self.boxes[i]).encode())
        return h.hexdigest()


@dataclass
class Dataset:
    name: str
    classes: list[str]
    splits: dict[str, Items]
    root: str
    notes: dict = field(default_factory=dict)

    @property
    def store(self):
        """The storage.RemoteRoot the files come from, or None for a local dataset."""
        return next((i.store for i in self.splits.values() if i.store is not None), None)

    def local_root(self) -> Path:
        """The local folder the item paths live under (a remote root's mirror)."""
        return self.store.local if self.store is not None else Path(self.root)

    def relative(self, path: str) -> str:
        """An item's path relative to the dataset root, as shown (shown_name): what tables, cards and manifests show."""
        try:
            return shown_name(Path(os.path.relpath(path, self.local_root())).as_posix())
        except ValueError:
            return shown_name(path)

    @property
    def cache_key(self) -> str:
        """The dataset part of the tensor cache's key (what studylib.train.run loads under)."""
        return dataset_spec(self.name).cache_key(self.root)


@dataclass(frozen=True)
class DatasetSpec:
    """What the study knows about one dataset, written once, on its loader."""
    name: str
    loader: Callable[..., Dataset]  # loader(root=, seed=, val_fraction=, download=, **options) -> Dataset
    needs_root: bool = False        # no default root: the caller names a folder (imagefolder)
    lazy_readable: bool = False     # listed and read file by file from object storage, in either storage mode
    own_splits: bool = False        # ships its own train and test splits; else test is carved too (test_fraction)
    downloads: bool = False         # its loader can download it into a missing local root

    def default_root(self) -> str:
        """data/<name>, or "" for a dataset that needs a root."""
        return "" if self.needs_root else str(data_dir() / self.name)

    def cache_key(self, root: str) -> str:
        """The name; for a dataset whose root the caller names, with that root's folder name."""
        return f"{self.name}-{Path(root).name}" if self.needs_root else self.name


_SPECS: dict[str, DatasetSpec] = {}
DATASETS: list[str] = []  # every registered name, sorted (register_dataset keeps it so)


def register_dataset(name: str, **facts) -> Callable:
    """Decorator: register the loader it decorates as dataset `name`, with the DatasetSpec `facts`."""
    def register(loader: Callable[..., Dataset]) -> Callable[..., Dataset]:
        _SPECS[name] = DatasetSpec(name, loader, **facts)
        DATASETS[:] = sorted(_SPECS)
        return loader
    return register


def dataset_spec(name: str) -> DatasetSpec:
    """The spec of a registered dataset; any other name is a ParameterError."""
    if name not in _SPECS:
        raise ParameterError("dataset", name, f"one of {', '.join(DATASETS)}")
    return _SPECS[name]


def resolve_root(name: str, root: str = "", allowed: str = "a folder") -> str:
    """`root`, or the dataset's default root; a dataset that needs a root refuses "".

    `allowed` names what the caller accepts as a root, for the error's sentence."""
    if root:
        return root
    spec = dataset_spec(name)
    if spec.needs_root:
        raise ParameterError("root", root, f"{allowed} of root/<split>/<class>/<image> for dataset '{name}'")
    return spec.default_root()


def check_root(name: str, root: str = "", allowed: str = "a folder") -> str:
    """`resolve_root`, and a local root the loader cannot download into must be an existing folder.

    What the params classes run before any work; `load_dataset` itself names a missing root as
    DatasetUnavailable."""
    root = resolve_root(name, root, allowed)
    if not is_uri(root) and not dataset_spec(name).downloads and not Path(root).is_dir():
        raise ParameterError("root", root, f"an existing folder holding dataset '{name}'")
    return root


def check_storage_mode(name: str, storage_mode: str) -> None:
    """From object storage, only a lazily readable dataset can be fetched lazily; the others are prefetched."""
    if storage_mode != "prefetch" and not dataset_spec(name).lazy_readable:
        lazy = " and ".join(n for n in DATASETS if _SPECS[n].lazy_readable)
        raise ParameterError("storage_mode", storage_mode, f"'prefetch' for dataset '{name}' from object storage "
                             f"(lazy fetching works for {lazy})")


def load_dataset(name: str, root: str = "", seed: int = 0, val_fraction: float = 0.1,
                 download: bool = True, *, test_fraction: float = 0.1, storage_mode: str = "prefetch",
                 storage_options: dict | None = None) -> Dataset:
    """Resolve a dataset by name. `root` defaults to data/<name>; a dataset that needs a root must get one.

    `root` may be an fsspec URI (s3://bucket/dogs): a lazily readable dataset reads it in either
    storage mode; the others are copied whole into a local mirror first (prefetch).
    A split manifest written by data_prep for this root, when there is one, fixes the splits."""
    spec = dataset_spec(name)
    root = resolve_root(name, root)
    options = {} if spec.own_splits else {"test_fraction": test_fraction}
    note = None
    if is_uri(root):
        if spec.lazy_readable:
            options |= {"storage_mode": storage_mode, "storage_options": storage_options}
        else:
            check_storage_mode(name, storage_mode)
            store = storage.open_root(root, "prefetch", storage_options, only_images=False)   # copied whole: metadata too
            note = f"prefetch from {store.uri} into the local mirror {store.local}"
            root = str(store.local)
    ds = spec.loader(root=root, seed=seed, val_fraction=val_fraction, download=download, **options)
    if note:
        ds.notes["storage"] = note
    manifest = manifest_path(name, root, storage_options)
    if carved_splits(ds) and manifest.exists():
        ds = apply_manifest(ds, manifest)
    check_classes(ds)
    return ds


def check_classes(ds: Dataset) -> None:
    """A dataset a classifier can learn from, or one ParameterError sentence on its root: two classes or
    more, each with train images, and every label one of them (before any image is decoded)."""
    if len(ds.classes) < 2:
        raise ParameterError("root", ds.root, f"a dataset of two or more classes; it has only one class, "
                             f"{', '.join(repr(c) for c in ds.classes) or 'none'}")
    n = len(ds.classes)
    for split in ("train", "val", "test"):
        bad = next((label for label in ds.splits[split].labels if not 0 <= label < n), None)
        if bad is not None:
            raise ParameterError("root", ds.root, f"a dataset whose labels are its {n} classes; {split} has label {bad}")
    counts = np.bincount(np.asarray(ds.splits["train"].labels, dtype=np.int64), minlength=n)
    if not counts.all():
        raise ParameterError("root", ds.root, f"a dataset whose every class has train images; "
                             f"'{ds.classes[int(np.argmin(counts))]}' has none")
