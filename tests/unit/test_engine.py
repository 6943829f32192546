import numpy as np
import pytest
import torch

from service.architecture import build_classifier
from service.engine import TorchEngine, cpu_threads, pick_device
from service.model_store import LoadedModel
from service.preprocessing import normalize


def test_engine_matches_plain_forward(contract):
    torch.manual_seed(0)
    network = build_classifier(contract.backbone, contract.num_classes, contract.dropout).eval()
    batch = np.random.default_rng(0).integers(0, 255, (3, 3, 64, 64), dtype=np.uint8)
    with torch.inference_mode():
        expected = network(normalize(torch.from_numpy(batch), contract)).softmax(1).numpy()
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
    engine.warm_up()


def test_device_choice():
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no such CUDA device"):
            pick_device("cuda")
        with pytest.raises(ValueError, match="no such CUDA device"):
            pick_device("cuda:1")


def test_cpu_threads_share_cores():
    assert cpu_threads(3, 4) == 3
    assert cpu_threads(0, 10_000) == 1
