"""Headless load sweep: hold each concurrency for a while, measure, write a CSV and a PNG.

    python -m loadtests.sweep --host http://127.0.0.1:3000 --users 1,2,4,8,16,32

Locust runs in this process (library mode). At each level the users ramp up, a warm-up passes, then
every answer is recorded until the duration or the request budget is spent. Only localhost targets
are accepted: this is a test tool, not a way to load someone else's server.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import gevent
from locust.env import Environment

from classifier.cli import DefaultsHelp
from loadtests import locustfile
from loadtests.results import Level, Recorder, check_local, plot, write_csv
from loadtests.traffic import photo_files

logger = logging.getLogger(__name__)
USER_CLASSES = {"ClassifierUser": locustfile.ClassifierUser, "PhotoUser": locustfile.PhotoUser}


def sweep(
    host: str,
    levels: list[int],
    *,
    user_class: str = "ClassifierUser",
    options: dict | None = None,
    warm_up: float = 5.0,
    duration: float = 20.0,
    max_requests: int = 5000,
) -> list[Level]:
    """Run ``user_class`` against ``host`` at each number of users in turn; one Level per entry of ``levels``."""
    parsed = argparse.Namespace(**{**locustfile.DEFAULTS, **(options or {})})
    photo_files(Path(parsed.photos))  # fail here, not in every user's greenlet
    env = Environment(user_classes=[USER_CLASSES[user_class]], host=check_local(host), parsed_options=parsed)
    recorder = Recorder()
    env.events.request.add_listener(recorder.on_request)
    runner = env.create_local_runner()
    results = []
    try:
        for users in levels:
            runner.start(users, spawn_rate=max(users, 1))
            gevent.sleep(warm_up)
            recorder.reset()
            start = time.monotonic()
            while time.monotonic() - start < duration and len(recorder.latencies) < max_requests:
                gevent.sleep(0.1)
            results.append(recorder.level(users, time.monotonic() - start))
            logger.info(
                "%3d users: %6.1f images/s, p50 %6.0f ms, p99 %6.0f ms, %d failures",
                users,
                results[-1].images_per_s,
                results[-1].p50_ms,
                results[-1].p99_ms,
                results[-1].failures,
            )
            if results[-1].failures:
                logger.warning("    failures, e.g.: %s", results[-1].failure_examples)
    finally:
        runner.quit()
    return results


def _levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("levels must be positive integers")
    return levels


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.sweep",
        description=__doc__.split("\n\n")[0],
        formatter_class=DefaultsHelp,
    )
    p.add_argument("--host", default="http://127.0.0.1:3000", help="the running service (localhost only)")
    p.add_argument("--users", type=_levels, default=[1, 2, 4, 8, 16, 32], help="concurrency levels, comma-separated")
    p.add_argument("--user-class", choices=sorted(USER_CLASSES), default="ClassifierUser", help="the traffic to send")
    p.add_argument("--warm-up", type=float, default=5.0, help="seconds at each level before measuring")
    p.add_argument("--duration", type=float, default=20.0, help="seconds measured at each level at most")
    p.add_argument("--max-requests", type=int, default=5000, help="answers measured at each level at most")
    p.add_argument("--photos", default=locustfile.DEFAULTS["photos"], help="folder of photos to send")
    p.add_argument(
        "--sizes", default=locustfile.DEFAULTS["sizes"], help="longest sides photos are re-encoded at (ClassifierUser)"
    )
    p.add_argument(
        "--malformed-share",
        type=float,
        default=locustfile.DEFAULTS["malformed_share"],
        help="share of malformed requests (ClassifierUser)",
    )
    p.add_argument(
        "--batch-share",
        type=float,
        default=locustfile.DEFAULTS["batch_share"],
        help="share of multi-image requests (ClassifierUser)",
    )
    p.add_argument("--out", type=Path, default=Path("loadtests/results/sweep"), help="output prefix for .csv and .png")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    options = {
        "photos": args.photos,
        "sizes": args.sizes,
        "malformed_share": args.malformed_share,
        "batch_share": args.batch_share,
    }
    try:
        levels = sweep(
            args.host,
            args.users,
            user_class=args.user_class,
            options=options,
            warm_up=args.warm_up,
            duration=args.duration,
            max_requests=args.max_requests,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    csv_path = write_csv({args.user_class: levels}, args.out.with_suffix(".csv"))
    png_path = plot({args.user_class: levels}, args.out.with_suffix(".png"), f"Load sweep against {args.host}")
    print(f"wrote {csv_path} and {png_path}")
    return 1 if any(level.failures for level in levels) else 0


if __name__ == "__main__":
    sys.exit(main())
