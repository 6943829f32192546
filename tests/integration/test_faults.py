"""Overload, killed workers and SIGTERM, on the real server (`bentoml serve`) under load.

Each test starts its own server on a full-size model with small limits, so that a 2-core machine
can offer it several times what it serves. Bounds are generous: these prove behaviour, not speed.
"""

from __future__ import annotations

import math
import re
import signal
import socket
import threading
import time
from collections.abc import Callable

import httpx
import psutil
import pytest

from loadtests.openloop import Phase, measure_capacity, offer, photo_bodies, summarize
from loadtests.processes import role_of
from loadtests.servers import REPO, RunningServer, serve_process

pytestmark = pytest.mark.slow
PHOTOS = photo_bodies(REPO / "loadtests" / "photos")
LIMITS = {
    "CLASSIFIER_DEVICE": "cpu",
    "CLASSIFIER_ENGINE": "torch",
    "CLASSIFIER_INFERENCE_THREADS": "1",
    "CLASSIFIER_MAX_BATCH_SIZE": "4",
    "CLASSIFIER_MAX_IMAGES": "4",
    "CLASSIFIER_MAX_INFLIGHT_IMAGES": "4",
    "CLASSIFIER_MAX_QUEUE": "8",
    # Long enough that a slow host never sheds a queued request at half capacity; at 3x, the full queue sheds.
    "CLASSIFIER_MAX_QUEUE_WAIT_MS": "10000",
    "CLASSIFIER_MAX_LATENCY_MS": "60000",  # batching's budget is not what these tests are about
    "CLASSIFIER_GRACEFUL_TIMEOUT_S": "60",
}


def start(slow_model: str, **env: str):
    return serve_process({"CLASSIFIER_MODEL_TAG": slow_model, **LIMITS, **env})


def post(http: httpx.Client, url: str, body: bytes) -> tuple[int, str]:
    """(status, reason) or (0, transport error name)."""
    try:
        response = http.post(f"{url}/v1/predict", content=body, headers={"content-type": "image/jpeg"})
    except httpx.HTTPError as exc:
        return 0, type(exc).__name__
    return response.status_code, "" if response.status_code == 200 else response.json()["error"]["reason"]


class Load:
    """Closed-loop clients in threads, recording (sent, answered, status, reason) until stopped."""

    def __init__(self, url: str, clients: int) -> None:
        self.url, self.events, self._stop = url, [], threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)]

    def _client(self, i: int) -> None:
        with httpx.Client(timeout=120) as http:
            while not self._stop.is_set():
                sent = time.monotonic()
                status, reason = post(http, self.url, PHOTOS[i % len(PHOTOS)])
                self.events.append((sent, time.monotonic(), status, reason))

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=150)

    def wait_for(self, condition: Callable[[list], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition(list(self.events)):
                return True
            time.sleep(0.1)
        return False


def worker(server: RunningServer, role: str) -> psutil.Process:
    (proc,) = [p for p in psutil.Process(server.process.pid).children(recursive=True) if role_of(p) == role]
    return proc


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=60).text
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE))


def test_three_times_capacity_is_shed_with_503_and_latency_recovers(slow_model):
    with start(slow_model) as server:
        capacity = measure_capacity(server.url, PHOTOS, clients=6, seconds=8)
        phases = [
            Phase("normal", 10, capacity / 2),
            Phase("overload", 15, capacity * 3),
            Phase("recovery", 25, capacity / 2),
        ]
        outcomes = offer(server.url, phases, PHOTOS, timeout=120)
        shed_metric = metric(server.url, "image_classifier_shed_requests_total")
    normal, overload, recovery = summarize(outcomes, phases)
    assert {(o.status, o.reason) for o in outcomes} <= {(200, ""), (503, "overloaded")}  # none lost, hung or 5xx
    assert all(o.retry_after for o in outcomes if o.status == 503)
    assert overload.shed > 0 and overload.ok > 0 and shed_metric == sum(o.status == 503 for o in outcomes)
    shed_ms = sorted(o.latency_s for o in outcomes if o.status == 503)
    ok_ms = sorted(o.latency_s for o in outcomes if o.phase == "overload" and o.status == 200)
    assert shed_ms[len(shed_ms) // 2] < ok_ms[len(ok_ms) // 2]  # shedding answers sooner than serving
    tail = [o for o in outcomes if o.phase == "recovery" and o.sent_s >= 40]  # the last 10 s of the recovery
    tail_ok = sorted(o.latency_s for o in tail)
    assert tail and all(o.status == 200 for o in tail), [o for o in tail if o.status != 200][:3]
    normal_s = normal.p50_ms / 1000  # back to normal latency, up to scheduling noise on a fast host
    assert tail_ok[len(tail_ok) // 2] <= max(3 * normal_s, normal_s + 0.5), (normal, recovery)


def kill_under_load(server: RunningServer, load: Load, role: str) -> tuple[psutil.Process, float]:
    """Once the load has had 3 answers, SIGKILL the ``role`` worker; the victim and when it was killed."""
    assert load.wait_for(lambda ev: sum(e[2] == 200 for e in ev) >= 3, timeout=60)
    victim = worker(server, role)
    victim.kill()
    return victim, time.monotonic()


def _answers(events, after: float | None = None) -> set[tuple[int, str]]:
    return {(status, reason) for sent, _, status, reason in events if after is None or sent > after}


def test_a_killed_model_worker_is_replaced_and_clients_get_503_meanwhile(slow_model):
    starting = time.monotonic()
    with start(slow_model) as server, Load(server.url, clients=3) as load:
        startup_s = time.monotonic() - starting
        victim, killed = kill_under_load(server, load, "runner")
        assert load.wait_for(lambda ev: any(e[0] > killed and e[2] == 200 for e in ev), timeout=90), _answers(
            load.events, killed
        )
        back = min(e[1] for e in load.events if e[0] > killed and e[2] == 200) - killed
        replacement = worker(server, "runner")
    assert replacement.pid != victim.pid
    assert _answers(load.events) <= {(200, ""), (503, "model_unavailable"), (503, "overloaded")}  # never a 500
    assert back < 2 * startup_s + 30, (back, startup_s)  # a new worker loads and warms up as at start-up


def test_a_killed_front_worker_is_replaced_and_new_connections_wait_for_it(slow_model):
    with start(slow_model) as server, Load(server.url, clients=3) as load:
        victim, killed = kill_under_load(server, load, "front")
        assert load.wait_for(lambda ev: sum(e[0] > killed and e[2] == 200 for e in ev) >= 3, timeout=90)
        replacement = worker(server, "front")
    assert replacement.pid != victim.pid
    in_flight = [e for e in load.events if e[0] < killed < e[1]]
    assert {status for _, _, status, _ in in_flight} <= {0, 200}  # requests on the dead worker lose their connection
    # the socket stays open: once the dead worker's connections are gone (a few seconds on a loaded host)
    assert _answers(load.events, after=killed + 5) <= {(200, ""), (503, "overloaded")}


def test_sigterm_finishes_in_flight_requests_then_exits(slow_model):
    with start(slow_model, CLASSIFIER_MAX_QUEUE_WAIT_MS="30000") as server:
        answers: list[tuple[float, int, str]] = []
        first = threading.Event()

        def one(body: bytes) -> None:
            with httpx.Client(timeout=120) as http:
                status, reason = post(http, server.url, body)
            answers.append((time.monotonic(), status, reason))
            first.set()

        clients = [threading.Thread(target=one, args=(PHOTOS[i % len(PHOTOS)],)) for i in range(12)]
        for t in clients:  # 4 images admitted, 8 requests queued
            t.start()
        assert first.wait(timeout=60)
        server.process.send_signal(signal.SIGTERM)  # the other 11 are still in the server
        terminated = time.monotonic()
        for t in clients:
            t.join(timeout=120)
        server.process.wait(timeout=60)
        log = server.log.read_text()
    assert [(status, reason) for _, status, reason in answers] == [(200, "")] * 12, answers
    assert sum(when > terminated for when, _, _ in answers) >= 4  # really in flight at SIGTERM (and not only one batch)
    assert "SIGTERM: finishing in-flight requests" in log
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/livez", timeout=60)


BIG = [("images", (f"{i}.jpg", PHOTOS[i % len(PHOTOS)], "image/jpeg")) for i in range(32)]
MAX_BIG_REQUESTS = 8


def test_past_the_graceful_timeout_the_server_exits_anyway(slow_model):
    env = {
        "CLASSIFIER_GRACEFUL_TIMEOUT_S": "1",
        "CLASSIFIER_MAX_QUEUE_WAIT_MS": "500",
        "CLASSIFIER_MAX_IMAGES": "32",
        "CLASSIFIER_MAX_INFLIGHT_IMAGES": str(32 * MAX_BIG_REQUESTS),
    }
    with start(slow_model, **env) as server:
        # Enough work for at least 8 s at this host's measured speed, 8 times the graceful timeout.
        one_s = time.monotonic()
        assert httpx.post(f"{server.url}/v1/predict/batch", files=BIG, timeout=120).status_code == 200
        one_s = time.monotonic() - one_s
        requests = min(MAX_BIG_REQUESTS, max(3, math.ceil(8 / one_s)))
        answers: list[int] = []

        def big_request() -> None:
            try:
                answers.append(httpx.post(f"{server.url}/v1/predict/batch", files=BIG, timeout=120).status_code)
            except httpx.HTTPError:
                answers.append(0)

        clients = [threading.Thread(target=big_request) for _ in range(requests)]
        for t in clients:
            t.start()
        deadline = time.monotonic() + 60
        while metric(server.url, "image_classifier_admitted_images") < 32 * requests:
            assert time.monotonic() < deadline, "the requests were never all admitted"
            time.sleep(0.05)
        server.process.send_signal(signal.SIGTERM)
        terminated = time.monotonic()
        server.process.wait(timeout=60)
        exited_after = time.monotonic() - terminated
        for t in clients:
            t.join(timeout=120)
        log = server.log.read_text()
    assert "graceful shutdown took over 1 s" in log
    assert answers.count(200) < requests, (answers, one_s)  # the work that could not finish in time was cut off
    assert exited_after < 30  # the timeout (1 s) and the forced exit (5 s later at most), with a margin


def _until(condition: Callable[[], bool], timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_a_body_that_does_not_fit_beside_those_held_is_shed_before_it_is_read(slow_model):
    with start(slow_model, CLASSIFIER_MAX_INFLIGHT_BODY_BYTES=str(1024 * 1024)) as server:
        host, port = server.url.removeprefix("http://").split(":")
        slow = socket.create_connection((host, int(port)), timeout=60)  # declares 1.04 MB, sends 1 KB, waits
        slow.sendall(
            f"POST /v1/predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/jpeg\r\n"
            f"Content-Length: 1040000\r\n\r\n".encode()
            + PHOTOS[0][:1024]
        )
        try:
            assert _until(lambda: metric(server.url, "image_classifier_held_body_bytes") >= 1_040_000)
            response = httpx.post(
                f"{server.url}/v1/predict", content=PHOTOS[0], headers={"content-type": "image/jpeg"}, timeout=60
            )
            assert response.status_code == 503 and response.headers["retry-after"]
            assert "request bodies" in response.json()["error"]["message"]
            assert metric(server.url, 'image_classifier_shed_requests_total{reason="body_budget"}') >= 1
        finally:
            slow.close()  # the client goes away: its bytes are given back
        assert _until(lambda: metric(server.url, "image_classifier_held_body_bytes") == 0)
        with httpx.Client(timeout=120) as http:
            assert post(http, server.url, PHOTOS[0]) == (200, "")
