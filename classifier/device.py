"""Where the model runs: the device, and how many CPU threads one worker gets."""

from __future__ import annotations

import os

import torch


def pick_device(choice: str = "auto") -> torch.device:
    """ "auto": CUDA when present, else CPU; "cpu", "cuda" or "cuda:N" otherwise.

    Raises ValueError for a CUDA device that is not there.
    """
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if choice == "auto" else choice)
    if device.type == "cuda":
        if not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count():
            raise ValueError(f"{choice} was asked for, but no such CUDA device is available")
        device = torch.device("cuda", device.index or 0)  # explicit index: tensors report theirs
    return device


def cpu_threads(requested: int, workers: int) -> int:
    """Threads for one worker: the requested number, else its share of the cores (at least 1)."""
    return requested or max(1, (os.cpu_count() or 1) // max(1, workers))
