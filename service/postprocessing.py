"""Model output to response objects: pure functions."""

from __future__ import annotations

import numpy as np

from service.http.schemas import ClassScore, Prediction


def to_prediction(probs: np.ndarray, class_names: tuple[str, ...], k: int, filename: str | None = None) -> Prediction:
    """One probability vector [C] -> a Prediction with the k most probable classes, most probable first.

    Ties keep class order, so the result is deterministic.
    """
    k = max(1, min(k, len(class_names)))
    order = np.argsort(-probs, kind="stable")[:k]
    scores = [ClassScore(label=class_names[i], probability=round(float(probs[i]), 6)) for i in order]
    return Prediction(label=scores[0].label, probability=scores[0].probability, top_k=scores, filename=filename)


def default_top_k(num_classes: int) -> int:
    """min(5, number of classes)."""
    return min(5, num_classes)
