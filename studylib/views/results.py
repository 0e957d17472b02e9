"""The results chapter's tables and figures, from a study's runs table and records (studylib.study.collect).

Each dataset gets two tables with a row per model (and per setting that varies within the study, such
as weight_decay in an ablation): its test top-1 with a 95% interval and its paired difference from the
best model (studylib.uncertainty, on each run's test predictions), and its size and speed, with
mean ± std over seeds where several seeds ran. The scatter figures label each model beside its point,
nudged apart so that no label hides another, with the legend below the panels.
"""
from __future__ import annotations

from collections import Counter

import matplotlib.pyplot as plt
import matplotlib.ticker as ticker
import pandas as pd
import seaborn as sns

from studylib.uncertainty import compare, correct_matrix
from studylib.views.format import number, percent, points
from studylib.views.format import table as format_table

# column in runs.parquet -> (heading, format, scale)
COLUMNS = {
    "params_m": ("params (M)", "{:.2f}", 1),
    "size_mb": ("size (MB)", "{:.1f}", 1),
    "gmacs": ("GMACs", "{:.3f}", 1),
    "balanced_accuracy": ("balanced accuracy (%)", "{:.1f}", 100),
    "train_minutes": ("train minutes", "{:.1f}", 1),
    "images_per_second": ("images/s", "{:.0f}", 1),
}
BEST, WITHIN, BELOW, NO_INTERVAL = "the best", "within noise", "below, beyond noise", "no test predictions recorded"
# train parameters that define a row besides the model, when they vary within a dataset
SETTINGS = ["pretrained", "image_size", "epochs", "batch_size", "lr", "optimizer", "weight_decay", "schedule",
            "label_smoothing", "augment", "flip", "tta", "finetune", "head", "train_limit", "early_stopping", "compile",
            "amp"]


def ok_train(runs: pd.DataFrame) -> pd.DataFrame:
    if runs.empty or "stage" not in runs:
        return runs.iloc[0:0]
    return runs[(runs.stage == "train") & (runs.status == "ok")].copy()


def varying(train: pd.DataFrame) -> list[str]:
    """Settings that differ between the runs of one dataset (besides model and seed)."""
    return [c for c in SETTINGS if c in train and train[c].astype(str).nunique() > 1]


def _mean_std(values: pd.Series, fmt: str, scale: float = 1) -> str:
    values = values.dropna() * scale
    if values.empty:
        return ""
    if len(values) == 1 or values.nunique() == 1:   # one seed, or the same for every seed (size, params): no ± 0
        return fmt.format(values.iloc[0])
    return f"{fmt.format(values.mean())} ± {fmt.format(values.std())}"


def model_groups(runs: pd.DataFrame, dataset: str) -> list[tuple[dict, pd.DataFrame]]:
    """The dataset's successful train runs grouped by model and varying settings: (key, runs) per group."""
    train = ok_train(runs)
    train = train[train.dataset == dataset] if not train.empty else train
    if train.empty:
        return []
    keys = ["model"] + varying(train)
    out = []
    for key, group in train.groupby(keys, sort=False, dropna=False):
        out.append((dict(zip(keys, key if isinstance(key, tuple) else (key,))), group))
    # a key names only the settings in which groups of the same model differ: "smallvgg3 (augment True)"
    differ = {m: [n for n in keys[1:] if len({str(k[n]) for k, _ in out if k["model"] == m}) > 1]
              for m in {k["model"] for k, _ in out}}
    return [({n: v for n, v in key.items() if n == "model" or n in differ[key["model"]]}, group) for key, group in out]


def group_label(key: dict) -> str:
    """A group's name in figures and sentences: the model, then the settings that set it apart."""
    settings = ", ".join(f"{k} {number(v)}" for k, v in key.items() if k != "model")
    return f"{key['model']} ({settings})" if settings else str(key["model"])


def dataset_table(runs: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Size and speed: one row per model (and varying setting), mean ± std over seeds, sorted by mean test top-1."""
    rows = []
    for key, group in model_groups(runs, dataset):
        row = {**key, "_order": group.test_top1.mean()}   # seeds: in the accuracy table beside it
        for col, (heading, fmt, scale) in COLUMNS.items():
            row[heading] = _mean_std(group[col], fmt, scale) if col in group else ""
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    return table.sort_values("_order", ascending=False, kind="stable").drop(columns="_order").reset_index(drop=True)


def _images_key(test: dict):
    """Which test images a run saw: its digest, else (older hand-made records) its label list."""
    return test.get("images_digest") or ("labels", tuple(test.get("labels") or ()))


def accuracy_comparison(runs: pd.DataFrame, records: list[dict], dataset: str) -> tuple[pd.DataFrame, list[str]]:
    """Per model (and varying setting): test top-1 with its 95% interval over seeds and test images, and the
    paired difference from the best with its interval (studylib.uncertainty.compare), most accurate first.

    Intervals use the runs whose records hold test predictions on the dataset's most common test images;
    a group with none keeps its mean test top-1 and no interval. Returns the table (key columns, label,
    run_ids, runs, then compare's columns) and notes on the runs left out."""
    tests = {r["run_id"]: r["test"] for r in records
             if r.get("stage") == "train" and r.get("status", "ok") == "ok" and (r.get("test") or {}).get("predictions")}
    groups = model_groups(runs, dataset)
    seen = Counter(_images_key(tests[rid]) for _, g in groups for rid in g.run_id if rid in tests)
    ref = seen.most_common(1)[0][0] if seen else None
    matrices, meta, left_out = {}, [], 0
    for key, g in groups:
        label = group_label(key)
        used = [tests[rid] for rid in g.run_id if rid in tests and _images_key(tests[rid]) == ref]
        left_out += len(g) - len(used)
        if used:
            matrices[label] = correct_matrix([t["predictions"] for t in used], used[0]["labels"])
        meta.append({**key, "label": label, "run_ids": list(g.run_id), "runs": len(g), "_mean": g.test_top1.mean()})
    if not meta:
        return pd.DataFrame(), []
    meta = pd.DataFrame(meta).set_index("label", drop=False)
    cmp = compare(matrices)
    table = meta.join(cmp, how="left")
    table["top1"] = table["top1"].fillna(table["_mean"])
    table["seeds"] = table["seeds"].fillna(table["runs"]).astype(int)
    table["_has"] = table.label.isin(cmp.index)
    table = table.sort_values(["_has", "top1"], ascending=[False, False], kind="stable")
    notes = []
    if left_out:
        notes.append(f"{left_out} run(s) are left out of the intervals: their records hold no test predictions, "
                     "or they were tested on other images than the rest.")
    return table.drop(columns=["_mean", "_has"]).reset_index(drop=True), notes


def accuracy_summary(dataset: str, comparison: pd.DataFrame, notes: list[str]) -> str:
    """One paragraph: the most accurate model with its interval, and which models are within noise of it."""
    if comparison.empty:
        return f"**{dataset}**: no training run finished."
    best = comparison.iloc[0]
    text = f"**{dataset}**: the most accurate model was **{best.label}**, test top-1 {percent(best.top1)}%"
    if pd.isna(best.top1_low):
        return text + " (its records hold no test predictions, so no interval). " + " ".join(notes)
    text += (f" (95% interval {percent(best.top1_low)}–{percent(best.top1_high)}%, {best.seeds} seed(s) and "
             f"{int(best.images)} test images).")
    within = comparison[comparison.within_noise.eq(True) & ~comparison.best.eq(True)]
    if len(within):
        text += (f" {len(within)} other model(s) are within noise of it ({', '.join(within.label)}): "
                 "these runs cannot rank them apart.")
    elif len(comparison) > 1:
        text += " Every other model is below it beyond noise."
    return " ".join([text, *notes])


def verdict(row) -> str:
    """How a model stands against the best: the best, within noise, or below beyond noise."""
    if pd.isna(row.get("diff_low")):
        return NO_INTERVAL
    return BEST if row["best"] else WITHIN if row["within_noise"] else BELOW


def accuracy_table(comparison: pd.DataFrame) -> pd.DataFrame:
    """The comparison as the book shows it: human headings with units, percentages to one decimal."""
    if comparison.empty:
        return comparison
    keys = [c for c in comparison.columns if c in ["model"] + SETTINGS]
    has = comparison["top1_low"].notna()
    diff_known = comparison["diff_low"].notna() & ~comparison["best"].fillna(False).astype(bool)
    out = comparison[keys].copy()
    out["seeds"] = comparison["seeds"].astype(int)
    out["test top-1 (%)"] = comparison["top1"].map(percent)
    out["95% interval (%)"] = [f"{percent(lo)} – {percent(hi)}" if h else "—"
                               for lo, hi, h in zip(comparison.top1_low, comparison.top1_high, has)]
    out["difference from the best (points)"] = [points(d) if k else "—" for d, k in zip(comparison["diff"], diff_known)]
    out["95% interval (points)"] = [f"{points(lo)} to {points(hi)}" if k else "—"
                                    for lo, hi, k in zip(comparison.diff_low, comparison.diff_high, diff_known)]
    out["compared with the best"] = comparison.apply(verdict, axis=1)
    return out


def seed_spread(runs: pd.DataFrame) -> pd.DataFrame:
    """Models run with several seeds: the spread (max - min and std) of their test top-1."""
    train = ok_train(runs)
    rows = []
    for (dataset, model), g in train.groupby(["dataset", "model"]):
        if g.seed.nunique() > 1 and len(varying(g)) == 0:
            rows.append({"dataset": dataset, "model": model, "seeds": g.seed.nunique(),
                         "range": g.test_top1.max() - g.test_top1.min(), "std": g.test_top1.std()})
    return pd.DataFrame(rows)


def _axes(n: int, width: float = 5.5, height: float = 4.0):
    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False)
    return fig, list(axes[0])


def val_accuracy_per_epoch(epochs: pd.DataFrame, runs: pd.DataFrame):
    """Study 002's figure: val top-1 per epoch, a line per model (mean over seeds), one panel per dataset."""
    ok = set(ok_train(runs).run_id)
    e = epochs[epochs.run_id.isin(ok)] if not epochs.empty else epochs
    datasets = sorted(e.dataset.unique()) if not e.empty else []
    fig, axes = _axes(max(1, len(datasets)))
    for ax, dataset in zip(axes, datasets):
        d = e[e.dataset == dataset]
        sns.lineplot(data=d, x="epoch", y="val_top1", hue="model", marker="o", errorbar=("pi", 100), ax=ax)
        ax.set(title=dataset, xlabel="epoch", ylabel="validation top-1")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if ax.get_legend():
            ax.get_legend().remove()
    fig.suptitle("Validation accuracy per epoch (band: min-max over seeds)")
    legend_below(fig, axes)
    return fig


def _scatter(runs: pd.DataFrame, x: str, xlabel: str, title: str, logx: bool = False):
    train = ok_train(runs)
    datasets = sorted(train.dataset.unique())
    fig, axes = _axes(max(1, len(datasets)))
    for ax, dataset in zip(axes, datasets):
        d = train[train.dataset == dataset]
        g = d.groupby("model").agg(x=(x, "mean"), y=("test_top1", "mean"), ylo=("test_top1", "min"),
                                   yhi=("test_top1", "max"), n=("seed", "count")).reset_index()
        ax.scatter(d[x], d.test_top1, s=14, alpha=0.5, color="grey", label="one run")
        ax.errorbar(g.x, g.y, yerr=[g.y - g.ylo, g.yhi - g.y], fmt="o", capsize=3, label="mean (bar: min-max over seeds)")
        if logx and d[x].max() > 10 * d[x].min():
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)))
            ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set(title=dataset, xlabel=xlabel, ylabel="test top-1")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    legend_below(fig, axes)
    for ax, dataset in zip(axes, datasets):
        g = train[train.dataset == dataset].groupby("model").agg(x=(x, "mean"), y=("test_top1", "mean")).reset_index()
        place_labels(ax, g.x.tolist(), g.y.tolist(), g.model.tolist())
    return fig


def legend_below(fig, axes: list) -> None:
    """One legend for the figure (every panel's entries, once each), below its panels where it hides no
    point, then the layout fixed."""
    entries = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    ncol = min(len(entries), 4) or 1
    rows = -(-len(entries) // ncol)
    if entries:
        fig.legend(list(entries.values()), list(entries), loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    height = fig.get_figheight()
    fig.tight_layout(rect=(0, min(0.5, (0.25 * rows + 0.1) / height) if entries else 0, 1, 1))


def _overlap(a, b, pad: float) -> float:
    """Vertical overlap in pixels of two boxes that also overlap horizontally (0 when they do not touch)."""
    if a.x1 + pad <= b.x0 or b.x1 + pad <= a.x0:
        return 0.0
    return max(0.0, min(a.y1, b.y1) + pad - max(a.y0, b.y0))


def place_labels(ax, xs: list, ys: list, texts: list, fontsize: float = 8, rounds: int = 200) -> list:
    """Label each point beside it, then nudge labels apart until none overlaps another or leaves the axes:
    a label that would cross the right edge goes left of its point, overlapping labels move apart
    vertically, and a label moved away from its point gets a thin line to it. Call it after the layout."""
    fig = ax.figure
    fig.canvas.draw()                                   # final limits, and a renderer that measures text
    renderer = fig.canvas.get_renderer()
    px = fig.dpi / 72                                   # pixels per point: offsets are in points
    anns = [ax.annotate(str(t), (x, y), xytext=(5, 3), textcoords="offset points", fontsize=fontsize,
                        ha="left", va="bottom", annotation_clip=False)
            for x, y, t in zip(xs, ys, texts)]
    frame = ax.get_window_extent(renderer)
    for a in anns:
        if a.get_window_extent(renderer).x1 > frame.x1:
            a.set_ha("right")
            a.xyann = (-5, 3)
    for _ in range(rounds):
        boxes = [a.get_window_extent(renderer) for a in anns]
        shift = [0.0] * len(anns)
        for i in range(len(anns)):
            for j in range(i + 1, len(anns)):
                dy = _overlap(boxes[i], boxes[j], 2.0)
                if dy:
                    up, down = (i, j) if (boxes[i].y0, -i) >= (boxes[j].y0, -j) else (j, i)
                    shift[up] += dy / 2
                    shift[down] -= dy / 2
        for k, b in enumerate(boxes):
            shift[k] += max(0.0, frame.y0 - (b.y0 + shift[k])) - max(0.0, (b.y1 + shift[k]) - frame.y1)
        if not any(abs(v) > 0.1 for v in shift):
            break
        for a, v in zip(anns, shift):
            a.xyann = (a.xyann[0], a.xyann[1] + v / px)
    for i, a in enumerate(anns):
        if abs(a.xyann[1] - 3) > 6:   # moved away from its point: the same label, with a line to the point
            a.remove()
            anns[i] = ax.annotate(a.get_text(), a.xy, xytext=a.xyann, textcoords="offset points", fontsize=fontsize,
                                  ha=a.get_ha(), va="bottom", annotation_clip=False,
                                  arrowprops={"arrowstyle": "-", "color": "0.5", "lw": 0.6, "shrinkA": 0, "shrinkB": 3,
                                              "relpos": (0, 0.5) if a.get_ha() == "left" else (1, 0.5)})
    return anns


def accuracy_vs_time(runs: pd.DataFrame):
    return _scatter(runs, "train_minutes", "training time (minutes)", "Test accuracy vs training time")


def accuracy_vs_params(runs: pd.DataFrame):
    return _scatter(runs, "params_m", "parameters (millions)", "Test accuracy vs model size", logx=True)


def styled(table: pd.DataFrame, caption: str = ""):
    """A table as the book shows it: no index, the theme's table style, text escaped."""
    style = format_table(table).style.hide(axis="index").format(escape="html")   # 6, not 6.000
    style = style.set_table_attributes('class="dataframe results-table"')
    return style.set_caption(caption) if caption else style


def failures(runs: pd.DataFrame) -> pd.DataFrame:
    if runs.empty:
        return runs
    cols = [c for c in ("stage", "model", "dataset", "error") if c in runs]   # the run's page is under Failed runs
    return runs[runs.status != "ok"][cols].reset_index(drop=True)
