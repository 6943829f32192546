"""What to serve, decided once at start-up and pinned: the model version, the device and the engine.

BentoML's ``on_deployment`` hook runs ``decide`` once, before any worker starts, and ``pin`` writes the
decision into the environment every worker inherits (also a worker restarted later), so the front and
the model runner can never disagree, even if a newer model lands or a GPU appears meanwhile.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass

from classifier.contract import ContractError
from classifier.device import Device, pick_device
from classifier.engines import ENGINES, EngineError, choose_engine, make_engine
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


def check_engine(serving: Serving, timeout_s: float = 600) -> None:
    """Load the engine's file once, in a child process: a corrupt or foreign file stops the server before any worker
    starts, and the caller (BentoML's manager, alive as long as the server) never holds the engine's memory.
    EngineError with the child's one-line reason."""
    if not ENGINES[serving.engine].file:
        return
    args = [sys.executable, "-m", "service.startup", serving.model.tag, serving.engine, str(serving.device)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise EngineError(lines[-1] if lines else f"engine {serving.engine} failed to load (exit {done.returncode})")


def _load(argv: list[str]) -> int:
    """``python -m service.startup TAG ENGINE DEVICE``: build the engine once; its error on stderr, exit code 2."""
    tag, engine, device = argv
    try:
        make_engine(describe_model(tag), engine, pick_device(device), threads=1)
    except (ContractError, EngineError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(_load(sys.argv[1:]))
