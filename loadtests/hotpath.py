"""Where the server's CPU goes per image: each process's CPU ms per image under closed-loop photo load.

    python -m loadtests.hotpath --model transfer-classifier:latest --engine onnx-int8 --users 32 --rounds 3 \\
        --variant CLASSIFIER_MODEL_WORKERS=2

Starts our server once per variant (the settings given, on top of --engine and the benchmark's batching)
and, in interleaved rounds, loads each with --users clients posting one real photo per request (as the
benchmark does). Reports per round and variant: images/s, p99, and CPU ms per image of the front, the model
runner and BentoML's manager (from /proc); from the server's /metrics, the mean batch the model ran in the round
and the CPU its batch calls took per image (the engine, measured where it runs), so the rest is the serving
stack's: ``outside_engine_ms_per_image``, the figure issue 15 holds to at most 5 (the benchmark reports it too).
Without --variant it measures the configuration as it is. Compare code versions by running each checkout.
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

from classifier.cli import DefaultsHelp
from loadtests.host import describe_host, host_line
from loadtests.servers import serve_process
from loadtests.sweep import sweep  # before anything imports BentoML or urllib3: locust's gevent patches the stdlib
from loadtests.traffic import default_photos
from service.metrics import PREFIX

logger = logging.getLogger("loadtests.hotpath")
BATCH_METRIC = f"{PREFIX}_inference_batch_images"  # images per batch the model ran (service/metrics.py)
ENGINE_CPU_METRIC = f"{PREFIX}_inference_cpu_seconds_total"  # CPU in the model's batch calls


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.hotpath",
        description=__doc__.split("\n\n")[0],
        formatter_class=DefaultsHelp,
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
    parser.add_argument(
        "--out", type=Path, default=None, help="write hotpath.json here (default: print the summary only)"
    )
    return parser


def parse_variant(text: str) -> dict[str, str]:
    """'A=1,B=2' -> {'A': '1', 'B': '2'}; SystemExit for a part without '='."""
    pairs = [p for p in text.split(",") if p]
    if any("=" not in p for p in pairs):
        raise SystemExit(f"error: --variant {text!r}: expected KEY=VALUE[,KEY=VALUE...]")
    return dict(p.split("=", 1) for p in pairs)


def totals(metrics_text: str) -> dict[str, float]:
    """What the model has done so far, from the server's /metrics text: images and batches run, and the CPU
    seconds its batch calls took (service/call_cpu.py)."""
    found = dict.fromkeys((f"{BATCH_METRIC}_sum", f"{BATCH_METRIC}_count", ENGINE_CPU_METRIC), 0.0)
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name in found:
                found[sample.name] += sample.value
    return {"images": found[f"{BATCH_METRIC}_sum"], "batches": found[f"{BATCH_METRIC}_count"],
            "engine_cpu_s": found[ENGINE_CPU_METRIC]}  # fmt: skip


def _totals(url: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as response:
        return totals(response.read().decode())


def engine_cpu_seconds(url: str) -> float:
    """CPU seconds our server's model has spent in its batch calls so far (its /metrics)."""
    return _totals(url)["engine_cpu_s"]


def measure_round(url: str, pid: int, users: int, seconds: float, photos: Path) -> dict:
    from loadtests.processes import cpu_seconds  # imports BentoML: after locust's patching

    before, start, totals_before = cpu_seconds(pid), time.monotonic(), _totals(url)
    (level,) = sweep(
        url,
        [users],
        user_class="PhotoUser",
        warm_up=5,
        duration=seconds,
        max_requests=10**7,
        options={"photos": str(photos), "endpoint": "/v1/predict", "field": "image", "body": "multipart"},
    )
    after, elapsed, totals_after = cpu_seconds(pid), time.monotonic() - start, _totals(url)
    images = level.images_per_s * elapsed  # the load is steady across the warm-up and the measurement
    done = {k: totals_after[k] - totals_before[k] for k in totals_after}
    per_image = {r: (after[r] - before.get(r, 0.0)) * 1000 / images for r in after} if images else {}
    engine = done["engine_cpu_s"] * 1000 / images if images else None
    return {
        "images_per_s": round(level.images_per_s, 1),
        "p99_ms": round(level.p99_ms),
        "failures": level.failures,
        "cpu_ms_per_image": {r: round(ms, 2) for r, ms in per_image.items()},
        "engine_cpu_ms_per_image": None if engine is None else round(engine, 2),
        "outside_engine_ms_per_image": None if engine is None else round(sum(per_image.values()) - engine, 2),
        "mean_batch": round(done["images"] / done["batches"], 1) if done["batches"] else None,
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
