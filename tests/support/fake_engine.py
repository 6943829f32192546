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
    precision: str | None = None  # the torch engine's, e.g. "bfloat16" on a GPU; None: one precision only

    def __init__(self, path: Path | str, contract: ModelContract, name: str = "fake") -> None:
        self.name, self.contract = name, contract
        self.answer = int(Path(path).read_text())

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Probability 1 for the answer; an OOD score of 1 when the model has one."""
        out = np.zeros((len(batch), self.contract.output_width), np.float32)
        out[:, self.answer] = 1.0
        out[:, self.contract.num_classes :] = 1.0
        return out

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
