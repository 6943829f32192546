"""CLASSIFIER_ENGINE=auto by measurement, with fake engines: the fastest eligible one wins, an ineligible one never
serves (also one whose shifts would flip near-ties the sample has too few of), a failing one is recorded, and the
cache is keyed by model and host."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

from classifier.engines import EngineError
from classifier.engines import choice as engine_choice
from classifier.engines.choice import Candidate, EngineChoice, fastest, measure

CLASSES = 3
IMAGES = np.arange(8, dtype=np.uint8).reshape(8, 1, 1, 1).repeat(3, axis=1)
OUTPUTS = np.eye(CLASSES, dtype=np.float32)[np.arange(8) % CLASSES]  # the "fp32" answers: image i -> class i % 3


class FakeEngine:
    """Answers like the reference, except for ``wrong`` images; each call costs ``seconds_per_image``."""

    device = "cpu"

    def __init__(self, name: str, seconds_per_image: float, wrong: int = 0) -> None:
        self.name, self.seconds_per_image, self.wrong = name, seconds_per_image, wrong

    def predict(self, batch: np.ndarray) -> np.ndarray:
        time.sleep(self.seconds_per_image * len(batch))
        labels = batch[:, 0, 0, 0].astype(int) % CLASSES
        labels = np.where(batch[:, 0, 0, 0] < self.wrong, (labels + 1) % CLASSES, labels)
        return np.eye(CLASSES, dtype=np.float32)[labels]

    def warm_up(self, batch_size: int = 1) -> None:
        pass


def _measure(engines: dict[str, FakeEngine], seconds: float = 0.05) -> list[Candidate]:
    def build(name: str) -> FakeEngine:
        if name not in engines:
            raise RuntimeError(f"{name} is broken\nsecond line")
        return engines[name]

    return measure(list(engines) + ["broken"], build, IMAGES, OUTPUTS, classes=CLASSES, batch_size=4, seconds=seconds)


def test_the_fastest_eligible_engine_wins():
    candidates = _measure({"slow": FakeEngine("slow", 0.004), "fast": FakeEngine("fast", 0.0005)})
    assert [c.name for c in candidates] == ["slow", "fast", "broken"]
    assert candidates[1].images_per_s > 2 * candidates[0].images_per_s
    assert fastest(candidates) == "fast"


def test_an_engine_that_disagrees_with_fp32_never_serves_however_fast():
    candidates = _measure({"exact": FakeEngine("exact", 0.004), "sloppy": FakeEngine("sloppy", 0.0, wrong=1)})
    sloppy = candidates[1]
    assert sloppy.agreement == pytest.approx(7 / 8) and not sloppy.eligible
    assert sloppy.images_per_s is None  # not even timed
    assert fastest(candidates) == "exact"


def test_a_failing_engine_is_recorded_with_its_first_line_and_never_serves():
    candidates = _measure({"only": FakeEngine("only", 0.0)})
    assert candidates[-1] == Candidate("broken", error="broken is broken")
    assert fastest(candidates) == "only"


def test_no_eligible_engine_stops_with_what_each_measured():
    with pytest.raises(EngineError, match="sloppy 87.5% agreement.*not eligible.*broken failed"):
        fastest(_measure({"sloppy": FakeEngine("sloppy", 0.0, wrong=1)}))


def test_a_probability_difference_beyond_the_bound_makes_an_engine_ineligible():
    close = Candidate("a", agreement=1.0, probability_diff=engine_choice.MAX_PROBABILITY_DIFF, images_per_s=1.0)
    far = Candidate("b", agreement=1.0, probability_diff=engine_choice.MAX_PROBABILITY_DIFF + 0.01, images_per_s=9.0)
    assert close.eligible and not far.eligible
    assert fastest([close, far]) == "a"


def test_speed_counts_images_over_the_timed_calls():
    ticks = itertools.count(0.0, 0.5)  # every clock reading half a second later
    rate = engine_choice.speed(FakeEngine("x", 0.0), IMAGES, 16, seconds=1.0, clock=lambda: next(ticks))
    # start at 0; two runs before the clock is read; at 0.5 a third; at 1.0 stop; the end reads 1.5
    assert rate == pytest.approx(3 * 16 / 1.5)


def test_the_cache_returns_a_choice_for_the_same_model_and_host_only(tmp_path):
    choice = EngineChoice("fast", (Candidate("fast", 1.0, 0.0, 50.0),), host="cpu A, 2 threads")
    engine_choice.remember(tmp_path, "m:v1", choice)
    again = engine_choice.cached(tmp_path, "m:v1", "cpu A, 2 threads")
    assert again is not None and again.cached and again.chosen == "fast" and again.candidates == choice.candidates
    assert engine_choice.cached(tmp_path, "m:v2", "cpu A, 2 threads") is None  # another model
    assert engine_choice.cached(tmp_path, "m:v1", "cpu B, 2 threads") is None  # another host
    assert engine_choice.cached(None, "m:v1", "cpu A, 2 threads") is None


def test_an_unreadable_cache_entry_means_measuring_again(tmp_path):
    path = engine_choice.cache_path(tmp_path, "m:v1", "h")
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert engine_choice.cached(tmp_path, "m:v1", "h") is None


def test_the_host_description_names_the_cpu_threads_batch_and_packages():
    host = engine_choice.host_description(3, 16, ["onnx", "openvino"])
    assert "3 threads, batch 16" in host and "onnx, openvino" in host and "onnxruntime " in host
    assert host != engine_choice.host_description(2, 16, ["onnx", "openvino"])


def test_a_choice_survives_the_environment_round_trip():
    choice = EngineChoice("b", (Candidate("a", error="x"), Candidate("b", 1.0, 0.01, 9.5)), host="h", cached=True)
    assert EngineChoice.from_json(choice.to_json()) == choice
    assert "engine auto -> b (cached for this model and host): a failed (x); b 100.0% agreement" in choice.describe()


def test_an_engine_whose_ood_score_flips_the_known_flag_is_not_eligible():
    class Shifted(FakeEngine):
        def predict(self, batch):
            out = super().predict(batch)
            return np.concatenate([out, np.full((len(batch), 1), 2.0, np.float32)], axis=1)  # OOD score 2

    reference = np.concatenate([OUTPUTS, np.full((8, 1), 0.5, np.float32)], axis=1)  # fp32's OOD score 0.5
    below, across = (
        measure(["s"], lambda _: Shifted("s", 0.0), IMAGES, reference, classes=CLASSES, batch_size=4,
                ood_threshold=threshold, seconds=0.01)[0]
        for threshold in (3.0, 1.0)  # both scores on the same side of 3; 0.5 and 2 on either side of 1
    )  # fmt: skip
    assert (below.known_agreement, below.eligible) == (1.0, True)
    assert (across.known_agreement, across.eligible) == (0.0, False)


def _near_ties(count: int = 32, ties: int = 4) -> np.ndarray:
    """fp32's probabilities for two classes: ``ties`` images within 0.02 of a tie, the rest sure."""
    top = np.where(np.arange(count) < ties, 0.51, 0.95)
    return np.stack([top, 1 - top], axis=1).astype(np.float32)


def test_the_expected_agreement_counts_the_near_ties_a_sample_has_too_few_of():
    reference = _near_ties()
    nudged = reference.copy()
    nudged[-1] = [0.90, 0.10]  # one sure image moved by 0.05 towards a tie: no answer of the sample flips...
    expected = engine_choice.expected_agreement(reference, nudged)
    assert expected == pytest.approx(1 - 4 / 32**2)  # ...but that shift would flip each of the 4 near-ties
    assert engine_choice.expected_agreement(reference, reference) == 1.0
    flipped = reference[:, ::-1].copy()  # every answer flipped: the near-ties' shift (0.04) flips only near-ties
    assert engine_choice.expected_agreement(reference, flipped) == pytest.approx(4 * 28 / 32**2)


class Fixed:
    """An engine that answers ``outputs``: row i for image i (an image's pixels hold its index)."""

    def __init__(self, outputs: np.ndarray) -> None:
        self.outputs = outputs

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self.outputs[batch[:, 0, 0, 0]]


def test_the_expected_agreement_with_three_classes_and_a_broken_engine():
    reference = np.float32([[0.40, 0.35, 0.25], [0.8, 0.1, 0.1]])  # margins 0.05 and 0.7
    moved = np.float32([[0.40, 0.35, 0.25], [0.7, 0.1, 0.2]])  # the sure one 0.2 nearer its third class
    assert engine_choice.expected_agreement(reference, moved) == pytest.approx(3 / 4)  # that shift flips the near-tie
    broken = np.full_like(reference, np.nan)
    assert engine_choice.expected_agreement(reference, broken) == 0.0
    assert engine_choice.expected_flag_agreement(np.float32([0.5, 2.0]), np.float32([np.nan, 2.0]), 1.0) == 0.5


def test_an_engine_that_moves_near_ties_is_not_eligible_though_the_sample_agrees():
    reference = _near_ties()
    sure = reference[:, :1] > 0.9
    drifting = reference - np.float32([0.03, -0.03]) * sure  # the sure answers 0.03 nearer a tie: none flips here
    engines = {"steady": Fixed(reference), "drifting": Fixed(drifting)}
    images = np.arange(32, dtype=np.uint8).reshape(32, 1, 1, 1).repeat(3, axis=1)
    candidates = measure(list(engines), engines.__getitem__, images, reference, classes=2, batch_size=32, seconds=0.01)
    steady, drift = candidates
    assert drift.agreement == 1.0 and drift.expected_agreement < engine_choice.MIN_AGREEMENT
    assert not drift.eligible and drift.images_per_s is None and "(expected" in drift.describe()
    assert steady.eligible and fastest(candidates) == "steady"


def test_the_expected_known_flag_agreement_counts_scores_near_the_threshold():
    reference = np.array([0.9, 0.95, 2.0, 2.0], np.float32)  # two scores just under the threshold 1
    assert engine_choice.expected_flag_agreement(reference, reference, 1.0) == 1.0
    raised = reference + np.float32([0.0, 0.0, 0.0, 0.2])  # one image's score moved by 0.2, its flag unchanged
    assert engine_choice.expected_flag_agreement(reference, raised, 1.0) == pytest.approx(1 - 2 / 16)


def test_training_s_verdict_on_the_whole_test_split_overrides_a_lucky_sample():
    engines = {"exact": FakeEngine("exact", 0.004), "lucky": FakeEngine("lucky", 0.0)}
    candidates = measure(
        list(engines),
        engines.__getitem__,
        IMAGES,
        OUTPUTS,
        classes=CLASSES,
        batch_size=4,
        seconds=0.01,
        caveat=lambda name: "agreed on 97%" if name == "lucky" else None,
    )
    assert candidates[1].agreement == 1.0 and not candidates[1].eligible and candidates[1].images_per_s is None
    assert fastest(candidates) == "exact"
    assert "training's test split disagrees" in candidates[1].describe()


def test_a_choice_with_a_failed_candidate_is_not_cached(tmp_path):
    failed = EngineChoice("a", (Candidate("a", 1.0, 0.0, 5.0), Candidate("b", error="out of memory")), host="h")
    assert engine_choice.remember(tmp_path, "m:v1", failed) is None
    assert engine_choice.cached(tmp_path, "m:v1", "h") is None
    assert not list(tmp_path.rglob("*.tmp"))


def test_the_reference_sample_is_saved_with_the_model_and_read_back(contract, tmp_path):
    from classifier.network import build_classifier
    from classifier.store import REFERENCE_FILE, ReferenceSample, describe_model, load_reference, save_model

    network = build_classifier(contract.backbone, contract.num_classes, contract.dropout)
    images = np.random.default_rng(0).integers(0, 255, (5, 3, 64, 64), dtype=np.uint8)
    outputs = np.random.default_rng(1).random((5, contract.output_width)).astype(np.float32)
    saved = describe_model(
        save_model(
            "reference-test", network, contract, metadata={}, report={}, reference=ReferenceSample(images, outputs)
        )
    )
    sample = load_reference(saved)
    assert saved.reference_path.endswith(REFERENCE_FILE)
    assert np.array_equal(sample.images, images) and np.array_equal(sample.outputs, outputs)
    assert (
        describe_model(save_model("reference-test", network, contract, metadata={}, report={})).reference_path is None
    )
    wrong = ReferenceSample(images[:, :, :32, :32], outputs)  # not the contract's image size
    assert load_reference(describe_model(
        save_model("reference-test", network, contract, metadata={}, report={}, reference=wrong)
    )) is None  # fmt: skip
