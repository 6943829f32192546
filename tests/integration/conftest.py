"""A model trained once by the real CLI, and the real server serving it, shared by the service tests."""

from __future__ import annotations

import pytest

from loadtests.servers import serve
from tests.support.cli import train_small
from tests.support.synthetic import make_dataset

# For a model saved with its ONNX graphs: the engine the tests expect, instead of auto's choice by measurement on
# this host (tested on its own in test_auto_engine). Models saved without graphs are served by torch under auto.
ONNX = {"CLASSIFIER_ENGINE": "onnx"}
SERVER_ENV = {
    "CLASSIFIER_DEVICE": "cpu",  # the tests expect the CPU engines, also on a machine with a GPU
    "CLASSIFIER_MAX_BATCH_SIZE": "4",
    "CLASSIFIER_MAX_LATENCY_MS": "30000",
    "CLASSIFIER_MAX_BODY_BYTES": str(2 * 1024 * 1024),
    "CLASSIFIER_MAX_IMAGES": "12",
    "CLASSIFIER_MAX_PIXELS": "2000000",
    "CLASSIFIER_MAX_QUEUE_WAIT_MS": "30000",  # tests of other things must never be shed on a slow machine
    "CLASSIFIER_BODY_TIMEOUT_S": "5",  # not the default 10: test_hostile checks that the setting is the one used
}


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory) -> str:
    """Tag of a small model (ResNet50, random init, 64 px) trained on generated images."""
    root = tmp_path_factory.mktemp("service-model")
    data = make_dataset(root / "data", per_class=12)
    return train_small(data, root / "out", name="service-test", epochs=3, export=None)


@pytest.fixture(scope="session")
def server(trained_model) -> str:
    """Base URL of `bentoml serve service.service:ImageClassifier` serving that model."""
    with serve({"CLASSIFIER_MODEL_TAG": trained_model, **SERVER_ENV, **ONNX}) as url:
        yield url


@pytest.fixture(scope="session")
def slow_model(tmp_path_factory) -> str:
    """Tag of a full-size model (ResNet50, 224 px, random init): slow enough on the CPU that a test can
    offer it several times what it serves, and catch requests in flight."""
    root = tmp_path_factory.mktemp("slow-model")
    data = make_dataset(root / "data", per_class=12)
    return train_small(data, root / "out", name="slow-test", image_size=224)
