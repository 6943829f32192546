"""The out-of-distribution score: fitting (training/ood.py), the module in the serving graph (classifier/ood.py),
and how the network and the store carry it."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from classifier.contract import OodContract
from classifier.network import ServingNet, build_classifier, build_network
from classifier.ood import MahalanobisScore
from classifier.store import load_model, save_model
from tests.support.ood import fit_ood
from training import ood


def clusters(n: int, dim: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes of features (non-negative, as after a ReLU and pooling) around two fixed directions; ``seed``
    draws other images of the same classes."""
    centres = torch.rand(2, dim, generator=torch.Generator().manual_seed(1234)) * 2
    labels = torch.arange(n) % 2
    noise = torch.rand(n, dim, generator=torch.Generator().manual_seed(seed))
    return centres[labels] + 0.3 * noise, labels


def test_a_typical_training_image_scores_about_one_and_other_images_far_more():
    features, labels = clusters(400)
    module, shrinkage = ood.fit_mahalanobis(features, labels, 2)
    assert 0.0 <= shrinkage <= 1.0 and module.dims == 64
    inside = module(clusters(200, seed=1)[0])  # new images of the same classes
    outside = module(torch.rand(200, 64) * 2)  # features of something else
    assert 0.5 < float(inside.median()) < 2.0
    assert float(outside.min()) > float(inside.quantile(0.95))
    assert ood.auroc(inside.numpy(), outside.numpy()) == 1.0


def test_the_fit_works_with_fewer_images_than_dimensions():
    """Shrinkage keeps the covariance invertible: ResNet50 has 2048 features and a small dataset fewer images."""
    features, labels = clusters(40, dim=256)
    module, shrinkage = ood.fit_mahalanobis(features, labels, 2)
    assert shrinkage > 0.0 and torch.isfinite(module.projection).all()
    scores = module(clusters(20, dim=256, seed=3)[0])
    assert torch.isfinite(scores).all() and (scores > 0).all()


def test_the_score_ignores_the_features_scale():
    """Distances are taken on L2-normalised features (the measured choice: docs/decisions.md)."""
    features, labels = clusters(100)
    module, _ = ood.fit_mahalanobis(features, labels, 2)
    probe = clusters(10, seed=4)[0]
    assert torch.allclose(module(probe), module(probe * 7.0), rtol=1e-4)


def test_the_score_is_the_distance_to_the_nearest_class():
    module = MahalanobisScore(feature_dim=2, num_classes=2, dims=2)  # mean 0: no centring
    module.projection.copy_(torch.eye(2))
    module.centres.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    diagonal = torch.tensor([[1.0, 1.0]]) / 2**0.5
    assert module(torch.tensor([[5.0, 0.0]])).item() == pytest.approx(0.0, abs=1e-6)  # on class 0's mean
    assert module(diagonal).item() == pytest.approx(((1 - 2**-0.5) ** 2 + 0.5) / 2, rel=1e-5)


def test_threshold_accepts_the_asked_share():
    scores = torch.arange(1, 101, dtype=torch.float32)
    assert ood.threshold_at(scores, 0.95) == pytest.approx(95.05)
    assert float((scores <= ood.threshold_at(scores, 0.8)).double().mean()) == pytest.approx(0.8)


@pytest.mark.parametrize(
    ("inside", "outside", "expected"),
    [([1, 2, 3], [4, 5], 1.0), ([4, 5], [1, 2, 3], 0.0), ([1, 2], [1, 2], 0.5), ([1, 3], [2], 0.5)],
)
def test_auroc(inside, outside, expected):
    assert ood.auroc(np.array(inside), np.array(outside)) == pytest.approx(expected)


def test_ledoit_wolf_shrinks_more_with_fewer_images():
    g = torch.Generator().manual_seed(0)
    spread = torch.linspace(0.1, 3.0, 50, dtype=torch.float64)  # far from the identity target
    few, many = torch.randn(20, 50, generator=g).double() * spread, torch.randn(5000, 50, generator=g).double() * spread
    _, shrink_few = ood.ledoit_wolf(few - few.mean(0))
    covariance, shrink_many = ood.ledoit_wolf(many - many.mean(0))
    assert 0.0 <= shrink_many < 0.05 < shrink_few <= 1.0
    assert torch.allclose(covariance.diagonal(), spread**2, rtol=0.1, atol=0.1)  # many images: about the truth


def test_separation_reports_every_score(contract):
    features, labels = clusters(200)
    module, _ = ood.fit_mahalanobis(features, labels, 2)
    head = torch.nn.Linear(64, 2)
    report = ood.separation(module, head, 2.0, clusters(50, seed=5)[0], torch.rand(30, 64) * 2)
    assert report["images"] == 30 and set(report["auroc"]) == {"mahalanobis", "energy", "max_softmax"}
    assert report["auroc"]["mahalanobis"] == 1.0 and report["flagged"] == 1.0


@pytest.fixture
def with_ood(contract):
    network = build_classifier(contract.backbone, contract.num_classes, contract.dropout, ood_dims=512)
    torch.nn.init.normal_(network.ood.projection)
    return network.eval(), contract.model_copy(update={"ood": OodContract(dims=512, threshold=1.0, accept_rate=0.95)})


def test_the_serving_network_appends_the_score(with_ood, contract):
    network, described = with_ood
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    with torch.inference_mode():
        out = ServingNet(network, described).eval()(images)
        plain = ServingNet(build_classifier(contract.backbone, 2, contract.dropout).eval(), contract)(images)
    assert out.shape == (3, described.output_width) == (3, 3) and plain.shape == (3, contract.output_width) == (3, 2)
    assert torch.allclose(out[:, :2].sum(1), torch.ones(3)) and (out[:, 2] >= 0).all()
    with pytest.raises(ValueError, match="both present or both absent"):
        ServingNet(network, contract)


def test_half_precision_leaves_the_score_in_float32(contract):
    """The GPU's bf16 backbone: the OOD module and the softmax stay float32, and the answers stay close to fp32's
    (docs/training.md states the tolerance measured on a trained model)."""
    torch.manual_seed(0)
    network = build_classifier(contract.backbone, 2, contract.dropout).eval()
    images = torch.randint(0, 256, (64, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    described = fit_ood(network, contract, images[:48])
    with torch.inference_mode():
        full = ServingNet(network, described).eval()(images[48:])
        serving = ServingNet(copy.deepcopy(network), described).eval().to_precision(torch.bfloat16)
        half = serving(images[48:])
    assert serving.network.backbone.conv1.weight.dtype == torch.bfloat16
    assert serving.network.head[1].weight.dtype == torch.bfloat16
    assert serving.network.ood.projection.dtype == torch.float32 and serving.normalize.scale.dtype == torch.float32
    assert half.dtype == torch.float32
    assert (half[:, :2] - full[:, :2]).abs().max() < 0.02
    assert float(((half[:, 2] - full[:, 2]).abs() / full[:, 2]).median()) < 0.02


def test_the_store_saves_and_loads_the_score_with_the_weights(with_ood):
    network, described = with_ood
    loaded = load_model(save_model("ood-store-test", network, described, metadata={}, report={}))
    assert loaded.contract.ood == described.ood
    assert torch.equal(loaded.network.ood.projection, network.ood.projection)
    assert build_network(loaded.contract).ood.dims == 512


def test_the_score_keeps_float32_precision_when_features_share_a_large_common_part():
    """Real pooled features all point roughly the same way; the whitened distance must not lose digits to it."""
    g = torch.Generator().manual_seed(0)
    common = torch.rand(256, generator=g) * 5
    labels = torch.arange(600) % 2
    features = common + 0.05 * torch.randn(600, 256, generator=g) + 0.05 * labels[:, None]
    module, _ = ood.fit_mahalanobis(features, labels, 2)
    probe = common + 0.05 * torch.randn(50, 256, generator=g)
    exact = module.double()(probe.double())
    assert torch.allclose(module.float()(probe).double(), exact, rtol=1e-4)


def test_half_precision_scales_put_the_gpu_precisions_on_float32s_scale(contract):
    from training.engine_export import half_precision_scales

    torch.manual_seed(0)
    network = build_classifier(contract.backbone, 2, contract.dropout).eval()
    images = torch.randint(0, 256, (40, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    described = fit_ood(network, contract, images)
    scales, measured = half_precision_scales(network, described, images.numpy(), torch.device("cpu"))
    assert set(measured) == {"torch:bfloat16", "torch:float16"} and set(scales) <= set(measured)
    for key, entry in measured.items():
        assert entry["images"] == 40 and 0.5 < entry["ood_score_scale"] < 2.0
        assert entry["median_rel_ood_score_diff_after_scale"] < 0.05 and entry["max_abs_probability_diff"] < 0.05
        assert scales.get(key, 1.0) == (entry["ood_score_scale"] if key in scales else 1.0)
    assert network.backbone.conv1.weight.dtype == torch.float32  # measured on copies
    assert half_precision_scales(network, contract, images.numpy(), torch.device("cpu")) == ({}, {})  # no OOD score
