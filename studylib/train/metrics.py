"""Classification metrics for the test split, from logits and labels.

Everything is read off one confusion matrix, with scikit-learn's definitions (the tests check each
number against scikit-learn); scikit-learn itself is not imported here because its import takes
about 2.5 s of every train notebook's start-up on a 2-core CPU. The report also keeps each test
image's predicted and true class, so that runs on the same test images can be compared image by image.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return (top == labels[:, None]).any(dim=1).float().mean().item()


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows: true class, columns: predicted class (scikit-learn's layout)."""
    return np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def classification_report(logits: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict:
    """top-1, top-5, balanced accuracy, per-class precision/recall/F1/support, the confusion matrix, and each
    image's predicted and true class in the order of `labels`.

    As scikit-learn computes them: precision, recall and F1 are 0 where undefined (zero_division=0)
    and macro F1 averages every class; balanced accuracy averages the recall of the classes present
    in the labels.
    """
    y_true = labels.cpu().numpy().astype(np.int64)
    y_pred = logits.argmax(1).cpu().numpy().astype(np.int64)
    cm = confusion_matrix(y_true, y_pred, len(classes))
    hits, support, predicted = np.diag(cm).astype(float), cm.sum(1), cm.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, hits / predicted, 0.0)
        recall = np.where(support > 0, hits / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return {
        "top1": float((y_true == y_pred).mean()),
        "top5": topk_accuracy(logits, labels, 5),
        "balanced_accuracy": float(recall[support > 0].mean()),
        "macro_f1": float(f1.mean()),
        "per_class": [{"class": c, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for c, p, r, f, s in zip(classes, precision, recall, f1, support)],
        "confusion_matrix": cm.tolist(),
        "predictions": y_pred.tolist(),
        "labels": y_true.tolist(),
    }


def images_digest(names: list[str], labels: list[int]) -> str:
    """A short hash of a split's image names and labels, in order: two runs with the same digest were
    tested on the same images in the same order (names relative to the dataset root, so machines agree)."""
    h = hashlib.sha256()
    for name, label in zip(names, labels, strict=True):
        h.update(f"{name}\t{int(label)}\n".encode())
    return h.hexdigest()[:16]
