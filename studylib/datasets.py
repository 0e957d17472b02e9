"""Dataset registry: where each dataset's images are, their labels and their splits.

A dataset resolves to three `Items` (train, val, test): a list of images that can each be
loaded as a PIL image, plus labels and a content fingerprint for the tensor cache. Decoding
to tensors happens once, in `studylib.cache`.

- clothing10: embedded in data/clothing10 (CC0), the source's own splits.
- imagefolder: root/<split>/<class>/*.jpg, or root/<class>/*.jpg split by seed.
- cifar10, food101, flowers102, oxford_pets, stanford_cars: torchvision's datasets, read
  from root or downloaded by torchvision.
- stanford_dogs: Images/, Annotation/ and the train/test lists; each image is cropped to its
  bounding box as reference study 002 did.
"""
from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import DatasetUnavailable, ParameterError
from .paths import data_dir

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
SPLIT_DIRS = {"train": ("train",), "val": ("val", "validation", "valid"), "test": ("test",)}


@dataclass
class Items:
    """One split: images by path (optionally with a crop box) or as an in-memory uint8 array."""
    labels: list[int]
    paths: list[str] | None = None
    boxes: list[tuple[int, int, int, int] | None] | None = None
    array: np.ndarray | None = None  # N x H x W x 3 uint8, for datasets that ship arrays (CIFAR)

    def __len__(self) -> int:
        return len(self.labels)

    def name(self, i: int) -> str:
        return self.paths[i] if self.paths is not None else f"#{i}"

    def load(self, i: int) -> Image.Image:
        if self.array is not None:
            return Image.fromarray(self.array[i])
        img = Image.open(self.paths[i])
        if self.boxes is not None and self.boxes[i] is not None:
            img = img.crop(self.boxes[i])
        return img

    def subset(self, idx) -> "Items":
        idx = list(idx)
        return Items(labels=[self.labels[i] for i in idx],
                     paths=[self.paths[i] for i in idx] if self.paths is not None else None,
                     boxes=[self.boxes[i] for i in idx] if self.boxes is not None else None,
                     array=self.array[idx] if self.array is not None else None)

    def fingerprint(self) -> str:
        """A hash of every image's bytes, label and crop box: the cache key's content part."""
        h = hashlib.sha256()
        h.update(np.asarray(self.labels, dtype=np.int64).tobytes())
        if self.array is not None:
            h.update(np.ascontiguousarray(self.array).tobytes())
        else:
            for i, p in enumerate(self.paths):
                h.update(p.encode())
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


def stratified_split(labels, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (kept, held out) with `fraction` of each class held out, from `seed`."""
    from sklearn.model_selection import train_test_split
    idx = np.arange(len(labels))
    keep, held = train_test_split(idx, test_size=fraction, random_state=seed, stratify=labels)
    return sorted(keep.tolist()), sorted(held.tolist())


def _carve_val(train: Items, val_fraction: float, seed: int) -> tuple[Items, Items]:
    keep, held = stratified_split(train.labels, val_fraction, seed)
    return train.subset(keep), train.subset(held)


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _class_folders(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _folder_items(split_dir: Path, classes: list[str]) -> Items:
    paths, labels = [], []
    for label, cls in enumerate(classes):
        folder = split_dir / cls
        if folder.is_dir():
            for p in _list_images(folder):
                paths.append(str(p))
                labels.append(label)
    return Items(labels=labels, paths=paths)


def load_imagefolder(root: str, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.1,
                     name: str = "imagefolder") -> Dataset:
    """root/<split>/<class>/* with the folder's own splits, or root/<class>/* split by seed."""
    root_path = Path(root)
    if not root_path.is_dir():
        raise DatasetUnavailable(f"dataset '{name}' root '{root}' does not exist; expected "
                                 "root/<split>/<class>/<image> or root/<class>/<image>.")
    found = {}
    for split, names in SPLIT_DIRS.items():
        for n in names:
            if (root_path / n).is_dir():
                found[split] = root_path / n
                break
    if "train" in found:
        classes = _class_folders(found["train"])
        splits = {s: _folder_items(d, classes) for s, d in found.items()}
        notes = {"splits": "the dataset's own"}
        if "test" not in splits:
            splits["train"], splits["test"] = _carve_val(splits["train"], test_fraction, seed)
            notes["test"] = f"carved from train: {test_fraction:.0%} stratified, seed {seed}"
        if "val" not in splits:
            splits["train"], splits["val"] = _carve_val(splits["train"], val_fraction, seed)
            notes["val"] = f"carved from train: {val_fraction:.0%} stratified, seed {seed}"
    else:
        classes = _class_folders(root_path)
        everything = _folder_items(root_path, classes)
        if not classes or not len(everything):
            raise DatasetUnavailable(f"dataset '{name}' root '{root}' has no class folders with images; expected "
                                     "root/<split>/<class>/<image> or root/<class>/<image>.")
        rest, test = _carve_val(everything, test_fraction, seed)
        train, val = _carve_val(rest, val_fraction / (1 - test_fraction), seed)
        splits = {"train": train, "val": val, "test": test}
        notes = {"splits": f"stratified from one folder: val {val_fraction:.0%}, test {test_fraction:.0%}, seed {seed}"}
    if not classes or not len(splits["train"]):
        raise DatasetUnavailable(f"dataset '{name}' root '{root}' has no images under its train split.")
    return Dataset(name=name, classes=classes, splits=splits, root=str(root_path), notes=notes)


def load_clothing10(root: str | None = None, **_) -> Dataset:
    root = root or str(data_dir() / "clothing10")
    ds = load_imagefolder(root, name="clothing10")
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
    "clothing10": lambda root, seed, val_fraction, download, **_: load_clothing10(root),
    "imagefolder": lambda root, seed, val_fraction, download, **_: load_imagefolder(root, seed, val_fraction),
    "cifar10": _cifar10,
    "food101": _food101,
    "flowers102": _flowers102,
    "oxford_pets": _oxford_pets,
    "stanford_cars": _stanford_cars,
    "stanford_dogs": _stanford_dogs,
}
DATASETS = sorted(REGISTRY)


def default_root(name: str) -> str:
    return str(data_dir() / name)


def load_dataset(name: str, root: str = "", seed: int = 0, val_fraction: float = 0.1,
                 download: bool = True) -> Dataset:
    """Resolve a dataset by name. `root` defaults to data/<name>; imagefolder needs one."""
    if name not in REGISTRY:
        raise ParameterError("dataset", name, f"one of {', '.join(DATASETS)}")
    if name == "imagefolder" and not root:
        raise ParameterError("root", root, "a folder of root/<split>/<class>/<image> for dataset 'imagefolder'")
    return REGISTRY[name](root=root or default_root(name), seed=seed, val_fraction=val_fraction, download=download)
