"""What to serve is decided once and pinned: every worker then reads the same model version, device and engine."""

from __future__ import annotations

import importlib.util
import os

import pytest

from classifier.device import CPU
from classifier.network import build_classifier
from classifier.store import save_model
from service.settings import ServiceSettings
from service.startup import CHOICE_ENV, PINNED_ENV, decide, ood_caveat, pin

PINNED = ("CLASSIFIER_MODEL_TAG", "CLASSIFIER_DEVICE", "CLASSIFIER_ENGINE", CHOICE_ENV, PINNED_ENV)


@pytest.fixture
def unpinned(monkeypatch):
    """No decision in the environment; what pin() writes is undone after the test."""
    for var in PINNED:
        monkeypatch.setenv(var, "")  # recorded, so that what pin() writes is undone after the test
        monkeypatch.delenv(var)


def test_decide_resolves_and_pin_makes_every_worker_read_the_decision(contract, unpinned):
    network = build_classifier(contract.backbone, contract.num_classes, contract.dropout)
    tag = save_model("pinned-test", network, contract, metadata={}, report={})
    settings = ServiceSettings.from_env({"CLASSIFIER_MODEL_TAG": "pinned-test:latest", "CLASSIFIER_DEVICE": "cpu"})
    serving = decide(settings)
    assert (serving.model.tag, serving.device, serving.engine) == (tag, CPU, "torch")  # no graphs
    save_model("pinned-test", network, contract, metadata={}, report={})  # a newer version lands meanwhile
    pin(serving)
    assert os.environ["CLASSIFIER_MODEL_TAG"] == tag  # name:version, never :latest
    assert os.environ[PINNED_ENV] == "1"  # the runner's own hook then has nothing left to do
    worker = ServiceSettings.from_env()  # what a worker started now reads
    assert (worker.model_tag, worker.device, worker.engine) == (tag, "cpu", "torch")
    assert decide(worker).model.tag == tag  # still the pinned version, not the newer one


def test_abstaining_is_refused_for_a_model_with_a_class_named_unknown(contract):
    named = contract.model_copy(update={"class_names": ("cats", "unknown")})
    save_model("unknown-class-test", build_classifier(named.backbone, 2, named.dropout), named, metadata={}, report={})
    settings = {"CLASSIFIER_MODEL_TAG": "unknown-class-test:latest", "CLASSIFIER_DEVICE": "cpu"}
    assert decide(ServiceSettings.from_env(settings)).engine == "torch"  # flag (the default) is fine
    with pytest.raises(ValueError, match="CLASSIFIER_UNKNOWN=abstain answers 'unknown', but model .* has a class"):
        decide(ServiceSettings.from_env({**settings, "CLASSIFIER_UNKNOWN": "abstain"}))


def test_a_model_without_an_ood_score_is_served_with_a_warning(contract):
    network = build_classifier(contract.backbone, contract.num_classes, contract.dropout)
    serving = decide(
        ServiceSettings.from_env(
            {
                "CLASSIFIER_MODEL_TAG": save_model("no-ood-test", network, contract, metadata={}, report={}),
                "CLASSIFIER_DEVICE": "cpu",
            }
        )
    )
    assert "saved without an out-of-distribution score" in ood_caveat(serving.model)


def test_jpeg_decoding_in_the_engine_needs_torch(contract, monkeypatch):
    """On the CPU image (no torch) CLASSIFIER_JPEG_DECODE=engine stops the server in one line, not in a worker."""
    network = build_classifier(contract.backbone, contract.num_classes, contract.dropout)
    tag = save_model("jpeg-engine-test", network, contract, metadata={}, report={})
    settings = {"CLASSIFIER_MODEL_TAG": tag, "CLASSIFIER_DEVICE": "cpu", "CLASSIFIER_JPEG_DECODE": "engine"}
    assert decide(ServiceSettings.from_env(settings)).model.tag == tag
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    with pytest.raises(ValueError, match="CLASSIFIER_JPEG_DECODE=engine decodes with torchvision, which is not"):
        decide(ServiceSettings.from_env(settings))


def test_the_front_checks_at_start_and_the_runner_only_when_served_alone(monkeypatch):
    from service import service

    calls: list[str] = []
    monkeypatch.setattr(service.startup, "preflight", lambda: calls.append("checked"))
    monkeypatch.setenv(PINNED_ENV, "1")  # the front's hook ran first and pinned the decision
    service.ModelRunner.inner.preflight()
    assert calls == []
    monkeypatch.delenv(PINNED_ENV)
    service.ModelRunner.inner.preflight()  # the runner served on its own
    service.ImageClassifier.inner.preflight()
    assert calls == ["checked", "checked"]
