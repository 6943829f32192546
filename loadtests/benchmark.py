"""The side-by-side benchmark, in one run on one machine:

1. the raw engines with no HTTP (PyTorch eager, ONNX Runtime fp32 and INT8) at the served batch sizes;
2. our service end to end under locust at fixed concurrencies, with the fp32 and the INT8 engine;
3. the reference plain BentoML service (loadtests/reference_service.py) under exactly the same load;
4. a table of images/s and p50/p99 latency with the ratios, written to --out as CSV, Markdown, JSON and PNG.

    python -m loadtests.benchmark --model transfer-classifier:latest

Every contender serves the same model with the same batching limits, one at a time, to the same
locust users sending the same photos (one per request, multipart) from this process.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from loadtests.servers import REPO, serve
from loadtests.results import Level, plot, table, write_csv
from loadtests.sweep import sweep
from loadtests.traffic import PHOTOS, photo_files

logger = logging.getLogger(__name__)
SHARED_PHOTOS = REPO.parent / "shared" / "data" / "hymenoptera_data"


@dataclass(frozen=True)
class Contender:
    name: str
    target: str
    endpoint: str
    field: str
    env: dict[str, str] = field(default_factory=dict)


def contenders(model: str, engines: list[str]) -> list[Contender]:
    ours = [Contender(f"ours ({engine})", "service.service:ImageClassifier", "/v1/predict", "image",
                      {"CLASSIFIER_MODEL_TAG": model, "CLASSIFIER_ENGINE": engine}) for engine in engines]
    reference = Contender("reference", "loadtests.reference_service:ReferenceClassifier", "/classify", "images",
                          {"REFERENCE_MODEL_TAG": model})
    return [*ours, reference]


def engine_speeds(model: str, photos: Path, batch_sizes: str, seconds: float, out: Path) -> dict:
    """Run loadtests.engine_bench in a child process, so nothing else shares this process's threads."""
    path = out / "engines.json"
    subprocess.run([sys.executable, "-m", "loadtests.engine_bench", "--model", model, "--photos", str(photos),
                    "--batch-sizes", batch_sizes, "--seconds", str(seconds), "--out", str(path)],
                   cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return json.loads(path.read_text())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtests.benchmark", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="transfer-classifier:latest", help="BentoML model tag (trained at 224 px for "
                   "the README's figures)")
    p.add_argument("--photos", type=Path, default=SHARED_PHOTOS if SHARED_PHOTOS.is_dir() else PHOTOS,
                   help="photos to send (default: ../shared/data/hymenoptera_data if present, else loadtests/photos)")
    p.add_argument("--engines", default="onnx,onnx-int8", help="our service's engines to measure, comma-separated")
    p.add_argument("--concurrency", default="8,16,32", help="concurrent clients, comma-separated")
    p.add_argument("--batch-sizes", default="1,4,8,16", help="raw engine batch sizes (the served ones)")
    p.add_argument("--engine-seconds", type=float, default=5.0, help="seconds per raw engine and batch size")
    p.add_argument("--warm-up", type=float, default=10.0, help="seconds at each concurrency before measuring")
    p.add_argument("--duration", type=float, default=30.0, help="seconds measured at each concurrency")
    p.add_argument("--max-batch-size", type=int, default=16, help="every service's largest batch")
    p.add_argument("--out", type=Path, default=Path("loadtests/results"), help="folder for the results")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    photo_files(args.photos)
    args.out.mkdir(parents=True, exist_ok=True)
    logger.info("raw engines on %s ...", args.photos)
    engines = engine_speeds(args.model, args.photos, args.batch_sizes, args.engine_seconds, args.out)
    batching = {"CLASSIFIER_MAX_BATCH_SIZE": str(args.max_batch_size), "CLASSIFIER_MAX_LATENCY_MS": "10000"}
    levels = [int(c) for c in args.concurrency.split(",")]
    results: dict[str, list[Level]] = {}
    for contender in contenders(engines["model"], args.engines.split(",")):
        logger.info("%s: starting %s", contender.name, contender.target)
        with serve({**batching, **contender.env}, target=contender.target) as url:
            results[contender.name] = sweep(
                url, levels, user_class="PhotoUser", warm_up=args.warm_up, duration=args.duration, max_requests=10**6,
                options={"photos": str(args.photos), "endpoint": contender.endpoint, "field": contender.field},
            )
    text, targets = table(engines, results)
    write_csv(results, args.out / "benchmark.csv")
    plot(results, args.out / "benchmark.png", f"{engines['model']} on this machine, one photo per request")
    report = f"{text}\n\n" + "\n".join(targets) + "\n"
    (args.out / "benchmark.md").write_text(report)
    (args.out / "benchmark.json").write_text(json.dumps({"engines": engines, "services": {
        name: [vars(lv) for lv in lv_list] for name, lv_list in results.items()}}, indent=2) + "\n")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
