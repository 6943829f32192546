import urllib.error

import pytest
import torch
from safetensors.torch import save_file
from torchvision import models

from classifier.backbones import BACKBONES
from classifier.network import build_classifier
from training import model as model_mod
from training.errors import TrainingError
from training.model import attach_head, check_unfreeze, freeze_backbone, load_backbone, set_train_mode, unfreeze


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_gives_declared_feature_dim(name):
    net = build_classifier(name, num_classes=3, dropout=0.1).eval()
    with torch.no_grad():
        assert net.backbone(torch.randn(1, 3, 64, 64)).shape == (1, BACKBONES[name].feature_dim)
        assert net(torch.randn(2, 3, 64, 64)).shape == (2, 3)


def test_random_init():
    net, weights_id = load_backbone("resnet18", "none")
    assert weights_id == "none" and isinstance(net.fc, torch.nn.Identity)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_state_dict_is_loaded_without_its_classifier(tmp_path, suffix):
    source = models.resnet18(weights=None)
    path = tmp_path / f"resnet18{suffix}"
    state = source.state_dict()
    torch.save(state, path) if suffix == ".pth" else save_file(state, path)
    net, weights_id = load_backbone("resnet18", str(path))
    assert weights_id == f"file:{path.name}"
    assert torch.equal(net.conv1.weight, source.conv1.weight)


def test_local_file_refuses_pickled_objects(tmp_path):
    path = tmp_path / "model.pth"
    torch.save(models.resnet18(weights=None), path)  # a whole pickled module, not a state dict
    with pytest.raises(TrainingError, match="could not read weights file"):
        load_backbone("resnet18", str(path))


def test_local_file_for_another_backbone(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(TrainingError, match="do not fit backbone resnet50"):
        load_backbone("resnet50", str(path))


def test_missing_file_and_unknown_names():
    with pytest.raises(TrainingError, match="does not exist"):
        load_backbone("resnet18", "/nope/weights.pth")
    with pytest.raises(TrainingError, match="unknown weights 'IMAGENET9K'"):
        load_backbone("resnet18", "IMAGENET9K")
    with pytest.raises(TrainingError, match="unknown backbone"):
        load_backbone("vgg11", "none")


def test_failed_download_names_both_offline_options(monkeypatch):
    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(models.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(TrainingError) as info:
        load_backbone("resnet50", "DEFAULT")
    text = str(info.value)
    assert "IMAGENET1K_V2" in text and "--weights none" in text and "--weights PATH" in text
    assert "\n" not in text


def test_freeze_then_unfreeze_top_block_only():
    model = attach_head(load_backbone("resnet18", "none")[0], "resnet18", 2, 0.2)
    freeze_backbone(model)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    params = unfreeze(model, ("layer4",))
    trainable = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("layer4.") for n in trainable) and len(params) == len(trainable)
    with pytest.raises(TrainingError, match="names no backbone block"):
        unfreeze(model, ("layer9",))


def test_unfreeze_names_are_checked_on_the_architecture_alone():
    check_unfreeze("resnet18", ("layer3", "layer4"))
    check_unfreeze("efficientnet_b0", ("features.7", "features.8"))
    with pytest.raises(TrainingError, match="'layer9' names no backbone block; blocks are: .*layer4"):
        check_unfreeze("resnet18", ("layer4", "layer9"))


def test_an_unreadable_weights_file_says_what_to_pass(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"\0" * 64)
    with pytest.raises(TrainingError, match=r"could not read weights file .*\(\w.*\); pass a file saved with") as info:
        load_backbone("resnet18", str(path))
    assert "()" not in str(info.value).split(";")[0]


def test_train_mode_keeps_batchnorm_frozen():
    model = attach_head(load_backbone("resnet18", "none")[0], "resnet18", 2, 0.5)
    set_train_mode(model)
    assert model.head.training
    assert not any(m.training for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_default_weights_resolve_to_imagenet_v2(monkeypatch):
    asked = []

    def fake_download(self, *args, **kwargs):  # the real one downloads 100 MB
        asked.append(self)
        return models.resnet50(weights=None).state_dict()

    monkeypatch.setattr(models.WeightsEnum, "get_state_dict", fake_download)
    net, weights_id = load_backbone("resnet50", model_mod.DEFAULT_WEIGHTS)
    assert weights_id == "ResNet50_Weights.IMAGENET1K_V2" and asked == [models.ResNet50_Weights.IMAGENET1K_V2]
    assert load_backbone("resnet50", "imagenet1k_v1")[1] == "ResNet50_Weights.IMAGENET1K_V1"
