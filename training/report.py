"""The run's report: metrics as JSON, learning curves, confusion matrix and a grid of test predictions as PNG."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: plots are files, never windows
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

METRICS_FILE = "metrics.json"
CURVES_FILE = "learning_curves.png"
CONFUSION_FILE = "confusion_matrix.png"
GRID_FILE = "test_predictions.png"
RELIABILITY_FILE = "reliability.png"
OOD_FILE = "ood_scores.png"


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    return path


def plot_learning_curves(history: list[dict], baseline: dict, path: Path) -> Path:
    """Loss and accuracy per epoch (train and validation); epoch 0 is the untrained baseline."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    epochs = [0] + [row["epoch"] for row in history]
    for ax, key, title in ((axes[0], "loss", "Loss"), (axes[1], "accuracy", "Accuracy")):
        ax.plot(epochs[1:], [row[f"train_{key}"] for row in history], "o-", label="train")
        ax.plot(epochs, [baseline[key]] + [row[f"val_{key}"] for row in history], "s-", label="validation")
        fine = [row["epoch"] for row in history if row["phase"] == "fine-tune"]
        if fine:
            ax.axvline(fine[0] - 0.5, color="gray", linestyle="--", label="start of fine-tuning")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def plot_confusion_matrix(matrix: list[list[int]], class_names: tuple[str, ...], path: Path) -> Path:
    """Counts with true classes as rows and predictions as columns."""
    size = max(4.0, 0.6 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(matrix, cmap="Blues")
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (test split)")
    peak = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(j, i, str(value), ha="center", va="center", color="white" if value > peak / 2 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046)
    return _save(fig, path)


def plot_prediction_grid(
    images: list[np.ndarray],
    probs: torch.Tensor,
    labels: torch.Tensor,
    class_names: tuple[str, ...],
    path: Path,
    heatmaps: np.ndarray | None = None,
) -> Path:
    """uint8 crops [3, S, S] with 'predicted (p) / true' titles; wrong predictions in red; with ``heatmaps``
    ([N, h, w] in [0, 1], Grad-CAM of the predicted class) laid over each image."""
    cols = min(4, len(images)) or 1
    rows = max(1, math.ceil(len(images) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (ax, image, p, label) in enumerate(zip(axes.flat, images, probs, labels, strict=False)):  # spare axes blank
        pred = int(p.argmax())
        ax.imshow(image.transpose(1, 2, 0))
        if heatmaps is not None:
            size = image.shape[-1]
            heat = heatmaps[i]
            ax.imshow(heat, cmap="turbo", alpha=0.15 + 0.5 * heat, extent=(0, size, size, 0), interpolation="bilinear")
        ok = pred == int(label)
        ax.set_title(
            f"{class_names[pred]} ({float(p[pred]):.0%})\ntrue: {class_names[int(label)]}",
            color="green" if ok else "red",
            fontsize=9,
        )
    what = "; heat: Grad-CAM of the predicted class" if heatmaps is not None else ""
    fig.suptitle(f"Test images: predicted (confidence) / true{what}")
    return _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_reliability(before: torch.Tensor, after: torch.Tensor, labels: torch.Tensor, path: Path) -> Path:
    """Reliability diagram of the test split: accuracy against confidence per bin, before and after temperature
    scaling (a calibrated model follows the diagonal); the ECE of each in the legend."""
    from training.calibration import expected_calibration_error, reliability

    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], color="gray", linestyle="--", label="perfectly calibrated")
    for probs, name, marker in ((before, "before", "o"), (after, "after", "s")):
        rows = reliability(probs, labels)
        ece = expected_calibration_error(probs, labels)
        ax.plot(
            [r["confidence"] for r in rows],
            [r["accuracy"] for r in rows],
            marker=marker,
            linestyle="-",
            label=f"{name} (ECE {ece:.3f})",
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability on the test split ({len(labels)} images)")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_ood(inside: torch.Tensor, outside: torch.Tensor | None, threshold: float, path: Path) -> Path:
    """Histograms of the OOD score of the test split and (with --ood-data) of the other images, on a log scale,
    with the threshold above which images are answered as unknown."""
    import numpy as np

    fig, ax = plt.subplots(figsize=(6.5, 4))
    groups = [(inside, f"test split ({len(inside)})")] + (
        [(outside, f"--ood-data ({len(outside)})")] if outside is not None else []
    )
    values = torch.cat([g for g, _ in groups]).double().clamp_min(1e-3)
    bins = np.geomspace(float(values.min()), max(float(values.max()), threshold) * 1.05, 40).tolist()
    for scores, name in groups:
        ax.hist(scores.double().clamp_min(1e-3).numpy(), bins=bins, alpha=0.55, label=name)
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3g}")
    ax.set_xscale("log")
    ax.set_xlabel("OOD score, log scale (about 1 for a typical training image)")
    ax.set_ylabel("images")
    ax.set_title("Out-of-distribution score: above the threshold an image is 'unknown'")
    ax.legend()
    return _save(fig, path)
