"""Sustained concurrent load on the composed services: zero 5xx (BentoML #5540 regressed this after 1.4.30)."""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import ODD_IMAGES

pytestmark = pytest.mark.slow
CLIENTS = 16
DURATION_S = 30.0
MIN_REQUESTS_PER_CLIENT = 5  # sustained on any host: each client goes on past the deadline until then
MAX_REQUESTS_PER_CLIENT = 400


def client(url: str, deadline: float) -> Counter:
    data = (ODD_IMAGES / "hopper.jpg").read_bytes()
    codes: Counter = Counter()
    with httpx.Client(timeout=60) as http:
        for sent in range(MAX_REQUESTS_PER_CLIENT):
            if time.monotonic() > deadline and sent >= MIN_REQUESTS_PER_CLIENT:
                break
            try:
                codes[http.post(f"{url}/v1/predict", files={"image": ("h.jpg", data, "image/jpeg")}).status_code] += 1
            except httpx.HTTPError as exc:  # a dropped connection is a failure too
                codes[type(exc).__name__] += 1
    return codes


def test_sustained_concurrent_load_has_no_server_errors(server):
    deadline = time.monotonic() + DURATION_S
    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(lambda _: client(server, deadline), range(CLIENTS)))
    codes = sum(results, Counter())
    assert set(codes) == {200}, codes
    assert codes[200] >= CLIENTS * MIN_REQUESTS_PER_CLIENT  # it really was sustained
