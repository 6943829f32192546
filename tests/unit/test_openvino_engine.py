"""OpenVINO on the graphs training saves, against ONNX Runtime on the same graphs, on real photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from classifier.engines import ENGINES, EngineError, ExportRequest
from classifier.engines.ort_engine import OnnxEngine
from classifier.network import build_classifier
from classifier.preprocessing import prepare_image
from tests.conftest import ODD_IMAGES, small_contract
from tests.support.ood import fit_ood

pytest.importorskip("openvino")
from classifier.engines.openvino_engine import OpenVinoEngine  # noqa: E402

PHOTOS = ["hopper.jpg", "hopper.png", "hopper_gray.jpg", "orientation_rectangle.jpg", "pil_sample_cmyk.jpg"]


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    contract = small_contract(("a", "b", "c"))
    torch.manual_seed(0)
    network = build_classifier(contract.backbone, contract.num_classes, contract.dropout).eval()
    photos = np.stack([prepare_image((ODD_IMAGES / name).read_bytes(), contract) for name in PHOTOS])
    noise = np.random.default_rng(2).integers(0, 255, (30, 3, 64, 64), dtype=np.uint8)
    contract = fit_ood(network, contract, torch.from_numpy(noise))  # fitted on noise: the photos are out of it
    folder = tmp_path_factory.mktemp("openvino")
    fp32 = ENGINES["onnx"].export(ExportRequest(network, contract, folder, photos, {}))
    int8 = ENGINES["onnx-int8"].export(ExportRequest(network, contract, folder, photos, {"onnx": fp32}))
    return contract, photos, fp32, int8


@pytest.mark.parametrize("graph", ["fp32", "int8"])
def test_openvino_answers_as_onnx_runtime_on_the_same_graph(graphs, graph, tmp_path):
    contract, photos, fp32, int8 = graphs
    path = fp32 if graph == "fp32" else int8
    engine = OpenVinoEngine(path, contract, threads=1, name="openvino", cache_dir=tmp_path)
    expected = OnnxEngine(path, contract, threads=1).predict(photos)
    for n in (1, len(photos)):  # the batch dimension stays dynamic
        out = engine.predict(photos[:n])
        assert out.shape == (n, 4) and out.dtype == np.float32
        assert np.allclose(out[:, :3].sum(1), 1.0, atol=1e-3)
        # bf16 on a CPU with AMX: close, not equal
        assert np.abs(out[:, :3] - expected[:n, :3]).max() < 0.05, engine.precision
        # the OOD score gives the same known/unknown flag (here: unknown, the photos are unlike the noise)
        threshold = contract.ood.threshold
        assert ((out[:, 3] > threshold) == (expected[:n, 3] > threshold)).all() and (expected[:n, 3] > threshold).all()
    assert engine.precision in {"f32", "bf16", "f16"}
    assert any(tmp_path.iterdir())  # the compiled model was cached for the next start


def test_a_foreign_file_is_refused_with_what_to_do(graphs, tmp_path):
    contract, *_ = graphs
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not a graph")
    with pytest.raises(EngineError, match="cannot load .*model.onnx with OpenVINO"):
        OpenVinoEngine(bad, contract, threads=1, name="openvino")
