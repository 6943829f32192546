"""CLASSIFIER_ENGINE=auto on the CPU: the fastest engine that reproduces PyTorch fp32 on this host, by measurement.

Which engine is fastest depends on the CPU more than on anything else (ONNX Runtime INT8 is 3.5x fp32 with
VNNI and 1.6x without; OpenVINO's bf16 doubles again with AMX and gains nothing without), so it is measured
where the server starts, not assumed. Each candidate (an engine the model carries, the device runs and is
installed) first answers the model's reference sample (test images saved by training, with PyTorch fp32's
outputs): it is eligible when its top-1 answer agrees on at least MIN_AGREEMENT of them, its probabilities
differ by at most MAX_PROBABILITY_DIFF on average, and (for a model with an OOD score) its known/unknown flag
agrees on at least MIN_KNOWN_AGREEMENT. A sample of a few dozen images rarely holds the near-ties where an engine's
answers flip, so the agreement to expect is counted too, and must clear the same bars: every sample image's shift
of fp32's margin (its top class's probability less the best other's), applied to every sample image's margin
(``expected_agreement``), and likewise for the OOD score against its threshold. On a model whose answers sit near
ties, ONNX Runtime INT8 agreed on all 31 sample images, was expected at 97.6%, and measured 93.5% on 397 photos
(docs/performance.md). The eligible ones are then timed at the served batch size
for TIMING_SECONDS each, and the fastest serves. The result is cached per model and host (CPU, threads, batch
size, engine package versions), so a restart does not measure again.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from classifier.engines import MIN_AGREEMENT, MIN_KNOWN_AGREEMENT, Engine, EngineError

logger = logging.getLogger(__name__)

MAX_PROBABILITY_DIFF = 0.05  # mean over the sample of each image's largest |p - p_fp32|
TIMING_SECONDS = 1.0  # per engine, after one warm-up batch; at least two batches
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
PACKAGES = ("onnxruntime", "openvino", "torch")
RULE = "2: expected agreement"  # in the cache key: a choice made by an earlier eligibility rule is measured again


@dataclass(frozen=True)
class Candidate:
    """One engine's figures on this host; ``error`` says why it was not measured (it failed to build or run)."""

    name: str
    agreement: float | None = None
    probability_diff: float | None = None
    images_per_s: float | None = None
    error: str | None = None
    known_agreement: float | None = None  # of the known/unknown flag, for a model with an OOD score
    caveat: str | None = None  # training's comparison on the whole test split found it wanting (agreement_caveat)
    expected_agreement: float | None = None  # top-1, from its margin shifts across the sample (expected_agreement)
    expected_known_agreement: float | None = None  # the known/unknown flag's, likewise

    @property
    def eligible(self) -> bool:
        return (
            self.error is None
            and self.caveat is None
            and self.agreement is not None
            and self.agreement >= MIN_AGREEMENT
            and (self.expected_agreement is None or self.expected_agreement >= MIN_AGREEMENT)
            and self.probability_diff is not None
            and self.probability_diff <= MAX_PROBABILITY_DIFF
            and (self.known_agreement is None or self.known_agreement >= MIN_KNOWN_AGREEMENT)
            and (self.expected_known_agreement is None or self.expected_known_agreement >= MIN_KNOWN_AGREEMENT)
        )

    def describe(self) -> str:
        if self.error is not None:
            return f"{self.name} failed ({self.error})"
        speed = f", {self.images_per_s:.1f} images/s" if self.images_per_s is not None else ""
        known = f", known {self.known_agreement:.1%}" if self.known_agreement is not None else ""
        if self.expected_known_agreement is not None:
            known += f" (expected {self.expected_known_agreement:.1%})"
        expected = f" (expected {self.expected_agreement:.1%})" if self.expected_agreement is not None else ""
        verdict = (
            ""
            if self.eligible
            else " (not eligible" + (": training's test split disagrees" if self.caveat else "") + ")"
        )
        return (
            f"{self.name} {self.agreement:.1%} agreement{expected}, diff {self.probability_diff:.3f}{known}{speed}"
            f"{verdict}"
        )


@dataclass(frozen=True)
class EngineChoice:
    chosen: str
    candidates: tuple[Candidate, ...]
    host: str  # the cache key's host part, readable
    cached: bool = False

    def describe(self) -> str:
        source = "cached for this model and host" if self.cached else "measured"
        return f"engine auto -> {self.chosen} ({source}): " + "; ".join(c.describe() for c in self.candidates)

    def to_json(self) -> str:
        candidates = [asdict(c) for c in self.candidates]
        return json.dumps({"chosen": self.chosen, "host": self.host, "cached": self.cached, "candidates": candidates})

    @classmethod
    def from_json(cls, text: str, *, cached: bool | None = None) -> EngineChoice:
        data = json.loads(text)
        candidates = tuple(Candidate(**c) for c in data["candidates"])
        return cls(data["chosen"], candidates, data["host"], data.get("cached", False) if cached is None else cached)


def check(
    name: str, engine: Engine, images: np.ndarray, outputs: np.ndarray, classes: int, ood_threshold: float | None
) -> Candidate:
    """``engine``'s agreement with the reference ``outputs`` (PyTorch fp32's) on ``images``: top-1, probabilities,
    and with ``ood_threshold`` the known/unknown flag (the OOD score after the probabilities); each as observed on
    the sample and as expected from the engine's shifts across it."""
    out = np.concatenate([engine.predict(images[i : i + 16]) for i in range(0, len(images), 16)])
    probs, reference = out[:, :classes], outputs[:, :classes]
    agreement = float((probs.argmax(1) == reference.argmax(1)).mean())
    diff = float(np.abs(probs - reference).max(axis=1).mean())
    known = expected_known = None
    if ood_threshold is not None:
        known = float(((out[:, classes] <= ood_threshold) == (outputs[:, classes] <= ood_threshold)).mean())
        expected_known = expected_flag_agreement(outputs[:, classes], out[:, classes], ood_threshold)
    return Candidate(
        name,
        agreement,
        diff,
        known_agreement=known,
        expected_agreement=expected_agreement(reference, probs),
        expected_known_agreement=expected_known,
    )


def expected_agreement(reference: np.ndarray, probs: np.ndarray) -> float:
    """The top-1 agreement to expect of an engine that answers ``probs`` where fp32 answers ``reference`` [N, C]:
    each image's shift of its fp32 margin (the top class's probability less the best other's) applied to every
    image's fp32 margin, an answer flipping where the shifted margin falls below 0. N shifts times N margins: the
    flips of near-ties that N images alone would seldom show."""
    rows, top = np.arange(len(reference)), reference.argmax(1)

    def margin(p: np.ndarray) -> np.ndarray:
        others = p.copy()
        others[rows, top] = -np.inf
        return p[rows, top] - others.max(1)

    base = margin(reference)
    shifts = margin(probs) - base
    return float((base[None, :] + shifts[:, None] >= 0).mean())  # a NaN answer agrees nowhere


def expected_flag_agreement(reference: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    """The known/unknown flag's agreement to expect, as ``expected_agreement``'s: every image's shift of its OOD
    score applied to every image's fp32 score, against ``threshold``."""
    shifted = reference[None, :] + (scores - reference)[:, None]
    agrees = (shifted <= threshold) == (reference <= threshold)[None, :]
    return float((agrees & ~np.isnan(shifted)).mean())  # a NaN score agrees nowhere


def speed(
    engine: Engine,
    images: np.ndarray,
    batch_size: int,
    seconds: float = TIMING_SECONDS,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Images per second at ``batch_size`` (the sample repeated to fill a batch), timed for about ``seconds``."""
    batch = np.resize(images, (batch_size, *images.shape[1:]))
    engine.predict(batch)  # warm-up: first-call allocations and, for some engines, shape-specific compilation
    runs, start = 0, clock()
    while runs < 2 or clock() - start < seconds:
        engine.predict(batch)
        runs += 1
    return runs * batch_size / (clock() - start)


def measure(
    names: Sequence[str],
    build: Callable[[str], Engine],
    images: np.ndarray,
    outputs: np.ndarray,
    *,
    classes: int,
    batch_size: int,
    ood_threshold: float | None = None,
    seconds: float = TIMING_SECONDS,
    caveat: Callable[[str], str | None] = lambda name: None,
) -> list[Candidate]:
    """Every candidate checked on the sample, and the eligible ones timed; one that fails is recorded, not raised.
    ``caveat(name)``: why training's own comparison (on the whole test split, more images than the sample) rules
    the engine out, or None."""
    candidates = []
    for name in names:
        engine = None  # the previous candidate's memory goes before the next one is built
        try:
            engine = build(name)
            candidate = check(name, engine, images, outputs, classes, ood_threshold)
            candidate = Candidate(**{**asdict(candidate), "caveat": caveat(name)})
            if candidate.eligible:
                rate = speed(engine, images, batch_size, seconds)
                candidate = Candidate(**{**asdict(candidate), "images_per_s": rate})
        except Exception as exc:  # an engine that cannot run here is not a reason to stop the server
            candidate = Candidate(name, error=(str(exc).strip().splitlines() or [type(exc).__name__])[0])
        candidates.append(candidate)
    return candidates


def measure_model(
    tag: str, names: Sequence[str], threads: int, batch_size: int, cache_dir: Path | None
) -> list[Candidate]:
    """``measure`` for model ``tag`` on the CPU, its engines built as the server builds them. Run in a process of its
    own (spawned), so the engines it loads do not stay in the server's manager."""
    from classifier.device import CPU
    from classifier.engines import agreement_caveat, make_engine
    from classifier.store import describe_model, load_reference

    model = describe_model(tag)
    sample = load_reference(model)
    if sample is None:
        raise EngineError(f"model {tag} has no reference sample")
    return measure(
        names,
        lambda name: make_engine(model, name, CPU, threads=threads, cache_dir=cache_dir),
        sample.images,
        sample.outputs,
        classes=model.contract.num_classes,
        batch_size=batch_size,
        ood_threshold=model.contract.ood.threshold if model.contract.ood is not None else None,
        caveat=lambda name: agreement_caveat(model, name),
    )


def fastest(candidates: Sequence[Candidate]) -> str:
    """The fastest eligible candidate; EngineError when none is."""
    eligible = [c for c in candidates if c.eligible and c.images_per_s is not None]
    if not eligible:
        raise EngineError(
            "no engine reproduced PyTorch fp32 on the reference sample here: "
            + "; ".join(c.describe() for c in candidates)
            + "; set CLASSIFIER_ENGINE to one of them"
        )
    return max(eligible, key=lambda c: c.images_per_s or 0.0).name


def host_description(threads: int, batch_size: int, names: Sequence[str]) -> str:
    """What the measurement depends on besides the model: CPU, its matrix-unit flags, threads, batch size, candidates
    and the engine packages' versions."""
    model, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    versions = []
    for package in PACKAGES:
        try:
            versions.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    have = [f for f in CPU_FLAGS if f in flags]
    return (
        f"{model} [{' '.join(have) or 'no avx2'}], {os.cpu_count()} cores, {threads} threads, batch {batch_size}; "
        f"{', '.join(names)}; {', '.join(versions)}"
    )


def cache_path(cache_dir: Path, model_tag: str, host: str) -> Path:
    key = hashlib.sha256(f"{model_tag}\n{host}\n{RULE}".encode()).hexdigest()[:16]
    return cache_dir / "engine-choice" / f"{model_tag.replace(':', '-')}-{key}.json"


def cached(cache_dir: Path | None, model_tag: str, host: str) -> EngineChoice | None:
    """The choice made earlier for this model and host, if one is cached and readable."""
    if cache_dir is None:
        return None
    try:
        choice = EngineChoice.from_json(cache_path(cache_dir, model_tag, host).read_text(), cached=True)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return choice if choice.host == host else None


def remember(cache_dir: Path | None, model_tag: str, choice: EngineChoice) -> Path | None:
    """Cache ``choice`` and return where; not when a candidate failed (perhaps for a passing reason: memory, a
    busy host), so the next start measures again. A folder that cannot be written costs only that."""
    if cache_dir is None or any(c.error is not None for c in choice.candidates):
        return None
    path = cache_path(cache_dir, model_tag, choice.host)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(choice.to_json())
        os.replace(partial, path)  # two servers starting at once never leave half a file
    except OSError as exc:
        logger.warning("cannot cache the engine choice in %s (%s): the next start measures again", path, exc)
        return None
    return path
