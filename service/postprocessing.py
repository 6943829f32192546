"""Model output to response objects: pure functions."""

from __future__ import annotations

import numpy as np

from classifier.contract import ModelContract
from service.http.errors import ApiError
from service.http.schemas import ClassScore, Prediction, UnknownPolicy

UNKNOWN_LABEL = "unknown"  # the label of an abstained answer (CLASSIFIER_UNKNOWN=abstain)
_SHOWN_CLASSES = 20  # class names listed in an error


def class_index(class_names: tuple[str, ...], name: str, what: str) -> int:
    """The index of class ``name``; 400 ``unknown_label`` naming the classes when the model has no such class
    (``what``: the field it came in, e.g. "label")."""
    if name not in class_names:
        shown = ", ".join(class_names[:_SHOWN_CLASSES])
        more = f" and {len(class_names) - _SHOWN_CLASSES} more" if len(class_names) > _SHOWN_CLASSES else ""
        raise ApiError(400, "unknown_label", f"{what} {name!r} is not one of the model's classes: {shown}{more}")
    return class_names.index(name)


def to_prediction(
    row: np.ndarray,
    contract: ModelContract,
    k: int,
    filename: str | None = None,
    unknown: UnknownPolicy = "flag",
) -> Prediction:
    """One row of the serving graph's output (probabilities [C], then the OOD score if the model has one) ->
    a Prediction with the k most probable classes, most probable first (ties keep class order).

    ``known`` is whether the OOD score is within the contract's threshold: None for a model without an OOD
    score or with ``unknown`` "off". With "abstain" an unknown image is labelled UNKNOWN_LABEL; ``probability``
    and ``top_k`` stay the classes' (the label kept with "flag").
    """
    probs = row[: contract.num_classes]
    k = max(1, min(k, contract.num_classes))
    order = np.argsort(-probs, kind="stable")[:k]
    scores = [ClassScore(label=contract.class_names[i], probability=round(float(probs[i]), 6)) for i in order]
    ood_score = known = None
    if contract.ood is not None:
        ood_score = float(row[contract.num_classes])
        known = None if unknown == "off" else ood_score <= contract.ood.threshold
    label = UNKNOWN_LABEL if known is False and unknown == "abstain" else scores[0].label
    return Prediction(
        label=label,
        probability=scores[0].probability,
        top_k=scores,
        ood_score=None if ood_score is None else round(ood_score, 6),
        known=known,
        filename=filename,
    )


def default_top_k(num_classes: int) -> int:
    """min(5, number of classes)."""
    return min(5, num_classes)
