"""Figures and tables of data_prep.ipynb: problems, class balance, image sizes, samples, crops, the cache.
Tables come back as text with human column names and units (studylib.views.format)."""
from __future__ import annotations

from collections import Counter

import matplotlib.patches as patches
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from PIL import Image

from studylib.data.integrity import PROBLEM_KINDS, Integrity
from studylib.data.registry import Dataset, Items
from studylib.data.splits import SPLITS
from studylib.stages.data_prep import class_counts
from studylib.views.format import number, table

CACHE_COLUMNS = {"images": "images", "skipped": "skipped", "seconds": "decoding (s)", "hit": "already cached",
                 "mb": "size (MB)"}
STORAGE_FIELDS = {"uri": "root", "mode": "storage mode", "local": "local copy", "files": "files", "bytes": "bytes",
                  "list_seconds": "listing (s)", "prefetch_seconds": "copying first (s)", "fetched_files": "files fetched",
                  "fetched_bytes": "bytes fetched", "fetch_seconds": "fetching on first use (s)",
                  "first_pass_seconds": "first full pass (s)"}


# --- tables --------------------------------------------------------------------------------

def problem_summary(integrity: Integrity) -> pd.DataFrame:
    """Every kind of problem looked for, with how many were found (zeros included) and what it means."""
    counts = integrity.counts()
    return pd.DataFrame([{"problem": k, "found": counts.get(k, 0), "effect": v} for k, v in PROBLEM_KINDS.items()]
                        ).set_index("problem")


def problem_table(integrity: Integrity, limit_per_kind: int | None = None) -> pd.DataFrame:
    """The problems themselves, at most `limit_per_kind` of each kind."""
    rows = integrity.problems
    if limit_per_kind is not None:
        seen: Counter = Counter()
        rows = [p for p in rows if (seen.update([p["kind"]]) or seen[p["kind"]] <= limit_per_kind)]
    frame = pd.DataFrame(rows, columns=["kind", "split", "path", "detail", "effect"])
    # a zero-width space after each slash lets a long path wrap in the book's column
    return frame.assign(path=frame["path"].astype(str).str.replace("/", "/\u200b", regex=False))


def params_view(run_params: dict) -> pd.DataFrame:
    """The run's parameters, one per row."""
    return pd.DataFrame({"value": {k: number(v) if v not in ("", {}, []) else "—" for k, v in run_params.items()}}
                        ).rename_axis("parameter")


def splits_text(splits: dict) -> str:
    """Where the splits come from, as a sentence (Markdown)."""
    where = (f" Manifest: `{splits['manifest']}` ({'written now' if splits['written'] else 'read from an earlier run'})."
             if splits.get("manifest") else "")
    return f"Splits: {splits['source']}.{where}"


def sizes_table(sizes: dict) -> pd.DataFrame:
    """Width, height (pixels) and aspect ratio of the files: minimum, quartiles, maximum."""
    names = {"width": "width (px)", "height": "height (px)", "aspect_w_over_h": "aspect ratio (width / height)"}
    frame = pd.DataFrame({names[k]: sizes[k] for k in names}).T.rename(
        columns={"min": "smallest", "p25": "25th percentile", "median": "median", "p75": "75th percentile", "max": "largest"})
    return pd.DataFrame({c: [number(v, 3) for v in frame[c]] for c in frame}, index=frame.index)


def cache_table(rows: list[dict]) -> pd.DataFrame:
    """The tensor cache per image size and split: images, skipped files, decoding seconds, hit, size."""
    frame = pd.DataFrame(rows).set_index(["image_size", "split"]).rename_axis(["image size (px)", "split"])
    return table(frame[list(CACHE_COLUMNS)].rename(columns=CACHE_COLUMNS), {"decoding (s)": 2, "size (MB)": 3})


def stats_table(stats: dict) -> pd.DataFrame:
    """Channel mean and std of the train split per image size: rows size, columns mean/std x R/G/B."""
    frame = pd.DataFrame({size: {f"{what} {ch}": v[what][k] for what in ("mean", "std") for k, ch in enumerate("RGB")}
                          for size, v in stats.items()}).T.rename_axis("image size (px)")
    return table(frame, 3)


def storage_table(report: dict) -> pd.DataFrame:
    """What reading from object storage took: the listing, the copy or the fetches, the first pass."""
    return pd.DataFrame({"value": {STORAGE_FIELDS.get(k, k): number(v) for k, v in report.items() if v is not None}})


# --- figures -------------------------------------------------------------------------------

def imbalance_plot(ds: Dataset):
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
    ok = [f for f in integrity.facts if f.width and f.height]
    fig, (a, b) = plt.subplots(1, 2, figsize=(8.5, 3.4))
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


def _safe_load(items: Items, i: int, crop: bool = True) -> Image.Image | None:
    """Item i as an image, or None when it cannot be read (integrity lists those)."""
    try:
        return items.load(i, crop=crop)
    except Exception:
        return None


def sample_grid(ds: Dataset, per_class: int = 6, seed: int = 0, max_classes: int = 30, tile: int = 64):
    """A row of train images per class (up to max_classes rows, picked evenly when there are more), as one mosaic."""
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
