import importlib.util

import numpy as np
import pytest
import torch

from classifier.device import CPU, Device, cpu_threads, pick_device
from classifier.engines import EngineError, agreement_caveat, choose_engine
from classifier.engines.torch_engine import TorchEngine, batch_buckets, bucket_for, pad_batch
from classifier.network import build_classifier
from classifier.store import LoadedModel

ALL = ("torch", "onnx", "onnx-int8")


def test_engine_matches_plain_forward(contract):
    torch.manual_seed(0)
    network = build_classifier(contract.backbone, contract.num_classes, contract.dropout).eval()
    batch = np.random.default_rng(0).integers(0, 255, (3, 3, 64, 64), dtype=np.uint8)
    mean, std = torch.tensor(contract.mean).view(3, 1, 1), torch.tensor(contract.std).view(3, 1, 1)
    with torch.inference_mode():  # the contract's formula, written out: the engine must take uint8 and apply it
        expected = network((torch.from_numpy(batch).float() / 255 - mean) / std).softmax(1).numpy()
    threads = torch.get_num_threads()
    try:
        engine = TorchEngine(LoadedModel("t:1", contract, network, {}), torch.device("cpu"), threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    probs = engine.predict(batch)
    assert probs.shape == (3, 2) and probs.dtype == np.float32
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5)
    assert np.allclose(probs, expected, atol=1e-4)
    assert (engine.name, engine.device) == ("torch", "cpu")
    assert np.allclose(engine.predict(torch.from_numpy(batch)), expected, atol=1e-4)  # tensors too
    engine.warm_up()


def test_batch_buckets_cover_every_size_up_to_the_maximum():
    assert batch_buckets(16) == (1, 2, 4, 8, 16)
    assert batch_buckets(12) == (1, 2, 4, 8, 12)
    assert batch_buckets(1) == (1,)
    buckets = batch_buckets(12)
    assert [bucket_for(n, buckets) for n in (1, 2, 3, 5, 8, 9, 12)] == [1, 2, 4, 8, 8, 12, 12]
    with pytest.raises(ValueError, match="larger than the largest"):
        bucket_for(13, buckets)


def test_pad_batch_appends_zero_images_and_keeps_the_originals():
    batch = torch.full((3, 3, 2, 2), 7, dtype=torch.uint8)
    padded = pad_batch(batch, 8)
    assert padded.shape == (8, 3, 2, 2) and padded.dtype == torch.uint8
    assert (padded[:3] == 7).all() and (padded[3:] == 0).all()
    assert pad_batch(batch, 3) is batch


def test_device_choice():
    assert pick_device("cpu") == CPU and str(CPU) == "cpu"
    assert pick_device("auto") == (Device("cuda", 0) if torch.cuda.is_available() else CPU)
    assert str(Device("cuda", 1)) == "cuda:1" and Device("cuda", 1).to_torch() == torch.device("cuda", 1)
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        pick_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no such CUDA device"):
            pick_device("cuda")
        with pytest.raises(ValueError, match="no such CUDA device"):
            pick_device("cuda:1")


def test_cpu_threads_share_cores():
    assert cpu_threads(3, 4) == 3
    assert cpu_threads(0, 10_000) == 1


@pytest.mark.parametrize(
    "choice, device, available, expected",
    [
        ("auto", "cpu", ALL, "onnx"),
        ("auto", "cpu", ("torch",), "torch"),
        ("auto", "cuda", ALL, "torch"),
        ("onnx-int8", "cpu", ALL, "onnx-int8"),
        ("torch", "cpu", ALL, "torch"),
        ("torch", "cuda", ("torch",), "torch"),
    ],
)
def test_engine_choice(choice, device, available, expected):
    assert choose_engine(choice, Device(device), available) == expected


def test_engines_whose_packages_are_missing_are_not_chosen(monkeypatch):
    """The CPU container image has no torch: auto takes ONNX Runtime, and torch is refused in one line."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    assert choose_engine("auto", CPU, ALL) == "onnx"
    for choice, available in (("auto", ("torch",)), ("torch", ALL)):
        with pytest.raises(EngineError, match="engine torch needs torch, torchvision, not installed here"):
            choose_engine(choice, CPU, available)


def test_engine_choice_refuses_what_cannot_be_served():
    with pytest.raises(EngineError, match="has no model.int8.onnx .*--export onnx-int8"):
        choose_engine("onnx-int8", CPU, ("torch", "onnx"))
    with pytest.raises(EngineError, match="runs on cpu only"):
        choose_engine("onnx", Device("cuda", 0), ALL)
    with pytest.raises(EngineError, match="unknown engine 'tensorrt'"):
        choose_engine("tensorrt", CPU, ALL)


def test_int8_caveat_only_below_the_agreement_threshold(contract):
    from classifier.store import ModelDescription

    def model(engines):
        return ModelDescription("m:1", contract, {"engines": engines} if engines is not None else {}, "w", {})

    assert agreement_caveat(model(None), "onnx-int8") is None
    assert agreement_caveat(model({"onnx-int8": {"top1_agreement_with_fp32": 0.995}}), "onnx-int8") is None
    low = model({"onnx-int8": {"top1_agreement_with_fp32": 0.9, "accuracy_change": -0.05}})
    caveat = agreement_caveat(low, "onnx-int8")
    assert "onnx-int8" in caveat and "90.0%" in caveat and "-0.050" in caveat
    assert agreement_caveat(low, "onnx") is None  # only the engine that disagreed


def test_caveat_when_an_engine_answers_known_differently(contract):
    from classifier.store import ModelDescription

    def model(entry):
        return ModelDescription("m:1", contract, {"engines": {"onnx-int8": entry}}, "w", {})

    fine = {"top1_agreement_with_fp32": 1.0, "known_agreement_with_torch": 0.97}
    assert agreement_caveat(model(fine), "onnx-int8") is None
    caveat = agreement_caveat(model({**fine, "known_agreement_with_torch": 0.935}), "onnx-int8")
    assert "known/unknown answer agreed with PyTorch on only 93.5%" in caveat and "top-1" not in caveat
