"""One training run, start to finish: data, features, phase 1, optional phase 2, evaluation, report, save."""

from __future__ import annotations

import logging
import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from classifier.backbones import backbone_spec
from classifier.contract import ModelContract
from classifier.device import pick_device
from classifier.explain import GradCam
from classifier.network import ClassifierNet
from classifier.preprocessing import prepare_image
from classifier.store import REFERENCE_IMAGES, ReferenceSample, save_model
from training import features as feats
from training import ood, report
from training.calibration import calibrate, log_calibration, rescale
from training.config import TrainConfig
from training.data import TRAINING_MAX_PIXELS, Sample, Splits, find_images, load_splits
from training.datasets import Augmentation, image_loader
from training.download import fetch_cats_and_dogs, sha256_file
from training.engine_export import HALF_SCALE_IMAGES, build_and_compare, half_precision_scales, load_images
from training.errors import TrainingError
from training.loop import Evaluation, evaluate_head, evaluate_model, fine_tune, train_head
from training.model import attach_head, check_unfreeze, freeze_backbone, load_backbone, unfreeze
from training.scores import classification_metrics

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRID_IMAGES = 16


@dataclass
class RunResult:
    tag: str
    splits: Splits
    contract: ModelContract
    test_metrics: dict[str, Any]
    report_path: Path
    plots: list[Path]
    cache_hits: dict[str, bool] = field(default_factory=dict)
    engines: dict[str, Any] | None = None  # exported engines compared with PyTorch on the test split
    timings: dict[str, float] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)  # temperature and test ECE before/after
    ood: dict[str, Any] = field(default_factory=dict)  # the OOD threshold and how it separates (training/ood.py)


def resolve_device(choice: str) -> torch.device:
    """ "auto" picks CUDA when present, else CPU; an explicit CUDA choice must exist."""
    try:
        return pick_device(choice).to_torch()
    except (ValueError, RuntimeError) as exc:
        raise TrainingError(f"--device {choice}: {exc}; use auto, cpu, cuda or cuda:N") from None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = False


def make_contract(cfg: TrainConfig, class_names: tuple[str, ...], weights_id: str) -> ModelContract:
    return ModelContract(
        class_names=class_names,
        backbone=cfg.backbone,
        weights=weights_id,
        image_size=cfg.image_size,
        resize_size=cfg.effective_resize,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        dropout=cfg.dropout,
    )


def run(cfg: TrainConfig) -> RunResult:
    """Train, evaluate, report and save; raises TrainingError on anything the user can fix."""
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    try:
        cfg.output.mkdir(parents=True, exist_ok=True)  # before hours of work, not after
    except OSError as exc:
        raise TrainingError(f"cannot create the --output folder {cfg.output} ({exc.strerror or exc})") from None
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    if cfg.unfreeze and cfg.fine_tune_epochs == 0:
        logger.warning("--unfreeze %s is ignored: blocks are fine-tuned only with --fine-tune-epochs > 0", cfg.unfreeze)
    elif cfg.unfreeze:
        check_unfreeze(cfg.backbone, cfg.unfreeze)
    backbone_net, weights_id = load_backbone(cfg.backbone, cfg.weights)  # before the data: fail fast offline
    outside = find_images(cfg.ood_data, cfg.workers)[0] if cfg.ood_data else None  # a bad folder fails here too
    root = (
        cfg.data
        if cfg.data is not None
        else fetch_cats_and_dogs(cfg.cache_root / "datasets", url=cfg.dataset_url, expected_sha256=cfg.dataset_sha256)
    )
    splits = load_splits(
        root,
        val_ratio=cfg.val_ratio,
        test_ratio=cfg.test_ratio,
        seed=cfg.seed,
        workers=cfg.workers,
        extra=cfg.extra_data,
    )
    log_splits(splits)
    timings["data_s"] = time.perf_counter() - clock

    model = attach_head(backbone_net, cfg.backbone, len(splits.class_names), cfg.dropout)
    contract = make_contract(cfg, splits.class_names, weights_id)
    freeze_backbone(model)
    model.to(device).to(memory_format=torch.channels_last)
    augmentation = Augmentation(flip=cfg.flip, rotation=cfg.rotation) if cfg.augment else None

    clock = time.perf_counter()
    cached, hits = cached_features(cfg, model, contract, splits, augmentation, weights_id, device)
    timings["features_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    seed_everything(cfg.seed)  # dropout draws from the global RNG: same head whether features were cached or not
    baseline = evaluate_head(model.head, cached["val"][0], cached["val"][1], device)
    history = train_head(
        model.head,
        cached["train"][0],
        cached["train"][1],
        cached["val"][0],
        cached["val"][1],
        epochs=cfg.epochs,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        device=device,
    )
    after_head = evaluate_head(model.head, cached["val"][0], cached["val"][1], device)
    timings["head_s"] = time.perf_counter() - clock
    evaluations = {"baseline": baseline, "after_head": after_head}

    if cfg.fine_tune_epochs > 0:
        clock = time.perf_counter()
        history += _fine_tune(cfg, model, contract, splits, augmentation, device, first_epoch=cfg.epochs + 1)
        evaluations["after_fine_tune"] = evaluate_model(
            model, _loader(cfg, splits.val, contract, device), device, "validate"
        )
        evaluations["test"] = evaluate_model(model, _loader(cfg, splits.test, contract, device), device, "test")
        timings["fine_tune_s"] = time.perf_counter() - clock
    else:
        # The backbone is unchanged, so the cached test features are exactly what the full network computes.
        evaluations["test"] = evaluate_head(model.head, cached["test"][0], cached["test"][1], device)

    metrics = {
        name: classification_metrics(e.probs, e.labels, splits.class_names, e.loss) for name, e in evaluations.items()
    }
    # Calibrated on the last validation evaluation; from here on the test probabilities are what the service serves.
    val, uncalibrated = evaluations.get("after_fine_tune", after_head), evaluations["test"]
    calibration = calibrate(val.probs, val.labels, uncalibrated.probs, uncalibrated.labels)
    contract = contract.model_copy(update={"temperature": calibration["temperature"]})
    test = Evaluation(uncalibrated.loss, rescale(uncalibrated.probs, contract.temperature), uncalibrated.labels)
    log_calibration(calibration)
    clock = time.perf_counter()
    contract, ood_report, scores = _fit_ood(cfg, model, contract, splits, cached, outside, device)
    contract, ood_report["half_precision"] = _half_precision(model, contract, splits, device)
    timings["ood_s"] = time.perf_counter() - clock
    payload = {
        **_report_payload(cfg, splits, contract, metrics, history, hits, timings),
        "calibration": calibration,
        "ood": ood_report,
    }
    plots = _plots(cfg.output, splits, contract, history, metrics, test, model if cfg.grid_heatmaps else None)
    plots.append(
        report.plot_reliability(uncalibrated.probs, test.probs, test.labels, cfg.output / report.RELIABILITY_FILE)
    )
    plots.append(
        report.plot_ood(scores["test"], scores.get("outside"), ood_report["threshold"], cfg.output / report.OOD_FILE)
    )
    with tempfile.TemporaryDirectory(prefix="onnx-") as workdir:
        reference = torch.cat([test.probs, scores["test"][:, None]], dim=1)  # what every engine must reproduce
        files, payload["engines"], contract = _export_engines(
            cfg, model, contract, splits, reference, test.labels, Path(workdir)
        )
        payload["contract"] = contract.to_metadata()
        report_path = report.write_json(cfg.output / report.METRICS_FILE, payload)
        metadata = {
            **_model_metadata(cfg, splits, metrics["test"]),
            "engines": payload["engines"],
            "calibration": calibration,
            "ood": ood_report,
        }
        tag = save_model(
            cfg.name,
            model,
            contract,
            metadata=metadata,
            report=payload,
            engine_files=files,
            reference=reference_sample(splits.test, contract, reference) if files else None,
        )
    return RunResult(
        tag,
        splits,
        contract,
        metrics["test"],
        report_path,
        plots,
        cache_hits=hits,
        timings=timings,
        engines=payload["engines"],
        calibration=calibration,
        ood=ood_report,
    )


def _export_engines(
    cfg: TrainConfig,
    model: ClassifierNet,
    contract: ModelContract,
    splits: Splits,
    reference: torch.Tensor,
    labels: torch.Tensor,
    workdir: Path,
) -> tuple[dict[str, Path], dict[str, Any] | None, ModelContract]:
    """The engine files to store with the model ({engine: path}), how they compare with PyTorch's ``reference``
    outputs for the test split (probabilities, then the OOD score), and the contract with their OOD score scales."""
    if not cfg.export:
        return {}, None, contract
    calibration = random.Random(cfg.seed).sample(splits.train, min(cfg.calibration_images, len(splits.train)))
    return build_and_compare(
        model,
        contract,
        workdir,
        names=cfg.export,
        calibration=[s.path for s in calibration],
        val=[s.path for s in splits.val],
        test=[s.path for s in splits.test],
        reference=reference.numpy(),
        test_labels=labels.numpy(),
    )


def reference_sample(test: Sequence[Sample], contract: ModelContract, reference: torch.Tensor) -> ReferenceSample:
    """The first REFERENCE_IMAGES test images as the engines get them, with PyTorch's outputs for them: what the
    service checks each engine against on the host it starts on."""
    count = min(REFERENCE_IMAGES, len(test))
    images = load_images([s.path for s in test[:count]], contract)
    return ReferenceSample(images, reference[:count].numpy().astype(np.float32))


def _half_precision(
    model: ClassifierNet, contract: ModelContract, splits: Splits, device: torch.device
) -> tuple[ModelContract, dict[str, Any]]:
    """The contract with the torch engine's half-precision OOD score scales (the GPU's), and what was measured."""
    if contract.ood is None:
        return contract, {}
    val = load_images([s.path for s in splits.val[:HALF_SCALE_IMAGES]], contract)
    scales, measured = half_precision_scales(model, contract, val, device)
    ood_entry = contract.ood.model_copy(update={"score_scales": {**contract.ood.score_scales, **scales}})
    return contract.model_copy(update={"ood": ood_entry}), measured


def _fit_ood(
    cfg: TrainConfig,
    model: ClassifierNet,
    contract: ModelContract,
    splits: Splits,
    cached: dict[str, tuple[torch.Tensor, torch.Tensor]],
    outside: list[Path] | None,
    device: torch.device,
) -> tuple[ModelContract, dict[str, Any], dict[str, torch.Tensor]]:
    """Fit the OOD score on the training features and attach it to ``model`` (moved to the CPU); return the contract
    with its threshold, the report, and the scores of the test split and the --ood-data images (CPU tensors)."""
    if cfg.fine_tune_epochs > 0:  # the backbone changed: the cached features are stale
        features = {
            split: feats.forward_all(
                model.backbone, _loader(cfg, getattr(splits, split), contract, device), device, split
            )
            for split in ("train", "val", "test")
        }
    else:
        views, labels = cached["train"]  # [V, N, D]: every augmented view counts as a training image
        features = {**cached, "train": (views.reshape(-1, views.shape[-1]), labels.repeat(len(views)))}
    outside_features = None
    if outside:
        loader = _loader(cfg, [Sample(path, 0) for path in outside], contract, device)
        outside_features = feats.forward_all(model.backbone, loader, device, "features --ood-data")[0]
    model.to("cpu")
    module, ood_contract, fit_report = ood.fit(
        features["train"], features["val"][0], contract.num_classes, cfg.ood_accept
    )
    model.ood = module
    with torch.inference_mode():
        scores = {"test": module(features["test"][0])}
    fit_report["test_flagged"] = float((scores["test"] > ood_contract.threshold).double().mean())
    if outside_features is not None:
        fit_report["ood_data"] = ood.separation(
            module, model.head, ood_contract.threshold, features["test"][0], outside_features
        )
        with torch.inference_mode():
            scores["outside"] = module(outside_features)
    ood.log_fit(fit_report, val_images=len(features["val"][1]))
    return contract.model_copy(update={"ood": ood_contract}), fit_report, scores


def log_splits(splits: Splits) -> None:
    counts = splits.counts()
    logger.info("dataset %s (%s layout), classes: %s", splits.root, splits.layout, ", ".join(splits.class_names))
    for split, per_class in counts.items():
        detail = ", ".join(f"{name} {n}" for name, n in per_class.items())
        logger.info("  %-5s %5d images (%s)", split, sum(per_class.values()), detail)
    if splits.extra is not None:
        added = ", ".join(f"{name} {n}" for name, n in splits.extra.counts.items())
        logger.info("  train includes %d image(s) from %s (%s)", len(splits.extra.samples), splits.extra.root, added)


def _loader(cfg: TrainConfig, samples, contract, device, augmentation=None, shuffle=False):
    return image_loader(
        samples,
        contract,
        batch_size=cfg.batch_size,
        workers=cfg.workers,
        augmentation=augmentation,
        shuffle=shuffle,
        seed=cfg.seed,
        pin_memory=device.type == "cuda",
    )


def cached_features(
    cfg,
    model: ClassifierNet,
    contract,
    splits,
    augmentation,
    weights_id,
    device,
    splits_wanted=("train", "val", "test"),
):
    """Cached backbone features: train [V, N, D] (V augmented views), val and test [N, D]."""
    weights_key = sha256_file(Path(cfg.weights).expanduser()) if weights_id.startswith("file:") else weights_id
    base = {
        "fingerprint": splits.fingerprint,
        "backbone": cfg.backbone,
        "weights": weights_key,
        "preprocessing": contract.preprocessing(),
    }
    cache_dir = cfg.cache_root / "features" if cfg.feature_cache else None
    out, hits = {}, {}
    for split in splits_wanted:
        samples = getattr(splits, split)
        aug = augmentation if split == "train" else None
        key = {
            **base,
            "split": split,
            "files": _files_key(samples, splits),
            "augmentation": aug and vars(aug),
            "seed": cfg.seed if aug else None,
        }
        features, labels, hits[split] = feats.load_or_extract(
            model.backbone,
            _loader(cfg, samples, contract, device, aug),
            views=cfg.aug_views if aug else 1,
            key=key,
            cache_dir=cache_dir,
            device=device,
            desc=f"features {split}",
        )
        out[split] = (features if split == "train" else features[0], labels)
    return out, hits


def _files_key(samples: tuple[Sample, ...], splits: Splits) -> str:
    def name(path: Path) -> str:  # relative to its folder, so a moved dataset keeps its cache
        if splits.extra is not None and path.is_relative_to(splits.extra.root):
            return "extra:" + path.relative_to(splits.extra.root).as_posix()
        return path.relative_to(splits.root).as_posix()

    return feats.cache_key({"files": [(name(s.path), s.label) for s in samples]})


def _fine_tune(cfg, model, contract, splits, augmentation, device, first_epoch):
    params = unfreeze(model, cfg.unfreeze or backbone_spec(cfg.backbone).default_unfreeze)
    train_loader = _loader(cfg, splits.train, contract, device, augmentation, shuffle=True)
    val_loader = _loader(cfg, splits.val, contract, device)
    return fine_tune(
        model,
        params,
        train_loader,
        val_loader,
        epochs=cfg.fine_tune_epochs,
        lr=cfg.fine_tune_lr,
        first_epoch=first_epoch,
        device=device,
    )


def _report_payload(cfg, splits, contract, metrics, history, hits, timings) -> dict[str, Any]:
    return {
        "contract": contract.to_metadata(),
        "metrics": metrics,
        "history": history,
        "dataset": _dataset_summary(splits),
        "feature_cache_hits": hits,
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "config": cfg.to_json(),
    }


def _dataset_summary(splits: Splits) -> dict[str, Any]:
    return {
        "root": str(splits.root),
        "layout": splits.layout,
        "fingerprint": splits.fingerprint,
        "counts": splits.counts(),
        "skipped": [{"path": str(p), "reason": why} for p, why in splits.skipped],
        "duplicates": [[str(p) for p in group] for group in splits.duplicates],
        "extra": _extra_summary(splits),
    }


def _extra_summary(splits: Splits) -> dict[str, Any] | None:
    """What --extra-data added to the training split (its images are also in counts["train"])."""
    if splits.extra is None:
        return None
    return {
        "root": str(splits.extra.root),
        "images": len(splits.extra.samples),
        "counts": splits.extra.counts,
        "dropped_duplicates": len(splits.extra.dropped),
        "fingerprint": splits.extra.fingerprint,
    }


def _model_metadata(cfg: TrainConfig, splits: Splits, test: dict[str, Any]) -> dict[str, Any]:
    summary = _dataset_summary(splits)
    summary["skipped"] = len(splits.skipped)
    summary["duplicates"] = len(splits.duplicates)
    return {
        "test_metrics": {k: test[k] for k in ("accuracy", "loss", "macro_f1", "count", "per_class")},
        "dataset": summary,
        "training_args": cfg.to_json(),
    }


def _plots(
    output: Path, splits, contract, history, metrics, test: Evaluation, explained: ClassifierNet | None
) -> list[Path]:
    """The report's figures; with ``explained`` (the final network, on the CPU) the grid shows Grad-CAM heatmaps."""
    shown = sorted(random.Random(0).sample(range(len(splits.test)), min(GRID_IMAGES, len(splits.test))))
    images = [prepare_image(splits.test[i].path.read_bytes(), contract, max_pixels=TRAINING_MAX_PIXELS) for i in shown]
    heatmaps = None
    if explained is not None:
        predicted = test.probs[shown].argmax(dim=1).tolist()
        heatmaps = GradCam(explained, contract).explain(np.stack(images), predicted).heatmaps
    return [
        report.plot_learning_curves(history, metrics["baseline"], output / report.CURVES_FILE),
        report.plot_confusion_matrix(
            metrics["test"]["confusion_matrix"], splits.class_names, output / report.CONFUSION_FILE
        ),
        report.plot_prediction_grid(
            images, test.probs[shown], test.labels[shown], splits.class_names, output / report.GRID_FILE, heatmaps
        ),
    ]
