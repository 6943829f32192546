"""Benchmark: phase-1 head training with the feature cache vs running the frozen backbone every epoch.

    python -m training.benchmark --data ../shared/data/hymenoptera_data --weights none

All three contenders run in one process on the same data, seed and settings, so their ratios
are comparable even on a noisy machine:
  every-epoch  each epoch runs the backbone over the (freshly augmented) train and val images
  cache-cold   extracts the features once (``--aug-views`` augmented views), then trains
  cache-warm   a second run: reads the cache written by cache-cold, then trains
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import tempfile
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from classifier.cli import DefaultsHelp
from classifier.network import ClassifierNet
from training.config import TrainConfig
from training.data import load_splits
from training.datasets import Augmentation, image_loader
from training.loop import train_head
from training.model import attach_head, freeze_backbone, load_backbone
from training.pipeline import cached_features, make_contract, resolve_device, seed_everything

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hymenoptera_data"


def every_epoch(model: ClassifierNet, train_loader, val_loader, *, epochs: int, lr: float, device) -> float:
    """The slow way: the frozen backbone runs over every image in every epoch."""
    start = time.perf_counter()
    optimizer = torch.optim.Adam(model.head.parameters(), lr=lr)
    model.backbone.eval()
    for epoch in range(epochs):
        train_loader.dataset.set_epoch(epoch)
        model.head.train()
        for images, labels in train_loader:
            with torch.inference_mode():
                x = model.backbone(images.to(device).contiguous(memory_format=torch.channels_last))
            loss = F.cross_entropy(model.head(x.clone()), labels.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.head.eval()
        with torch.inference_mode():
            for images, _ in val_loader:
                model(images.to(device).contiguous(memory_format=torch.channels_last))
    return time.perf_counter() - start


def with_cache(model, cfg: TrainConfig, splits, contract, augmentation, weights_id, device) -> tuple[float, bool]:
    """Extract (or load) train views and val features as training does, then train the head for cfg.epochs."""
    start = time.perf_counter()
    cached, hits = cached_features(
        cfg, model, contract, splits, augmentation, weights_id, device, splits_wanted=("train", "val")
    )
    train_head(
        model.head,
        *cached["train"],
        *cached["val"],
        epochs=cfg.epochs,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        device=device,
    )
    return time.perf_counter() - start, all(hits.values())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.benchmark",
        description=__doc__.splitlines()[0],
        formatter_class=DefaultsHelp,
    )
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of class sub-folders")
    p.add_argument("--weights", default="none", help="backbone weights (speed does not depend on them)")
    p.add_argument("--backbone", default="resnet50", help="torchvision backbone")
    p.add_argument("--image-size", type=int, default=160, help="input size (the TF tutorial's 160)")
    p.add_argument("--epochs", type=int, default=10, help="head epochs")
    p.add_argument("--aug-views", type=int, default=2, help="augmented views cached per training image")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch")
    p.add_argument("--workers", type=int, default=2, help="data-loading worker processes")
    p.add_argument("--output", type=Path, default=Path("runs/benchmark_feature_cache.json"), help="JSON result")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    tmp = tempfile.TemporaryDirectory()  # a cold cache for this run only
    cfg = TrainConfig(
        data=args.data,
        cache_dir=Path(tmp.name),
        weights=args.weights,
        backbone=args.backbone,
        image_size=args.image_size,
        epochs=args.epochs,
        aug_views=args.aug_views,
        batch_size=args.batch_size,
        workers=args.workers,
    )
    device = resolve_device(cfg.device)
    splits = load_splits(
        args.data, val_ratio=cfg.val_ratio, test_ratio=cfg.test_ratio, seed=cfg.seed, workers=cfg.workers
    )
    backbone, weights_id = load_backbone(cfg.backbone, cfg.weights)
    contract = make_contract(cfg, splits.class_names, weights_id)
    augmentation = Augmentation(flip=cfg.flip, rotation=cfg.rotation)

    def fresh_model():
        seed_everything(cfg.seed)
        model = attach_head(backbone, cfg.backbone, len(splits.class_names), cfg.dropout)
        freeze_backbone(model)
        return model.to(device).to(memory_format=torch.channels_last)

    with tmp:
        cold_s, cold_hit = with_cache(fresh_model(), cfg, splits, contract, augmentation, weights_id, device)
        warm_s, warm_hit = with_cache(fresh_model(), cfg, splits, contract, augmentation, weights_id, device)
    assert not cold_hit and warm_hit
    loader = functools.partial(image_loader, batch_size=cfg.batch_size, workers=cfg.workers, seed=cfg.seed)
    slow_s = every_epoch(
        fresh_model(),
        loader(splits.train, contract, augmentation=augmentation, shuffle=True),
        loader(splits.val, contract),
        epochs=cfg.epochs,
        lr=cfg.lr,
        device=device,
    )

    result = {
        "data": str(cfg.data),
        "train_images": len(splits.train),
        "val_images": len(splits.val),
        "backbone": cfg.backbone,
        "image_size": cfg.image_size,
        "epochs": cfg.epochs,
        "aug_views": cfg.aug_views,
        "device": str(device),
        "threads": torch.get_num_threads(),
        # Full precision here (a warm cache can take well under 10 ms on a fast host); rounded only for display.
        "every_epoch_s": slow_s,
        "cache_cold_s": cold_s,
        "cache_warm_s": warm_s,
        "speedup_cold": slow_s / cold_s,
        "speedup_warm": slow_s / warm_s,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{cfg.epochs}-epoch head training, {cfg.backbone} {cfg.image_size}px, {len(splits.train)} train + "
        f"{len(splits.val)} val images, {device}, {torch.get_num_threads()} threads"
    )
    print(f"  backbone every epoch   {slow_s:8.2f} s   1.0x")
    print(f"  feature cache (cold)   {cold_s:8.2f} s   {slow_s / cold_s:.1f}x  ({cfg.aug_views} augmented views)")
    print(f"  feature cache (warm)   {warm_s:8.3f} s   {slow_s / warm_s:.0f}x")
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
