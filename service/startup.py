"""What to serve, decided once at start-up and pinned: the model version, the device and the engine.

BentoML's ``on_deployment`` hook runs ``decide`` once, before any worker starts, and ``pin`` writes the
decision into the environment every worker inherits (also a worker restarted later), so the front and
the model runner can never disagree, even if a newer model lands or a GPU appears meanwhile.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

from classifier.device import Device, pick_device
from classifier.engines import choose_engine
from classifier.store import ModelDescription, describe_model
from service.postprocessing import UNKNOWN_LABEL
from service.settings import ENV_PREFIX, ServiceSettings


@dataclass(frozen=True)
class Serving:
    model: ModelDescription
    device: Device
    engine: str


def decide(settings: ServiceSettings) -> Serving:
    """Resolve the model tag, device and engine the settings ask for; ContractError, EngineError or
    ValueError (a missing CUDA device) with a one-line message when they cannot be served."""
    model = describe_model(settings.model_tag)
    if settings.unknown == "abstain" and UNKNOWN_LABEL in model.contract.class_names:
        raise ValueError(
            f"{ENV_PREFIX}UNKNOWN=abstain answers {UNKNOWN_LABEL!r}, but model {model.tag} has a class of that "
            f"name; use {ENV_PREFIX}UNKNOWN=flag"
        )
    if settings.jpeg_decode == "engine" and importlib.util.find_spec("torch") is None:
        raise ValueError(
            f"{ENV_PREFIX}JPEG_DECODE=engine decodes with torchvision, which is not installed here (the CPU container "
            "image leaves torch out); use auto or front"
        )
    device = pick_device(settings.device)
    return Serving(model, device, choose_engine(settings.engine, device, model.engines))


def ood_caveat(model: ModelDescription) -> str | None:
    """A warning to log when the model has no OOD score (saved before OOD detection)."""
    if model.contract.ood is not None:
        return None
    return (
        f"model {model.tag} was saved without an out-of-distribution score: its answers carry no ood_score and "
        "known is null, and images of things it never saw get a class like any other; retrain it with this "
        "version to get them"
    )


def pin(serving: Serving) -> None:
    """Make the decision what every worker of this server reads as its settings."""
    os.environ[ENV_PREFIX + "MODEL_TAG"] = serving.model.tag
    os.environ[ENV_PREFIX + "DEVICE"] = str(serving.device)
    os.environ[ENV_PREFIX + "ENGINE"] = serving.engine
