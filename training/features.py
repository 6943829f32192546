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


def cached(
    cache_dir: Path | None, parts: dict[str, Any], compute: Callable[[], FeatureDict]
) -> tuple[FeatureDict, bool]:
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
    save_file(
        {k: v.contiguous() for k, v in tensors.items()},
        tmp,
        metadata={"key": json.dumps(parts, sort_keys=True, default=str)},
    )
    tmp.replace(path)
    return tensors, False


@torch.inference_mode()
def forward_all(
    module: nn.Module, loader: DataLoader, device: torch.device, desc: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``module`` in eval mode over ``loader``: float32 outputs [N, ...] and labels [N], on the CPU."""
    module.eval()
    outputs, labels = [], []
    for images, targets in tqdm(loader, desc=desc, unit="batch", leave=False):
        images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        outputs.append(module(images).float().cpu())
        labels.append(targets)
    return torch.cat(outputs), torch.cat(labels)


def load_or_extract(
    backbone: nn.Module,
    loader: DataLoader,
    *,
    views: int,
    key: dict[str, Any],
    cache_dir: Path | None,
    device: torch.device,
    desc: str,
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Features [views, N, D] and labels [N] of ``loader``'s images, from the cache under ``key`` if there.

    View v is epoch v of the loader's dataset (its v-th augmentation draw). Returns (features,
    labels, cache hit).
    """

    def compute() -> FeatureDict:
        runs = []
        for view in range(views):
            loader.dataset.set_epoch(view)  # type: ignore[attr-defined]  # an ImageFiles dataset
            runs.append(
                forward_all(backbone, loader, device, desc + (f" view {view + 1}/{views}" if views > 1 else ""))
            )
        return {"features": torch.stack([f for f, _ in runs]), "labels": runs[0][1]}

    tensors, hit = cached(cache_dir, {**key, "views": views}, compute)
    return tensors["features"], tensors["labels"], hit
