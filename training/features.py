"""Pooled backbone features, computed once and cached on disk.

Phase 1 trains only the head, so the frozen backbone's output for an image never changes:
running it once (``views`` times for the augmented training set) instead of every epoch is
what makes head training fast. The cache key covers everything that changes the features.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

logger = logging.getLogger(__name__)

FeatureDict = dict[str, torch.Tensor]


def cache_key(parts: dict[str, Any]) -> str:
    """Stable hex key of JSON-serialisable ``parts`` (order-independent)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def cached(cache_dir: Path | None, parts: dict[str, Any], compute: Callable[[], FeatureDict]) -> tuple[FeatureDict, bool]:
    """Load the tensors stored under ``parts``, or compute and store them.

    Returns (tensors, True if they came from the cache). ``cache_dir`` None disables caching.
    A cache file that cannot be read is recomputed, never trusted.
    """
    if cache_dir is None:
        return compute(), False
    path = cache_dir / f"{cache_key(parts)}.safetensors"
    if path.exists():
        try:
            tensors = load_file(path)
            logger.info("feature cache hit: %s", path)
            return tensors, True
        except Exception as exc:  # noqa: BLE001 - a damaged cache file is recomputed
            logger.warning("ignoring unreadable feature cache %s (%s)", path, exc)
    tensors = compute()
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata={"key": json.dumps(parts, sort_keys=True, default=str)})
    tmp.replace(path)
    return tensors, False


@torch.inference_mode()
def extract(backbone: nn.Module, loader: DataLoader, device: torch.device, desc: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``backbone`` (in eval mode) over ``loader``: float32 features [N, D] and labels [N]."""
    backbone.eval()
    feats, labels = [], []
    for images, targets in tqdm(loader, desc=desc, unit="batch"):
        images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        feats.append(backbone(images).float().cpu())
        labels.append(targets)
    return torch.cat(feats), torch.cat(labels)
