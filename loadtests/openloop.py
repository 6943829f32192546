"""Open-loop load: requests sent at a set rate whether or not earlier ones were answered.

Locust's users wait for each answer before sending the next (a closed loop), so they slow down with
the server and can never offer it more than it serves. Overload and soak runs need the opposite:
Poisson arrivals at a fixed rate per phase, every request followed to its end, and each end recorded
(a status, a transport error, or "hung" when no answer came within the client timeout). Used by
loadtests/overload.py and loadtests/soak.py; localhost only, like the sweep.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from loadtests.results import check_local
from loadtests.servers import REPO

HUNG = "hung"  # no answer within the client timeout
KEEPALIVE_S = 2.0  # seconds an idle client connection is kept for reuse


@dataclass(frozen=True)
class Phase:
    name: str
    seconds: float
    rate: float  # requests per second offered


@dataclass(frozen=True)
class Outcome:
    phase: str
    sent_s: float  # since the run started
    latency_s: float
    status: int  # 0: no HTTP answer (see error)
    error: str = ""  # transport error name, or HUNG
    reason: str = ""  # the service's error reason for a 4xx/5xx
    retry_after: str = ""


@dataclass(frozen=True)
class PhaseSummary:
    phase: str
    offered_per_s: float
    sent: int
    ok: int
    shed: int  # 503 with Retry-After
    other: int  # any other answer: each one is a defect
    no_answer: int  # transport errors and hung requests: each one is a defect
    ok_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    shed_p99_ms: float


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN (no answer of that kind) as None, so the JSON written is standard JSON."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [json_safe(v) for v in obj]
    return obj


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every open-loop script takes: the server to start, its capacity, the client, the output."""
    parser.add_argument("--model-tag", default="transfer-classifier:latest", help="model of the server started")
    parser.add_argument("--capacity", type=float, default=0.0, help="requests/s the server sustains; 0: measure it")
    parser.add_argument("--capacity-seconds", type=float, default=20.0, help="length of the capacity measurement")
    parser.add_argument(
        "--client-timeout", type=float, default=150.0, help="seconds without an answer that count as hung"
    )
    parser.add_argument("--photos", type=Path, default=REPO / "loadtests" / "photos", help="JPEGs to send")
    parser.add_argument("--seed", type=int, default=0, help="seed of the arrival times")
    parser.add_argument("--out", type=Path, default=REPO / "loadtests" / "results", help="folder for the results")


def setup_logging() -> None:
    """Progress on stderr; httpx's line per request silenced."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)


def photo_bodies(folder: Path) -> list[bytes]:
    bodies = [p.read_bytes() for p in sorted(folder.glob("*.jpg"))]
    if not bodies:
        raise SystemExit(f"error: no .jpg photos in {folder}")
    return bodies


async def _one(client: httpx.AsyncClient, url: str, body: bytes, phase: str, start: float, timeout: float) -> Outcome:
    sent = time.monotonic()
    try:
        response = await client.post(url, content=body, headers={"content-type": "image/jpeg"}, timeout=timeout)
    except httpx.TimeoutException:
        return Outcome(phase, sent - start, time.monotonic() - sent, 0, HUNG)
    except httpx.HTTPError as exc:
        return Outcome(phase, sent - start, time.monotonic() - sent, 0, type(exc).__name__)
    reason = ""
    if response.status_code != 200:
        try:
            reason = response.json()["error"]["reason"]
        except (ValueError, KeyError, TypeError):
            reason = response.text[:80]
    return Outcome(
        phase,
        sent - start,
        time.monotonic() - sent,
        response.status_code,
        "",
        reason,
        response.headers.get("retry-after", ""),
    )


async def _offer(
    url: str, phases: Sequence[Phase], bodies: Sequence[bytes], timeout: float, seed: int
) -> list[Outcome]:
    rng, photos = random.Random(seed), itertools.cycle(bodies)
    # Idle connections are dropped well before the server's keep-alive timeout (uvicorn's 5 s): at httpx's
    # default, also 5 s, a request sent on a connection the server is closing fails (a ReadError).
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64, keepalive_expiry=KEEPALIVE_S)
    async with httpx.AsyncClient(limits=limits) as client:
        start = time.monotonic()
        tasks: list[asyncio.Task[Outcome]] = []
        phase_start = 0.0
        for phase in phases:
            due = phase_start
            while True:
                due += rng.expovariate(phase.rate)
                if due >= phase_start + phase.seconds:
                    break
                await asyncio.sleep(max(0.0, due - (time.monotonic() - start)))
                tasks.append(
                    asyncio.create_task(_one(client, f"{url}/v1/predict", next(photos), phase.name, start, timeout))
                )
            phase_start += phase.seconds
        return list(await asyncio.gather(*tasks))


def offer(
    url: str, phases: Sequence[Phase], bodies: Sequence[bytes], *, timeout: float = 150, seed: int = 0
) -> list[Outcome]:
    """Send single-image requests to /v1/predict at each phase's rate in turn; one Outcome per request."""
    check_local(url)
    return asyncio.run(_offer(url, phases, bodies, timeout, seed))


def measure_capacity(url: str, bodies: Sequence[bytes], *, clients: int = 16, seconds: float = 20) -> float:
    """Successful requests per second with ``clients`` closed-loop clients (what the server can sustain)."""
    check_local(url)

    async def client_loop(client: httpx.AsyncClient, deadline: float, offset: int) -> int:
        done = 0
        for body in itertools.islice(itertools.cycle(bodies), offset, None):
            if time.monotonic() >= deadline:
                return done
            response = await client.post(
                f"{url}/v1/predict", content=body, headers={"content-type": "image/jpeg"}, timeout=150
            )
            done += response.status_code == 200
        return done

    async def run() -> float:
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=None, keepalive_expiry=KEEPALIVE_S)) as client:
            start = time.monotonic()
            done = await asyncio.gather(*(client_loop(client, start + seconds, i) for i in range(clients)))
            return sum(done) / (time.monotonic() - start)

    return asyncio.run(run())


def summarize(outcomes: Sequence[Outcome], phases: Sequence[Phase]) -> list[PhaseSummary]:
    """One line per phase: what was sent, how it was answered, and the latency of the successes."""
    summaries = []
    for phase in phases:
        mine = [o for o in outcomes if o.phase == phase.name]
        ok = np.array([o.latency_s for o in mine if o.status == 200] or [np.nan]) * 1000
        shed = [o for o in mine if o.status == 503 and o.retry_after]
        shed_ms = np.array([o.latency_s for o in shed] or [np.nan]) * 1000
        no_answer = sum(o.status == 0 for o in mine)
        n_ok = sum(o.status == 200 for o in mine)
        summaries.append(
            PhaseSummary(
                phase=phase.name,
                offered_per_s=phase.rate,
                sent=len(mine),
                ok=n_ok,
                shed=len(shed),
                other=len(mine) - n_ok - len(shed) - no_answer,
                no_answer=no_answer,
                ok_per_s=n_ok / phase.seconds,
                p50_ms=float(np.percentile(ok, 50)),
                p99_ms=float(np.percentile(ok, 99)),
                max_ms=float(np.max(ok)),
                shed_p99_ms=float(np.percentile(shed_ms, 99)),
            )
        )
    return summaries


def timeline(outcomes: Sequence[Outcome], window_s: float = 1.0) -> list[dict]:
    """Per window (by send time): requests sent, 200s, 503s, others, and the p50/p99 of the 200s in ms."""
    if not outcomes:
        return []
    end = max(o.sent_s for o in outcomes)
    rows = []
    for k in range(int(end // window_s) + 1):
        mine = [o for o in outcomes if k * window_s <= o.sent_s < (k + 1) * window_s]
        ok = [o.latency_s * 1000 for o in mine if o.status == 200]
        rows.append(
            {
                "t_s": k * window_s,
                "sent": len(mine),
                "ok": len(ok),
                "shed": sum(o.status == 503 for o in mine),
                "other": sum(o.status not in (200, 503) for o in mine),
                "p50_ms": float(np.percentile(ok, 50)) if ok else float("nan"),
                "p99_ms": float(np.percentile(ok, 99)) if ok else float("nan"),
            }
        )
    return rows
