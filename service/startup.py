"""What to serve, decided once at start-up and pinned: the model version, the device and the engine.

The entry service's ``on_deployment`` hook runs ``preflight`` once, before BentoML makes any worker's environment:
``decide``, checks that stop an unusable server with one line, then ``pin``, which writes the decision into the
environment every worker inherits (also a worker restarted later; tests/integration/test_serve_trained.py restarts the
model runner to check), so the front and the model runner can never disagree, even if a newer model lands or a GPU
appears meanwhile. On the CPU, ``CLASSIFIER_ENGINE=auto`` is decided by measurement (classifier/engines/choice.py), in
a process of its own so that the engines it tries do not stay loaded in the manager.
"""

from __future__ import annotations

import gc
import importlib.util
import logging
import multiprocessing
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from classifier.contract import ContractError
from classifier.device import Device, cpu_threads, pick_device
from classifier.engines import ENGINES, EngineError, choose_engine, make_engine
from classifier.engines import choice as engine_choice
from classifier.store import ModelDescription, describe_model
from service.bentoml_compat import check_version
from service.feedback import Feedback
from service.http.schemas import EngineCandidate, EngineChoiceInfo
from service.memory import trim_now
from service.postprocessing import UNKNOWN_LABEL
from service.settings import ENV_PREFIX, ServiceSettings, SettingsError

logger = logging.getLogger(__name__)
T = TypeVar("T")
CHOICE_ENV = "_CLASSIFIER_ENGINE_CHOICE"  # the measurement behind the engine, for /v1/model; not a setting
PINNED_ENV = "_CLASSIFIER_PINNED"  # set with the decision: the server's start-up check has run
MEASURE_TIMEOUT_S = 300.0  # a hung engine build must not hold the start-up forever


@dataclass(frozen=True)
class Serving:
    model: ModelDescription
    device: Device
    engine: str
    choice: engine_choice.EngineChoice | None = None  # how auto chose it, when it measured


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
    choice = measured_choice(model, settings) if settings.engine == "auto" and device.type == "cpu" else None
    engine = choose_engine(choice.chosen if choice else settings.engine, device, model.engines)
    return Serving(model, device, engine, choice)


def settings_or_exit() -> ServiceSettings:
    """Settings, or one line on stderr and exit code 2: a misconfigured server must not start."""
    try:
        return ServiceSettings.from_env()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def preflight() -> None:
    """Once per server, before any worker starts: an unusable model stops the server with one line, and the
    decision is pinned for every worker."""
    logging.getLogger("service").setLevel(logging.INFO)  # auto's measurement and where it is cached
    settings = settings_or_exit()
    check_version()
    try:
        serving = decide(settings)
        # A corrupt or foreign file stops the server here, not in a worker (a fresh measurement has built it).
        if ENGINES[serving.engine].reads_file and (serving.choice is None or serving.choice.cached):
            make_engine(serving.model, serving.engine, serving.device, threads=1, cache_dir=settings.cache_folder)
            # That engine is gone, but malloc keeps its heap (165-225 MiB for ResNet50 with ONNX Runtime fp32),
            # and this process (BentoML's manager) lives as long as the server.
            if settings.malloc_trim_s > 0:
                gc.collect()  # anything of it held in a reference cycle goes first
                trim_now()
    except (ContractError, EngineError, ValueError, ImportError) as exc:  # ImportError: a package not installed
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if caveat := ood_caveat(serving.model):
        logger.warning(caveat)
    if settings.feedback_dir is not None:  # an unwritable folder stops the server here, not on the first feedback
        try:
            Feedback(serving.model, settings)
        except OSError as exc:
            print(
                f"error: {ENV_PREFIX}FEEDBACK_DIR={settings.feedback_dir}: cannot write there ({exc})",
                file=sys.stderr,
            )
            raise SystemExit(2) from None
    # The version ("name:latest" -> "name:abc123"), device and engine, for every worker this server starts.
    pin(serving)
    if "BENTOML_NO_UDS" in os.environ:
        logger.warning(
            "BENTOML_NO_UDS is set: the model runner listens on 127.0.0.1 TCP, where any local "
            "user can send it images to classify"
        )


def measured_choice(model: ModelDescription, settings: ServiceSettings) -> engine_choice.EngineChoice | None:
    """The fastest eligible CPU engine for ``model`` on this host, from the cache or measured now; None where there
    is nothing to measure (one candidate, or a model saved without a reference sample)."""
    names, threads, host = candidates_here(model, settings)
    if len(names) < 2 or model.reference_path is None:
        return None
    cache = settings.cache_folder
    if (known := engine_choice.cached(cache, model.tag, host)) is not None:
        logger.info(known.describe())
        return known
    logger.info("engine auto: measuring %s on this host (cached afterwards in %s)", ", ".join(names), cache)
    try:
        candidates = in_own_process(
            engine_choice.measure_model, model.tag, names, threads, settings.max_batch_size, cache
        )
    except Exception as exc:  # the measuring process died (out of memory, a crash in native code) or hung
        logger.warning("engine auto: the measurement failed (%r); serving the default engine", exc)
        return None
    made = engine_choice.EngineChoice(engine_choice.fastest(candidates), tuple(candidates), host)
    logger.info(made.describe())
    if (path := engine_choice.remember(cache, model.tag, made)) is not None:
        logger.info("engine auto: choice cached in %s (delete it to measure again)", path)
    return made


def engine_choice_info(choice: engine_choice.EngineChoice | None) -> EngineChoiceInfo | None:
    if choice is None:
        return None
    candidates = [EngineCandidate(**asdict(c), eligible=c.eligible) for c in choice.candidates]
    return EngineChoiceInfo(chosen=choice.chosen, cached=choice.cached, host=choice.host, candidates=candidates)


def candidates_here(model: ModelDescription, settings: ServiceSettings) -> tuple[list[str], int, str]:
    """The CPU engines ``model`` carries that are installed here, the threads each would get, and the host
    description the choice is cached under."""
    names = [n for n in model.engines if "cpu" in ENGINES[n].devices and ENGINES[n].installed]
    threads = cpu_threads(settings.inference_threads, workers=settings.model_workers)
    return names, threads, engine_choice.host_description(threads, settings.max_batch_size, names)


def in_own_process(function: Callable[..., T], *args: Any, timeout_s: float = MEASURE_TIMEOUT_S) -> T:
    """``function(*args)`` in a fresh (spawned) process, killed after ``timeout_s`` (multiprocessing.TimeoutError):
    what it imports and allocates goes when it returns."""
    # The child imports this project again: a served Bento's code folder may have left sys.path once the service was
    # imported, and a spawned process starts from the parent's sys.path as it is when the pool starts.
    root = str(Path(__file__).resolve().parents[1])
    added = root not in sys.path
    if added:
        sys.path.insert(0, root)
    try:
        with multiprocessing.get_context("spawn").Pool(1) as pool:  # leaving the block terminates the process
            return pool.apply_async(function, args).get(timeout_s)
    finally:
        if added:
            sys.path.remove(root)


def reported_choice() -> engine_choice.EngineChoice | None:
    """In a worker: the measurement ``pin`` passed on, if the engine was chosen by one."""
    text = os.environ.get(CHOICE_ENV)
    return engine_choice.EngineChoice.from_json(text) if text else None


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
    """Make the decision what every worker of this server reads as its settings: the environment they inherit."""
    os.environ[ENV_PREFIX + "MODEL_TAG"] = serving.model.tag
    os.environ[ENV_PREFIX + "DEVICE"] = str(serving.device)
    os.environ[ENV_PREFIX + "ENGINE"] = serving.engine
    os.environ[PINNED_ENV] = "1"
    if serving.choice is not None:
        os.environ[CHOICE_ENV] = serving.choice.to_json()
    else:
        os.environ.pop(CHOICE_ENV, None)
