"""A real Prometheus scraping the real server, and the dashboard and rules checked against its metrics."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from loadtests.servers import free_port
from tests.integration.test_service import HOPPER, metrics_text, post_many, post_one
from tests.support.prom import total
from tests.support.promql import metric_names
from tests.unit.test_monitoring import dashboard_exprs, recorded_names, rule_groups

pytestmark = pytest.mark.slow
JOB = "image-classifier"


def exported_names(text: str) -> set[str]:
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def send_traffic(url: str) -> None:
    """Concurrent single-image requests (so batches form), a multi-image request and a bad upload."""
    with ThreadPoolExecutor(6) as pool:
        singles = list(pool.map(lambda _: post_one(url, HOPPER), range(6)))
    assert all(r.status_code == 200 for r in singles)
    assert post_many(url, [("a.jpg", HOPPER), ("b.jpg", HOPPER), ("c.jpg", HOPPER)]).status_code == 200
    assert post_one(url, b"not an image at all").status_code == 400


def test_dashboard_and_rules_read_only_exported_metrics(server):
    send_traffic(server)
    allowed = exported_names(metrics_text(server)) | recorded_names() | {"up"}  # up: Prometheus's own
    exprs = dashboard_exprs() + [rule["expr"] for group in rule_groups() for rule in group["rules"]]
    for expr in exprs:
        assert metric_names(expr), expr
        assert not metric_names(expr) - allowed, f"{expr} reads metrics the service does not export"


@pytest.fixture(scope="module")
def prometheus(server):
    """A Prometheus on loopback scraping the server every second and evaluating rules.yml every second."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is absent: apt-get install prometheus (.ci/run does)")
    folder = tempfile.mkdtemp(prefix="prometheus-")
    groups = rule_groups()
    for group in groups:
        group["interval"] = "1s"
    with open(f"{folder}/rules.yml", "w") as fh:
        yaml.safe_dump({"groups": groups}, fh)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [f"{folder}/rules.yml"],
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [server.removeprefix("http://")]}]}],
    }
    with open(f"{folder}/prometheus.yml", "w") as fh:
        yaml.safe_dump(config, fh)
    url = f"http://127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={folder}/prometheus.yml",
            f"--storage.tsdb.path={folder}/data",
            f"--web.listen-address={url.removeprefix('http://')}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not _ok(f"{url}/-/ready"):
            assert proc.poll() is None and time.monotonic() < deadline, (
                proc.stderr.read() if proc.poll() is not None else "not ready"
            )
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def query(prometheus: str, expr: str) -> list[dict]:
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["data"]["result"]


def value(prometheus: str, expr: str) -> float | None:
    result = query(prometheus, expr)
    return float(result[0]["value"][1]) if result else None


def test_prometheus_scrapes_what_the_service_served(server, prometheus):
    before = metrics_text(server)
    send_traffic(server)
    after = metrics_text(server)
    front = {"service_name": "image_classifier", "endpoint": "/v1/predict"}
    # PromQL on the left, the same number read straight from the server's /metrics on the right.
    expected = {
        f'sum(bentoml_service_request_total{{job="{JOB}", service_name="image_classifier", endpoint="/v1/predict", '
        'http_response_code="200"})': total(after, "bentoml_service_request_total", http_response_code="200", **front),
        f'sum(bentoml_service_request_total{{job="{JOB}", endpoint="/v1/predict", http_response_code="400"}})': total(
            after, "bentoml_service_request_total", http_response_code="400", **front
        ),
        f'sum(bentoml_service_adaptive_batch_size_count{{job="{JOB}"}})': total(
            after, "bentoml_service_adaptive_batch_size_count"
        ),
        f'sum(image_classifier_inference_batch_images_sum{{job="{JOB}"}})': total(
            after, "image_classifier_inference_batch_images_sum"
        ),
        f'sum(image_classifier_predictions_total{{job="{JOB}"}})': total(after, "image_classifier_predictions_total"),
        f'sum(image_classifier_rejected_inputs_total{{job="{JOB}", reason="not_an_image"}})': total(
            after, "image_classifier_rejected_inputs_total", reason="not_an_image"
        ),
        f'up{{job="{JOB}"}}': 1.0,
    }
    # What this test sent is in there.
    assert total(after, "image_classifier_predictions_total") - total(before, "image_classifier_predictions_total") == 9
    assert (
        total(after, "image_classifier_rejected_inputs_total", reason="not_an_image")
        - total(before, "image_classifier_rejected_inputs_total", reason="not_an_image")
        == 1
    )
    deadline = time.monotonic() + 60
    while (seen := {expr: value(prometheus, expr) for expr in expected}) != expected and time.monotonic() < deadline:
        time.sleep(0.5)
    assert seen == expected
    info = query(prometheus, f'image_classifier_model_info{{job="{JOB}"}}')
    assert info and info[0]["metric"]["engine"] == "onnx" and info[0]["metric"]["device"] == "cpu"


def test_recording_rules_evaluate_on_real_data(server, prometheus):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        batch = query(prometheus, "image_classifier:batch_images:avg5m")
        requests = query(prometheus, 'image_classifier:requests:rate5m{http_response_code="200"}')
        if batch and requests and float(batch[0]["value"][1]) >= 1 and float(requests[0]["value"][1]) > 0:
            break
        send_traffic(server)
        time.sleep(1)
    assert batch and float(batch[0]["value"][1]) >= 1
    assert requests and requests[0]["metric"]["job"] == JOB
    assert not query(prometheus, 'ALERTS{alertname="ImageClassifierNotReady"}')  # up, with a model loaded
