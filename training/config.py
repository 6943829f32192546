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
ONNX_EXPORTS = ("none", "fp32", "int8")


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
    onnx_export: str = "int8"
    calibration_images: int = 128

    @property
    def effective_resize(self) -> int:
        """Shorter side before the crop: the usual 224/256 crop ratio unless given."""
        return self.resize_size or round(self.image_size * 8 / 7)

    def to_json(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


def _number(kind: type, *, low: float, high: float | None = None, low_open: bool = False, high_open: bool = False):
    """An argparse type that parses ``kind`` and checks its range, so bad values fail before any work."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None
        too_low = value <= low if low_open else value < low
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high:
            left, right = "(" if low_open else "[", ")" if high_open or high is None else "]"
            raise argparse.ArgumentTypeError(f"{value} is outside {left}{low}, {high if high is not None else 'inf'}{right}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


COUNT = _number(int, low=1)
NON_NEGATIVE = _number(int, low=0)
POSITIVE = _number(float, low=0, low_open=True)
FRACTION = _number(float, low=0, high=1, low_open=True, high_open=True)


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
    p.add_argument("--epochs", type=COUNT, default=d.epochs, help="phase 1 epochs (head on frozen features)")
    p.add_argument("--fine-tune-epochs", type=NON_NEGATIVE, default=d.fine_tune_epochs,
                   help="phase 2 epochs (top blocks unfrozen); 0 skips fine-tuning")
    p.add_argument("--unfreeze", nargs="+", default=None,
                   help="backbone blocks to fine-tune (default: the backbone's top block, layer4 for ResNets)")
    p.add_argument("--lr", type=POSITIVE, default=d.lr, help="phase 1 learning rate (Adam)")
    p.add_argument("--fine-tune-lr", type=POSITIVE, default=d.fine_tune_lr, help="phase 2 learning rate (Adam)")
    p.add_argument("--image-size", type=_number(int, low=32, high=1024), default=d.image_size, help="square input size fed to the network")
    p.add_argument("--resize-size", type=_number(int, low=32, high=2048), default=None, help="shorter side before the center crop (default: image size * 8/7)")
    p.add_argument("--batch-size", type=COUNT, default=d.batch_size, help="images per batch")
    p.add_argument("--dropout", type=_number(float, low=0, high=1, high_open=True), default=d.dropout, help="dropout before the new linear head")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=d.augment,
                   help="augment training images (flip and rotation)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=d.flip, help="random horizontal flip")
    p.add_argument("--rotation", type=_number(float, low=0, high=0.5), default=d.rotation, help="random rotation, fraction of a full turn")
    p.add_argument("--aug-views", type=COUNT, default=d.aug_views, help="augmented views per training image in the feature cache")
    p.add_argument("--val-ratio", type=FRACTION, default=d.val_ratio, help="validation share for a single-folder dataset")
    p.add_argument("--test-ratio", type=FRACTION, default=d.test_ratio, help="share of the validation split held out as test")
    p.add_argument("--seed", type=int, default=d.seed, help="seed for splits, augmentation and initialisation")
    p.add_argument("--workers", type=NON_NEGATIVE, default=d.workers, help="data-loading worker processes")
    p.add_argument("--device", default=d.device, help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N")
    p.add_argument("--name", default=d.name, help="model name in the BentoML store (each run adds a version)")
    p.add_argument("--output", type=Path, default=d.output, help="folder for metrics JSON and PNG plots")
    p.add_argument("--onnx-export", choices=ONNX_EXPORTS, default=d.onnx_export,
                   help="ONNX Runtime graphs saved with the model: none, fp32, or int8 (fp32 plus a statically "
                        "quantized INT8 copy)")
    p.add_argument("--calibration-images", type=COUNT, default=d.calibration_images,
                   help="training images that calibrate the INT8 quantization")
    return p


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """Parse the command line into a TrainConfig; argparse exits with a message on bad flags."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resize_size is not None and args.resize_size < args.image_size:
        parser.error(f"--resize-size {args.resize_size} is smaller than --image-size {args.image_size}")
    try:
        import bentoml  # the model name must be a valid BentoML tag name; checked before any work

        bentoml.Tag.from_taglike(args.name)
        if ":" in args.name:
            raise ValueError("give a name without ':version'; every run creates a new version")
    except ValueError as exc:
        parser.error(f"--name {args.name!r}: {exc}")
    values = vars(args)
    values["cache_dir"] = args.cache_dir or default_cache_dir()
    values["unfreeze"] = tuple(args.unfreeze) if args.unfreeze else None
    return TrainConfig(**values)
