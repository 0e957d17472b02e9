"""How a dataset's splits are made and kept: stratified carving by seed, and the split manifest.

A dataset without its own splits (or without a val split) has them carved from train by seed, in
stratified fashion. data_prep writes such a split once as a manifest (split, path, label; how it was
made on the first line), one per (dataset, root); every later load of that root takes its splits from
the manifest (`apply_manifest`), whatever seed it asks for.

The functions take studylib.data.registry's `Dataset` and `Items` as arguments (the registry imports
this module, so this one names them only in docstrings).
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from dataclasses import replace
from pathlib import Path

import numpy as np

from studylib.data import storage
from studylib.errors import DatasetUnavailable
from studylib.paths import cache_dir
from studylib.util import atomic_write, is_uri

SPLITS = ("train", "val", "test")


def stratified_split(labels, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (kept, held out) with `fraction` of each class held out, from `seed`."""
    from sklearn.model_selection import train_test_split  # lazy: scikit-learn takes a second to import
    idx = np.arange(len(labels))
    keep, held = train_test_split(idx, test_size=fraction, random_state=seed, stratify=labels)
    return sorted(keep.tolist()), sorted(held.tolist())


def carve(items, fraction: float, seed: int):
    """(kept, held out) Items: `fraction` of each class of `items` held out, from `seed`."""
    keep, held = stratified_split(items.labels, fraction, seed)
    return items.subset(keep), items.subset(held)


def carved_note(fraction: float, seed: int) -> str:
    """What a Dataset's notes say about a split carved from train (`carved_splits` reads it back)."""
    return f"carved from train: {fraction:.0%} stratified, seed {seed}"


def carved_splits(ds) -> list[str]:
    """The splits this load made by seed rather than took from the dataset (empty: all its own)."""
    if ds.notes.get("splits", "").startswith("stratified"):
        return list(SPLITS)
    return [s for s in ("val", "test") if "carved" in str(ds.notes.get(s, ""))]


# --- split manifests -----------------------------------------------------------------------

def splits_dir() -> Path:
    """Where split manifests live (STUDYLIB_SPLITS overrides it)."""
    return Path(os.environ.get("STUDYLIB_SPLITS", cache_dir().parent / "splits"))


def manifest_path(name: str, root: str, storage_options: dict | None = None) -> Path:
    """The split manifest of a dataset root: one per (dataset, root), whatever seed a later run uses."""
    if is_uri(root):
        key = storage.mirror_path(root, storage_options).name
    else:
        resolved = str(Path(root).resolve())
        key = f"{Path(resolved).name}-{hashlib.sha256(resolved.encode()).hexdigest()[:10]}"
    return splits_dir() / f"{name}-{re.sub(r'[^A-Za-z0-9._-]+', '_', key)}.csv"


def read_manifest(path: Path) -> tuple[dict, list[dict]]:
    """(how it was made, rows of split/path/label) from a manifest file."""
    with open(path, newline="", encoding="utf-8") as f:
        first = f.readline()
        meta = json.loads(first[1:]) if first.startswith("#") else {}
        if not first.startswith("#"):
            f.seek(0)
        rows = list(csv.DictReader(f))
    return meta, rows


def write_split_manifest(ds, path: Path, made: dict) -> None:
    """Write (split, path, label) for every item of `ds`, atomically, with how it was made on the first line."""
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:  # names as shown (registry.shown_name): UTF-8 text
            f.write("#" + json.dumps(made, sort_keys=True) + "\n")
            w = csv.writer(f)
            w.writerow(["split", "path", "label"])
            for split in SPLITS:
                items = ds.splits[split]
                for p, label in zip(items.paths, items.labels):
                    w.writerow([split, ds.relative(p), ds.classes[label]])
    atomic_write(path, write)


def apply_manifest(ds, path: Path):
    """`ds` with its splits taken from a manifest; a listed file that is gone is an error."""
    if any(i.paths is None for i in ds.splits.values()):
        return ds  # in-memory datasets (CIFAR) are split by seed; their items have no paths
    meta, rows = read_manifest(path)
    index = {}
    has_boxes = any(i.boxes is not None for i in ds.splits.values())
    for items in ds.splits.values():
        for i, p in enumerate(items.paths):
            index[ds.relative(p)] = (items.labels[i], items.boxes[i] if items.boxes else None, p)
    picked = {s: ([], [], []) for s in SPLITS}
    for row in rows:
        rel, split = row["path"], row["split"]
        if rel not in index or split not in picked:
            raise DatasetUnavailable(f"split manifest '{path}' lists {split} file '{rel}', which dataset '{ds.name}' "
                                     f"at '{ds.root}' no longer has; delete the manifest to split again.")
        label, box, file = index[rel]
        if ds.classes[label] != row["label"]:
            raise DatasetUnavailable(f"split manifest '{path}' labels '{rel}' as '{row['label']}', but the dataset "
                                     f"has it as '{ds.classes[label]}'; delete the manifest to split again.")
        labels, paths, boxes = picked[split]
        labels.append(label)
        paths.append(file)  # the file's own path: a name as shown need not be its bytes
        boxes.append(box)
    some = next(iter(ds.splits.values()))  # every split has the same store and no array
    splits = {s: replace(some, labels=labels, paths=paths, boxes=boxes if has_boxes else None)
              for s, (labels, paths, boxes) in picked.items()}
    notes = {k: v for k, v in ds.notes.items() if k not in ("splits", "val", "test")}
    how = ", ".join(f"{k} {meta[k]}" for k in ("seed", "val_fraction", "test_fraction") if k in meta)
    notes["splits"] = f"split manifest {path} ({how})"
    left_out = len(index) - len(rows)
    if left_out > 0:
        notes["manifest"] = f"{left_out} files found since the manifest was written are left out"
    return replace(ds, splits=splits, notes=notes)
