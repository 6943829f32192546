"""The engine registry: an engine is one module plus one registry entry, and everything that lists engines
(the service's settings, the training CLI, the store, the engine factory) picks a new one up."""

from __future__ import annotations

import numpy as np
import pytest

from classifier.device import CPU
from classifier.engines import ENGINES, EngineSpec, ExportRequest, make_engine, register, with_requirements
from classifier.network import build_classifier
from classifier.store import describe_model, save_model
from service.settings import ServiceSettings, SettingsError
from training.config import parse_args

FAKE = EngineSpec("fake", "tests.support.fake_engine", ("cpu",), file="fake.txt", summary="always the last class")


@pytest.fixture
def fake_engine():
    register(FAKE)  # the registry entry, undone after the test
    yield FAKE
    del ENGINES[FAKE.name]


def test_built_in_engines_are_data():
    assert list(ENGINES) == ["torch", "onnx", "onnx-int8", "openvino", "openvino-int8"]
    assert ENGINES["onnx-int8"].requires == ("onnx",) and ENGINES["torch"].file is None
    assert ENGINES["openvino-int8"].reads_file == "model.int8.onnx" and not ENGINES["openvino"].exportable
    assert with_requirements(("onnx-int8",)) == ("onnx", "onnx-int8")
    with pytest.raises(ValueError, match="already exists"):
        register(ENGINES["onnx"])


def test_a_new_engine_needs_only_a_module_and_a_registry_entry(fake_engine, contract, tmp_path):
    # the service accepts it, the training CLI offers it
    assert ServiceSettings.from_env({"CLASSIFIER_ENGINE": "fake"}).engine == "fake"
    assert parse_args(["--export", "fake"]).export == ("fake",)
    # its export step writes its file; the store saves it and finds it again; the factory builds it
    network = build_classifier(contract.backbone, contract.num_classes, contract.dropout)
    exported = FAKE.export(ExportRequest(network, contract, tmp_path, np.zeros((0, 3, 64, 64), np.uint8), {}))
    model = describe_model(
        save_model("fake-engine-test", network, contract, metadata={}, report={}, engine_files={"fake": exported})
    )
    assert model.engines == ("torch", "fake")
    engine = make_engine(model, "fake", CPU, threads=1)
    assert engine.predict(np.zeros((2, 3, 64, 64), np.uint8)).argmax(1).tolist() == [1, 1]  # the last class


def test_an_unknown_engine_is_refused_in_one_line():
    with pytest.raises(
        SettingsError,
        match="CLASSIFIER_ENGINE='fake': choose auto or one of: torch, onnx, onnx-int8, openvino, openvino-int8",
    ):
        ServiceSettings.from_env({"CLASSIFIER_ENGINE": "fake"})


def test_an_engine_on_another_ood_scale_is_put_on_pytorchs(fake_engine, contract, tmp_path):
    """make_engine applies the contract's score scale for the engine: the service sees one scale whatever serves."""
    from classifier.contract import OodContract

    network = build_classifier(contract.backbone, contract.num_classes, contract.dropout, ood_dims=8)
    ood = OodContract(dims=8, threshold=1.5, accept_rate=0.95, score_scales={"fake": 2.5})
    scaled = contract.model_copy(update={"ood": ood})
    exported = FAKE.export(ExportRequest(network, scaled, tmp_path, np.zeros((0, 3, 64, 64), np.uint8), {}))
    model = describe_model(
        save_model("fake-scale-test", network, scaled, metadata={}, report={}, engine_files={"fake": exported})
    )
    engine = make_engine(model, "fake", CPU, threads=1)
    out = engine.predict(np.zeros((2, 3, 64, 64), np.uint8))
    assert out[:, 2].tolist() == [2.5, 2.5] and out[:, :2].tolist() == [[0.0, 1.0], [0.0, 1.0]]
    assert (engine.name, engine.device) == ("fake", "cpu")
    assert make_engine(model, "torch", CPU, threads=1).name == "torch"  # no scale: not wrapped


def test_the_scale_of_the_engines_precision_is_applied(fake_engine, contract, tmp_path, monkeypatch):
    """The torch engine on a GPU runs in bfloat16 or float16: its scale is looked up as "torch:bfloat16"."""
    from classifier.contract import OodContract
    from tests.support.fake_engine import ConstantEngine

    network = build_classifier(contract.backbone, contract.num_classes, contract.dropout, ood_dims=8)
    ood = OodContract(dims=8, threshold=1.5, accept_rate=0.95, score_scales={"fake": 2.5, "fake:bfloat16": 0.8})
    scaled = contract.model_copy(update={"ood": ood})
    exported = FAKE.export(ExportRequest(network, scaled, tmp_path, np.zeros((0, 3, 64, 64), np.uint8), {}))
    model = describe_model(
        save_model("fake-precision-test", network, scaled, metadata={}, report={}, engine_files={"fake": exported})
    )
    monkeypatch.setattr(ConstantEngine, "precision", "bfloat16")
    out = make_engine(model, "fake", CPU, threads=1).predict(np.zeros((1, 3, 64, 64), np.uint8))
    assert out[0, 2] == pytest.approx(0.8)
    monkeypatch.setattr(ConstantEngine, "precision", "float16")  # no scale measured for it: left as it is
    assert make_engine(model, "fake", CPU, threads=1).predict(np.zeros((1, 3, 64, 64), np.uint8))[
        0, 2
    ] == pytest.approx(1.0)


@pytest.mark.parametrize("ood_dims", [0, 8])
def test_the_torch_free_weight_check_knows_the_networks_shapes(contract, ood_dims):
    """describe_model checks the head's (and OOD module's) shapes without torch; they must be build_network's."""
    from classifier.contract import OodContract
    from classifier.network import build_network
    from classifier.store import outside_backbone_shapes

    if ood_dims:
        contract = contract.model_copy(update={"ood": OodContract(dims=ood_dims, threshold=1.0, accept_rate=0.95)})
    state = build_network(contract).state_dict()
    built = {k: tuple(v.shape) for k, v in state.items() if not k.startswith("backbone.")}
    assert outside_backbone_shapes(contract) == built


def test_auto_measures_the_candidates_once_then_reads_the_cache(fake_engine, contract, tmp_path, monkeypatch):
    """CLASSIFIER_ENGINE=auto on the CPU: torch and the fake engine are checked on the model's reference sample;
    the fake one (always the last class, probability 1) is not eligible, so torch serves; a restart reads the cache,
    and the workers get the measurement with the pinned engine."""
    import service.startup as startup
    from classifier.store import ReferenceSample

    network = build_classifier(contract.backbone, contract.num_classes, contract.dropout)
    exported = FAKE.export(ExportRequest(network, contract, tmp_path, np.zeros((0, 3, 64, 64), np.uint8), {}))
    first = describe_model(save_model("auto-test", network, contract, metadata={}, report={}))
    images = np.random.default_rng(0).integers(0, 255, (6, 3, 64, 64), dtype=np.uint8)
    outputs = make_engine(first, "torch", CPU, threads=1).predict(images)
    tag = save_model(
        "auto-test",
        network,
        contract,
        metadata={},
        report={},
        engine_files={"fake": exported},
        reference=ReferenceSample(images, outputs),
    )
    runs = []

    def inline(function, *args):
        runs.append(args)
        return function(*args)

    monkeypatch.setattr(startup, "in_own_process", inline)
    for var in ("CLASSIFIER_MODEL_TAG", "CLASSIFIER_DEVICE", "CLASSIFIER_ENGINE", startup.CHOICE_ENV):
        monkeypatch.setenv(var, "")  # recorded, so that what pin() writes is undone after the test
        monkeypatch.delenv(var)
    env = {"CLASSIFIER_MODEL_TAG": tag, "CLASSIFIER_DEVICE": "cpu", "CLASSIFIER_CACHE_DIR": str(tmp_path / "cache")}
    settings = ServiceSettings.from_env(env)
    serving = startup.decide(settings)
    assert serving.engine == "torch" and len(runs) == 1
    torch_row, fake_row = serving.choice.candidates
    assert (torch_row.name, torch_row.agreement, torch_row.eligible) == ("torch", 1.0, True)
    assert torch_row.images_per_s > 0
    assert (fake_row.name, fake_row.eligible, fake_row.images_per_s) == ("fake", False, None)

    again = startup.decide(settings)  # a restart on the same host
    assert (again.engine, again.choice.cached, len(runs)) == ("torch", True, 1)
    startup.pin(again)
    assert startup.reported_choice() == again.choice  # what the front shows in /v1/model
    forced = startup.decide(ServiceSettings.from_env({**env, "CLASSIFIER_ENGINE": "fake"}))
    assert (forced.engine, forced.choice) == ("fake", None)  # an explicit choice is never second-guessed
