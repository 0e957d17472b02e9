"""Where each dataset's images come from: one loader per dataset, each registered with its spec.

- imagefolder: root/<split>/<class>/*.jpg, or root/<class>/*.jpg split by seed. The root may be an
  fsspec URI (s3://, gs://, file://), listed remotely and read through a local mirror.
- clothing10: embedded in data/clothing10 (CC0), read as an image folder with the source's splits.
- cifar10, food101, flowers102, oxford_pets, stanford_cars: torchvision's datasets, read from the
  root or downloaded there by torchvision.
- stanford_dogs: Images/, Annotation/ and the train/test lists; each image is cropped to its bounding
  box, as reference study 002 did.

`studylib.data.registry.load_dataset` calls a loader as loader(root=, seed=, val_fraction=, download=),
adding test_fraction for a dataset without its own splits and the storage mode and options for a
lazily readable one from object storage.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

from studylib.data import storage
from studylib.data.registry import Dataset, Items, register_dataset, shown_name
from studylib.data.splits import carve, carved_note
from studylib.errors import DatasetUnavailable, ParameterError
from studylib.util import is_uri

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
SPLIT_DIRS = {"train": ("train",), "val": ("val", "validation", "valid"), "test": ("test",)}


# --- image folders -------------------------------------------------------------------------

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


def _class_folders(files: list[str], prefix: tuple[str, ...]) -> dict[str, int]:
    """The class folders right under `prefix` (folders that hold files; hidden ones left out), each with
    its number of images."""
    n = len(prefix)
    out: dict[str, int] = {}
    for parts in (f.split("/") for f in files):
        if len(parts) > n + 1 and tuple(parts[:n]) == prefix and not parts[n].startswith("."):
            out[parts[n]] = out.get(parts[n], 0) + (len(parts) == n + 2 and _is_image(parts[-1]))
    return dict(sorted(out.items()))


def _split_folders(files: list[str]) -> dict[str, str]:
    """split -> folder name when root holds <split>/<class>/<image> with a train folder; else {} (a flat
    root/<class>/<image>, where a class may be named `train`: its images sit right in the folder)."""
    tops = {parts[0] for parts in (f.split("/") for f in files) if len(parts) == 3 and _is_image(parts[2])}
    found = {}
    for split, names in SPLIT_DIRS.items():
        for n in names:
            if n in tops:
                found[split] = n
                break
    return found if "train" in found else {}


def _refuse(shown: str, allowed: str, found: str) -> ParameterError:
    return ParameterError("root", shown, f"{allowed}; {found}")


def _check_folders(shown: str, folders: dict[str, int], where: str = "") -> list[str]:
    """The class folders of `folders`, every one holding images; refused in one sentence otherwise (none
    when no folder holds an image: the caller says there is no class folder with images)."""
    if not any(folders.values()):
        return []
    for name, count in folders.items():
        if not count:
            raise _refuse(shown, f"a folder whose class folders all hold images ({', '.join(sorted(IMAGE_SUFFIXES))})",
                          f"'{shown_name(where + name)}' holds no image")
    return list(folders)


def _carve(items: Items, fraction: float, seed: int, classes: list[str], shown: str, what: str) -> tuple[Items, Items]:
    """carve, with scikit-learn's refusal of a class too small to stratify as one sentence naming the class."""
    try:
        return carve(items, fraction, seed)
    except ValueError:
        counts = {c: 0 for c in classes}
        for label in items.labels:
            counts[classes[label]] += 1
        small = min(counts, key=counts.get)
        n = counts[small]
        raise _refuse(shown, f"a folder with enough images in every class to carve a stratified {what} split from "
                      "(10 or more a class is safe)", f"class '{small}' has {n} image{'s' if n != 1 else ''}") from None


def _folder_items(root: Path, files: list[str], prefix: tuple[str, ...], classes: list[str], store=None) -> Items:
    """Items for prefix/<class>/<image> files, class by class (`classes`: the folders' own names), in name order."""
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
    mirror, copied first (`storage_mode="prefetch"`) or fetched on first use ("lazy").
    A folder the study cannot learn from is refused (ParameterError on root) before any image is
    opened: a class folder without images, a val or test class that train lacks, a class too small to
    carve a stratified split from (and, in load_dataset, a single class)."""
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
    found = _split_folders(files)
    if found:
        folders = _check_folders(shown, _class_folders(files, (found["train"],)), f"{found['train']}/")
        classes = [shown_name(c) for c in folders]
        for split, d in found.items():
            extra = sorted(set(_check_folders(shown, _class_folders(files, (d,)), f"{d}/")) - set(folders))
            if extra:
                raise _refuse(shown, f"a folder whose {split} classes are all train classes ({', '.join(classes)})",
                              f"{d}/ has '{shown_name(extra[0])}', which {found['train']}/ has not")
        splits = {s: _folder_items(root_path, files, (d,), folders, store) for s, d in found.items()}
        notes = {"splits": "the dataset's own"}
        if "test" not in splits:
            splits["train"], splits["test"] = _carve(splits["train"], test_fraction, seed, classes, shown, "test")
            notes["test"] = carved_note(test_fraction, seed)
        if "val" not in splits:
            splits["train"], splits["val"] = _carve(splits["train"], val_fraction, seed, classes, shown, "val")
            notes["val"] = carved_note(val_fraction, seed)
    else:
        folders = _check_folders(shown, _class_folders(files, ()))
        classes = [shown_name(c) for c in folders]
        everything = _folder_items(root_path, files, (), folders, store)
        if not classes or not len(everything):
            raise DatasetUnavailable(f"dataset '{name}' root '{shown}' has no class folders with images; expected "
                                     "root/<split>/<class>/<image> or root/<class>/<image>.")
        rest, test = _carve(everything, test_fraction, seed, classes, shown, "test")
        train, val = _carve(rest, val_fraction / (1 - test_fraction), seed, classes, shown, "val")
        splits = {"train": train, "val": val, "test": test}
        notes = {"splits": f"stratified from one folder: val {val_fraction:.0%}, test {test_fraction:.0%}, seed {seed}"}
    if not classes or not len(splits["train"]):
        raise DatasetUnavailable(f"dataset '{name}' root '{shown}' has no images under its train split.")
    if store is not None:
        notes["storage"] = f"{store.mode} from {store.uri} through the local mirror {store.local}"
    return Dataset(name=name, classes=classes, splits=splits, root=shown, notes=notes)


@register_dataset("imagefolder", needs_root=True, lazy_readable=True)
def imagefolder(root: str, seed: int, val_fraction: float, test_fraction: float, storage_mode: str = "prefetch",
                storage_options: dict | None = None, **_) -> Dataset:
    """Any folder of root/<split>/<class>/<image> or root/<class>/<image> (nothing to download)."""
    return load_imagefolder(root, seed, val_fraction, test_fraction, storage_mode=storage_mode,
                            storage_options=storage_options)


@register_dataset("clothing10", lazy_readable=True, own_splits=True)
def clothing10(root: str, storage_mode: str = "prefetch", storage_options: dict | None = None, **_) -> Dataset:
    """The embedded dataset (data/clothing10, CC0) with the source's own train, val and test splits."""
    ds = load_imagefolder(root, name="clothing10", storage_mode=storage_mode, storage_options=storage_options)
    ds.notes["license"] = "CC0 1.0 (data/clothing10/LICENSE)"
    return ds


# --- torchvision datasets -------------------------------------------------------------------

def _torchvision_dataset(name: str, cls_name: str, root: str, download: bool, **kwargs):
    import torchvision.datasets as tvd  # lazy: only the torchvision datasets need it
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


def _register_torchvision_files(name: str, cls_name: str, split_args: dict, paths_labels, classes_of=None) -> None:
    """Register a torchvision dataset of image files: its splits by `split_args`, val carved from train
    when it has none. paths_labels(tv_dataset) gives (paths, labels); classes_of(tv_dataset) the class names."""
    classes_of = classes_of or (lambda tv: list(tv.classes))

    @register_dataset(name, own_splits=True, downloads=True)
    def load(root: str, seed: int, val_fraction: float, download: bool, **_) -> Dataset:
        made = {s: _torchvision_dataset(name, cls_name, root, download, split=a) for s, a in split_args.items()}
        splits = {}
        for s, tv in made.items():
            paths, labels = paths_labels(tv)
            splits[s] = Items(labels=[int(x) for x in labels], paths=[str(p) for p in paths])
        notes = {}
        if "val" not in splits:
            splits["train"], splits["val"] = carve(splits["train"], val_fraction, seed)
            notes["val"] = carved_note(val_fraction, seed)
        return Dataset(name, classes_of(next(iter(made.values()))), splits, root, notes)


_register_torchvision_files("food101", "Food101", {"train": "train", "test": "test"},
                            lambda tv: (tv._image_files, tv._labels))
_register_torchvision_files("flowers102", "Flowers102", {"train": "train", "val": "val", "test": "test"},
                            lambda tv: (tv._image_files, tv._labels),
                            lambda tv: getattr(tv, "classes", None) or [str(i) for i in range(102)])
_register_torchvision_files("oxford_pets", "OxfordIIITPet", {"train": "trainval", "test": "test"},
                            lambda tv: (tv._images, tv._labels))
_register_torchvision_files("stanford_cars", "StanfordCars", {"train": "train", "test": "test"},
                            lambda tv: ([p for p, _ in tv._samples], [label for _, label in tv._samples]))


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
    from scipy.io import loadmat  # lazy: only Stanford Dogs' .mat lists need SciPy
    mat = loadmat(root / f"{split}_list.mat")
    return [str(entry[0][0]) for entry in mat["file_list"]]


def _fetch_stanford_dogs(root: str) -> None:
    """Download and unpack Stanford Dogs' three archives into root, or say what to fetch by hand."""
    from torchvision.datasets.utils import download_and_extract_archive  # lazy: only a download needs it
    try:
        for f in STANFORD_DOGS_FILES:
            download_and_extract_archive(STANFORD_DOGS_URL + f, str(Path(root)))
    except Exception as err:
        raise DatasetUnavailable(
            f"dataset 'stanford_dogs' is not in root '{root}' and could not be downloaded "
            f"({type(err).__name__}: {err}); fetch {', '.join(STANFORD_DOGS_FILES)} from {STANFORD_DOGS_URL} "
            f"and unpack them into '{root}' (Images/, Annotation/, train_list.mat, test_list.mat).") from err


@register_dataset("stanford_dogs", own_splits=True, downloads=True)
def stanford_dogs(root: str, seed: int, val_fraction: float, download: bool, **_) -> Dataset:
    """Stanford Dogs, each image cropped to its first annotated box; val carved from train."""
    r = Path(root)
    if not (r / "Images").is_dir() or not (r / "train_list.mat").exists():
        if not download:
            raise DatasetUnavailable(f"dataset 'stanford_dogs' is not in root '{root}': it needs Images/, "
                                     f"Annotation/, train_list.mat and test_list.mat from {STANFORD_DOGS_URL}.")
        _fetch_stanford_dogs(root)
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
    splits["train"], splits["val"] = carve(splits["train"], val_fraction, seed)
    classes = [d.split("-", 1)[1] if "-" in d else d for d in classes_dirs]
    return Dataset("stanford_dogs", classes, splits, root,
                   {"crop": "bounding box from Annotation/ (first object)", "val": carved_note(val_fraction, seed)})
