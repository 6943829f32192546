"""Why the model answered what it did: Grad-CAM heatmaps on the last convolutional block, and their overlay
on the photo.

Captum's ``LayerGradCam`` computes the heatmap on the PyTorch network, whatever engine serves predictions;
the overlay maps it back onto the whole photo (the region preprocessing cropped away is dimmed), so a user
sees what the model looked at. Shared by the service (``POST /v1/explain``) and training's prediction grid.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from PIL import Image

from classifier.backbones import backbone_spec
from classifier.contract import ModelContract
from classifier.network import ClassifierNet, Normalize, ServingNet

OVERLAY_ALPHA = 0.5  # the heatmap's weight where it peaks; cold regions keep the photo
OUTSIDE_DIM = 0.35  # brightness left to the parts of the photo the center crop cut away (the model never saw them)


@dataclass(frozen=True)
class Explanation:
    """Per image: the serving network's outputs, the class explained, and its heatmap."""

    scores: np.ndarray  # [N, contract.output_width]: calibrated probabilities, then the OOD score if any
    targets: list[int]  # the class each heatmap explains
    heatmaps: np.ndarray  # [N, h, w] float32 in [0, 1]: the layer's grid (7 x 7 for ResNet50 at 224 px)


class GradCam:
    """Grad-CAM of ``network`` for uint8 images [N, 3, S, S] as the contract prescribes. Not thread-safe: Captum
    hooks the layer during each call, so one instance serves one call at a time."""

    def __init__(self, network: ClassifierNet, contract: ModelContract) -> None:
        from captum.attr import LayerGradCam  # imported on first use: only explain needs it

        self.contract = contract
        self.serving = ServingNet(network, contract).eval()
        normalize = Normalize.from_contract(contract)
        layer = network.backbone.get_submodule(backbone_spec(contract.backbone).cam_layer)
        self._cam = LayerGradCam(lambda images: network(normalize(images)), layer)

    def explain(self, images: np.ndarray | torch.Tensor, targets: Sequence[int | None] | None = None) -> Explanation:
        """Heatmaps for ``targets`` (class indices; None or a None entry: the most probable class)."""
        images = torch.as_tensor(images)
        with torch.inference_mode():
            scores = self.serving(images).float()
        top = scores[:, : self.contract.num_classes].argmax(dim=1).tolist()
        chosen = [t if t is not None else top[i] for i, t in enumerate(targets or [None] * len(images))]
        if any(not 0 <= t < self.contract.num_classes for t in chosen):
            raise ValueError(f"class indices must be in [0, {self.contract.num_classes}), got {chosen}")
        with torch.enable_grad():
            maps = self._cam.attribute(images.float(), target=chosen, relu_attributions=True).detach()[:, 0]
        peak = maps.amax(dim=(1, 2), keepdim=True)
        maps = torch.where(peak > 0, maps / peak.clamp_min(1e-12), torch.zeros_like(maps))
        return Explanation(scores.numpy(), chosen, maps.float().numpy())


def crop_box(width: int, height: int, contract: ModelContract) -> tuple[int, int, int, int]:
    """The part of a ``width`` x ``height`` photo that preprocessing keeps (shorter side resized, center square
    cropped), as (left, top, right, bottom) in the photo's pixels."""
    side = contract.image_size * min(width, height) / contract.resize_size
    left, top = (width - side) / 2, (height - side) / 2
    return round(left), round(top), round(left + side), round(top + side)


@lru_cache(maxsize=1)
def _palette() -> np.ndarray:
    """256 RGB colours, cold to hot (matplotlib's turbo)."""
    import matplotlib

    return (matplotlib.colormaps["turbo"](np.arange(256))[:, :3] * 255).astype(np.uint8)


def overlay(photo: Image.Image, heatmap: np.ndarray, contract: ModelContract) -> Image.Image:
    """``photo`` (RGB, any size) with ``heatmap`` ([h, w] in [0, 1], over the crop the model saw) laid over it in
    colour, weighted by heat; outside the crop the photo is dimmed. Same size as ``photo``."""
    left, top, right, bottom = crop_box(*photo.size, contract)
    heat = Image.fromarray(np.clip(heatmap * 255, 0, 255).astype(np.uint8), mode="L")
    heat = heat.resize((max(1, right - left), max(1, bottom - top)), Image.Resampling.BILINEAR)
    colour = Image.fromarray(_palette()[np.asarray(heat)], mode="RGB")
    weight = heat.point(lambda v: round(v * OVERLAY_ALPHA))
    result = photo.point(lambda v: round(v * OUTSIDE_DIM))
    crop = photo.crop((left, top, right, bottom))
    result.paste(Image.composite(colour, crop, weight), (left, top))
    return result


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes, favouring speed over size (an overlay is made per request)."""
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)
    return out.getvalue()
