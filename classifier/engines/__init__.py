"""The engine registry: every way to run a saved model, described as data.

Each engine is an :class:`EngineSpec`: its name, the file it reads from the model folder, the devices it
runs on, where its builder (and, for engines with their own file, its export step) live. Everything that
lists engines derives from ``ENGINES``: the service's CLASSIFIER_ENGINE values, the training CLI's
``--export`` choices, the files the store looks for, the schemas and the benchmark. Builders and export
steps are imported only when used, so reading the registry imports neither torch nor ONNX Runtime.

A new engine is one module (a ``build`` function; ``export`` and ``load`` if it has its own file) plus one
entry in ``_BUILT_IN``. Every engine takes uint8 images [N, 3, S, S] and returns the serving graph's output
[N, contract.output_width]: probabilities, then the OOD score when the model has one.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from classifier.contract import ModelContract
    from classifier.device import Device
    from classifier.network import ClassifierNet
    from classifier.store import ModelDescription

MIN_AGREEMENT = 0.99  # top-1 agreement with fp32 (training's test split) below which serving an engine is warned about
MIN_KNOWN_AGREEMENT = 0.95  # the same for its known/unknown answers against PyTorch's


class EngineError(ValueError):
    """An engine cannot be chosen or built for this model and device; the message says what to do."""


class Engine(Protocol):
    name: str
    device: str

    def predict(self, batch: Any) -> np.ndarray: ...

    def warm_up(self, batch_size: int = 1) -> None: ...


@dataclass(frozen=True)
class BuildRequest:
    """What a builder gets: the model, where to run it, and how."""

    model: ModelDescription
    device: Device
    threads: int
    compile_max_batch: int = 0  # GPU: compile for batch sizes up to this (0: eager)
    cache_dir: Path | None = None  # where an engine may keep what it compiles, so a restart need not compile again


@dataclass(frozen=True)
class ExportRequest:
    """What an export step gets: the trained network, calibration images (uint8 [N, 3, S, S]), a work folder,
    and the files of the engines exported before it (those in its ``requires``)."""

    network: ClassifierNet
    contract: ModelContract
    workdir: Path
    calibration: np.ndarray
    exported: dict[str, Path]


@dataclass(frozen=True)
class EngineSpec:
    name: str
    # The module holds ``build(BuildRequest) -> Engine``; for an engine with a file of its own, also
    # ``export(ExportRequest) -> Path`` (write it) and ``load(path, contract, threads) -> Engine`` (run it).
    module: str
    devices: tuple[str, ...]  # device types it runs on: "cpu", "cuda"
    file: str | None = None  # its own file in the model folder; None: it runs the weights, or the file of ``reads``
    reads: str | None = None  # an engine whose file it runs (OpenVINO on the ONNX graphs)
    requires: tuple[str, ...] = ()  # engines whose export must run first (their files feed this one's export)
    takes_device_tensors: bool = False  # predict() accepts a tensor already on its device (GPU JPEG decoding)
    summary: str = ""
    packages: tuple[str, ...] = ()  # the Python packages it imports to serve (the CPU image has no torch)

    @property
    def installed(self) -> bool:
        """Whether its packages are installed (found, not imported)."""
        return all(importlib.util.find_spec(package) is not None for package in self.packages)

    @property
    def graph_engine(self) -> str:
        """The engine whose file (or weights) it runs and whose training measurements apply: ``reads``, else itself."""
        return self.reads or self.name

    @property
    def reads_file(self) -> str | None:
        """The file in the model folder it runs: its own, or that of the engine it reads; None: the weights."""
        return ENGINES[self.reads].file if self.reads is not None else self.file

    @property
    def exportable(self) -> bool:
        return self.file is not None

    def build(self, request: BuildRequest) -> Engine:
        return _function(self, "build")(request)

    def export(self, request: ExportRequest) -> Path:
        return _function(self, "export")(request)

    def load(self, path: Path | str, contract: ModelContract, threads: int) -> Engine:
        return _function(self, "load")(path, contract, threads)


def _function(spec: EngineSpec, name: str) -> Callable[..., Any]:
    return getattr(importlib.import_module(spec.module), name)


_BUILT_IN = (
    EngineSpec(
        "torch",
        "classifier.engines.torch_engine",
        ("cpu", "cuda"),
        takes_device_tensors=True,
        summary="PyTorch: the GPU engine (bf16/fp16, optionally compiled), and the CPU fallback",
        packages=("torch", "torchvision"),
    ),
    EngineSpec(
        "onnx",
        "classifier.engines.ort_engine",
        ("cpu",),
        file="model.onnx",
        summary="ONNX Runtime, fp32 graph",
        packages=("onnxruntime",),
    ),
    EngineSpec(
        "onnx-int8",
        "classifier.engines.ort_int8",
        ("cpu",),
        file="model.int8.onnx",
        requires=("onnx",),
        summary="ONNX Runtime, statically quantized INT8 copy of the fp32 graph",
        packages=("onnxruntime",),
    ),
    EngineSpec(
        "openvino",
        "classifier.engines.openvino_engine",
        ("cpu",),
        reads="onnx",
        summary="OpenVINO on the fp32 ONNX graph, in the precision the CPU runs best (bf16 with AMX)",
        packages=("openvino",),
    ),
    EngineSpec(
        "openvino-int8",
        "classifier.engines.openvino_int8",
        ("cpu",),
        reads="onnx-int8",
        summary="OpenVINO on the INT8 ONNX graph",
        packages=("openvino",),
    ),
)
ENGINES: dict[str, EngineSpec] = {spec.name: spec for spec in _BUILT_IN}


def register(spec: EngineSpec) -> None:
    """Add an engine (a plugin, or a test's fake); its name must be new."""
    if spec.name in ENGINES or spec.name == "auto":
        raise ValueError(f"an engine named {spec.name!r} already exists")
    ENGINES[spec.name] = spec


def exportable_engines() -> tuple[str, ...]:
    """Engines with their own file, which training can save with a model (in dependency order)."""
    return tuple(name for name, spec in ENGINES.items() if spec.exportable)


def with_requirements(names: tuple[str, ...]) -> tuple[str, ...]:
    """``names`` plus the engines their exports need, in registry (dependency) order."""
    wanted = set(names)
    for name in reversed(list(ENGINES)):
        if name in wanted:
            wanted.update(ENGINES[name].requires)
    return tuple(name for name in ENGINES if name in wanted)


def choose_engine(choice: str, device: Device, available: tuple[str, ...]) -> str:
    """The engine to serve: ``choice`` unless "auto", which means the first engine of (onnx, torch) that the
    model carries, the device runs and is installed. Raises EngineError when the choice cannot be served."""
    if choice == "auto":
        order = ("onnx", "torch") if device.type == "cpu" else ("torch",)
        preferred = [name for name in order if name in available]  # torch at least: every model has its weights
        usable = [name for name in preferred if ENGINES[name].installed]
        choice = usable[0] if usable else preferred[0]  # none installed: the checks below say what is missing
    if choice not in ENGINES:
        raise EngineError(f"unknown engine {choice!r}; choose auto or one of: {', '.join(ENGINES)}")
    if choice not in available:
        raise EngineError(
            f"engine {choice}: the model has no {ENGINES[choice].reads_file} (it has: {', '.join(available)}); "
            f"retrain with --export {ENGINES[choice].graph_engine} or choose another engine"
        )
    if device.type not in ENGINES[choice].devices:
        raise EngineError(
            f"engine {choice} runs on {', '.join(ENGINES[choice].devices)} only, not {device}; "
            "choose another engine or device"
        )
    if not ENGINES[choice].installed:
        raise EngineError(_not_installed(choice, ", ".join(ENGINES[choice].packages)))
    return choice


def _not_installed(engine: str, packages: str) -> str:
    image = (
        " (the CPU container image leaves it out: build it with --build-arg TORCH=cpu)" if "torch" in packages else ""
    )
    return f"engine {engine} needs {packages}, not installed here{image}; install it or choose another engine"


def make_engine(
    model: ModelDescription,
    name: str,
    device: Device,
    *,
    threads: int,
    compile_max_batch: int = 0,
    cache_dir: Path | None = None,
) -> Engine:
    """Build engine ``name`` (as chosen by choose_engine) for ``model``; EngineError if it will not load (its
    package not installed included). Its OOD scores come out on PyTorch's scale (see OodContract.score_scales)."""
    try:
        engine = ENGINES[name].build(BuildRequest(model, device, threads, compile_max_batch, cache_dir))
    except ImportError as exc:
        raise EngineError(_not_installed(name, exc.name or str(exc))) from exc
    return on_pytorch_scale(engine, model.contract)


def on_pytorch_scale(engine: Engine, contract: ModelContract) -> Engine:
    """``engine`` with its OOD scores multiplied by the contract's scale for it (OodContract.score_scales), looked up
    by its name, or name:precision for an engine with several (the torch engine's bfloat16 on a GPU)."""
    if contract.ood is None:
        return engine
    precision = getattr(engine, "precision", None)
    spec = ENGINES.get(engine.name)
    if spec is not None and spec.reads is not None:  # the graph it runs was measured under that engine's name
        scale = contract.ood.scale_for(spec.graph_engine)
    else:
        scale = contract.ood.scale_for(f"{engine.name}:{precision}" if precision else engine.name)
    return engine if scale == 1.0 else RescaledOod(engine, contract.num_classes, scale)


class RescaledOod:
    """An engine whose OOD scores (the column after the ``classes`` probabilities) are multiplied by ``scale``."""

    def __init__(self, engine: Engine, classes: int, scale: float) -> None:
        self.engine, self.classes, self.scale = engine, classes, scale
        self.name, self.device = engine.name, engine.device

    def predict(self, batch: Any) -> np.ndarray:
        out = np.array(self.engine.predict(batch), dtype=np.float32)  # a copy: the engine may own its buffer
        out[:, self.classes] *= self.scale
        return out

    def warm_up(self, batch_size: int = 1) -> None:
        self.engine.warm_up(batch_size)


def agreement_caveat(model: ModelDescription, name: str) -> str | None:
    """A warning to log when training measured this engine's top-1 agreement with fp32 under MIN_AGREEMENT, or its
    known/unknown answers' agreement with PyTorch under MIN_KNOWN_AGREEMENT."""
    graph = ENGINES[name].graph_engine if name in ENGINES else name  # OpenVINO: the graph it runs
    recorded = (model.metadata.get("engines") or {}).get(graph) or {}
    problems = []
    agreement = recorded.get("top1_agreement_with_fp32")
    if agreement is not None and agreement < MIN_AGREEMENT:
        problems.append(
            f"its top-1 answer agreed with fp32 on only {agreement:.1%} of the test images "
            f"(accuracy change {recorded.get('accuracy_change', 0):+.3f})"
        )
    known = recorded.get("known_agreement_with_torch")
    if known is not None and known < MIN_KNOWN_AGREEMENT:
        problems.append(f"its known/unknown answer agreed with PyTorch on only {known:.1%} of the test images")
    if not problems:
        return None
    return f"model {model.tag}: in the {name} engine, " + "; ".join(problems) + "; consider another engine"
