"""Figures and tables of train.ipynb: a run's record in, figures or frames out. Tables come back as text
with human column names and units (studylib.views.format)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from studylib.views.format import number, table

EPOCH_COLUMNS = {"train_loss": "train loss", "val_loss": "val loss", "val_top1": "val top-1",
                 "seconds": "training (s)", "val_seconds": "validation (s)", "images_per_second": "images/s",
                 "data_wait_seconds": "waiting for data (s)"}


def params_table(record: dict) -> pd.DataFrame:
    return pd.DataFrame([(k, number(v)) for k, v in sorted(record["params"].items())],
                        columns=["parameter", "value"]).set_index("parameter")


def model_table(record: dict) -> pd.DataFrame:
    hw = record["hardware"]
    rows = {
        "model": record["model"], "pretrained": record["pretrained"], "classes": record["num_classes"],
        "parameters (millions)": record["param_count"] / 1e6, "trainable (millions)": record["trainable_params"] / 1e6,
        "size (MB)": record["size_mb"], f"GMACs per image at {record['image_size']} px": record["gmacs"],
        "device": record["device"], "CPU": hw["cpu_model"], "PyTorch threads": hw["torch_threads"],
        "GPU": hw["gpu_name"] or "none",
    }
    return pd.DataFrame({"value": {k: number(v) for k, v in rows.items()}})


def history_frame(record: dict) -> pd.DataFrame:
    return pd.DataFrame(record["history"]).set_index("epoch")


def epochs_table(record: dict) -> pd.DataFrame:
    """Per epoch: losses, val top-1, seconds of training and validation, images per second, data wait."""
    h = history_frame(record)[list(EPOCH_COLUMNS)].rename(columns=EPOCH_COLUMNS)
    return table(h, {"train loss": 3, "val loss": 3, "val top-1": 3, "training (s)": 3, "validation (s)": 2,
                     "images/s": 3, "waiting for data (s)": 2})


def learning_curves(record: dict):
    h = history_frame(record)
    fig, (a, b) = plt.subplots(1, 2, figsize=(8.5, 3.4))
    a.plot(h.index, h.train_loss, "o-", label="train")
    a.plot(h.index, h.val_loss, "o-", label="val")
    a.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    b.plot(h.index, h.train_top1, "o-", label="train")
    b.plot(h.index, h.val_top1, "o-", label="val")
    b.set(xlabel="epoch", ylabel="top-1 accuracy", title="Accuracy", ylim=(0, 1))
    for ax in (a, b):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(f"{record['model']} on {record['dataset']}")
    fig.tight_layout()
    return fig


def confusion_heatmap(record: dict):
    cm = np.array(record["test"]["confusion_matrix"])
    classes = record["classes"]
    size = max(5, 0.5 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    # matplotlib directly: importing seaborn for this one heatmap cost each train notebook about a second
    image = ax.imshow(cm, cmap="Blues")
    fig.colorbar(image, ax=ax)
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, classes, rotation=90)
    ax.set_yticks(ticks, classes)
    if len(classes) <= 20:
        dark = cm > cm.max() / 2
        for (i, j), n in np.ndenumerate(cm):
            ax.text(j, i, str(n), ha="center", va="center", color="white" if dark[i, j] else "black", fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title="Test confusion matrix")
    fig.tight_layout()
    return fig


def per_class_table(record: dict) -> pd.DataFrame:
    frame = pd.DataFrame(record["test"]["per_class"]).set_index("class")
    frame = frame.rename(columns={"f1": "F1", "support": "test images"})
    return table(frame, {c: (3 if c != "test images" else 0) for c in frame.columns})


def test_summary(record: dict) -> pd.DataFrame:
    t = record["test"]
    rows = {"test top-1": (t["top1"], 3), "test top-5": (t["top5"], 3), "balanced accuracy": (t["balanced_accuracy"], 3),
            "macro F1": (t["macro_f1"], 3), "training and validation (s)": (record["train_seconds"], 1),
            "first step (s)": (record["first_step_seconds"], 2), "test pass (s)": (record["eval_seconds"], 2),
            "peak memory (MB)": (record["peak_memory_mb"], 0)}
    return pd.DataFrame({"value": {k: number(v, decimals=d) for k, (v, d) in rows.items()}})


def misclassified_grid(images: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor, classes: list[str], n: int = 12):
    """Up to n wrongly predicted test images, with true and predicted labels."""
    pred = logits.argmax(1)
    wrong = (pred != labels).nonzero().flatten()[:n].tolist()
    cols = 6
    rows = max(1, -(-len(wrong) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.8, rows * 2.1))
    for ax in np.atleast_1d(axes).flat:
        ax.axis("off")
    for ax, i in zip(np.atleast_1d(axes).flat, wrong):
        ax.imshow(images[i].permute(1, 2, 0).numpy())
        ax.set_title(f"true {classes[labels[i]]}\npred {classes[pred[i]]}", fontsize=8)
    fig.suptitle("Misclassified test images")
    fig.tight_layout()
    return fig
