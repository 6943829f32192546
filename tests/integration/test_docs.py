"""Every endpoint the README's table lists answers on the real server, and the OpenAPI documents describe
this service (its title, the package's version, a description of the endpoints), not BentoML's defaults."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

import classifier
from tests.conftest import ODD_IMAGES

pytestmark = pytest.mark.slow
README = Path(__file__).resolve().parents[2] / "README.md"
HOPPER = (ODD_IMAGES / "hopper.jpg").read_bytes()


def readme_endpoints() -> list[tuple[str, str]]:
    """(method, path) for every `METHOD /path` in the first cell of a README table row."""
    found = []
    for line in README.read_text().splitlines():
        if line.startswith("| `"):
            first_cell = line.split("|")[1]
            found += re.findall(r"`(GET|POST) (/[^`\s]*)`", first_cell)
    return found


def test_readme_lists_the_endpoints():
    endpoints = readme_endpoints()
    for expected in [
        ("POST", "/v1/predict"),
        ("POST", "/v1/predict/batch"),
        ("GET", "/v1/model"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        ("GET", "/docs.json"),
    ]:
        assert expected in endpoints, endpoints


@pytest.mark.parametrize(("method", "path"), readme_endpoints())
def test_every_readme_endpoint_answers(server, method, path):
    if method == "GET":
        r = httpx.get(server + path, timeout=60)
    elif path == "/v1/feedback":  # the true label of an answer (this server keeps no feedback images)
        answer = httpx.post(server + "/v1/predict", files=[("image", ("hopper.jpg", HOPPER))], timeout=120).json()
        r = httpx.post(server + path, json={"request_id": answer["request_id"], "label": answer["label"]}, timeout=60)
    else:
        field = "images" if path.endswith("/batch") else "image"
        r = httpx.post(server + path, files=[(field, ("hopper.jpg", HOPPER, "image/jpeg"))], timeout=120)
    assert r.status_code == 200, (method, path, r.status_code, r.text[:300])


def test_openapi_documents_describe_this_service(server):
    for path in ("/docs.json", "/v1/openapi.json"):
        info = httpx.get(server + path, timeout=60).json()["info"]
        assert info["title"] == "Image classifier", path
        assert info["version"] == classifier.__version__ != "None", path
        assert "/v1/predict/batch" in info["description"] and "bentoml.com" not in info["description"], path
        assert "slack" not in info["description"].lower(), path
    paths = httpx.get(server + "/docs.json", timeout=60).json()["paths"]
    assert {"/v1/predict", "/v1/predict/batch", "/v1/model", "/readyz"} <= set(paths)
