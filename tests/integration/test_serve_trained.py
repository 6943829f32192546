"""The README's main job: a model trained by the CLI is served by `bentoml serve` and answers."""

import time

import httpx
import psutil
import pytest

from loadtests.processes import role_of
from loadtests.servers import serve_process
from tests.conftest import ODD_IMAGES
from tests.support.cli import train_small
from tests.support.synthetic import make_dataset


@pytest.mark.slow
def test_trained_model_is_served(tmp_path):
    data = make_dataset(tmp_path / "data", per_class=12)
    tag = train_small(data, tmp_path / "out", name="served", epochs=2)
    with serve_process({"CLASSIFIER_MODEL_TAG": "served:latest"}) as server:
        url = server.url
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

        # Nor does a model worker restarted after it landed: it serves the pinned version, not the newer one.
        (runner,) = [p for p in psutil.Process(server.process.pid).children(recursive=True) if role_of(p) == "runner"]
        runner.kill()
        deadline = time.monotonic() + 120
        while server.log.read_text().count("ready: ") < 2:  # "model <tag> ready: <engine> engine on <device>"
            assert time.monotonic() < deadline, server.log.read_text()[-3000:]
            time.sleep(0.5)
        readies = [line for line in server.log.read_text().splitlines() if "ready: " in line]
        assert f"model {tag} ready" in readies[-1] and newer not in readies[-1], readies
