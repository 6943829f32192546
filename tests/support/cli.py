"""Run the training CLI as a user would, in this test session's BENTOML_HOME and caches."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def train(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "training", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def saved_tag(result: subprocess.CompletedProcess) -> str:
    """The model tag a successful run printed; fails the test with the run's stderr otherwise."""
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("saved model"))
    return line.split()[-1]


def train_small(
    data: Path,
    output: Path,
    *,
    name: str | None = None,
    image_size: int = 64,
    epochs: int = 1,
    export: str | None = "none",
) -> str:
    """Tag of a model trained quickly by the real CLI: random init, no data-loading workers; ``export`` None
    saves the default engines."""
    args = [
        "--data",
        str(data),
        "--weights",
        "none",
        "--image-size",
        str(image_size),
        "--epochs",
        str(epochs),
        "--workers",
        "0",
        "--output",
        str(output),
    ]
    args += ["--name", name] if name else []
    args += ["--export", export] if export else []
    return saved_tag(train(*args))
