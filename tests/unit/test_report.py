import json

import numpy as np
import torch
from PIL import Image

from training import report

PNG = b"\x89PNG\r\n\x1a\n"


def _history():
    rows = [{"phase": "head", "epoch": e} for e in (1, 2)] + [{"phase": "fine-tune", "epoch": 3}]
    for i, row in enumerate(rows):
        row.update(
            train_loss=1.0 / (i + 1), train_accuracy=0.5 + i / 10, val_loss=1.1 / (i + 1), val_accuracy=0.5 + i / 9
        )
    return rows


def test_plots_are_png_files(tmp_path):
    paths = [
        report.plot_learning_curves(_history(), {"loss": 0.7, "accuracy": 0.5}, tmp_path / "curves.png"),
        report.plot_confusion_matrix([[3, 1], [0, 4]], ("a", "b"), tmp_path / "cm.png"),
        report.plot_prediction_grid(
            [np.zeros((3, 32, 32), dtype=np.uint8)] * 3,
            torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]),
            torch.tensor([0, 0, 1]),
            ("a", "b"),
            tmp_path / "grid.png",
        ),
    ]
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(PNG) and len(data) > 5_000


def test_prediction_grid_shows_heatmaps(tmp_path):
    """The heatmaps are drawn over the images: the grid's pixels change with them."""
    images, probs, labels = (
        [np.zeros((3, 32, 32), dtype=np.uint8)] * 2,
        torch.tensor([[0.9, 0.1]] * 2),
        torch.tensor([0, 0]),
    )
    plain = report.plot_prediction_grid(images, probs, labels, ("a", "b"), tmp_path / "plain.png")
    heat = np.zeros((2, 4, 4), dtype=np.float32)
    heat[:, :2, :2] = 1.0
    hot = report.plot_prediction_grid(images, probs, labels, ("a", "b"), tmp_path / "hot.png", heat)
    a, b = (np.asarray(Image.open(p).convert("RGB"), dtype=np.int16) for p in (plain, hot))
    assert a.shape == b.shape and np.abs(a - b).max() > 100


def test_write_json(tmp_path):
    path = report.write_json(tmp_path / "sub" / "m.json", {"a": [1, 2]})
    assert json.loads(path.read_text()) == {"a": [1, 2]}
