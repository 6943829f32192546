"""What the answers say about the traffic: confidence, OOD scores, unknown answers and class-share drift,
recorded as Prometheus metrics (service/metrics.py) by the front for every image it answers.

Drift is the population stability index (PSI) of the predicted classes over the last ``window`` answers
against the training split's class shares: sum over classes of (live - train) x ln(live / train). Below
0.1 is usually read as no shift, 0.1-0.25 as moderate, above 0.25 as a shift worth a look (the alert rule's
level). With C classes, sampling noise alone gives a PSI of about (C - 1) / window: the window should hold
at least 20 answers per class. ``psi`` and ``DriftWindow`` are pure; ``Monitor`` writes the metrics.
"""

from __future__ import annotations

import logging
import math
from collections import Counter, deque
from collections.abc import Iterable, Mapping

from classifier.store import ModelDescription
from service.http.schemas import Prediction
from service.metrics import metrics

logger = logging.getLogger(__name__)

MIN_ANSWERS = 100  # fewer answers than this (or than the window, if smaller) give no drift figure: too noisy
ANSWERS_PER_CLASS = 20  # a window under this many answers per class gives a PSI near the alert level from noise alone
_SMOOTHING = 0.5  # added to each class's count, so a class never seen is a large finite term, not infinity


def psi(counts: Mapping[str, int], expected: Mapping[str, float]) -> float:
    """Population stability index of observed class ``counts`` against ``expected`` shares (summing to 1),
    both smoothed so that a class with no answers contributes a finite term."""
    total = sum(counts.values()) + _SMOOTHING * len(expected)
    value = 0.0
    for name, share in expected.items():
        live = (counts.get(name, 0) + _SMOOTHING) / total
        train = max(share, 1e-6)
        value += (live - train) * math.log(live / train)
    return value


class DriftWindow:
    """The predicted classes of the last ``size`` answers and their PSI against ``expected`` shares."""

    def __init__(self, expected: Mapping[str, float], size: int) -> None:
        self.expected, self.size = dict(expected), size
        self._labels: deque[str] = deque(maxlen=size)
        self._counts: Counter[str] = Counter()

    def add(self, label: str) -> None:
        if len(self._labels) == self.size:
            self._counts[self._labels[0]] -= 1
        self._labels.append(label)
        self._counts[label] += 1

    def psi(self) -> float | None:
        """The window's PSI, or None while it holds fewer than min(MIN_ANSWERS, size) answers."""
        if len(self._labels) < min(MIN_ANSWERS, self.size):
            return None
        return psi(self._counts, self.expected)


def training_shares(model: ModelDescription) -> dict[str, float] | None:
    """Each class's share of the training split, from the model's metadata; None if it was not recorded."""
    counts = ((model.metadata.get("dataset") or {}).get("counts") or {}).get("train") or {}
    names = model.contract.class_names
    total = sum(int(counts.get(name, 0)) for name in names)
    if not total:
        return None
    return {name: int(counts.get(name, 0)) / total for name in names}


class Monitor:
    """Records every answer in the metrics: its class, confidence, OOD score and whether it was unknown, and
    the drift of the class shares (when the model recorded its training shares)."""

    def __init__(self, model: ModelDescription, window: int) -> None:
        m = metrics()
        shares = training_shares(model)
        self.drift = DriftWindow(shares, window) if shares else None
        if shares is None:
            logger.warning("model %s has no training class counts in its metadata: no drift figure", model.tag)
        elif window < ANSWERS_PER_CLASS * len(shares):
            logger.warning(
                "CLASSIFIER_DRIFT_WINDOW=%d is small for %d classes: sampling noise alone gives a PSI of about %.2f "
                "(the drift alert fires above 0.25); use at least %d",
                window,
                len(shares),
                (len(shares) - 1) / window,
                ANSWERS_PER_CLASS * len(shares),
            )
        for name, share in (shares or {}).items():
            m.training_share.labels(name).set(share)
        if model.contract.ood is not None:
            m.ood_threshold.set(model.contract.ood.threshold)

    def observe(self, results: Iterable[Prediction]) -> None:
        m = metrics()
        for result in results:
            top = result.top_k[0].label  # the class, also when the answer abstained as "unknown"
            m.predictions.labels(top).inc()
            m.confidence.observe(result.probability)
            if result.ood_score is not None:
                m.ood_score.observe(result.ood_score)
            if result.known is False:
                m.unknown.inc()
            if self.drift is not None:
                self.drift.add(top)
        if self.drift is not None and (value := self.drift.psi()) is not None:
            m.drift_psi.set(value)
