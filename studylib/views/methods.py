"""Tables of the methods page (methods.ipynb): the machines and software of a study's runs, and where
the notebooks' time went. Text with human labels and units (studylib.views.format)."""
from __future__ import annotations

import pandas as pd

from studylib.views.format import number, table

# What the methods page shows of each train run's machine and software, with its label there.
SETUP_FIELDS = {"cpu_model": "CPU model", "cpu_count": "CPUs", "torch_threads": "PyTorch threads", "gpu_name": "GPU",
                "device": "device", "python": "Python", "torch": "PyTorch", "torchvision": "torchvision", "timm": "timm",
                "studylib": "studylib", "git_sha": "git commit"}
OVERHEAD_COLUMNS = {"stage": "stage", "notebooks": "notebooks", "wall_seconds": "wall (s)",
                    "startup_seconds": "start-up (s)", "setup_seconds": "setup (s)", "work_seconds": "work (s)",
                    "after_seconds": "after (s)", "other_seconds": "other (s)",
                    "median_startup_seconds": "median start-up (s)", "work_share": "work share"}


def setups_table(records: list[dict]) -> pd.DataFrame:
    """The distinct machines and software the successful train runs ran with: one column per setup
    (with how many runs used it), one row per field, human labels. Empty when no run succeeded."""
    rows = []
    for r in records:
        if r.get("status", "ok") != "ok":
            continue
        hw, versions = r.get("hardware") or {}, r.get("versions") or {}
        row = {**{k: hw.get(k) for k in ("cpu_model", "cpu_count", "torch_threads", "gpu_name")}, "device": r.get("device"),
               **{k: versions.get(k) for k in ("python", "torch", "torchvision", "timm", "studylib", "git_sha")}}
        row["gpu_name"] = row["gpu_name"] or "none"
        row["git_sha"] = str(row["git_sha"])[:12] if row["git_sha"] else None   # git's short form: two setups fit the page
        rows.append({SETUP_FIELDS[k]: number(v, missing="unknown") for k, v in row.items()})
    if not rows:
        return pd.DataFrame()
    counts = pd.DataFrame(rows).value_counts(dropna=False, sort=True)
    setups = pd.DataFrame([dict(zip(counts.index.names, key)) | {"train runs": number(n)} for key, n in counts.items()])
    out = setups.T
    out.columns = [f"setup {i + 1}" for i in range(out.shape[1])] if len(out.columns) > 1 else ["value"]
    return out.rename_axis(None)


def overhead_view(by_stage: pd.DataFrame) -> pd.DataFrame:
    """studylib.study.overhead's per-stage table with human column names; the work share as a percentage."""
    view = by_stage[[c for c in OVERHEAD_COLUMNS if c in by_stage]].rename(columns=OVERHEAD_COLUMNS)
    share = view.pop("work share") if "work share" in view else None
    out = table(view.set_index("stage"), 3)
    if share is not None:
        out["work share"] = share.map(lambda x: number(100 * x, decimals=0) + "%").to_numpy()
    return out
