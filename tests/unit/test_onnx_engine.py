"""The ONNX Runtime engines against PyTorch, on a small network (with a fitted OOD score) exported once for the
module."""

import numpy as np
import pytest
import torch

from classifier.engines import ENGINES, EngineError, ExportRequest
from classifier.engines.ort_engine import OnnxEngine
from classifier.engines.ort_int8 import nodes_outside_the_convolutions
from classifier.engines.torch_engine import TorchEngine
from classifier.network import build_classifier
from classifier.store import LoadedModel
from tests.conftest import small_contract
from tests.support.ood import fit_ood
from training.engine_export import compare_engines, ood_scales


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    contract = small_contract(("a", "b", "c"))
    torch.manual_seed(0)
    network = build_classifier(contract.backbone, contract.num_classes, contract.dropout).eval()
    contract = fit_ood(network, contract, torch.from_numpy(_images(30, seed=2)))
    folder = tmp_path_factory.mktemp("onnx")
    calibration = np.random.default_rng(0).integers(0, 255, (20, 3, 64, 64), dtype=np.uint8)
    fp32 = ENGINES["onnx"].export(ExportRequest(network, contract, folder, calibration, {}))
    int8 = ENGINES["onnx-int8"].export(ExportRequest(network, contract, folder, calibration, {"onnx": fp32}))
    return contract, network, fp32, int8


def _images(n, seed=1):
    return np.random.default_rng(seed).integers(0, 255, (n, 3, 64, 64), dtype=np.uint8)


def test_onnx_fp32_gives_pytorch_predictions(exported):
    contract, network, fp32, _ = exported
    reference = TorchEngine(LoadedModel("t:1", contract, network, {}), torch.device("cpu"), threads=1)
    engine = OnnxEngine(str(fp32), contract, threads=1)
    for n in (1, 5):  # the batch dimension is dynamic
        images = _images(n)
        out, expected = engine.predict(images), reference.predict(images)
        assert out.shape == (n, 4) and out.dtype == np.float32  # 3 probabilities, then the OOD score
        assert np.allclose(out[:, :3], expected[:, :3], atol=1e-4)
        assert np.allclose(out[:, 3], expected[:, 3], rtol=1e-3) and (out[:, 3] > 0).all()
    assert (engine.name, engine.device) == ("onnx", "cpu")
    engine.warm_up(2)


def test_int8_is_quantized_and_close_to_fp32(exported):
    contract, _, fp32, int8 = exported
    assert int8.stat().st_size < fp32.stat().st_size / 3  # int8 weights
    images = _images(16)
    full = OnnxEngine(str(fp32), contract, threads=1)
    quantized = OnnxEngine(str(int8), contract, threads=1, name="onnx-int8")
    assert np.allclose(quantized.predict(images)[:, :3].sum(1), 1.0, atol=1e-5)
    # The log-probabilities follow fp32's closely (a broken quantization gives unrelated or constant ones).
    q = np.log(quantized.predict(images)[:, :3] + 1e-12).ravel()
    f = np.log(full.predict(images)[:, :3] + 1e-12).ravel()
    assert np.corrcoef(q, f)[0, 1] > 0.95


def test_engine_comparison_report(exported):
    contract, network, fp32, int8 = exported
    images = _images(8)
    reference = TorchEngine(LoadedModel("t:1", contract, network, {}), torch.device("cpu"), threads=1).predict(images)
    labels = reference[:, :3].argmax(1)
    report = compare_engines(
        {
            "onnx": OnnxEngine(str(fp32), contract, threads=1),
            "onnx-int8": OnnxEngine(str(int8), contract, threads=1, name="onnx-int8"),
        },
        reference,
        images,
        labels,
        contract,
    )
    assert report["images"] == 8 and report["torch_accuracy"] == 1.0
    fp32_entry = report["onnx"]
    assert fp32_entry["accuracy"] == 1.0 and fp32_entry["top1_agreement_with_torch"] == 1.0
    assert fp32_entry["max_rel_ood_score_diff"] < 1e-3 and fp32_entry["known_agreement_with_torch"] == 1.0
    q = report["onnx-int8"]
    assert q["accuracy_change"] == pytest.approx(q["accuracy"] - 1.0)
    assert 0 <= q["top1_agreement_with_fp32"] <= 1 and q["speedup_vs_fp32"] > 0
    assert 0 <= q["median_rel_ood_score_diff"] <= q["max_rel_ood_score_diff"]


def test_ood_scales_put_each_engine_on_pytorchs_scale(exported):
    """The scale maps the engine's accept-rate quantile of validation scores onto the contract's threshold; an
    engine already on PyTorch's scale (fp32) gets none."""
    contract, _, fp32, _ = exported
    engine = OnnxEngine(str(fp32), contract, threads=1)
    val = _images(30, seed=2)  # the images the threshold was set on
    assert ood_scales({"onnx": engine}, val, contract) == {}
    doubled = contract.model_copy(
        update={"ood": contract.ood.model_copy(update={"threshold": 2 * contract.ood.threshold})}
    )
    assert ood_scales({"onnx": engine}, val, doubled) == {"onnx": pytest.approx(2.0, rel=1e-3)}


def test_a_corrupt_or_foreign_graph_is_refused(exported, tmp_path):
    contract, _, fp32, _ = exported
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(fp32.read_bytes()[:5000])
    with pytest.raises(EngineError, match="cannot load"):
        OnnxEngine(str(broken), contract, threads=1)
    with pytest.raises(EngineError, match="cannot load"):
        OnnxEngine(str(tmp_path / "missing.onnx"), contract, threads=1)
    bigger = contract.model_copy(update={"image_size": 96, "resize_size": 110})
    with pytest.raises(EngineError, match=r"not images \[N, 3, 96, 96\]"):
        OnnxEngine(str(fp32), bigger, threads=1)


def test_the_graph_takes_uint8_and_returns_probabilities(exported):
    _, _, fp32, int8 = exported
    import onnx

    for path in (fp32, int8):
        graph = onnx.load(str(path), load_external_data=False).graph
        assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
        assert [o.name for o in graph.output] == ["scores"]
        assert graph.node[-1].op_type == "Concat"  # the probabilities, then the OOD score


def test_only_the_convolutions_are_quantized(exported):
    """The normalisation before the first Conv and the head after the last get no QDQ nodes."""
    import onnx

    _, _, fp32, int8 = exported
    nodes = onnx.load(str(fp32), load_external_data=False).graph.node
    outside = set(nodes_outside_the_convolutions(fp32))
    assert {"Cast", "Mul", "Sub", "Gemm", "Softmax", "MatMul"} <= {n.op_type for n in nodes if n.name in outside}
    assert not {n.op_type for n in nodes if n.name in outside} & {"Conv"}
    quantized = onnx.load(str(int8), load_external_data=False).graph.node
    dequantized = {out for n in quantized if n.op_type == "DequantizeLinear" for out in n.output}
    # The normalisation, the head and the OOD score read fp32 activations and weights.
    for op in ("Gemm", "Mul", "Sub", "MatMul", "Softmax"):
        nodes_of = [n for n in quantized if n.op_type == op]
        assert nodes_of and not any(dequantized & set(n.input) for n in nodes_of), op
    convs = [n for n in quantized if n.op_type == "Conv"]
    assert all(n.input[1] in dequantized for n in convs)  # every convolution has int8 weights
    assert convs[0].input[0] in dequantized  # the first one reads the normalised image, quantized once


def test_a_graph_from_before_uint8_inputs_is_refused_with_the_fix(exported, tmp_path):
    """Models saved by earlier versions carry a graph that takes normalised float32 and returns logits."""
    contract, network, _, _ = exported
    old = tmp_path / "old.onnx"
    torch.onnx.export(
        network, (torch.zeros(1, 3, 64, 64),), str(old), dynamo=True, input_names=["images"], output_names=["logits"]
    )
    with pytest.raises(EngineError, match="takes tensor\\(float\\), not uint8 images: it was exported by an older"):
        OnnxEngine(old, contract, threads=1)


def test_serving_int8_needs_neither_onnx_nor_the_quantizer(exported):
    """A serving image installs ONNX Runtime only: building the INT8 engine must not import what exporting needs."""
    import subprocess
    import sys

    contract, _, _, int8 = exported
    code = (
        "import sys; sys.modules['onnx'] = None; sys.modules['onnxruntime.quantization'] = None\n"
        "from classifier.contract import ModelContract; from classifier.engines import ENGINES\n"
        f"contract = ModelContract.model_validate_json({contract.model_dump_json()!r})\n"
        f"print(ENGINES['onnx-int8'].load({str(int8)!r}, contract, 1).name)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "onnx-int8", result.stderr[-2000:]
