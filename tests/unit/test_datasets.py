import torch

from tests.support.synthetic import make_dataset
from training.data import load_splits
from training.datasets import Augmentation, ImageFiles, image_loader


def _samples(tmp_path):
    return load_splits(make_dataset(tmp_path, per_class=8), val_ratio=0.25, test_ratio=0.5, seed=0, workers=1).train


def test_augmentation_depends_on_seed_epoch_and_index_only(tmp_path, contract):
    samples = _samples(tmp_path)
    aug = Augmentation(flip=True, rotation=0.2)
    base = ImageFiles(samples, contract, aug, seed=3)
    first = [base[i][0] for i in range(4)]
    # Another order, another dataset object, global RNG disturbed: same views.
    torch.manual_seed(123)
    other = ImageFiles(samples, contract, aug, seed=3)
    assert all(torch.equal(other[i][0], first[i]) for i in reversed(range(4)))
    other.set_epoch(1)
    assert not all(torch.equal(other[i][0], first[i]) for i in range(4))
    plain = ImageFiles(samples, contract, None)
    assert not torch.equal(plain[0][0], first[0]) or not torch.equal(plain[1][0], first[1])


def test_loader_views_do_not_depend_on_batch_size_or_workers(tmp_path, contract):
    samples = _samples(tmp_path)
    aug = Augmentation(flip=True, rotation=0.2)
    a = torch.cat([x for x, _ in image_loader(samples, contract, batch_size=3, workers=0, augmentation=aug, seed=1)])
    b = torch.cat([x for x, _ in image_loader(samples, contract, batch_size=5, workers=2, augmentation=aug, seed=1)])
    assert torch.equal(a, b)


def test_evaluation_images_are_not_augmented(tmp_path, contract):
    samples = _samples(tmp_path)
    ds = ImageFiles(samples, contract, Augmentation(flip=False, rotation=0.0))
    assert ds.augment is None
