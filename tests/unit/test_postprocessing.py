import numpy as np

from service.postprocessing import default_top_k, to_prediction


def test_top_k_sorted_and_capped():
    p = to_prediction(np.array([0.1, 0.6, 0.3], dtype=np.float32), ("a", "b", "c"), 5, "x.jpg")
    assert [s.label for s in p.top_k] == ["b", "c", "a"]
    assert p.label == "b" and p.probability == 0.6 and p.filename == "x.jpg"
    assert [s.label for s in to_prediction(np.array([0.1, 0.6, 0.3]), ("a", "b", "c"), 1).top_k] == ["b"]


def test_ties_keep_class_order():
    assert [s.label for s in to_prediction(np.array([0.5, 0.5]), ("a", "b"), 2).top_k] == ["a", "b"]


def test_default_top_k():
    assert default_top_k(2) == 2 and default_top_k(10) == 5
