"""The feature-cache benchmark runs in a tiny configuration (correctness only, no timing assertions)."""

import json
import math

import pytest

from tests.support.synthetic import make_dataset
from training import benchmark


@pytest.mark.slow
def test_benchmark_tiny(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", per_class=10)
    out = tmp_path / "bench.json"
    assert (
        benchmark.main(
            [
                "--data",
                str(data),
                "--backbone",
                "resnet18",
                "--image-size",
                "32",
                "--epochs",
                "2",
                "--workers",
                "0",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert result["epochs"] == 2 and result["train_images"] == 16 and result["val_images"] == 2
    # Correctness, not speed: every figure is a real measurement (positive and finite, never rounded to 0),
    # and each speed-up is the ratio of the times it claims to compare.
    for key in ("every_epoch_s", "cache_cold_s", "cache_warm_s", "speedup_cold", "speedup_warm"):
        assert isinstance(result[key], float) and math.isfinite(result[key]) and result[key] > 0, (key, result[key])
    assert result["speedup_cold"] == pytest.approx(result["every_epoch_s"] / result["cache_cold_s"])
    assert result["speedup_warm"] == pytest.approx(result["every_epoch_s"] / result["cache_warm_s"])
    assert "feature cache (warm)" in capsys.readouterr().out
