"""The feature-cache benchmark runs in a tiny configuration (correctness only, no timing assertions)."""

import json

import pytest

from tests.support.synthetic import make_dataset
from training import benchmark


@pytest.mark.slow
def test_benchmark_tiny(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", per_class=10)
    out = tmp_path / "bench.json"
    assert benchmark.main(["--data", str(data), "--backbone", "resnet18", "--image-size", "32", "--epochs", "2",
                           "--workers", "0", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["epochs"] == 2 and result["train_images"] == 16 and result["val_images"] == 2
    for key in ("every_epoch_s", "cache_cold_s", "cache_warm_s", "speedup_cold", "speedup_warm"):
        assert result[key] > 0
    assert "feature cache (warm)" in capsys.readouterr().out
