"""Class-share drift (population stability index) and the answers' metrics, without a server."""

from __future__ import annotations

import math

import pytest

from classifier.store import ModelDescription
from service.http.schemas import ClassScore, Prediction
from service.metrics import metrics
from service.monitoring import MIN_ANSWERS, DriftWindow, Monitor, psi, training_shares

HALVES = {"ants": 0.5, "bees": 0.5}


def test_psi_is_zero_for_the_training_shares_and_large_for_one_class():
    assert psi({"ants": 500, "bees": 500}, HALVES) == pytest.approx(0.0, abs=1e-9)
    assert psi({"ants": 550, "bees": 450}, HALVES) < 0.1  # sampling noise
    assert psi({"ants": 1000}, HALVES) > 2.0  # a class never seen is a large, finite term
    assert math.isfinite(psi({}, HALVES))


def test_the_window_reports_once_it_has_enough_answers_and_forgets_old_ones():
    window = DriftWindow(HALVES, size=200)
    for i in range(MIN_ANSWERS - 1):
        window.add("ants" if i % 2 else "bees")
    assert window.psi() is None
    window.add("ants")
    assert window.psi() == pytest.approx(0.0, abs=1e-3)
    for _ in range(200):  # only ants now: the balanced answers leave the window
        window.add("ants")
    assert window.psi() > 2.0
    for i in range(200):
        window.add("ants" if i % 2 else "bees")
    assert window.psi() == pytest.approx(0.0, abs=1e-3)


def test_a_small_window_reports_when_full():
    window = DriftWindow(HALVES, size=10)
    for _ in range(10):
        window.add("bees")
    assert window.psi() > 1.0


def _model(contract, counts=None) -> ModelDescription:
    metadata = {"dataset": {"counts": {"train": counts}}} if counts else {}
    return ModelDescription("m:1", contract, metadata, "w", {})


def test_training_shares_come_from_the_metadata(contract):
    assert training_shares(_model(contract, {"ants": 30, "bees": 10})) == {"ants": 0.75, "bees": 0.25}
    assert training_shares(_model(contract)) is None  # not recorded: no drift figure


def _answer(label: str, score: float | None, known: bool | None) -> Prediction:
    top = [ClassScore(label=label, probability=0.9)]
    return Prediction(label=label, probability=0.9, top_k=top, ood_score=score, known=known)


def test_the_monitor_records_scores_unknown_answers_and_drift(contract):
    m = metrics()
    monitor = Monitor(_model(contract, {"ants": 50, "bees": 50}), window=20)
    before_unknown, before_ants = m.unknown._value.get(), m.predictions.labels("ants")._value.get()
    monitor.observe([_answer("ants", 5.0, False)] + [_answer("bees", 0.5, True)] * 9)
    assert m.unknown._value.get() == before_unknown + 1
    assert m.predictions.labels("ants")._value.get() == before_ants + 1
    assert m.training_share.labels("bees")._value.get() == 0.5
    monitor.observe([_answer("ants", 0.5, True)] * 10)
    assert m.drift_psi._value.get() < 0.05  # 11 ants, 9 bees
    monitor.observe([_answer("ants", 0.5, True)] * 20)
    assert m.drift_psi._value.get() > 1.0
