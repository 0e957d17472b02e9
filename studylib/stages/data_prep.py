"""The data_prep stage: verify, describe, split and cache one dataset, and write its card.

notebooks/data_prep.ipynb calls these steps in order and shows what each returns:

1. `open_dataset`: resolve the dataset (a local folder or an fsspec URI, prefetched or lazy).
2. `check_integrity`: the checksum list where the dataset has one (clothing10's SHA256SUMS), and
   every image read once: zero-byte files, unreadable or truncated images, odd colour modes, crop
   boxes outside their image, and duplicates by content hash (a train image that is also in test
   is leakage). Problems are listed, never fatal: training skips what it cannot decode.
3. `ensure_split_manifest`: a dataset without its own splits gets a stratified split from the
   seed and fractions, written once as a manifest (split, path, label) that every later load uses.
4. `describe`: per-split and per-class counts, the imbalance, the image size distribution.
5. `build_cache`: the decoded tensor cache (studylib.data.cache) for each image size, with build time
   and size, and the train split's channel mean and std at each size (what train normalises with).
6. `dataset_card` and `data_prep_record`: what the notebook glues.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, field_validator, model_validator


from studylib.data import storage
from studylib.data.cache import channel_stats, load_split
from studylib.data.registry import DATASETS, Dataset, carved_splits, default_root, load_dataset, manifest_path, read_manifest
from studylib.errors import ParameterError
from studylib.util import atomic_write, is_uri, now, redact_url

SPLITS = ("train", "val", "test")
CHECKSUM_LISTS = {"SHA256SUMS": "sha256", "SHA512SUMS": "sha512", "SHA1SUMS": "sha1", "MD5SUMS": "md5"}
PROBLEM_LIMIT = 200  # problems of one kind listed in the card (all are counted)

# kind -> what it means for the study
PROBLEM_KINDS = {
    "missing file": "listed in the checksum list but not in the dataset",
    "checksum mismatch": "the file differs from the checksum list",
    "not in checksum list": "an image the checksum list does not vouch for",
    "zero-byte file": "skipped by training",
    "unreadable image": "skipped by training",
    "truncated image": "skipped by training",
    "odd colour mode": "converted to RGB by training",
    "crop box outside image": "cropped to the part inside the image",
    "duplicate across splits": "leakage: the same image is in two splits",
    "duplicate within split": "the image counts twice",
}


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


class DataPrepParams(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    dataset: str = "clothing10"
    root: str = ""                        # "" means data/<dataset>; a folder or an fsspec URI (s3://, gs://, file://)
    image_sizes: list[int] = [64]         # the tensor cache is built at each of these sizes
    seed: int = 0                         # for a split made here (datasets without their own splits)
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    storage_mode: Literal["prefetch", "lazy"] = "prefetch"
    storage_options: dict = {}            # fsspec settings that are not secrets, e.g. {"endpoint_url": ...}
    samples_per_class: int = 6            # images per class in the sample grid
    workers: int = 0                      # threads that read and check images; 0 means one per CPU core
    resplit: bool = False                 # replace an existing split manifest made with other settings

    @classmethod
    def from_mapping(cls, values: dict) -> "DataPrepParams":
        from studylib.params import validate_mapping
        return validate_mapping(cls, values, "data_prep", secret=("storage_options",))  # never echo a secret

    @classmethod
    def from_namespace(cls, namespace: dict) -> "DataPrepParams":
        return cls.from_mapping({k: namespace[k] for k in cls.model_fields if k in namespace})

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v):
        if v not in DATASETS:
            raise ParameterError("dataset", v, f"one of {', '.join(DATASETS)}")
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

    @field_validator("val_fraction", "test_fraction")
    @classmethod
    def _fraction(cls, v, info):
        if not 0 < v < 1:
            raise ParameterError(info.field_name, v, "between 0 and 1")
        return v

    @field_validator("samples_per_class", "workers")
    @classmethod
    def _non_negative(cls, v, info):
        if v < 0:
            raise ParameterError(info.field_name, v, "zero or more")
        return v

    @model_validator(mode="after")
    def _cross_checks(self):
        import fsspec
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ParameterError("test_fraction", self.test_fraction,
                                 f"small enough that val_fraction + test_fraction < 0.9 (val_fraction is {self.val_fraction})")
        if self.dataset == "imagefolder" and not self.root:
            raise ParameterError("root", self.root, "a folder or URI of root/<split>/<class>/<image> for dataset 'imagefolder'")
        root = self.root or default_root(self.dataset)
        if is_uri(root):
            parts = urlsplit(root)
            if parts.username or parts.password or parts.query:
                raise ParameterError("root", redact_url(root), "a URI without credentials or a query in it; "
                                     "the storage library reads credentials from the environment")
            protocol = root.split("://", 1)[0]
            if protocol not in fsspec.available_protocols():
                raise ParameterError("root", root, "a local folder or a URI whose protocol fsspec knows (s3, gs, file, ...)")
            if self.storage_mode == "lazy" and self.dataset not in ("clothing10", "imagefolder"):
                raise ParameterError("storage_mode", self.storage_mode,
                                     f"'prefetch' for dataset '{self.dataset}' from object storage "
                                     "(lazy fetching works for clothing10 and imagefolder)")
        elif self.dataset in ("clothing10", "imagefolder") and not Path(root).is_dir():
            raise ParameterError("root", root, f"an existing folder holding dataset '{self.dataset}'")
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


def relative(ds: Dataset, path: str) -> str:
    """An item's path relative to the dataset root: what tables, cards and manifests show."""
    try:
        return Path(os.path.relpath(path, ds.local_root())).as_posix()
    except ValueError:
        return path


# --- 2. integrity --------------------------------------------------------------------------

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

    def table(self, limit_per_kind: int | None = None):
        import pandas as pd
        rows = self.problems
        if limit_per_kind is not None:
            seen: Counter = Counter()
            rows = [p for p in rows if (seen.update([p["kind"]]) or seen[p["kind"]] <= limit_per_kind)]
        return pd.DataFrame(rows, columns=["kind", "split", "path", "detail", "effect"])


def _inspect(ds: Dataset, split: str, i: int) -> ImageFacts:
    items = ds.splits[split]
    f = ImageFacts(split, i, items.name(i) if items.paths is None else relative(ds, items.paths[i]), items.labels[i])
    try:
        if items.array is not None:
            data = np.ascontiguousarray(items.array[i]).tobytes()
            f.nbytes, f.sha256 = len(data), hashlib.sha256(data).hexdigest()
            f.height, f.width = items.array.shape[1:3]
            f.mode, f.format = "RGB", "array"
            return f
        path = items.store.ensure(items.paths[i]) if items.store is not None else items.paths[i]
        with open(path, "rb") as fh:
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
    except Exception as err:  # a file cut inside its header fails here already
        f.kind = "truncated image" if _is_truncation(err) else "unreadable image"
        f.error = f"{type(err).__name__}: {err}"
        return f
    try:
        if img.format == "JPEG":
            # every byte is still entropy-decoded (a truncated file fails the same way), only the
            # inverse DCT runs at 1/8 scale
            img.draft(img.mode, (max(1, img.width // 8), max(1, img.height // 8)))
        img.load()  # the decode: a truncated file fails here, not at open
    except Exception as err:
        f.kind = "truncated image" if _is_truncation(err) else "unreadable image"
        f.error = f"{type(err).__name__}: {err}"
    return f


def _is_truncation(err: Exception) -> bool:
    return isinstance(err, EOFError) or "truncat" in str(err).lower()


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


def _read_checksums(path: Path) -> dict[str, str]:
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
    listed = _read_checksums(path)
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


def _problem(kind: str, split: str, path: str, detail: str) -> dict:
    return {"kind": kind, "split": split, "path": path, "detail": detail, "effect": PROBLEM_KINDS[kind]}


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
    with ThreadPoolExecutor(max_workers=workers) as pool:
        facts = list(pool.map(lambda job: _inspect(ds, *job), jobs))
    problems = [_problem(f.kind, f.split, f.path, f.error) for f in facts if f.kind]
    problems += [_problem("odd colour mode", f.split, f.path, f"mode {f.mode}")
                 for f in facts if not f.kind and f.mode and f.mode != "RGB"]
    problems += _box_problems(ds, facts)
    problems += _duplicates(ds, facts)
    checksums = _verify_checksums(ds, facts, problems)
    return Integrity(facts, problems, checksums, time.perf_counter() - t0, workers)


def problem_summary(integrity: Integrity):
    """Every kind of problem looked for, with how many were found (zeros included) and what it means."""
    import pandas as pd
    counts = integrity.counts()
    return pd.DataFrame([{"problem": k, "found": counts.get(k, 0), "effect": v} for k, v in PROBLEM_KINDS.items()]
                        ).set_index("problem")


# --- 3. splits -----------------------------------------------------------------------------

def write_split_manifest(ds: Dataset, path: Path, made: dict) -> None:
    """Write (split, path, label) for every item, atomically, with how it was made on the first line."""
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            f.write("#" + json.dumps(made, sort_keys=True) + "\n")
            w = csv.writer(f)
            w.writerow(["split", "path", "label"])
            for split in SPLITS:
                items = ds.splits[split]
                for p, label in zip(items.paths, items.labels):
                    w.writerow([split, relative(ds, p), ds.classes[label]])
    atomic_write(path, write)


def ensure_split_manifest(ds: Dataset, params: DataPrepParams) -> tuple[Dataset, dict]:
    """Keep the dataset's own splits; otherwise write the seeded split once and load through it.

    Returns the dataset as later runs will see it, and what the card says about its splits."""
    carved = carved_splits(ds)
    root = params.root or default_root(params.dataset)
    path = manifest_path(params.dataset, root, params.storage_options)
    if not carved and not ds.notes.get("splits", "").startswith("split manifest"):
        return ds, {"source": ds.notes.get("splits", "the dataset's own"), "manifest": None, "written": False}
    if any(i.paths is None for i in ds.splits.values()):
        return ds, {"source": f"carved by seed {params.seed} at every load (in-memory dataset, no manifest)",
                    "manifest": None, "written": False}
    if ds.notes.get("splits", "").startswith("split manifest") and not params.resplit:
        return ds, {"source": ds.notes["splits"], "manifest": str(path), "written": False}
    made = {"dataset": params.dataset, "root": redact_url(root), "seed": params.seed,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if params.resplit and ds.notes.get("splits", "").startswith("split manifest"):
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

def class_counts(ds: Dataset):
    """Images per class (rows) and split (columns), with a total column."""
    import pandas as pd
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


def cache_table(rows: list[dict]):
    import pandas as pd
    return pd.DataFrame(rows).set_index(["image_size", "split"])


def stats_table(stats: dict):
    """Channel mean and std of the train split per image size: rows size, columns mean/std x R/G/B."""
    import pandas as pd
    return pd.DataFrame({size: {f"{what} {ch}": v[what][k] for what in ("mean", "std") for k, ch in enumerate("RGB")}
                         for size, v in stats.items()}).T.rename_axis("image size (px)")


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
    from studylib import environment
    from studylib.record import DataPrepRecord, run_id
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


# --- figures -------------------------------------------------------------------------------

def imbalance_plot(ds: Dataset):
    import matplotlib.pyplot as plt
    counts = class_counts(ds)[list(SPLITS)]
    order = counts["train"].sort_values().index
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.28 * len(order) + 1)))
    counts.loc[order].plot.barh(stacked=True, ax=ax, width=0.8)
    ax.set(xlabel="images", ylabel="", title=f"{ds.name}: images per class and split")
    for y, cls in enumerate(order):
        ax.text(counts.loc[cls].sum(), y, f" {counts.loc[cls, 'train']} train", va="center", fontsize=8)
    ax.legend(title="split")
    fig.tight_layout()
    return fig


def size_plot(integrity: Integrity):
    import matplotlib.pyplot as plt
    ok = [f for f in integrity.facts if f.width and f.height]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    if ok:
        w = np.array([f.width for f in ok])
        h = np.array([f.height for f in ok])
        sizes = Counter(zip(w.tolist(), h.tolist()))
        xs, ys = zip(*sizes)
        most = max(sizes.values())
        a.scatter(xs, ys, s=[6 + 600 * n / most for n in sizes.values()], alpha=0.5)
        a.set(xlabel="width (px)", ylabel="height (px)", title="Image sizes (marker area ∝ number of images)")
        b.hist(w / h, bins=40)
        b.set(xlabel="aspect ratio (width / height)", ylabel="images", title="Aspect ratios")
    fig.tight_layout()
    return fig


def _sample_indices(ds: Dataset, per_class: int, seed: int) -> dict[int, list[int]]:
    rng = np.random.default_rng(seed)
    labels = np.asarray(ds.splits["train"].labels)
    out = {}
    for c in range(len(ds.classes)):
        idx = np.flatnonzero(labels == c)
        out[c] = sorted(rng.choice(idx, size=min(per_class, len(idx)), replace=False).tolist()) if len(idx) else []
    return out


def _thumb(img: Image.Image, size: int) -> np.ndarray:
    """The image shrunk to fit size x size, centred on a white tile."""
    img = img.convert("RGB")
    img.thumbnail((size, size))
    tile = np.full((size, size, 3), 255, dtype=np.uint8)
    a = np.asarray(img)
    y, x = (size - a.shape[0]) // 2, (size - a.shape[1]) // 2
    tile[y:y + a.shape[0], x:x + a.shape[1]] = a
    return tile


def _safe_load(items, i, crop: bool = True):
    try:
        if not crop and items.boxes is not None:
            path = items.store.ensure(items.paths[i]) if items.store is not None else items.paths[i]
            return Image.open(path)
        return items.load(i)
    except Exception:
        return None


def sample_grid(ds: Dataset, per_class: int = 6, seed: int = 0, max_classes: int = 30, tile: int = 64):
    """A row of train images per class (up to max_classes rows, picked evenly when there are more), as one mosaic."""
    import matplotlib.pyplot as plt
    if per_class <= 0:
        return None
    picks = _sample_indices(ds, per_class, seed)
    shown = list(range(len(ds.classes)))
    if len(shown) > max_classes:
        shown = np.linspace(0, len(shown) - 1, max_classes).round().astype(int).tolist()
    items = ds.splits["train"]
    gap = 4
    mosaic = np.full((len(shown) * (tile + gap), per_class * (tile + gap), 3), 255, dtype=np.uint8)
    for r, c in enumerate(shown):
        for k, i in enumerate(picks[c]):
            img = _safe_load(items, i)
            if img is not None:
                mosaic[r * (tile + gap):r * (tile + gap) + tile, k * (tile + gap):k * (tile + gap) + tile] = _thumb(img, tile)
    fig, ax = plt.subplots(figsize=(1.1 * per_class + 1.5, 1.1 * len(shown) + 0.6))
    ax.imshow(mosaic)
    ax.set_yticks([r * (tile + gap) + tile / 2 for r in range(len(shown))], [ds.classes[c] for c in shown], fontsize=8)
    ax.set_xticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    more = f" ({len(shown)} of {len(ds.classes)} classes)" if len(shown) < len(ds.classes) else ""
    ax.set_title(f"{ds.name}: train samples per class{more}")
    fig.tight_layout()
    return fig


def crop_pairs(ds: Dataset, n: int = 6, seed: int = 0):
    """Originals with their annotation box drawn, next to the crop training sees (datasets with boxes)."""
    import matplotlib.patches as patches
    import matplotlib.pyplot as plt
    items = ds.splits["train"]
    if items.boxes is None:
        return None
    rng = np.random.default_rng(seed)
    with_box = [i for i, b in enumerate(items.boxes) if b is not None]
    if not with_box:
        return None
    picks = sorted(rng.choice(with_box, size=min(n, len(with_box)), replace=False).tolist())
    fig, axes = plt.subplots(len(picks), 2, figsize=(6, 2.6 * len(picks)), squeeze=False)
    for r, i in enumerate(picks):
        orig, crop = _safe_load(items, i, crop=False), _safe_load(items, i)
        for ax in axes[r]:
            ax.axis("off")
        if orig is not None:
            axes[r][0].imshow(np.asarray(orig.convert("RGB")))
            x0, y0, x1, y1 = items.boxes[i]
            axes[r][0].add_patch(patches.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="yellow", lw=2))
            axes[r][0].set_title(f"original ({ds.classes[items.labels[i]]})", fontsize=8)
        if crop is not None:
            axes[r][1].imshow(np.asarray(crop.convert("RGB")))
            axes[r][1].set_title("crop (what training sees)", fontsize=8)
    fig.tight_layout()
    return fig
