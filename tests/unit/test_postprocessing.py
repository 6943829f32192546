import numpy as np
import pytest

from classifier.contract import OodContract
from service.postprocessing import UNKNOWN_LABEL, default_top_k, to_prediction


@pytest.fixture
def three(contract):
    return contract.model_copy(update={"class_names": ("a", "b", "c")})


@pytest.fixture
def with_ood(three):
    return three.model_copy(update={"ood": OodContract(dims=8, threshold=2.0, accept_rate=0.95)})


def test_top_k_sorted_and_capped(three):
    p = to_prediction(np.array([0.1, 0.6, 0.3], dtype=np.float32), three, 5, "x.jpg")
    assert [s.label for s in p.top_k] == ["b", "c", "a"]
    assert p.label == "b" and p.probability == 0.6 and p.filename == "x.jpg"
    assert [s.label for s in to_prediction(np.array([0.1, 0.6, 0.3]), three, 1).top_k] == ["b"]


def test_ties_keep_class_order(contract):
    assert [s.label for s in to_prediction(np.array([0.5, 0.5]), contract, 2).top_k] == ["ants", "bees"]


def test_default_top_k():
    assert default_top_k(2) == 2 and default_top_k(10) == 5


def test_a_model_without_an_ood_score_answers_without_one(three):
    p = to_prediction(np.array([0.1, 0.6, 0.3]), three, 3)
    assert p.ood_score is None and p.known is None and p.label == "b"


@pytest.mark.parametrize(
    ("score", "policy", "label", "known"),
    [
        (1.5, "flag", "b", True),
        (2.0, "flag", "b", True),  # at the threshold: still known
        (2.5, "flag", "b", False),
        (2.5, "abstain", UNKNOWN_LABEL, False),
        (1.5, "abstain", "b", True),
        (2.5, "off", "b", None),
    ],
)
def test_the_ood_score_decides_known_and_the_policy_the_label(with_ood, score, policy, label, known):
    p = to_prediction(np.array([0.1, 0.6, 0.3, score]), with_ood, 2, unknown=policy)
    assert (p.label, p.known, p.ood_score) == (label, known, score)
    assert p.probability == 0.6 and [s.label for s in p.top_k] == ["b", "c"]  # the classes, whatever the policy
