"""Tables, figures and the answer of transfer.ipynb, "Does pretraining help?": per model, training from scratch
beside fine-tuning the head alone and fine-tuning every layer from another run's weights.

A run's mode comes from its parameters (`pretrained`, `finetune`). The chapter covers every dataset and model
that has a fine-tuned run; the from-scratch runs of the same dataset and model are the baseline. Every number
comes from the train records: test top-1 and its interval over seeds and test images, the gain over from-scratch
with a paired interval on the same test images (studylib.uncertainty), and the minutes each run took to reach
a validation target (its record's time_to_target).
"""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from studylib.uncertainty import correct_matrix, paired_difference, top1_interval
from studylib.views.format import doc_link, number, percent, points

SCRATCH, HEAD, ALL = "from scratch", "head only", "all layers"
MODES = (SCRATCH, HEAD, ALL)
# how a sentence names a mode that starts from other weights
MODE_PHRASE = {HEAD: "Training the head alone on the frozen backbone", ALL: "Fine-tuning every layer"}


def mode(params: dict) -> str:
    """from scratch (no pretrained weights), head only (frozen backbone) or all layers."""
    if params.get("pretrained") is False:
        return SCRATCH
    return HEAD if params.get("finetune") == "head" else ALL


def source_dataset(record: dict) -> str | None:
    """Where a run's starting weights were trained: the source run's dataset, ImageNet, or None from scratch."""
    pretrained = record["params"].get("pretrained")
    if pretrained is False:
        return None
    if pretrained is True:
        return "ImageNet"
    return record.get("source_dataset") or "another run"


def finished(records: list[dict]) -> list[dict]:
    """The train records that reached their test evaluation, each with its mode, of the datasets and models
    that have a fine-tuned run (their from-scratch runs are the baseline)."""
    done = [{**r, "mode": mode(r["params"])} for r in records
            if r.get("status", "ok") == "ok" and r.get("test") and r.get("history")]
    tuned = {(r["dataset"], r["model"]) for r in done if r["mode"] != SCRATCH}
    return [r for r in done if (r["dataset"], r["model"]) in tuned]


def _correct(runs: list[dict]) -> np.ndarray | None:
    """Seeds x test images (1 where right), or None when a run kept no predictions."""
    if not runs or not all(r["test"].get("predictions") for r in runs):
        return None
    return correct_matrix([r["test"]["predictions"] for r in runs], runs[0]["test"]["labels"])


def val_target(runs: list[dict]) -> str | None:
    """The validation target the group's times are read at: the highest target that every from-scratch run
    reached (how much sooner does pretraining get there?); without one, the lowest target."""
    targets = sorted({t for r in runs for t in (r.get("time_to_target") or {})}, key=float)
    if not targets:
        return None
    base = [r for r in runs if r["mode"] == SCRATCH] or runs
    reached = [t for t in targets if all((r.get("time_to_target") or {}).get(t) is not None for r in base)]
    return reached[-1] if reached else targets[0]


def mode_rows(records: list[dict]) -> pd.DataFrame:
    """One row per dataset, model and mode (in MODES' order): seeds, test top-1 mean, std and 95% interval,
    the gain over from-scratch and its paired 95% interval, the validation target, the mean minutes to reach it
    (over the seeds that did) and how many did, the mean training minutes, and the source dataset."""
    rows = []
    for dataset, model in dict.fromkeys((r["dataset"], r["model"]) for r in records):
        group = [r for r in records if r["dataset"] == dataset and r["model"] == model]
        target = val_target(group)
        scratch = _correct([r for r in group if r["mode"] == SCRATCH])
        for name in MODES:
            runs = [r for r in group if r["mode"] == name]
            if not runs:
                continue
            test = np.array([r["test"]["top1"] for r in runs])
            correct = _correct(runs)
            iv = top1_interval(correct) if correct is not None else None
            gain = None
            if name != SCRATCH and correct is not None and scratch is not None and scratch.shape[1] == correct.shape[1]:
                gain = paired_difference(correct, scratch)
            times = [(r.get("time_to_target") or {}).get(target) for r in runs] if target else []
            reached = [t for t in times if t is not None]
            rows.append({
                "dataset": dataset, "model": model, "mode": name, "seeds": len(runs),
                "source": ", ".join(sorted({source_dataset(r) for r in runs} - {None})),
                "test": test.mean(), "std": test.std(ddof=1) if len(runs) > 1 else math.nan,
                "low": iv.low if iv else math.nan, "high": iv.high if iv else math.nan,
                "gain": gain.estimate if gain else math.nan, "gain_low": gain.low if gain else math.nan,
                "gain_high": gain.high if gain else math.nan,
                "target": float(target) if target else math.nan, "reached": len(reached),
                "minutes_to_target": np.mean(reached) / 60 if reached else math.nan,
                "minutes": np.mean([r["train_seconds"] for r in runs]) / 60})
    return pd.DataFrame(rows)


def _time(row) -> str:
    if row["reached"] == 0:
        return "not reached"
    text = number(row["minutes_to_target"], decimals=1)
    return text if row["reached"] == row["seeds"] else f"{text} ({row['reached']} of {row['seeds']} seeds)"


def mode_table(rows: pd.DataFrame) -> pd.DataFrame:
    """What a reader sees of accuracy: per model and mode, where the weights came from, test top-1 and its
    interval, the gain over from-scratch and its interval; percent to one decimal."""
    return pd.DataFrame({
        "model": rows["model"],
        "mode": rows["mode"],
        "weights from": [s or "—" for s in rows["source"]],
        "seeds": rows["seeds"].astype(int).astype(str),
        "test top-1 (%, mean ± std)": [f"{percent(m)} ± {percent(s)}" if not math.isnan(s) else percent(m)
                                      for m, s in zip(rows["test"], rows["std"])],
        "95% interval (%)": [f"{percent(lo)} to {percent(hi)}" if not math.isnan(lo) else "—"
                             for lo, hi in zip(rows["low"], rows["high"])],
        "gain over from scratch (points)": [points(g) if not math.isnan(g) else "—" for g in rows["gain"]],
        "gain, 95% interval (points)": [f"{points(lo)} to {points(hi)}" if not math.isnan(lo) else "—"
                                        for lo, hi in zip(rows["gain_low"], rows["gain_high"])],
    })


def time_table(rows: pd.DataFrame) -> pd.DataFrame:
    """What a reader sees of speed: per model and mode, the validation target, the minutes to reach it (mean
    over the seeds that did, and how many did when not all), and the whole training time; to one decimal."""
    return pd.DataFrame({
        "model": rows["model"],
        "mode": rows["mode"],
        "validation target (top-1, %)": [percent(t, 0) for t in rows["target"]],
        "time to target (min)": [_time(r) for _, r in rows.iterrows()],
        "training time (min)": [number(v, decimals=1) for v in rows["minutes"]],
    })


def _verdict(row) -> str:
    if row["gain_low"] > 0:
        return "beats"
    if row["gain_high"] < 0:
        return "loses to"
    return "is within noise of"


def _gain(row) -> str:
    return f"{points(row['gain'])} points (95% interval {points(row['gain_low'])} to {points(row['gain_high'])})"


def answer(rows: pd.DataFrame) -> list[str]:
    """The question answered from the numbers: per dataset and fine-tuning mode, one sentence saying for each
    model whether it beats training from scratch (the gain's interval above 0), loses to it (below 0) or is
    within noise of it, with the gain and its interval."""
    out = []
    compared = rows[~rows["gain"].isna()] if not rows.empty else rows
    for dataset in dict.fromkeys(compared["dataset"]) if not compared.empty else []:
        for name in (ALL, HEAD):
            part = compared[(compared["dataset"] == dataset) & (compared["mode"] == name)]
            if part.empty:
                continue
            source = ", ".join(dict.fromkeys(part["source"]))
            head = f"On {dataset}, {MODE_PHRASE[name][0].lower()}{MODE_PHRASE[name][1:]} from {source}"
            verdicts = [_verdict(r) for _, r in part.iterrows()]
            if len(part) == 1:
                r = part.iloc[0]
                out.append(f"{head} {verdicts[0]} training from scratch for {r['model']}: {_gain(r)}.")
            elif len(set(verdicts)) == 1:
                who = "both models" if len(part) == 2 else f"all {len(part)} models"
                gains = "; ".join(f"{r['model']} {_gain(r)}" for _, r in part.iterrows())
                out.append(f"{head} {verdicts[0]} training from scratch for {who}: {gains}.")
            else:
                said = [f"{v} it for {r['model']} ({_gain(r)})" for v, (_, r) in zip(verdicts, part.iterrows())]
                said[0] = said[0].replace(" it for", " training from scratch for", 1)
                out.append(f"{head} {', '.join(said[:-1])} and {said[-1]}.")
    return out


def curves(records: list[dict], dataset: str, model: str):
    """Validation top-1 per epoch of the three modes for one model (mean over seeds, the band from the lowest
    to the highest seed); None when the model has no run on the dataset."""
    runs = [r for r in records if r["dataset"] == dataset and r["model"] == model]
    if not runs:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name in MODES:
        group = [r for r in runs if r["mode"] == name]
        if not group:
            continue
        n = min(len(r["history"]) for r in group)
        epochs = np.arange(1, n + 1)
        ys = np.array([[h["val_top1"] for h in r["history"][:n]] for r in group]) * 100
        line, = ax.plot(epochs, ys.mean(0), marker="o", label=f"{name} ({len(group)} seeds)")
        if len(group) > 1:
            ax.fill_between(epochs, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.15)
        ax.set_xticks(epochs)
    ax.set_title(f"{model} on {dataset}", fontsize=10)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def source_links(records: list[dict], study_records: list[dict]) -> list[str]:
    """One Markdown line per source run: its model, id (linked to its page when it is a run of this study),
    dataset and test top-1, then the fine-tuned runs that started from it, by mode and seed (linked)."""
    by_id = {r["run_id"]: r for r in study_records if r.get("stage", "train") == "train"}
    tuned = [r for r in records if r["mode"] != SCRATCH and isinstance(r["params"].get("pretrained"), str)]
    out = []
    for src in dict.fromkeys(r.get("source_run_id") or r["params"]["pretrained"] for r in tuned):
        children = [r for r in tuned if (r.get("source_run_id") or r["params"]["pretrained"]) == src]
        source = by_id.get(src)
        dataset = children[0].get("source_dataset") or (source or {}).get("dataset") or "?"
        facts = []
        if source and source.get("test"):
            facts.append(f"test top-1 {percent(source['test']['top1'])}% on {dataset}")
        if source and source.get("train_seconds"):
            facts.append(f"{number(source['train_seconds'] / 60, decimals=1)} minutes of training")
        modes = []
        for name in (HEAD, ALL):
            runs = sorted((r for r in children if r["mode"] == name), key=lambda r: r["params"]["seed"])
            if runs:
                modes.append(f"{name}: " + ", ".join(doc_link(f"seed {r['params']['seed']}", r) for r in runs))
        out.append(f"**{children[0]['model']}** pretrained on {dataset} in {doc_link(src, source)}"
                   + (f" ({', '.join(facts)})" if facts else "") + f" → {'; '.join(modes)}")
    return out
