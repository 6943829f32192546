"""The model on a device: uint8 image batches in, class probabilities out."""

from __future__ import annotations

import torch

from service.model_store import LoadedModel
from service.preprocessing import normalize
from service.schemas import ClassScore


def pick_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class TorchEngine:
    """Eager PyTorch inference: channels_last, inference mode, half precision on GPU."""

    def __init__(self, loaded: LoadedModel, device: torch.device) -> None:
        self.contract = loaded.contract
        self.device = device
        self.dtype = torch.float16 if device.type == "cuda" else torch.float32
        self.network = loaded.network.to(device, dtype=self.dtype, memory_format=torch.channels_last).eval()

    @torch.inference_mode()
    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 [N, 3, S, S] -> float32 probabilities [N, C] on the CPU."""
        x = normalize(batch.to(self.device, non_blocking=True), self.contract)
        x = x.to(self.dtype).contiguous(memory_format=torch.channels_last)
        return self.network(x).float().softmax(dim=1).cpu()

    def warm_up(self) -> None:
        size = self.contract.image_size
        self.predict(torch.zeros(1, 3, size, size, dtype=torch.uint8))


def top_classes(probs: torch.Tensor, class_names: tuple[str, ...], k: int) -> list[ClassScore]:
    """The k most probable classes of one probability vector, most probable first."""
    values, indices = probs.topk(min(k, len(class_names)))
    return [ClassScore(label=class_names[i], probability=round(float(v), 6)) for v, i in zip(values, indices.tolist())]
