import torch

from training.scores import classification_metrics, confusion_matrix


def test_confusion_matrix_rows_are_truth():
    labels = torch.tensor([0, 0, 1, 1, 2])
    preds = torch.tensor([0, 1, 1, 1, 0])
    assert confusion_matrix(labels, preds, 3).tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_classification_metrics_known_values():
    labels = torch.tensor([0, 0, 1, 1, 2])
    preds = torch.tensor([0, 1, 1, 1, 0])
    probs = torch.nn.functional.one_hot(preds, 3).float()
    m = classification_metrics(probs, labels, ("a", "b", "c"), loss=0.5)
    assert m["accuracy"] == 0.6 and m["count"] == 5 and m["loss"] == 0.5
    assert m["per_class"]["a"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert m["per_class"]["b"]["precision"] == round(2 / 3, 4) and m["per_class"]["b"]["recall"] == 1.0
    # Class c is never predicted: zeros, not NaN.
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["macro_f1"] == round((0.5 + 0.8 + 0.0) / 3, 4)
