"""A fake engine, added the way any engine is: this one module plus one registry entry (tests/unit/test_registry.py).

It has a file of its own (written by ``export``, read by ``load``/``build``): the class it always answers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from classifier.contract import ModelContract
from classifier.engines import BuildRequest, ExportRequest


class ConstantEngine:
    device = "cpu"

    def __init__(self, path: Path | str, contract: ModelContract, name: str = "fake") -> None:
        self.name, self.contract = name, contract
        self.answer = int(Path(path).read_text())

    def predict(self, batch: np.ndarray) -> np.ndarray:
        probs = np.zeros((len(batch), self.contract.num_classes), np.float32)
        probs[:, self.answer] = 1.0
        return probs

    def warm_up(self, batch_size: int = 1) -> None:
        self.predict(np.zeros((batch_size, 3, 1, 1), np.uint8))


def export(request: ExportRequest) -> Path:
    path = request.workdir / "fake.txt"
    path.write_text(str(request.contract.num_classes - 1))
    return path


def load(path: Path | str, contract: ModelContract, threads: int) -> ConstantEngine:
    return ConstantEngine(path, contract)


def build(request: BuildRequest) -> ConstantEngine:
    return ConstantEngine(request.model.engine_files["fake"], request.model.contract)
