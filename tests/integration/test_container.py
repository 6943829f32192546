"""The container image, built from an exported Bento with the project's Dockerfile and run for real (podman):
it becomes healthy by its own HEALTHCHECK, classifies a real photo from outside over /v1 and /v2, runs as the
non-root user without torch, and exits cleanly on SIGTERM within the grace period. Its size is reported.

Skipped where podman, runc or debootstrap is missing, except in CI (CI_REQUIRE_CONTAINER=1), where .ci/run
installs them and a skip would hide a broken image.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from loadtests.servers import REPO, free_port
from loadtests.traffic import photo_files
from tests.support import container
from tests.support.cli import train_small
from tests.support.synthetic import make_dataset

pytestmark = pytest.mark.slow
MAX_IMAGE_BYTES = 1.5e9
GRACE_S = 30
NON_ROOT = 10001  # the Dockerfile's app user

if (why := container.missing()) is not None:
    if os.environ.get("CI_REQUIRE_CONTAINER") == "1":
        raise RuntimeError(f"the container test must run here: {why}")
    pytest.skip(f"no container runtime: {why}", allow_module_level=True)


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> str:
    """The CPU image (no torch) of a freshly trained model's Bento."""
    work = tmp_path_factory.mktemp("container")
    tag = train_small(make_dataset(work / "data", per_class=8), work / "out", export=None)
    bento = work / "image_classifier.bento"
    for command in (["build", "--output", "tag"], ["export", "image_classifier:latest", str(bento)]):
        done = subprocess.run([sys.executable, "-m", "bentoml", *command], cwd=REPO, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
    name = f"localhost/image-classifier-test:{uuid.uuid4().hex[:8]}"
    before = container.dangling_images()
    try:
        container.build_image(bento, name, work)
        yield name, tag
    finally:  # the image and its build stage: a few runs would otherwise fill a disk
        container.podman("rmi", "-f", name, *(container.dangling_images() - before), check=False)


def _wait_healthy(name: str, deadline_s: float = 240) -> None:
    """Poll the image's own HEALTHCHECK (its /readyz) until it passes; fail with the logs if the container dies."""
    deadline = time.monotonic() + deadline_s
    while container.podman("healthcheck", "run", name, check=False).returncode != 0:
        state = container.podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
        if state != "running" or time.monotonic() > deadline:
            logs = container.podman("logs", name, check=False)
            pytest.fail(f"the container is {state}, not healthy:\n{(logs.stdout + logs.stderr)[-4000:]}")
        time.sleep(1)


def test_the_image_serves_a_photo_as_non_root_and_stops_cleanly(image, report):
    name, model_tag = image
    size = int(container.podman("image", "inspect", "--format", "{{.Size}}", name).stdout)
    report(f"container: CPU image {size / 1e6:.0f} MB (limit {MAX_IMAGE_BYTES / 1e6:.0f} MB)")
    assert size <= MAX_IMAGE_BYTES

    port, running = free_port(), f"image-classifier-{uuid.uuid4().hex[:8]}"
    container.podman(
        "run", "-d", "--name", running, "--network", "host", *container.ulimits(),
        "--health-interval", "disable",  # no systemd here to time it: the test runs the HEALTHCHECK itself
        "-e", f"BENTOML_PORT={port}", name,
    )  # fmt: skip
    try:
        _wait_healthy(running)
        url = f"http://127.0.0.1:{port}"
        photo = photo_files(REPO / "loadtests" / "photos")[0]
        answer = httpx.post(f"{url}/v1/predict", files={"image": (photo.name, photo.read_bytes())}, timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"] == model_tag and answer.json()["label"] in ("cats", "dogs")

        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        tensor = triton.InferInput("image", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([photo.read_bytes()], dtype=object))
        (label,) = client.infer(model_tag.split(":")[0], [tensor]).as_numpy("label")
        assert label.decode() == answer.json()["label"]

        explain = httpx.post(f"{url}/v1/explain", files={"image": (photo.name, photo.read_bytes())}, timeout=60)
        assert explain.status_code == 501 and explain.json()["error"]["reason"] == "explain_unavailable"

        uid = container.podman("exec", running, "sh", "-c", "grep ^Uid: /proc/1/status").stdout.split()[1]
        assert int(uid) == NON_ROOT
        assert container.podman("exec", running, "python3", "-c", "import torch", check=False).returncode != 0
        rss = container.podman("exec", running, "sh", "-c", "grep -h VmRSS /proc/[0-9]*/status").stdout.split()
        report(f"container: resident memory after one request {sum(int(kb) for kb in rss[1::3]) / 1024:.0f} MiB")

        start = time.monotonic()
        container.podman("stop", "--time", str(GRACE_S), running, timeout=GRACE_S + 30)
        stopped_s = time.monotonic() - start
        code = container.podman("inspect", "--format", "{{.State.ExitCode}}", running).stdout.strip()
        logs = container.podman("logs", running).stderr + container.podman("logs", running).stdout
        assert code == "0" and stopped_s < GRACE_S, f"exit code {code} after {stopped_s:.1f} s:\n{logs[-3000:]}"
        assert logs.count("Service instance cleanup finalized") == 2 and "Traceback" not in logs
        report(f"container: healthy, served, stopped by SIGTERM in {stopped_s:.1f} s with exit code 0")
    finally:
        container.podman("rm", "-f", running, check=False)
