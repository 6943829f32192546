"""Training settings and the command line that fills them."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import Field, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from classifier.backbones import BACKBONES, DEFAULT_BACKBONE
from classifier.cache import CACHE_ENV, default_cache_dir
from classifier.cli import DefaultsHelp
from classifier.contract import DEFAULT_MODEL_NAME
from classifier.engines import exportable_engines, with_requirements
from training.download import CATS_DOGS_URL

NO_EXPORT = "none"


def option(default: Any, help: str | Callable[[], str], **argparse: Any) -> Any:
    """A TrainConfig field and its command-line flag, declared together: ``--name-with-dashes``, ``help``
    (argparse adds the default), and any other argparse keyword (type, choices, nargs, ...). A ``help`` or
    ``choices`` given as a function is read when the parser is built (e.g. from the engine registry)."""
    return field(default=default, metadata={"help": help, **argparse})


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
            raise argparse.ArgumentTypeError(
                f"{value} is outside {left}{low}, {high if high is not None else 'inf'}{right}"
            )
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


COUNT = _number(int, low=1)
NON_NEGATIVE = _number(int, low=0)
POSITIVE = _number(float, low=0, low_open=True)
FRACTION = _number(float, low=0, high=1, low_open=True, high_open=True)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything a training run depends on, each field with its flag; recorded in the saved model's metadata."""

    data: Path | None = option(
        None,
        "folder of class sub-folders (or train/ with validation/ and/or test/) (default: download cats vs dogs)",
        type=Path,
    )
    extra_data: Path | None = option(
        None,
        "folder of class sub-folders added to the training split only (e.g. the service's CLASSIFIER_FEEDBACK_DIR), "
        "so test figures stay comparable; images identical to one in --data are dropped (default: none)",
        type=Path,
    )
    cache_dir: Path | None = option(
        None,
        f"dataset and feature cache (default: ${CACHE_ENV}, else $XDG_CACHE_HOME/transfer-serve, else "
        "~/.cache/transfer-serve)",
        type=Path,
    )
    feature_cache: bool = option(True, "reuse cached backbone features between runs")
    dataset_url: str = option(CATS_DOGS_URL, "where to download the default dataset (a mirror)")
    dataset_sha256: str | None = option(
        None,
        "expected SHA-256 of the downloaded default dataset (default: none; the first verified download's is "
        "recorded and checked on later runs)",
    )
    weights: str = option(
        "DEFAULT",
        "backbone start: DEFAULT (IMAGENET1K_V2 for resnet50), a torchvision weights "
        "name, 'none' (random init), or a path to a local state dict",
    )
    backbone: str = option(DEFAULT_BACKBONE, "torchvision backbone", choices=sorted(BACKBONES))
    epochs: int = option(10, "phase 1 epochs (head on frozen features)", type=COUNT)
    fine_tune_epochs: int = option(0, "phase 2 epochs (top blocks unfrozen); 0 skips fine-tuning", type=NON_NEGATIVE)
    unfreeze: tuple[str, ...] | None = option(
        None, "backbone blocks to fine-tune (default: the backbone's top block, layer4 for ResNets)", nargs="+"
    )
    lr: float = option(1e-3, "phase 1 learning rate (Adam)", type=POSITIVE)
    fine_tune_lr: float = option(1e-4, "phase 2 learning rate (Adam)", type=POSITIVE)
    image_size: int = option(224, "square input size fed to the network", type=_number(int, low=32, high=1024))
    resize_size: int | None = option(
        None, "shorter side before the center crop (default: image size * 8/7)", type=_number(int, low=32, high=2048)
    )
    batch_size: int = option(32, "images per batch", type=COUNT)
    dropout: float = option(
        0.2, "dropout before the new linear head", type=_number(float, low=0, high=1, high_open=True)
    )
    augment: bool = option(True, "augment training images (flip and rotation)")
    flip: bool = option(True, "random horizontal flip")
    rotation: float = option(0.2, "random rotation, fraction of a full turn", type=_number(float, low=0, high=0.5))
    aug_views: int = option(2, "augmented views per training image in the feature cache", type=COUNT)
    val_ratio: float = option(
        0.2, "validation share of the training images when there is no validation/ folder", type=FRACTION
    )
    test_ratio: float = option(
        0.2, "share of the validation split held out as test when there is no test/ folder", type=FRACTION
    )
    seed: int = option(0, "seed for splits, augmentation and initialisation", type=int)
    workers: int = option(min(4, os.cpu_count() or 1), "data-loading worker processes", type=NON_NEGATIVE)
    device: str = option("auto", "auto (CUDA when present, else CPU), cpu, cuda or cuda:N")
    name: str = option(DEFAULT_MODEL_NAME, "model name in the BentoML store (each run adds a version)")
    output: Path = option(Path("runs/latest"), "folder for metrics JSON and PNG plots", type=Path)
    export: tuple[str, ...] = option(
        exportable_engines(),
        lambda: (
            "engines saved with the model beside its weights "
            f"(from the engine registry: {', '.join(exportable_engines())}; those they "
            "build on are added), or none"
        ),
        nargs="+",
        choices=lambda: (*exportable_engines(), NO_EXPORT),
    )
    ood_data: Path | None = option(
        None,
        "folder of images of other things (any layout): report the share flagged unknown and the AUROC, and plot "
        "their OOD scores beside the test split's (default: none)",
        type=Path,
    )
    ood_accept: float = option(
        0.95, "share of the validation split accepted as known: sets the OOD threshold", type=FRACTION
    )
    grid_heatmaps: bool = option(True, "lay Grad-CAM heatmaps of the predicted class over the test prediction grid")
    calibration_images: int = option(128, "training images that calibrate the INT8 quantization", type=COUNT)

    @property
    def cache_root(self) -> Path:
        """The cache folder: ``cache_dir`` if given, else default_cache_dir()."""
        return self.cache_dir or default_cache_dir()

    @property
    def effective_resize(self) -> int:
        """Shorter side before the crop: the usual 224/256 crop ratio unless given."""
        return self.resize_size or round(self.image_size * 8 / 7)

    def to_json(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


def flag(config_field: Field[Any]) -> str:
    return "--" + config_field.name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    """The command line, one flag per TrainConfig field."""
    p = argparse.ArgumentParser(
        prog="python -m training",
        description="Train an image classifier by transfer learning and save it to the BentoML model store.",
        formatter_class=DefaultsHelp,
    )
    for f in fields(TrainConfig):
        kwargs = {k: v() if k in ("help", "choices") and callable(v) else v for k, v in f.metadata.items()}
        if f.name == "export":
            kwargs["default"] = exportable_engines()
        if f.type == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        p.add_argument(flag(f), **{"default": f.default, **kwargs})
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
    if NO_EXPORT in args.export and len(args.export) > 1:
        parser.error(f"--export {NO_EXPORT} cannot be combined with engines")
    values["export"] = () if NO_EXPORT in args.export else with_requirements(tuple(args.export))
    return TrainConfig(**values)
