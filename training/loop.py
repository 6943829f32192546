"""Training and evaluation loops: the head on cached features, then optional end-to-end fine-tuning."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from classifier.network import ClassifierNet
from training.features import forward_all
from training.model import set_train_mode


@dataclass(frozen=True)
class Evaluation:
    """Mean loss plus per-sample probabilities and labels (CPU tensors)."""

    loss: float
    probs: torch.Tensor
    labels: torch.Tensor

    @property
    def accuracy(self) -> float:
        return float((self.probs.argmax(1) == self.labels).float().mean()) if len(self.labels) else 0.0


def _evaluation(logits: torch.Tensor, labels: torch.Tensor) -> Evaluation:
    logits, labels = logits.float().cpu(), labels.cpu()
    return Evaluation(float(F.cross_entropy(logits, labels)), logits.softmax(1), labels)


@torch.inference_mode()
def evaluate_head(head: nn.Module, features: torch.Tensor, labels: torch.Tensor, device: torch.device) -> Evaluation:
    """Evaluate the head alone on cached features [N, D]."""
    head.eval()
    return _evaluation(head(features.to(device)), labels)


def evaluate_model(
    model: ClassifierNet, loader: DataLoader, device: torch.device, desc: str = "evaluate"
) -> Evaluation:
    """Evaluate the whole network on image batches."""
    return _evaluation(*forward_all(model, loader, device, desc))


def epoch_record(phase: str, epoch: int, train: Evaluation | tuple[float, float], val: Evaluation) -> dict:
    """One row of the learning curves."""
    train_loss, train_acc = (train.loss, train.accuracy) if isinstance(train, Evaluation) else train
    return {
        "phase": phase,
        "epoch": epoch,
        "train_loss": round(train_loss, 5),
        "train_accuracy": round(train_acc, 5),
        "val_loss": round(val.loss, 5),
        "val_accuracy": round(val.accuracy, 5),
    }


def train_head(
    head: nn.Sequential,
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    val_features: torch.Tensor,
    val_labels: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    device: torch.device,
) -> list[dict]:
    """Phase 1 on cached features. ``train_features`` is [V, N, D]: V augmented views of each image.

    Each epoch shows every image once, in one of its views picked at random (seeded). The head
    trains on standardised features, which makes one learning rate fit every backbone (and a
    random-init one); the standardisation is then folded into its linear layer, so the saved
    head takes raw features. Returns one learning-curve record per epoch.
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    views, count = train_features.shape[:2]
    mean = train_features.mean(dim=(0, 1))
    std = train_features.std(dim=(0, 1))
    # A feature (nearly) constant in training must not be blown up by a tiny std at test time.
    std = std.clamp_min(1e-2 * float(std.mean()) + 1e-8)
    train_features = (train_features - mean) / std
    val_features = (val_features - mean) / std
    history = []
    for epoch in tqdm(range(1, epochs + 1), desc="phase 1: head", unit="epoch"):
        head.train()
        order = torch.randperm(count, generator=generator)
        view = torch.randint(views, (count,), generator=generator)
        total_loss, correct = 0.0, 0
        for start in range(0, count, batch_size):
            idx = order[start : start + batch_size]
            batch_loss, batch_correct = _train_step(
                head, optimizer, train_features[view[idx], idx].to(device), train_labels[idx].to(device)
            )
            total_loss += batch_loss
            correct += batch_correct
        val = evaluate_head(head, val_features, val_labels, device)
        history.append(epoch_record("head", epoch, (total_loss / count, correct / count), val))
    fold_standardization(cast(nn.Linear, head[-1]), mean.to(device), std.to(device))
    return history


def _train_step(
    module: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor
) -> tuple[float, int]:
    """One optimiser step on a batch; returns its summed loss and its number of correct predictions."""
    logits = module(x)
    loss = F.cross_entropy(logits, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item() * len(y), int((logits.argmax(1) == y).sum())


@torch.no_grad()
def fold_standardization(linear: nn.Linear, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Make ``linear((x - mean) / std)`` equal ``linear'(x)`` by rewriting its weight and bias."""
    linear.weight.div_(std)
    linear.bias.sub_(linear.weight @ mean)


def fine_tune(
    model: ClassifierNet,
    params: list[nn.Parameter],
    train_loader: DataLoader,
    val_loader: DataLoader,
    *,
    epochs: int,
    lr: float,
    first_epoch: int,
    device: torch.device,
) -> list[dict]:
    """Phase 2: train the head plus the unfrozen backbone ``params`` end to end at a low rate."""
    optimizer = torch.optim.Adam([*params, *model.head.parameters()], lr=lr)
    history = []
    for epoch in range(first_epoch, first_epoch + epochs):
        train_loader.dataset.set_epoch(epoch)  # type: ignore[attr-defined]  # a fresh augmentation draw each epoch
        set_train_mode(model)
        total_loss, correct, count = 0.0, 0, 0
        for images, targets in tqdm(train_loader, desc=f"phase 2: fine-tune epoch {epoch}", unit="batch", leave=False):
            images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            batch_loss, batch_correct = _train_step(model, optimizer, images, targets.to(device))
            total_loss += batch_loss
            correct += batch_correct
            count += len(targets)
        val = evaluate_model(model, val_loader, device, desc="validate")
        history.append(epoch_record("fine-tune", epoch, (total_loss / count, correct / count), val))
    return history
