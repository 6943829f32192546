"""The README's main job: a model trained by the CLI is served by `bentoml serve` and answers."""

import httpx
import pytest

from loadtests.servers import serve
from tests.conftest import ODD_IMAGES
from tests.support.cli import train_small
from tests.support.synthetic import make_dataset


@pytest.mark.slow
def test_trained_model_is_served(tmp_path):
    data = make_dataset(tmp_path / "data", per_class=12)
    tag = train_small(data, tmp_path / "out", name="served", epochs=2)
    with serve({"CLASSIFIER_MODEL_TAG": "served:latest"}) as url:
        ok = httpx.post(
            f"{url}/v1/predict",
            files={"image": ("hopper.jpg", (ODD_IMAGES / "hopper.jpg").read_bytes(), "image/jpeg")},
            timeout=60,
        )
        assert ok.status_code == 200, ok.text
        body = ok.json()
        assert body["model"] == tag
        assert [s["label"] for s in body["top_k"]] in (["cats", "dogs"], ["dogs", "cats"])
        assert sum(s["probability"] for s in body["top_k"]) == pytest.approx(1.0, abs=1e-4)
        bad = httpx.post(
            f"{url}/v1/predict",
            files={"image": ("broken.png", (ODD_IMAGES / "broken.png").read_bytes(), "image/png")},
            timeout=60,
        )
        assert bad.status_code == 400 and "not_an_image" in bad.text
        # A newer version landing in the store does not change what the running server serves:
        # "served:latest" was pinned to one version for the front and the model runner alike.
        newer = train_small(data, tmp_path / "out2", name="served")
        assert newer != tag
        again = httpx.post(
            f"{url}/v1/predict", files={"image": ("h.jpg", (ODD_IMAGES / "hopper.jpg").read_bytes())}, timeout=60
        )
        assert again.json()["model"] == tag and httpx.get(f"{url}/v1/model", timeout=60).json()["tag"] == tag
