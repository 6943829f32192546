"""Locust users for the image classifier.

    locust -f loadtests/locustfile.py ClassifierUser --host http://127.0.0.1:3000

ClassifierUser sends realistic traffic: single photos from 100 px to 3 MP, multi-image requests and a
share of malformed ones, which count as successes only when they get their documented 4xx.
PhotoUser sends one photo per request, as it is or at --photo-sizes, to any endpoint: the benchmark's traffic, also
understood by the reference service (``--endpoint /classify --field images``). Each user sends its
next request as soon as the last is answered (closed loop): concurrency = number of users.
"""

from __future__ import annotations

import functools
import random
from pathlib import Path

from locust import FastHttpUser, constant, events, task

from loadtests.traffic import DEFAULT_SIZES, PHOTOS, Payload, Traffic, photo_files, photo_traffic, realistic_traffic

DEFAULTS = {
    "photos": str(PHOTOS),
    "sizes": ",".join(map(str, DEFAULT_SIZES)),
    "batch_share": 0.2,
    "batch_images": 4,
    "malformed_share": 0.05,
    "endpoint": "/v1/predict",
    "field": "image",
    "photo_sizes": "",
    "body": "multipart",
    "seed": None,
}


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    group = parser.add_argument_group("image classifier traffic")
    group.add_argument(
        "--photos", default=DEFAULTS["photos"], help="folder of real photos to send (default: loadtests/photos)"
    )
    group.add_argument(
        "--sizes",
        default=DEFAULTS["sizes"],
        help=f"longest sides ClassifierUser re-encodes each photo at (default: {DEFAULTS['sizes']})",
    )
    group.add_argument(
        "--batch-share",
        type=float,
        default=DEFAULTS["batch_share"],
        help="share of multi-image requests (default: 0.2)",
    )
    group.add_argument(
        "--batch-images", type=int, default=DEFAULTS["batch_images"], help="images per multi-image request (default: 4)"
    )
    group.add_argument(
        "--malformed-share",
        type=float,
        default=DEFAULTS["malformed_share"],
        help="share of malformed requests, each expecting its 4xx (default: 0.05)",
    )
    group.add_argument("--endpoint", default=DEFAULTS["endpoint"], help="PhotoUser's endpoint (default: /v1/predict)")
    group.add_argument("--field", default=DEFAULTS["field"], help="PhotoUser's multipart field (default: image)")
    group.add_argument(
        "--photo-sizes",
        default=DEFAULTS["photo_sizes"],
        help="longest sides PhotoUser re-encodes each photo at, comma-separated (default: none, each photo as it is)",
    )
    group.add_argument(
        "--body",
        default=DEFAULTS["body"],
        choices=("multipart", "triton"),
        help="PhotoUser's request body: multipart (in --field) or triton (Triton's binary tensor extension; "
        "default: multipart)",
    )
    group.add_argument(
        "--seed",
        type=int,
        default=DEFAULTS["seed"],
        help="seed of the users' request choices, for a repeatable mix (default: none, random)",
    )


def option(environment, name: str):
    """A traffic option from the command line (or LOCUST_* variables), else its default (library use)."""
    return getattr(environment.parsed_options, name, DEFAULTS[name]) if environment.parsed_options else DEFAULTS[name]


@functools.cache
def _realistic(photos: str, sizes: str, batch_images: int, batch_share: float, malformed_share: float) -> Traffic:
    return realistic_traffic(
        photo_files(Path(photos)),
        sizes=_sizes(sizes),
        batch_images=batch_images,
        batch_share=batch_share,
        malformed_share=malformed_share,
    )


@functools.cache
def _photos(photos: str, field: str, sizes: str, body: str = "multipart") -> Traffic:
    return photo_traffic(photo_files(Path(photos)), field, _sizes(sizes), body)


def _sizes(text: str) -> tuple[int, ...]:
    """ "100,640" -> (100, 640); "" -> ()."""
    return tuple(int(s) for s in text.split(",") if s.strip())


class _Sender(FastHttpUser):
    abstract = True
    wait_time = constant(0)
    traffic: Traffic

    def on_start(self) -> None:
        seed = option(self.environment, "seed")
        self.rng = random.Random(None if seed is None else seed + len(self.environment.runner.user_greenlets))

    def send(self, path: str, payload: Payload) -> None:
        """POST ``payload``; a success is exactly the status (and error reason) it expects."""
        with self.client.post(
            path,
            data=payload.body,
            headers={"Content-Type": payload.content_type, **dict(payload.headers)},
            name=payload.label,
            catch_response=True,
            context={"images": payload.images},
        ) as response:
            if response.status_code != payload.status:
                response.failure(f"HTTP {response.status_code}, expected {payload.status}: {response.text[:200]}")
            elif payload.reason is not None and _reason(response) != payload.reason:
                response.failure(f"reason {_reason(response)!r}, expected {payload.reason!r}")
            else:
                response.success()


def _reason(response) -> str | None:
    try:
        return response.json()["error"]["reason"]
    except (ValueError, KeyError, TypeError):
        return None


class ClassifierUser(_Sender):
    """Realistic traffic to /v1/predict and /v1/predict/batch."""

    def on_start(self) -> None:
        super().on_start()
        env = self.environment
        self.traffic = _realistic(
            option(env, "photos"),
            option(env, "sizes"),
            option(env, "batch_images"),
            option(env, "batch_share"),
            option(env, "malformed_share"),
        )

    @task
    def classify(self) -> None:
        payload = self.traffic.pick(self.rng)
        self.send("/v1/predict/batch" if payload.images > 1 else "/v1/predict", payload)


class PhotoUser(_Sender):
    """One photo per request to --endpoint in multipart field --field."""

    def on_start(self) -> None:
        super().on_start()
        env = self.environment
        self.traffic = _photos(
            option(env, "photos"), option(env, "field"), option(env, "photo_sizes"), option(env, "body")
        )
        self.endpoint = option(env, "endpoint")

    @task
    def classify(self) -> None:
        self.send(self.endpoint, self.traffic.pick(self.rng))
