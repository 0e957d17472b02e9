"""Dataset registry: where each dataset's images are, their labels and their splits.

A dataset resolves to three `Items` (train, val, test): a list of images that can each be
loaded as a PIL image, plus labels and a content fingerprint for the tensor cache. Decoding
to tensors happens once, in `studylib.data.cache`.

- clothing10: embedded in data/clothing10 (CC0), the source's own splits.
- imagefolder: root/<split>/<class>/*.jpg, or root/<class>/*.jpg split by seed. The root may be
  an fsspec URI (s3://, gs://, file://), read through a local mirror (`studylib.data.storage`).
- cifar10, food101, flowers102, oxford_pets, stanford_cars: torchvision's datasets, read
  from root or downloaded by torchvision.
- stanford_dogs: Images/, Annotation/ and the train/test lists; each image is cropped to its
  bounding box as reference study 002 did.

A dataset without its own splits is split by seed; once data_prep has written that split as a
manifest (split, path, label), every later load of the same root uses the manifest.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from studylib.errors import DatasetUnavailable, ParameterError
from studylib.paths import cache_dir, data_dir
from studylib.util import is_uri

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
SPLIT_DIRS = {"train": ("train",), "val": ("val", "validation", "valid"), "test": ("test",)}


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
        return self.paths[i] if self.paths is not None else f"#{i}"

    def load(self, i: int) -> Image.Image:
        if self.array is not None:
            return Image.fromarray(self.array[i])
        path = self.store.ensure(self.paths[i]) if self.store is not None else self.paths[i]
        img = Image.open(path)
        if self.boxes is not None and self.boxes[i] is not None:
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
                h.update(p.encode())
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

    @property
    def cache_key(self) -> str:
        """The dataset part of the tensor cache's key (what studylib.train.run uses)."""
        return self.name if self.name != "imagefolder" else f"imagefolder-{Path(self.root).name}"


def stratified_split(labels, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (kept, held out) with `fraction` of each class held out, from `seed`."""
    from sklearn.model_selection import train_test_split
    idx = np.arange(len(labels))
    keep, held = train_test_split(idx, test_size=fraction, random_state=seed, stratify=labels)
    return sorted(keep.tolist()), sorted(held.tolist())


def _carve_val(train: Items, val_fraction: float, seed: int) -> tuple[Items, Items]:
    keep, held = stratified_split(train.labels, val_fraction, seed)
    return train.subset(keep), train.subset(held)


def _is_image(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_SUFFIXES


def _local_listing(root: Path) -> list[str]:
    """Every file under root (two folder levels deep at most), as sorted posix paths relative to it."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        if len(rel.parts) >= 2:
            dirnames[:] = []
        out.extend((rel / f).as_posix() for f in filenames)
    return sorted(out)


def _class_names(files: list[str], prefix: tuple[str, ...]) -> list[str]:
    """The class folders right under `prefix` (folders that hold files; hidden ones left out)."""
    n = len(prefix)
    return sorted({parts[n] for parts in (f.split("/") for f in files)
                   if len(parts) > n + 1 and tuple(parts[:n]) == prefix and not parts[n].startswith(".")})


def _folder_items(root: Path, files: list[str], prefix: tuple[str, ...], classes: list[str], store=None) -> Items:
    """Items for prefix/<class>/<image> files, class by class, in name order."""
    n = len(prefix)
    by_class: dict[str, list[str]] = {c: [] for c in classes}
    for f in files:
        parts = f.split("/")
        if len(parts) == n + 2 and tuple(parts[:n]) == prefix and parts[n] in by_class and _is_image(parts[-1]):
            by_class[parts[n]].append(parts[-1])
    paths, labels = [], []
    for label, cls in enumerate(classes):
        for name in sorted(by_class[cls]):
            paths.append(str(root.joinpath(*prefix, cls, name)))
            labels.append(label)
    return Items(labels=labels, paths=paths, store=store)


def load_imagefolder(root: str, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.1,
                     name: str = "imagefolder", storage_mode: str = "prefetch",
                     storage_options: dict | None = None) -> Dataset:
    """root/<split>/<class>/* with the folder's own splits, or root/<class>/* split by seed.

    `root` may be an fsspec URI; its files are then listed remotely and read through a local
    mirror, copied first (`storage_mode="prefetch"`) or fetched on first use ("lazy")."""
    from studylib.data import storage
    store = None
    if is_uri(root):
        store = storage.open_root(root, storage_mode, storage_options)
        root_path, files, shown = store.local, list(store.files), store.uri
    else:
        root_path = Path(root)
        if not root_path.is_dir():
            raise DatasetUnavailable(f"dataset '{name}' root '{root}' does not exist; expected "
                                     "root/<split>/<class>/<image> or root/<class>/<image>.")
        files, shown = _local_listing(root_path), str(root_path)
    tops = {f.split("/")[0] for f in files if "/" in f}
    found = {}
    for split, names in SPLIT_DIRS.items():
        for n in names:
            if n in tops:
                found[split] = n
                break
    if "train" in found:
        classes = _class_names(files, (found["train"],))
        splits = {s: _folder_items(root_path, files, (d,), classes, store) for s, d in found.items()}
        notes = {"splits": "the dataset's own"}
        if "test" not in splits:
            splits["train"], splits["test"] = _carve_val(splits["train"], test_fraction, seed)
            notes["test"] = f"carved from train: {test_fraction:.0%} stratified, seed {seed}"
        if "val" not in splits:
            splits["train"], splits["val"] = _carve_val(splits["train"], val_fraction, seed)
            notes["val"] = f"carved from train: {val_fraction:.0%} stratified, seed {seed}"
    else:
        classes = _class_names(files, ())
        everything = _folder_items(root_path, files, (), classes, store)
        if not classes or not len(everything):
            raise DatasetUnavailable(f"dataset '{name}' root '{shown}' has no class folders with images; expected "
                                     "root/<split>/<class>/<image> or root/<class>/<image>.")
        rest, test = _carve_val(everything, test_fraction, seed)
        train, val = _carve_val(rest, val_fraction / (1 - test_fraction), seed)
        splits = {"train": train, "val": val, "test": test}
        notes = {"splits": f"stratified from one folder: val {val_fraction:.0%}, test {test_fraction:.0%}, seed {seed}"}
    if not classes or not len(splits["train"]):
        raise DatasetUnavailable(f"dataset '{name}' root '{shown}' has no images under its train split.")
    if store is not None:
        notes["storage"] = f"{store.mode} from {store.uri} through the local mirror {store.local}"
    return Dataset(name=name, classes=classes, splits=splits, root=shown, notes=notes)


def load_clothing10(root: str | None = None, storage_mode: str = "prefetch", storage_options: dict | None = None,
                    **_) -> Dataset:
    root = root or str(data_dir() / "clothing10")
    ds = load_imagefolder(root, name="clothing10", storage_mode=storage_mode, storage_options=storage_options)
    ds.notes["license"] = "CC0 1.0 (data/clothing10/LICENSE)"
    return ds


# --- torchvision datasets -------------------------------------------------------------------

def _torchvision_dataset(name: str, cls_name: str, root: str, download: bool, **kwargs):
    import torchvision.datasets as tvd
    cls = getattr(tvd, cls_name)
    try:
        return cls(root=root, download=False, **kwargs)
    except (RuntimeError, FileNotFoundError, OSError) as missing:
        if not download:
            raise DatasetUnavailable(f"dataset '{name}' is not in root '{root}' ({missing}); "
                                     "download it there or allow downloading.") from missing
        try:
            return cls(root=root, download=True, **kwargs)
        except Exception as err:
            raise DatasetUnavailable(
                f"dataset '{name}' is not in root '{root}' and torchvision could not download it "
                f"({type(err).__name__}: {err}); fetch it on a connected machine with "
                f"torchvision.datasets.{cls_name}(root='{root}', download=True) and copy '{root}' here.") from err


def _cifar10(root: str, seed: int, val_fraction: float, download: bool, **_) -> Dataset:
    train = _torchvision_dataset("cifar10", "CIFAR10", root, download, train=True)
    test = _torchvision_dataset("cifar10", "CIFAR10", root, download, train=False)
    tr = Items(labels=list(train.targets), array=train.data)
    te = Items(labels=list(test.targets), array=test.data)
    tr, va = _carve_val(tr, val_fraction, seed)
    return Dataset("cifar10", list(train.classes), {"train": tr, "val": va, "test": te}, root,
                   {"val": f"carved from train: {val_fraction:.0%} stratified, seed {seed}"})


def _file_dataset(name, cls_name, root, download, split_args, paths_labels, classes_of):
    made = {s: _torchvision_dataset(name, cls_name, root, download, split=a) for s, a in split_args.items()}
    splits = {}
    for s, ds in made.items():
        paths, labels = paths_labels(ds)
        splits[s] = Items(labels=[int(x) for x in labels], paths=[str(p) for p in paths])
    first = next(iter(made.values()))
    return splits, classes_of(first)


def _tv_files(name: str, cls_name: str, split_args: dict, paths_labels, classes_of=None):
    classes_of = classes_of or (lambda ds: list(ds.classes))

    def load(root: str, seed: int, val_fraction: float, download: bool, **_) -> Dataset:
        splits, classes = _file_dataset(name, cls_name, root, download, split_args, paths_labels, classes_of)
        notes = {}
        if "val" not in splits:
            splits["train"], splits["val"] = _carve_val(splits["train"], val_fraction, seed)
            notes["val"] = f"carved from train: {val_fraction:.0%} stratified, seed {seed}"
        return Dataset(name, classes, splits, root, notes)
    return load


_food101 = _tv_files("food101", "Food101", {"train": "train", "test": "test"},
                     lambda ds: (ds._image_files, ds._labels))
_flowers102 = _tv_files("flowers102", "Flowers102", {"train": "train", "val": "val", "test": "test"},
                        lambda ds: (ds._image_files, ds._labels),
                        lambda ds: getattr(ds, "classes", None) or [str(i) for i in range(102)])
_oxford_pets = _tv_files("oxford_pets", "OxfordIIITPet", {"train": "trainval", "test": "test"},
                         lambda ds: (ds._images, ds._labels))
_stanford_cars = _tv_files("stanford_cars", "StanfordCars", {"train": "train", "test": "test"},
                           lambda ds: ([p for p, _ in ds._samples], [l for _, l in ds._samples]))


# --- Stanford Dogs -------------------------------------------------------------------------

STANFORD_DOGS_URL = "http://vision.stanford.edu/aditya86/ImageNetDogs/"
STANFORD_DOGS_FILES = ("images.tar", "annotation.tar", "lists.tar")


def _dogs_box(annotation: Path) -> tuple[int, int, int, int] | None:
    """The first object's bounding box (xmin, ymin, xmax, ymax) from a PASCAL VOC annotation."""
    if not annotation.exists():
        return None
    box = ET.parse(annotation).getroot().find("object/bndbox")
    if box is None:
        return None
    return tuple(int(float(box.find(k).text)) for k in ("xmin", "ymin", "xmax", "ymax"))


def _dogs_list(root: Path, split: str) -> list[str]:
    from scipy.io import loadmat
    mat = loadmat(root / f"{split}_list.mat")
    return [str(entry[0][0]) for entry in mat["file_list"]]


def _stanford_dogs(root: str, seed: int, val_fraction: float, download: bool, **_) -> Dataset:
    r = Path(root)
    if not (r / "Images").is_dir() or not (r / "train_list.mat").exists():
        if download:
            try:
                from torchvision.datasets.utils import download_and_extract_archive
                for f in STANFORD_DOGS_FILES:
                    download_and_extract_archive(STANFORD_DOGS_URL + f, str(r))
            except Exception as err:
                raise DatasetUnavailable(
                    f"dataset 'stanford_dogs' is not in root '{root}' and could not be downloaded "
                    f"({type(err).__name__}: {err}); fetch {', '.join(STANFORD_DOGS_FILES)} from {STANFORD_DOGS_URL} "
                    f"and unpack them into '{root}' (Images/, Annotation/, train_list.mat, test_list.mat).") from err
        else:
            raise DatasetUnavailable(f"dataset 'stanford_dogs' is not in root '{root}': it needs Images/, "
                                     f"Annotation/, train_list.mat and test_list.mat from {STANFORD_DOGS_URL}.")
    classes_dirs = sorted(p.name for p in (r / "Images").iterdir() if p.is_dir())
    index = {d: i for i, d in enumerate(classes_dirs)}
    splits = {}
    for split in ("train", "test"):
        paths, labels, boxes = [], [], []
        for rel in _dogs_list(r, split):
            breed_dir = rel.split("/")[0]
            paths.append(str(r / "Images" / rel))
            labels.append(index[breed_dir])
            boxes.append(_dogs_box(r / "Annotation" / rel.rsplit(".", 1)[0]))
        splits[split] = Items(labels=labels, paths=paths, boxes=boxes)
    splits["train"], splits["val"] = _carve_val(splits["train"], val_fraction, seed)
    classes = [d.split("-", 1)[1] if "-" in d else d for d in classes_dirs]
    return Dataset("stanford_dogs", classes, splits, root,
                   {"crop": "bounding box from Annotation/ (first object)",
                    "val": f"carved from train: {val_fraction:.0%} stratified, seed {seed}"})


REGISTRY = {
    "clothing10": lambda root, seed, val_fraction, download, **kw: load_clothing10(root, **kw),
    "imagefolder": lambda root, seed, val_fraction, download, test_fraction=0.1, **kw: load_imagefolder(
        root, seed, val_fraction, test_fraction, **kw),
    "cifar10": _cifar10,
    "food101": _food101,
    "flowers102": _flowers102,
    "oxford_pets": _oxford_pets,
    "stanford_cars": _stanford_cars,
    "stanford_dogs": _stanford_dogs,
}
DATASETS = sorted(REGISTRY)
REMOTE_LISTED = ("clothing10", "imagefolder")  # read from object storage item by item (both storage modes)


def default_root(name: str) -> str:
    return str(data_dir() / name)


def load_dataset(name: str, root: str = "", seed: int = 0, val_fraction: float = 0.1,
                 download: bool = True, *, test_fraction: float = 0.1, storage_mode: str = "prefetch",
                 storage_options: dict | None = None) -> Dataset:
    """Resolve a dataset by name. `root` defaults to data/<name>; imagefolder needs one.

    `root` may be an fsspec URI (s3://bucket/dogs): imagefolder and clothing10 read it in either
    storage mode; the other datasets are copied whole into a local mirror first (prefetch).
    A split manifest written by data_prep for this root, when there is one, fixes the splits."""
    from studylib.data import storage
    if name not in REGISTRY:
        raise ParameterError("dataset", name, f"one of {', '.join(DATASETS)}")
    if name == "imagefolder" and not root:
        raise ParameterError("root", root, "a folder of root/<split>/<class>/<image> for dataset 'imagefolder'")
    root = root or default_root(name)
    kwargs = {}
    note = None
    if is_uri(root):
        if name in REMOTE_LISTED:
            kwargs = {"storage_mode": storage_mode, "storage_options": storage_options}
        else:
            if storage_mode != "prefetch":
                raise ParameterError("storage_mode", storage_mode, f"'prefetch' for dataset '{name}' from object storage "
                                     f"(lazy fetching works for {' and '.join(REMOTE_LISTED)})")
            store = storage.open_root(root, "prefetch", storage_options)
            note = f"prefetch from {store.uri} into the local mirror {store.local}"
            root = str(store.local)
    if name == "imagefolder":
        kwargs["test_fraction"] = test_fraction
    ds = REGISTRY[name](root=root, seed=seed, val_fraction=val_fraction, download=download, **kwargs)
    if note:
        ds.notes["storage"] = note
    manifest = manifest_path(name, root, storage_options)
    if carved_splits(ds) and manifest.exists():
        ds = apply_manifest(ds, manifest)
    return ds


# --- split manifests -----------------------------------------------------------------------

def splits_dir() -> Path:
    """Where split manifests live (STUDYLIB_SPLITS overrides it)."""
    return Path(os.environ.get("STUDYLIB_SPLITS", cache_dir().parent / "splits"))


def manifest_path(name: str, root: str, storage_options: dict | None = None) -> Path:
    """The split manifest of a dataset root: one per (dataset, root), whatever seed a later run uses."""
    from studylib.data import storage
    if is_uri(root):
        key = storage.mirror_path(root, storage_options).name
    else:
        resolved = str(Path(root).resolve())
        key = f"{Path(resolved).name}-{hashlib.sha256(resolved.encode()).hexdigest()[:10]}"
    return splits_dir() / f"{name}-{re.sub(r'[^A-Za-z0-9._-]+', '_', key)}.csv"


def carved_splits(ds: Dataset) -> list[str]:
    """The splits this load made by seed rather than took from the dataset (empty: all its own)."""
    if ds.notes.get("splits", "").startswith("stratified"):
        return ["train", "val", "test"]
    return [s for s in ("val", "test") if "carved" in str(ds.notes.get(s, ""))]


def read_manifest(path: Path) -> tuple[dict, list[dict]]:
    """(how it was made, rows of split/path/label) from a manifest file."""
    with open(path, newline="") as f:
        first = f.readline()
        meta = json.loads(first[1:]) if first.startswith("#") else {}
        if not first.startswith("#"):
            f.seek(0)
        rows = list(csv.DictReader(f))
    return meta, rows


def apply_manifest(ds: Dataset, path: Path) -> Dataset:
    """The dataset with its splits taken from a manifest; a listed file that is gone is an error."""
    if any(i.paths is None for i in ds.splits.values()):
        return ds  # in-memory datasets (CIFAR) are split by seed; their items have no paths
    meta, rows = read_manifest(path)
    base = ds.local_root()
    index = {}
    has_boxes = any(i.boxes is not None for i in ds.splits.values())
    for items in ds.splits.values():
        for i, p in enumerate(items.paths):
            index[Path(os.path.relpath(p, base)).as_posix()] = (items.labels[i], items.boxes[i] if items.boxes else None)
    picked = {s: ([], [], []) for s in ("train", "val", "test")}
    for row in rows:
        rel, split = row["path"], row["split"]
        if rel not in index or split not in picked:
            raise DatasetUnavailable(f"split manifest '{path}' lists {split} file '{rel}', which dataset '{ds.name}' "
                                     f"at '{ds.root}' no longer has; delete the manifest to split again.")
        label, box = index[rel]
        if ds.classes[label] != row["label"]:
            raise DatasetUnavailable(f"split manifest '{path}' labels '{rel}' as '{row['label']}', but the dataset "
                                     f"has it as '{ds.classes[label]}'; delete the manifest to split again.")
        labels, paths, boxes = picked[split]
        labels.append(label)
        paths.append(str(base / rel))
        boxes.append(box)
    store = ds.store
    splits = {s: Items(labels=l, paths=p, boxes=b if has_boxes else None, store=store) for s, (l, p, b) in picked.items()}
    notes = {k: v for k, v in ds.notes.items() if k not in ("splits", "val", "test")}
    how = ", ".join(f"{k} {meta[k]}" for k in ("seed", "val_fraction", "test_fraction") if k in meta)
    notes["splits"] = f"split manifest {path} ({how})"
    left_out = len(index) - len(rows)
    if left_out > 0:
        notes["manifest"] = f"{left_out} files found since the manifest was written are left out"
    return Dataset(ds.name, ds.classes, splits, ds.root, notes)
