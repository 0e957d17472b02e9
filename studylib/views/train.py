"""Figures and tables the notebooks show. Each takes a record (or records) and returns a figure or frame."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch


def params_table(record: dict) -> pd.DataFrame:
    return pd.DataFrame(sorted(record["params"].items()), columns=["parameter", "value"]).set_index("parameter")


def model_table(record: dict) -> pd.DataFrame:
    hw = record["hardware"]
    rows = {
        "model": record["model"], "pretrained": record["pretrained"], "classes": record["num_classes"],
        "parameters (M)": record["param_count"] / 1e6, "trainable (M)": record["trainable_params"] / 1e6,
        "size (MB)": record["size_mb"], f"GMACs / image at {record['image_size']} px": record["gmacs"],
        "device": record["device"], "CPU": hw["cpu_model"], "torch threads": hw["torch_threads"],
        "GPU": hw["gpu_name"] or "none",
    }
    return pd.DataFrame({"value": rows})


def history_frame(record: dict) -> pd.DataFrame:
    return pd.DataFrame(record["history"]).set_index("epoch")


def learning_curves(record: dict):
    h = history_frame(record)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
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
    return pd.DataFrame(record["test"]["per_class"]).set_index("class").round(3)


def test_summary(record: dict) -> pd.DataFrame:
    t = record["test"]
    return pd.DataFrame({"value": {
        "test top-1": t["top1"], "test top-5": t["top5"], "balanced accuracy": t["balanced_accuracy"],
        "macro F1": t["macro_f1"], "train seconds": record["train_seconds"],
        "first step seconds": record["first_step_seconds"], "test eval seconds": record["eval_seconds"],
        "peak memory (MB)": record["peak_memory_mb"],
    }}).round(4)


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
