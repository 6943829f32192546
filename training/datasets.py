"""Torch datasets over image files, using the service's preprocessing plus optional augmentation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode, v2

from classifier.contract import ModelContract
from classifier.network import Normalize
from classifier.preprocessing import prepare_image
from training.data import TRAINING_MAX_PIXELS, Sample


@dataclass(frozen=True, kw_only=True)
class Augmentation:
    """Training-time augmentation (never used for evaluation), as in the TF tutorial.

    ``rotation`` is a fraction of a full turn, like Keras' RandomRotation(0.2) = +/-72 degrees.
    """

    flip: bool = True
    rotation: float = 0.2

    @property
    def enabled(self) -> bool:
        return self.flip or self.rotation > 0

    def transform(self, contract: ModelContract) -> v2.Compose:
        """Ops on the uint8 crop; rotated-in corners get the mean colour, i.e. zero after normalising."""
        fill = [round(m * 255) for m in contract.mean]
        ops: list[torch.nn.Module] = []
        if self.flip:
            ops.append(v2.RandomHorizontalFlip())
        if self.rotation > 0:
            ops.append(v2.RandomRotation(self.rotation * 360.0, interpolation=InterpolationMode.BILINEAR, fill=fill))
        return v2.Compose(ops)


class ImageFiles(Dataset):
    """(normalised image tensor, label) for each sample, preprocessed exactly as served.

    Augmentation is seeded per (seed, epoch, index): the same image gets the same random view
    in a given epoch whatever the batch size, worker count or order, so cached features are a
    function of the cache key alone. ``set_epoch`` moves to the next draw.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        contract: ModelContract,
        augmentation: Augmentation | None = None,
        *,
        seed: int = 0,
    ):
        self.samples = list(samples)
        self.contract = contract
        self.augment = augmentation.transform(contract) if augmentation and augmentation.enabled else None
        self.normalize = Normalize.from_contract(contract)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        sample = self.samples[index]
        image = torch.from_numpy(prepare_image(sample.path.read_bytes(), self.contract, max_pixels=TRAINING_MAX_PIXELS))
        if self.augment is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(hash((self.seed, self.epoch, index)) & 0xFFFF_FFFF)
                image = self.augment(image)
        return self.normalize(image), sample.label


def image_loader(
    samples: Sequence[Sample],
    contract: ModelContract,
    *,
    batch_size: int,
    workers: int,
    augmentation: Augmentation | None = None,
    shuffle: bool = False,
    seed: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A seeded DataLoader over image files: the same seed gives the same order and augmentations."""
    return DataLoader(
        ImageFiles(samples, contract, augmentation, seed=seed),
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        generator=torch.Generator().manual_seed(seed),
        pin_memory=pin_memory,
    )
