"""Training settings and the command line that fills them."""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from service.backbones import BACKBONES, DEFAULT_BACKBONE
from service.contract import DEFAULT_MODEL_NAME
from training.download import CATS_DOGS_URL

CACHE_ENV = "TRANSFER_SERVE_CACHE"


def default_cache_dir() -> Path:
    """$TRANSFER_SERVE_CACHE, else $XDG_CACHE_HOME/transfer-serve, else ~/.cache/transfer-serve."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "transfer-serve"


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything a training run depends on; recorded in the saved model's metadata."""

    data: Path | None = None
    cache_dir: Path
    feature_cache: bool = True
    dataset_url: str = CATS_DOGS_URL
    dataset_sha256: str | None = None
    weights: str = "DEFAULT"
    backbone: str = DEFAULT_BACKBONE
    epochs: int = 10
    fine_tune_epochs: int = 0
    unfreeze: tuple[str, ...] | None = None
    lr: float = 1e-3
    fine_tune_lr: float = 1e-4
    image_size: int = 224
    resize_size: int | None = None
    batch_size: int = 32
    dropout: float = 0.2
    augment: bool = True
    flip: bool = True
    rotation: float = 0.2
    aug_views: int = 2
    val_ratio: float = 0.2
    test_ratio: float = 0.2
    seed: int = 0
    workers: int = min(4, os.cpu_count() or 1)
    device: str = "auto"
    name: str = DEFAULT_MODEL_NAME
    output: Path = Path("runs/latest")

    @property
    def effective_resize(self) -> int:
        """Shorter side before the crop: the usual 224/256 crop ratio unless given."""
        return self.resize_size or round(self.image_size * 8 / 7)

    def to_json(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig(cache_dir=Path("."))
    p = argparse.ArgumentParser(
        prog="python -m training",
        description="Train an image classifier by transfer learning and save it to the BentoML model store.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", type=Path, default=None,
                   help="folder of class sub-folders (or train/ + validation/); default: download cats vs dogs")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help=f"dataset and feature cache (default: ${CACHE_ENV} or ~/.cache/transfer-serve)")
    p.add_argument("--feature-cache", action=argparse.BooleanOptionalAction, default=d.feature_cache,
                   help="reuse cached backbone features between runs")
    p.add_argument("--dataset-url", default=d.dataset_url, help="where to download the default dataset (a mirror)")
    p.add_argument("--dataset-sha256", default=None, help="expected SHA-256 of the downloaded default dataset")
    p.add_argument("--weights", default=d.weights,
                   help="backbone start: DEFAULT (IMAGENET1K_V2 for resnet50), a torchvision weights name, "
                        "'none' (random init), or a path to a local state dict")
    p.add_argument("--backbone", default=d.backbone, choices=sorted(BACKBONES), help="torchvision backbone")
    p.add_argument("--epochs", type=int, default=d.epochs, help="phase 1 epochs (head on frozen features)")
    p.add_argument("--fine-tune-epochs", type=int, default=d.fine_tune_epochs,
                   help="phase 2 epochs (top blocks unfrozen); 0 skips fine-tuning")
    p.add_argument("--unfreeze", nargs="+", default=None,
                   help="backbone blocks to fine-tune (default: the backbone's top block, layer4 for ResNets)")
    p.add_argument("--lr", type=float, default=d.lr, help="phase 1 learning rate (Adam)")
    p.add_argument("--fine-tune-lr", type=float, default=d.fine_tune_lr, help="phase 2 learning rate (Adam)")
    p.add_argument("--image-size", type=int, default=d.image_size, help="square input size fed to the network")
    p.add_argument("--resize-size", type=int, default=None, help="shorter side before the center crop (default: image size * 8/7)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="images per batch")
    p.add_argument("--dropout", type=float, default=d.dropout, help="dropout before the new linear head")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=d.augment,
                   help="augment training images (flip and rotation)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=d.flip, help="random horizontal flip")
    p.add_argument("--rotation", type=float, default=d.rotation, help="random rotation, fraction of a full turn")
    p.add_argument("--aug-views", type=int, default=d.aug_views, help="augmented views per training image in the feature cache")
    p.add_argument("--val-ratio", type=float, default=d.val_ratio, help="validation share for a single-folder dataset")
    p.add_argument("--test-ratio", type=float, default=d.test_ratio, help="share of the validation split held out as test")
    p.add_argument("--seed", type=int, default=d.seed, help="seed for splits, augmentation and initialisation")
    p.add_argument("--workers", type=int, default=d.workers, help="data-loading worker processes")
    p.add_argument("--device", default=d.device, help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N")
    p.add_argument("--name", default=d.name, help="model name in the BentoML store (each run adds a version)")
    p.add_argument("--output", type=Path, default=d.output, help="folder for metrics JSON and PNG plots")
    return p


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """Parse the command line into a TrainConfig; argparse exits with a message on bad flags."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag in ("epochs", "fine_tune_epochs", "aug_views", "workers"):
        if getattr(args, flag) < (1 if flag in ("epochs", "aug_views") else 0):
            parser.error(f"--{flag.replace('_', '-')} must be at least {1 if flag in ('epochs', 'aug_views') else 0}")
    if args.batch_size < 1 or args.image_size < 32:
        parser.error("--batch-size must be >= 1 and --image-size >= 32")
    values = vars(args)
    values["cache_dir"] = args.cache_dir or default_cache_dir()
    values["unfreeze"] = tuple(args.unfreeze) if args.unfreeze else None
    return TrainConfig(**values)
