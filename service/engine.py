"""The model on a device: uint8 image batches in, class probabilities out."""

from __future__ import annotations

import logging
import os

import numpy as np
import torch

from service.model_store import LoadedModel
from service.preprocessing import normalize

logger = logging.getLogger(__name__)


def pick_device(choice: str = "auto") -> torch.device:
    """"auto": CUDA when present, else CPU; "cpu", "cuda" or "cuda:N" otherwise.

    Raises ValueError for a CUDA device that is not there.
    """
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(choice)
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"{choice} was asked for, but no such CUDA device is available")
    return device


def cpu_threads(requested: int, workers: int) -> int:
    """Threads for one worker: the requested number, else its share of the cores (at least 1)."""
    return requested or max(1, (os.cpu_count() or 1) // max(1, workers))


class TorchEngine:
    """Eager PyTorch inference in inference mode with channels_last.

    CPU: float32, ``threads`` intra-op threads (0: the worker's share of the cores), so several
    workers do not oversubscribe the cores. GPU: half precision, inputs pinned and moved non-blocking.
    """

    def __init__(self, loaded: LoadedModel, device: torch.device, *, threads: int = 0) -> None:
        self.contract = loaded.contract
        self.device = device
        if device.type == "cuda":
            self.dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            self.dtype = torch.float32
            torch.set_num_threads(cpu_threads(threads, 1))
        self.network = loaded.network.to(device, dtype=self.dtype, memory_format=torch.channels_last).eval()

    @torch.inference_mode()
    def predict(self, batch: np.ndarray) -> np.ndarray:
        """uint8 [N, 3, S, S] -> float32 probabilities [N, C]."""
        x = torch.from_numpy(np.ascontiguousarray(batch))
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        x = normalize(x, self.contract).to(self.dtype).contiguous(memory_format=torch.channels_last)
        return self.network(x).float().softmax(dim=1).cpu().numpy()

    def warm_up(self, batch_size: int = 1) -> None:
        """One inference so the first request does not pay for lazy initialisation."""
        size = self.contract.image_size
        self.predict(np.zeros((batch_size, 3, size, size), dtype=np.uint8))
