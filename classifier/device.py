"""Where the model runs: the device, and how many CPU threads one worker gets.

Torch is imported only where an NVIDIA driver is loaded, so a CPU server (and the torch-free CPU image) decides
its device without it.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Device:
    """A device by name: ``type`` "cpu" or "cuda", and the CUDA device's index."""

    type: str
    index: int | None = None

    def __str__(self) -> str:
        return self.type if self.index is None else f"{self.type}:{self.index}"

    def to_torch(self) -> torch.device:
        import torch

        return torch.device(str(self))


CPU = Device("cpu")


def pick_device(choice: str = "auto") -> Device:
    """ "auto": CUDA when present, else CPU; "cpu", "cuda" or "cuda:N" otherwise.

    Raises ValueError for an unknown name or a CUDA device that is not there.
    """
    if choice == "auto":
        return Device("cuda", 0) if cuda_devices() else CPU
    kind, colon, index = choice.partition(":")
    if choice == "cpu":
        return CPU
    if kind != "cuda" or (colon and not index.isdigit()):
        raise ValueError(f"unknown device {choice!r}; use auto, cpu, cuda or cuda:N")
    number = int(index or 0)
    if number >= cuda_devices():
        raise ValueError(f"{choice} was asked for, but no such CUDA device is available")
    return Device("cuda", number)  # explicit index: tensors report theirs


def cuda_devices() -> int:
    """How many CUDA devices torch sees; 0 without asking torch where no NVIDIA driver is loaded or torch is absent."""
    if not (
        os.path.exists("/proc/driver/nvidia/version") or glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/dxg")
    ):
        return 0
    try:
        import torch
    except ImportError:  # the torch-free CPU image on a GPU host
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def cpu_threads(requested: int, workers: int) -> int:
    """Threads for one worker: the requested number, else its share of the cores (at least 1)."""
    return requested or max(1, (os.cpu_count() or 1) // max(1, workers))
