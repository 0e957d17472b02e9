"""The results chapter's tables and figures, from a study's runs table (studylib.study.collect).

Each dataset gets one table: a row per model (and per setting that varies within the study, such
as weight_decay in an ablation), with mean ± std over seeds where several seeds ran.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import matplotlib.ticker as ticker
import pandas as pd
import seaborn as sns

# column in runs.parquet -> (heading, format)
COLUMNS = {
    "params_m": ("params (M)", "{:.2f}"),
    "size_mb": ("size (MB)", "{:.1f}"),
    "gmacs": ("GMACs", "{:.3f}"),
    "test_top1": ("test top-1", "{:.3f}"),
    "balanced_accuracy": ("balanced accuracy", "{:.3f}"),
    "train_minutes": ("train minutes", "{:.2f}"),
    "images_per_second": ("images/s", "{:.0f}"),
}
# train parameters that define a row besides the model, when they vary within a dataset
SETTINGS = ["pretrained", "image_size", "epochs", "batch_size", "lr", "optimizer", "weight_decay", "schedule",
            "label_smoothing", "augment", "finetune", "head", "train_limit", "early_stopping", "compile", "amp"]


def ok_train(runs: pd.DataFrame) -> pd.DataFrame:
    if runs.empty or "stage" not in runs:
        return runs.iloc[0:0]
    return runs[(runs.stage == "train") & (runs.status == "ok")].copy()


def varying(train: pd.DataFrame) -> list[str]:
    """Settings that differ between the runs of one dataset (besides model and seed)."""
    return [c for c in SETTINGS if c in train and train[c].astype(str).nunique() > 1]


def _mean_std(values: pd.Series, fmt: str) -> str:
    values = values.dropna()
    if values.empty:
        return ""
    if len(values) == 1:
        return fmt.format(values.iloc[0])
    return f"{fmt.format(values.mean())} ± {fmt.format(values.std())}"


def dataset_table(runs: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """One row per model (and varying setting): mean ± std over seeds, sorted by mean test top-1."""
    train = ok_train(runs)
    train = train[train.dataset == dataset]
    keys = ["model"] + varying(train)
    rows = []
    for key, group in train.groupby(keys, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(keys, key))
        row["seeds"] = len(group)
        row["_order"] = group.test_top1.mean()
        for col, (heading, fmt) in COLUMNS.items():
            row[heading] = _mean_std(group[col], fmt) if col in group else ""
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    return table.sort_values("_order", ascending=False).drop(columns="_order").reset_index(drop=True)


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
        ax.legend(fontsize=8)
    fig.suptitle("Validation accuracy per epoch (band: min-max over seeds)")
    fig.tight_layout()
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
        for _, row in g.iterrows():
            ax.annotate(row.model, (row.x, row.y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        if logx and d[x].max() > 10 * d[x].min():
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set(title=dataset, xlabel=xlabel, ylabel="test top-1")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def accuracy_vs_time(runs: pd.DataFrame):
    return _scatter(runs, "train_minutes", "training time (minutes)", "Test accuracy vs training time")


def accuracy_vs_params(runs: pd.DataFrame):
    return _scatter(runs, "params_m", "parameters (millions)", "Test accuracy vs model size", logx=True)


def styled(table: pd.DataFrame, caption: str = ""):
    """A table as the book shows it: no index, the theme's table style, text escaped."""
    style = table.style.hide(axis="index").format(escape="html", precision=3)
    style = style.set_table_attributes('class="dataframe results-table"')
    return style.set_caption(caption) if caption else style


def failures(runs: pd.DataFrame) -> pd.DataFrame:
    if runs.empty:
        return runs
    cols = [c for c in ("stage", "run_id", "model", "dataset", "error", "notebook") if c in runs]
    return runs[runs.status != "ok"][cols].reset_index(drop=True)
