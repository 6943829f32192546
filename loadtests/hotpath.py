"""Where the server's CPU goes per image: each process's CPU ms per image under closed-loop photo load.

    python -m loadtests.hotpath --model transfer-classifier:latest --engine onnx-int8 --users 32 --rounds 3 \\
        --variant CLASSIFIER_MODEL_WORKERS=2

Starts our server once per variant (the settings given, on top of --engine and the benchmark's batching)
and, in interleaved rounds, loads each with --users clients posting one real photo per request (as the
benchmark does). Reports per round and variant: images/s, p99, and CPU ms per image of the front, the model
runner and BentoML's manager (from /proc), plus the mean batch the model ran in the round (from /metrics). Without
--variant it measures the configuration as it is. Compare code versions by running it from each checkout.
The benchmark (loadtests/benchmark.py) gives the figure issue 15 holds to: the server's CPU per image less the
engine's own; this tool says which process it is spent in.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from loadtests.host import describe_host, host_line
from loadtests.servers import serve_process
from loadtests.sweep import sweep  # before anything imports BentoML or urllib3: locust's gevent patches the stdlib
from loadtests.traffic import default_photos
from service.metrics import PREFIX

logger = logging.getLogger("loadtests.hotpath")
BATCH_METRIC = f"{PREFIX}_inference_batch_images"  # images per batch the model ran (service/metrics.py)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.hotpath",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", default="transfer-classifier:latest", help="BentoML model tag")
    parser.add_argument("--engine", default="auto", help="CLASSIFIER_ENGINE for every variant")
    parser.add_argument("--users", type=int, default=32, help="concurrent closed-loop clients")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured seconds per round, after 5 s warm-up")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="KEY=VALUE[,KEY=VALUE...] settings of one variant; repeat to compare (default: one, as configured)",
    )
    parser.add_argument(
        "--photos",
        type=Path,
        default=default_photos(),
        help="photos to send (default: ../shared/data/hymenoptera_data if present, else loadtests/photos)",
    )
    parser.add_argument("--out", type=Path, default=None, help="write hotpath.json here")
    return parser


def parse_variant(text: str) -> dict[str, str]:
    """'A=1,B=2' -> {'A': '1', 'B': '2'}; SystemExit for a part without '='."""
    pairs = [p for p in text.split(",") if p]
    if any("=" not in p for p in pairs):
        raise SystemExit(f"error: --variant {text!r}: expected KEY=VALUE[,KEY=VALUE...]")
    return dict(p.split("=", 1) for p in pairs)


def batch_totals(metrics_text: str) -> tuple[float, float]:
    """(images, batches) the model has run so far, from the server's /metrics text."""
    totals = {f"{BATCH_METRIC}_sum": 0.0, f"{BATCH_METRIC}_count": 0.0}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name in totals:
                totals[sample.name] += sample.value
    return totals[f"{BATCH_METRIC}_sum"], totals[f"{BATCH_METRIC}_count"]


def _batch_totals(url: str) -> tuple[float, float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as response:
        return batch_totals(response.read().decode())


def measure_round(url: str, pid: int, users: int, seconds: float, photos: Path) -> dict:
    from loadtests.processes import cpu_seconds  # imports BentoML: after locust's patching

    before, start, totals_before = cpu_seconds(pid), time.monotonic(), _batch_totals(url)
    (level,) = sweep(
        url,
        [users],
        user_class="PhotoUser",
        warm_up=5,
        duration=seconds,
        max_requests=10**7,
        options={"photos": str(photos), "endpoint": "/v1/predict", "field": "image", "body": "multipart"},
    )
    after, elapsed = cpu_seconds(pid), time.monotonic() - start
    images = level.images_per_s * elapsed  # the load is steady across the warm-up and the measurement
    ran, batches = (now - then for now, then in zip(_batch_totals(url), totals_before, strict=True))
    return {
        "images_per_s": round(level.images_per_s, 1),
        "p99_ms": round(level.p99_ms),
        "failures": level.failures,
        "cpu_ms_per_image": {r: round((after[r] - before.get(r, 0.0)) * 1000 / images, 2) for r in after if images},
        "mean_batch": round(ran / batches, 1) if batches else None,
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    variants = [parse_variant(v) for v in args.variant] or [{}]
    base = {
        "CLASSIFIER_MODEL_TAG": args.model,
        "CLASSIFIER_ENGINE": args.engine,
        "CLASSIFIER_MAX_BATCH_SIZE": "16",
        "CLASSIFIER_MAX_LATENCY_MS": "10000",
    }
    results: list[dict] = []
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(serve_process({**base, **v})) for v in variants]
        for r in range(1, args.rounds + 1):
            for variant, server in zip(variants, servers, strict=True):
                row = {"round": r, "variant": variant, **measure_round(
                    server.url, server.process.pid, args.users, args.seconds, args.photos
                )}  # fmt: skip
                print(json.dumps(row), flush=True)
                results.append(row)
    host = describe_host()
    print(host_line(host))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        report = {"host": host, "engine": args.engine, "users": args.users, "rounds": results}
        (args.out / "hotpath.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
