"""The data_prep stage: its parameters, its steps in order, and the dataset card and record it writes.

notebooks/data_prep.ipynb calls these steps in order and shows what each returns (the figures and
tables are studylib.views.data_prep's):

1. `open_dataset`: resolve the dataset (a local folder or an fsspec URI, prefetched or lazy).
2. `studylib.data.integrity.check_integrity`: every image read once, the checksum list, duplicates.
3. `ensure_split_manifest`: a dataset without its own splits gets a stratified split from the
   seed and fractions, written once as a manifest (split, path, label) that every later load uses.
4. `class_counts`, `imbalance`, `size_summary`: per-split and per-class counts, the imbalance, the
   image size distribution.
5. `build_cache`: the decoded tensor cache (studylib.data.cache) for each image size, with build time
   and size, and the train split's channel mean and std at each size (what train normalises with).
6. `dataset_card` and `data_prep_record`: what the notebook glues.
"""
from __future__ import annotations

import json
import os
import time
from collections import Counter
from typing import ClassVar, Literal
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
from pydantic import field_validator, model_validator

from studylib import environment
from studylib.data import storage
from studylib.data.cache import channel_stats, load_split
from studylib.data.integrity import Integrity
from studylib.data.registry import Dataset, check_root, check_storage_mode, dataset_spec, load_dataset, resolve_root
from studylib.data.splits import SPLITS, carved_splits, manifest_path, read_manifest, write_split_manifest
from studylib.errors import ParameterError
from studylib.params import Fraction, NonNegativeInt, StageParams
from studylib.record import DataPrepRecord, run_id
from studylib.util import is_uri, now, redact_url

PROBLEM_LIMIT = 200  # problems of one kind listed in the card (all are counted)


# --- parameters ----------------------------------------------------------------------------

def _parse_list(value):
    """image_sizes from papermill: a list, a single number, or a string like '32,64' or '[32, 64]'."""
    if isinstance(value, str):
        text = value.strip().strip("[]()")
        try:
            return [int(v) for v in text.replace(",", " ").split()]
        except ValueError:
            return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [value]
    return value


class DataPrepParams(StageParams):
    """Parameters of data_prep.ipynb: one dataset, checked, split and cached."""
    stage: ClassVar[str] = "data_prep"
    secret: ClassVar[tuple[str, ...]] = ("storage_options",)  # never echo a secret

    dataset: str = "clothing10"
    root: str = ""                        # "" means data/<dataset>; a folder or an fsspec URI (s3://, gs://, file://)
    image_sizes: list[int] = [64]         # the tensor cache is built at each of these sizes
    seed: int = 0                         # for a split made here (datasets without their own splits)
    val_fraction: Fraction = 0.1
    test_fraction: Fraction = 0.1
    storage_mode: Literal["prefetch", "lazy"] = "prefetch"
    storage_options: dict = {}            # fsspec settings that are not secrets, e.g. {"endpoint_url": ...}
    samples_per_class: NonNegativeInt = 6  # images per class in the sample grid
    workers: NonNegativeInt = 0           # threads that read and check images; 0 means one per CPU core
    resplit: bool = False                 # replace an existing split manifest made with other settings

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v):
        dataset_spec(v)  # an unknown name is the registry's ParameterError
        return v

    @field_validator("image_sizes", mode="before")
    @classmethod
    def _sizes_before(cls, v):
        return _parse_list(v)

    @field_validator("image_sizes")
    @classmethod
    def _sizes(cls, v):
        if not v or any(s < 8 or s > 1024 for s in v):
            raise ParameterError("image_sizes", v, "a non-empty list of sizes in pixels between 8 and 1024")
        return sorted(set(v))

    @field_validator("storage_options", mode="before")
    @classmethod
    def _options(cls, v):
        if isinstance(v, str):
            try:
                v = json.loads(v) if v.strip() else {}
            except ValueError:
                raise ParameterError("storage_options", "a string that is not JSON", "a mapping (or its JSON)") from None
        return storage.check_storage_options(v)

    @model_validator(mode="after")
    def _cross_checks(self):
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ParameterError("test_fraction", self.test_fraction,
                                 f"small enough that val_fraction + test_fraction < 0.9 (val_fraction is {self.val_fraction})")
        root = check_root(self.dataset, self.root, allowed="a folder or URI")
        if is_uri(root):
            import fsspec  # lazy: only a root in object storage needs the storage library
            parts = urlsplit(root)
            if parts.username or parts.password or parts.query:
                raise ParameterError("root", redact_url(root), "a URI without credentials or a query in it; "
                                     "the storage library reads credentials from the environment")
            protocol = root.split("://", 1)[0]
            if protocol not in fsspec.available_protocols():
                raise ParameterError("root", root, "a local folder or a URI whose protocol fsspec knows (s3, gs, file, ...)")
            check_storage_mode(self.dataset, self.storage_mode)
        manifest = manifest_path(self.dataset, root, self.storage_options)
        if manifest.exists() and not self.resplit:
            made, _ = read_manifest(manifest)
            for k in ("seed", "val_fraction", "test_fraction"):
                if k in made and made[k] != getattr(self, k):
                    raise ParameterError(k, getattr(self, k), f"{made[k]!r}, the value the split manifest {manifest} "
                                         "was made with (set resplit=True to replace it)")
        return self

    def run_params(self) -> dict:
        """The parameters that define the run (what the run id hashes, what the record keeps): all but
        `workers`, which changes only the speed; the root without credentials."""
        out = self.model_dump(exclude={"workers"})
        out["root"] = redact_url(self.root)
        return out


# --- 1. open -------------------------------------------------------------------------------

def open_dataset(params: DataPrepParams) -> tuple[Dataset, float]:
    """The dataset, and the seconds it took to list (and, in prefetch mode, copy) it."""
    t0 = time.perf_counter()
    ds = load_dataset(params.dataset, params.root, seed=params.seed, val_fraction=params.val_fraction,
                      test_fraction=params.test_fraction, storage_mode=params.storage_mode,
                      storage_options=params.storage_options)
    return ds, time.perf_counter() - t0


# --- 3. splits -----------------------------------------------------------------------------

def ensure_split_manifest(ds: Dataset, params: DataPrepParams) -> tuple[Dataset, dict]:
    """Keep the dataset's own splits; otherwise write the seeded split once and load through it.

    Returns the dataset as later runs will see it, and what the card says about its splits."""
    carved = carved_splits(ds)
    root = resolve_root(params.dataset, params.root)
    path = manifest_path(params.dataset, root, params.storage_options)
    from_manifest = ds.notes.get("splits", "").startswith("split manifest")
    if not carved and not from_manifest:
        return ds, {"source": ds.notes.get("splits", "the dataset's own"), "manifest": None, "written": False}
    if any(i.paths is None for i in ds.splits.values()):
        return ds, {"source": f"carved by seed {params.seed} at every load (in-memory dataset, no manifest)",
                    "manifest": None, "written": False}
    if from_manifest and not params.resplit:
        return ds, {"source": ds.notes["splits"], "manifest": str(path), "written": False}
    made = {"dataset": params.dataset, "root": redact_url(root), "seed": params.seed, "created": now()}
    if params.resplit and from_manifest:
        path.unlink(missing_ok=True)       # re-split from the folder, not from the old manifest
        ds, _ = open_dataset(params)
        carved = carved_splits(ds)
    if "val" in carved:
        made["val_fraction"] = params.val_fraction
    if "test" in carved:
        made["test_fraction"] = params.test_fraction
    write_split_manifest(ds, path, made)
    ds, _ = open_dataset(params)           # what every later run loads: through the manifest
    return ds, {"source": ds.notes["splits"], "manifest": str(path), "written": True}


# --- 4. description ------------------------------------------------------------------------

def class_counts(ds: Dataset) -> pd.DataFrame:
    """Images per class (rows) and split (columns), with a total column."""
    table = pd.DataFrame({s: np.bincount(ds.splits[s].labels, minlength=len(ds.classes)) for s in SPLITS},
                         index=pd.Index(ds.classes, name="class"))
    table["total"] = table.sum(axis=1)
    return table


def imbalance(ds: Dataset) -> dict:
    """Per split: the largest and the smallest class and their ratio."""
    out = {}
    counts = class_counts(ds)
    for s in SPLITS:
        col = counts[s]
        lo, hi = col.idxmin(), col.idxmax()
        out[s] = {"largest": hi, "largest_count": int(col[hi]), "smallest": lo, "smallest_count": int(col[lo]),
                  "ratio": round(float(col[hi] / col[lo]), 3) if col[lo] else None}
    return out


def size_summary(integrity: Integrity) -> dict:
    """Width and height of the readable images (pixels): min, quartiles, max, and the commonest sizes."""
    ok = [f for f in integrity.facts if f.width and f.height]
    if not ok:
        return {}
    w = np.array([f.width for f in ok])
    h = np.array([f.height for f in ok])

    def stats(a):
        q = np.percentile(a, [0, 25, 50, 75, 100])
        return dict(zip(("min", "p25", "median", "p75", "max"), (round(float(v), 3) for v in q)))
    common = Counter(zip(w.tolist(), h.tolist())).most_common(5)
    return {"images": len(ok), "width": stats(w), "height": stats(h), "aspect_w_over_h": stats(w / h),
            "most_common": [{"width": a, "height": b, "images": n} for (a, b), n in common],
            "modes": dict(Counter(f.mode for f in ok))}


# --- 5. cache ------------------------------------------------------------------------------

def build_cache(ds: Dataset, image_sizes: list[int]) -> tuple[list[dict], dict[str, dict]]:
    """Build (or find) the tensor cache at each size. Rows per size and split; mean/std per size."""
    rows, stats = [], {}
    for size in image_sizes:
        for split in SPLITS:
            t = load_split(ds.cache_key, split, ds.splits[split], size)
            rows.append({"image_size": size, "split": split, "images": len(t), "skipped": len(t.skipped),
                         "seconds": round(t.seconds, 4), "hit": t.cache_hit, "path": t.path,
                         "mb": round(os.path.getsize(t.path) / 2**20, 3)})
            if split == "train":
                mean, std = channel_stats(t.images)
                stats[str(size)] = {"mean": [round(v, 5) for v in mean], "std": [round(v, 5) for v in std]}
            del t
    return rows, stats


# --- 6. card and record ----------------------------------------------------------------------

def dataset_card(params: DataPrepParams, ds: Dataset, integrity: Integrity, splits: dict,
                 cache_rows: list[dict], stats: dict, seconds: dict) -> dict:
    """Everything the book shows about a dataset, as JSON: the `dataset_card` scrap."""
    counts = class_counts(ds)
    problems: list[dict] = []
    seen: Counter = Counter()
    for p in integrity.problems:
        seen[p["kind"]] += 1
        if seen[p["kind"]] <= PROBLEM_LIMIT:
            problems.append(p)
    store = ds.store
    storage_report = None
    if store is not None:
        storage_report = store.report() | {"first_pass_seconds": round(integrity.seconds, 4)}
    return {
        "dataset": ds.name,
        "root": redact_url(ds.root),
        "classes": ds.classes,
        "num_classes": len(ds.classes),
        "sizes": {s: len(ds.splits[s]) for s in SPLITS},
        "total": sum(len(ds.splits[s]) for s in SPLITS),
        "counts": {s: {c: int(n) for c, n in counts[s].items()} for s in SPLITS},
        "imbalance": imbalance(ds),
        "splits": splits,
        "notes": ds.notes,
        "checksums": integrity.checksums,
        "problem_count": len(integrity.problems),
        "problem_counts": integrity.counts(),
        "problems": problems,
        "problems_listed_per_kind": PROBLEM_LIMIT,
        "image_sizes": size_summary(integrity),
        "mean": {k: v["mean"] for k, v in stats.items()},
        "std": {k: v["std"] for k, v in stats.items()},
        "cache": cache_rows,
        "storage": storage_report,
        "seconds": {k: round(v, 4) for k, v in seconds.items()},
        "workers": integrity.workers,
    }


def data_prep_record(params: DataPrepParams, card: dict, started_at: str) -> dict:
    """The stage's `record` (studylib.record.DataPrepRecord) from its card."""
    versions = environment.versions(extra=("pillow", "numpy", "fsspec", "s3fs", "gcsfs"))
    rp = params.run_params()
    return DataPrepRecord(
        run_id=run_id("data_prep", rp), params=rp, dataset=card["dataset"], root=card["root"],
        classes=card["classes"], num_classes=card["num_classes"], sizes=card["sizes"],
        problems=card["problem_count"], problem_counts=card["problem_counts"], checksums=card["checksums"],
        splits=card["splits"], mean=card["mean"], std=card["std"], cache=card["cache"], storage=card["storage"],
        seconds=card["seconds"], hardware=environment.hardware("cpu"), versions=versions,
        started_at=started_at, finished_at=now(),
    ).model_dump(mode="json")
