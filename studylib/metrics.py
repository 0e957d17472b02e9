"""Classification metrics for the test split, from logits and labels (scikit-learn does the counting)."""
from __future__ import annotations

import numpy as np
import torch
from sklearn import metrics as skm


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return (top == labels[:, None]).any(dim=1).float().mean().item()


def classification_report(logits: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict:
    """top-1, top-5, balanced accuracy, per-class precision/recall/F1/support and the confusion matrix."""
    y_true = labels.cpu().numpy()
    y_pred = logits.argmax(1).cpu().numpy()
    idx = np.arange(len(classes))
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=idx, zero_division=0)
    return {
        "top1": float((y_true == y_pred).mean()),
        "top5": topk_accuracy(logits, labels, 5),
        "balanced_accuracy": float(skm.balanced_accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1.mean()),
        "per_class": [{"class": c, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for c, p, r, f, s in zip(classes, precision, recall, f1, support)],
        "confusion_matrix": skm.confusion_matrix(y_true, y_pred, labels=idx).tolist(),
    }
