import pytest
import torch

from classifier.network import build_head
from training.loop import evaluate_head, fold_standardization, train_head

CPU = torch.device("cpu")


def _blobs(n, dim=16, seed=0, scale=40.0):
    centers = torch.randn(2, dim, generator=torch.Generator().manual_seed(42)) * 3  # same classes in every split
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    feats = centers[labels] + torch.randn(n, dim, generator=g)
    return feats * scale + 100.0, labels  # large offset and scale, like a random-init backbone


def test_fold_standardization_is_exact():
    linear = torch.nn.Linear(4, 3)
    x = torch.randn(5, 4)
    mean, std = torch.randn(4), torch.rand(4) + 0.5
    expected = linear((x - mean) / std)
    fold_standardization(linear, mean, std)
    assert torch.allclose(linear(x), expected, atol=1e-5)


def test_head_learns_separable_features_and_takes_raw_features_after():
    train_x, train_y = _blobs(200)
    val_x, val_y = _blobs(60, seed=1)
    torch.manual_seed(0)  # the head's init and dropout draw from the global generator
    head = build_head(16, 2, dropout=0.2)
    before = evaluate_head(head, val_x, val_y, CPU)
    history = train_head(
        head,
        torch.stack([train_x, train_x]),
        train_y,
        val_x,
        val_y,
        epochs=5,
        lr=1e-2,
        batch_size=32,
        seed=0,
        device=CPU,
    )
    after = evaluate_head(head, val_x, val_y, CPU)  # raw features: standardisation was folded in
    assert len(history) == 5 and history[-1]["phase"] == "head"
    assert after.accuracy > 0.95 and after.loss < before.loss
    assert history[-1]["val_accuracy"] == pytest.approx(after.accuracy, abs=1e-5)  # the record rounds to 5 places


def test_head_training_is_seeded():
    x, y = _blobs(64)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        head = build_head(16, 2, dropout=0.2)
        train_head(head, x[None], y, x, y, epochs=2, lr=1e-2, batch_size=16, seed=3, device=CPU)
        runs.append(head[1].weight.detach().clone())
    assert torch.equal(runs[0], runs[1])
