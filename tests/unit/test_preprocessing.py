import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from classifier.network import Normalize, ServingNet, build_classifier
from classifier.preprocessing import prepare_image, resize_and_crop


def test_resize_and_crop_gives_contract_shape_for_any_aspect(contract):
    for size in [(300, 100), (100, 300), (64, 64), (1, 2)]:
        out = resize_and_crop(Image.new("RGB", size, (10, 20, 30)), contract)
        assert out.shape == (3, 64, 64) and out.dtype == np.uint8
        assert out[:, 32, 32].tolist() == [10, 20, 30]


def test_center_crop_keeps_the_middle(contract):
    img = Image.new("RGB", (300, 100), (0, 0, 0))
    img.paste((255, 255, 255), (140, 0, 160, 100))  # a white bar in the centre
    out = resize_and_crop(img, contract)
    assert out[0, 32, 32] == 255 and out[0, 32, 0] == 0


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size", [(500, 375), (375, 500), (333, 333), (64, 1000), (71, 70)])
def test_the_same_pixels_as_torchvision(contract, interpolation, size):
    """Serving resizes with Pillow and numpy alone; training's earlier code, and the batched JPEG decoder, with
    torchvision: the geometry and filter must be the same; serving resamples only the cropped square, which may round
    a pixel the other way."""
    contract = contract.model_copy(update={"image_size": 56, "resize_size": 64, "interpolation": interpolation})
    img = Image.fromarray(np.random.default_rng(sum(size)).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    mode = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}[interpolation]
    resized = F.resize(img, [contract.resize_size], interpolation=mode, antialias=True)
    expected = F.pil_to_tensor(F.center_crop(resized, [contract.image_size, contract.image_size])).numpy()
    diff = np.abs(resize_and_crop(img, contract).astype(int) - expected)
    assert diff.max() <= 1 and diff.mean() < 0.05  # a shifted or wrongly scaled image differs by tens of levels


def test_normalize_matches_formula(contract):
    batch = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    normalize = Normalize.from_contract(contract)
    out = normalize(batch)
    expected = (1.0 - torch.tensor(contract.mean)) / torch.tensor(contract.std)
    assert out.dtype == torch.float32
    assert torch.allclose(out[1, :, 2, 2], expected)
    assert torch.allclose(normalize(batch[0]), out[0])  # one image too (training's datasets)
    assert normalize.to(torch.bfloat16)(batch).dtype == torch.bfloat16  # follows its buffers' dtype


def test_serving_network_takes_uint8_and_returns_probabilities(contract):
    network = build_classifier(contract.backbone, contract.num_classes, contract.dropout).eval()
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    with torch.inference_mode():
        probs = ServingNet(network, contract).eval()(images)
        logits = network(Normalize.from_contract(contract)(images))
    assert probs.dtype == torch.float32 and torch.allclose(probs.sum(1), torch.ones(3))
    assert torch.allclose(probs, logits.softmax(1), atol=1e-6)


def test_a_half_precision_network_still_normalises_in_float32(contract):
    serving = ServingNet(build_classifier(contract.backbone, contract.num_classes, contract.dropout), contract)
    serving.network.to(torch.bfloat16)  # what the torch engine does on a GPU
    seen = []
    serving.network.backbone.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.inference_mode():
        probs = serving.eval()(images)
        exact = Normalize.from_contract(contract)(images)
    assert serving.normalize.scale.dtype == torch.float32 and probs.dtype == torch.float32
    (fed,) = seen  # the network gets the float32 result rounded once to bf16, not bf16 arithmetic
    assert fed.dtype == torch.bfloat16 and torch.equal(fed, exact.to(torch.bfloat16))


def test_prepare_image_same_photo_any_format(odd_image, contract):
    ref = prepare_image(odd_image("hopper.png"), contract).astype(np.float32)
    for name in ("hopper.jpg", "hopper.webp", "hopper.bmp", "hopper.tif"):
        assert np.abs(prepare_image(odd_image(name), contract) - ref).mean() < 12
