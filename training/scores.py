"""Classification metrics from predicted probabilities: pure functions, no I/O."""

from __future__ import annotations

from typing import Any

import torch


def confusion_matrix(labels: torch.Tensor, preds: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[C, C] counts; row = true class, column = predicted class."""
    index = labels.long() * num_classes + preds.long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def classification_metrics(
    probs: torch.Tensor, labels: torch.Tensor, class_names: tuple[str, ...], loss: float
) -> dict[str, Any]:
    """Accuracy, loss, per-class precision/recall/F1/support, macro F1 and the confusion matrix.

    A class never predicted (or never present) gets precision (or recall) 0, not NaN, so the
    result is always valid JSON.
    """
    preds = probs.argmax(dim=1)
    cm = confusion_matrix(labels, preds, len(class_names)).to(torch.float64)
    true_pos = cm.diag()
    predicted = cm.sum(dim=0)
    actual = cm.sum(dim=1)
    precision = torch.where(predicted > 0, true_pos / predicted.clamp(min=1), 0.0)
    recall = torch.where(actual > 0, true_pos / actual.clamp(min=1), 0.0)
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-12), 0.0)
    per_class = {
        name: {
            "precision": round(float(precision[i]), 4),
            "recall": round(float(recall[i]), 4),
            "f1": round(float(f1[i]), 4),
            "support": int(actual[i]),
        }
        for i, name in enumerate(class_names)
    }
    total = int(cm.sum())
    return {
        "accuracy": round(float(true_pos.sum() / max(total, 1)), 4),
        "loss": round(float(loss), 4),
        "macro_f1": round(float(f1.mean()), 4),
        "count": total,
        "per_class": per_class,
        "confusion_matrix": cm.to(torch.int64).tolist(),
    }
