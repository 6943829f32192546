"""The side-by-side benchmark, in one run on one machine:

1. the raw engines with no HTTP (PyTorch eager, ONNX Runtime and OpenVINO on the fp32 and INT8 graphs) at the
   served batch sizes;
2. our service end to end under locust at fixed concurrencies: the default configuration (CLASSIFIER_ENGINE=auto)
   and each ONNX Runtime engine;
3. the reference plain BentoML service (loadtests/reference_service.py) and the peers (loadtests/peers: TorchServe,
   Triton as typically deployed and with the engine our service chose) under exactly the same load;
4. a table of images/s and p50/p99 latency with the ratios and issue 15's targets, written to --out as CSV,
   Markdown, JSON and PNG.

    python -m loadtests.benchmark --model transfer-classifier:latest

Every contender serves the same model with the same batching limits to the same locust users sending
the same photos (one per request, multipart) from this process: as they are, or re-encoded at several
sizes with --sizes (phone photos are megapixels, which the decoder must cope with). All servers run
from the start and are loaded one at a time, in rounds: each round measures the raw engines, then
every concurrency on every contender in turn. A shared host's speed drifts by tens of percent over
minutes; interleaving gives every contender the same mix of fast and slow minutes, and the medians
over rounds are reported.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import logging
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from classifier.cli import DefaultsHelp
from classifier.contract import ContractError
from classifier.engines import ENGINES, exportable_engines
from loadtests.host import describe_host, host_line
from loadtests.hotpath import engine_cpu_seconds
from loadtests.peers import PeerUnavailable, torchserve, triton
from loadtests.results import Level, median_engines, median_level, plot, table, write_csv
from loadtests.servers import REPO, serve_process
from loadtests.sweep import sweep
from loadtests.traffic import default_photos, photo_files

logger = logging.getLogger(__name__)
# Our service is measured with each engine that runs a graph of its own on the CPU (the registry's).
CPU_GRAPH_ENGINES = tuple(name for name in exportable_engines() if "cpu" in ENGINES[name].devices)


@dataclass(frozen=True)
class Contender:
    name: str
    start: Callable[[], AbstractContextManager[tuple[str, int]]]  # starts the server, yields (URL, root pid), stops it
    endpoint: str
    field: str = "image"  # the multipart field
    body: str = "multipart"  # or "triton": Triton's binary tensor extension
    counts_engine_cpu: bool = False  # serves image_classifier_inference_cpu_seconds_total (ours)


def contenders(model: str, engines: list[str], batching: dict[str, str]) -> list[Contender]:
    ours = [
        Contender(
            f"ours ({engine})",
            functools.partial(_bentoml, {**batching, "CLASSIFIER_MODEL_TAG": model, "CLASSIFIER_ENGINE": engine}),
            "/v1/predict",
            counts_engine_cpu=True,
        )
        for engine in engines
    ]
    reference_env = {**batching, "REFERENCE_MODEL_TAG": model}
    reference = Contender(
        "reference",
        functools.partial(_bentoml, reference_env, target="loadtests.reference_service:ReferenceClassifier"),
        "/classify",
        "images",
    )
    return [*ours, reference]


@contextlib.contextmanager
def _bentoml(env: dict[str, str], target: str = "service.service:ImageClassifier") -> Iterator[tuple[str, int]]:
    with serve_process(env, target=target) as server:
        yield server.url, server.process.pid


def peers(model: str, names: list[str], chosen: str | None, max_batch_size: int) -> list[Contender]:
    """TorchServe and Triton (as typically deployed, and with the engine our service chose) on the same model."""
    found = []
    if "torchserve" in names:
        start = functools.partial(torchserve.serve, model, max_batch_size=max_batch_size)
        found.append(Contender("torchserve", start, f"/predictions/{torchserve.MODEL}", "data"))
    if "triton" in names:
        engines = ["onnx"]
        if chosen in triton.ENGINES and chosen != "onnx":
            engines.append(chosen)
        elif chosen is not None and chosen not in triton.ENGINES:
            logger.warning("triton: no row with our chosen engine %s: its environment runs %s", chosen, triton.ENGINES)
        for engine in engines:
            start = functools.partial(triton.serve, model, engine, max_batch_size=max_batch_size)
            found.append(Contender(f"triton ({engine})", start, f"/v2/models/{triton.MODEL}/infer", body="triton"))
    return found


def _cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by the server's processes (all of them: BentoML's three, TorchServe's Java and
    Python worker, pytriton's Python and tritonserver)."""
    from loadtests.processes import cpu_seconds  # imports BentoML: only once locust's gevent has patched the stdlib

    return sum(cpu_seconds(pid).values())


@dataclass(frozen=True)
class AutoChoice:
    engine: str | None  # what our service's auto serves
    eligible: tuple[str, ...] | None = None  # the engines its measurement found eligible (None: not measured)
    candidates: tuple[dict, ...] = ()  # each candidate's figures from that measurement (agreements, images/s)


def auto_choice(url: str) -> AutoChoice:
    """The engine our service's auto chose and the ones it found eligible, from its /v1/model."""
    with urllib.request.urlopen(f"{url}/v1/model", timeout=30) as response:
        info = json.load(response)
    measured = info.get("engine_choice")
    eligible = tuple(c["name"] for c in measured["candidates"] if c["eligible"]) if measured else None
    return AutoChoice(info["engine"], eligible, tuple(measured["candidates"]) if measured else ())


def engine_speeds(model: str, photos: Path, batch_sizes: str, seconds: float, path: Path) -> dict:
    """Run loadtests.engine_bench in a child process, so nothing else shares this process's threads."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtests.engine_bench",
            "--model",
            model,
            "--photos",
            str(photos),
            "--batch-sizes",
            batch_sizes,
            "--seconds",
            str(seconds),
            "--out",
            str(path),
        ],
        cwd=REPO,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return json.loads(path.read_text())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.benchmark",
        description=__doc__.split("\n\n")[0],
        formatter_class=DefaultsHelp,
    )
    p.add_argument(
        "--model",
        default="transfer-classifier:latest",
        help="BentoML model tag (trained at 224 px for the figures in docs/performance.md)",
    )
    p.add_argument(
        "--photos",
        type=Path,
        default=default_photos(),
        help="photos to send (default: ../shared/data/hymenoptera_data if present, else loadtests/photos)",
    )
    p.add_argument(
        "--sizes",
        default="",
        help="longest sides to re-encode every photo at, comma-separated, e.g. "
        "100,320,640,1280,2048 for phone-photo sizes (default: none, the photos as they are)",
    )
    p.add_argument(
        "--engines",
        default=",".join(("auto", *CPU_GRAPH_ENGINES)),
        help="our service's engines to measure, comma-separated (from the engine registry)",
    )
    p.add_argument(
        "--peers",
        default="torchserve,triton",
        help="peers to measure beside ours, comma-separated (torchserve, triton; empty: none); each is set up in a "
        "virtual environment of its own on first use",
    )
    p.add_argument("--concurrency", default="8,16,32", help="concurrent clients, comma-separated")
    p.add_argument("--rounds", type=int, default=3, help="rounds, each measuring everything once; medians are reported")
    p.add_argument("--batch-sizes", default="1,4,8,16", help="raw engine batch sizes (the served ones)")
    p.add_argument("--engine-seconds", type=float, default=3.0, help="seconds per raw engine and batch size, per round")
    p.add_argument("--warm-up", type=float, default=5.0, help="seconds of load before each measurement")
    p.add_argument(
        "--duration", type=float, default=15.0, help="seconds measured per contender and concurrency, per round"
    )
    p.add_argument("--max-batch-size", type=int, default=16, help="every service's largest batch")
    p.add_argument("--out", type=Path, default=Path("loadtests/results"), help="folder for the results")
    return p


def _measure(args: argparse.Namespace, contender: Contender, url: str, pid: int, users: int) -> Level:
    """One load run on one contender; with the server's CPU per image, and, for ours, its engine's share of it."""
    engine_cpu = _engine_cpu_seconds(url) if contender.counts_engine_cpu else None
    cpu, start = _cpu_seconds(pid), time.monotonic()
    (level,) = sweep(
        url,
        [users],
        user_class="PhotoUser",
        warm_up=args.warm_up,
        duration=args.duration,
        max_requests=10**6,
        options={
            "photos": str(args.photos),
            "photo_sizes": args.sizes,
            "endpoint": contender.endpoint,
            "field": contender.field,
            "body": contender.body,
        },
    )
    # Per image: a CPU rate over the warm-up and the measurement, over the rate of images answered in the
    # measurement (the load is steady across both)
    elapsed = time.monotonic() - start
    rate = (_cpu_seconds(pid) - cpu) / elapsed
    engine_after = _engine_cpu_seconds(url) if engine_cpu is not None else None
    if not level.images_per_s:
        return level
    cpu_ms = rate * 1000 / level.images_per_s
    if engine_cpu is None or engine_after is None:
        return dataclasses.replace(level, cpu_ms_per_image=cpu_ms)
    engine_ms = (engine_after - engine_cpu) / elapsed * 1000 / level.images_per_s
    return dataclasses.replace(
        level,
        cpu_ms_per_image=cpu_ms,
        engine_cpu_ms_per_image=engine_ms,
        outside_engine_ms_per_image=cpu_ms - engine_ms,
    )


def _engine_cpu_seconds(url: str) -> float | None:
    """Our server's CPU seconds in its model's batch calls so far; None (the round keeps its other figures) if its
    /metrics cannot be read."""
    try:
        return engine_cpu_seconds(url)
    except OSError as exc:  # urllib's errors, timeouts included
        logger.warning("%s/metrics: cannot read the engine's CPU (%s): this round has no figure outside the engine",
                       url, exc)  # fmt: skip
        return None


def measure(
    args: argparse.Namespace, model: str, skipped: dict[str, str]
) -> tuple[list[dict], dict[str, dict[int, list[Level]]], AutoChoice]:
    """Start every contender, then run the rounds: raw engines, then each concurrency on each contender.
    Returns the raw engine runs, {contender: {clients: [Level per round]}} and what our auto chose; a peer
    that cannot be set up here is left out, with why, in ``skipped``."""
    batching = {"CLASSIFIER_MAX_BATCH_SIZE": str(args.max_batch_size), "CLASSIFIER_MAX_LATENCY_MS": "10000"}
    levels = [int(c) for c in args.concurrency.split(",")]
    engine_runs: list[dict] = []
    runs: dict[str, dict[int, list[Level]]] = defaultdict(lambda: defaultdict(list))
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory()))  # per-round raw runs; --out gets the medians
        servers = []
        for contender in contenders(model, args.engines.split(","), batching):
            logger.info("%s: starting", contender.name)
            servers.append((contender, stack.enter_context(contender.start())))
        auto = next((auto_choice(url) for c, (url, _) in servers if c.name == "ours (auto)"), AutoChoice(None))
        for peer in peers(model, [p for p in args.peers.split(",") if p], auto.engine, args.max_batch_size):
            logger.info("%s: setting up and starting", peer.name)
            try:
                servers.append((peer, stack.enter_context(peer.start())))
            except PeerUnavailable as exc:
                logger.warning("%s: left out: %s", peer.name, exc)
                skipped[peer.name] = str(exc)
        for r in range(1, args.rounds + 1):
            logger.info("round %d of %d: raw engines on %s ...", r, args.rounds, args.photos)
            engine_runs.append(
                engine_speeds(model, args.photos, args.batch_sizes, args.engine_seconds, scratch / f"engines-{r}.json")
            )
            for users in levels:
                for contender, (url, pid) in servers:
                    logger.info("round %d: %s", r, contender.name)
                    runs[contender.name][users].append(_measure(args, contender, url, pid, users))
    return engine_runs, runs, auto


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.rounds < 1:
        raise SystemExit("error: --rounds must be at least 1")
    photo_files(args.photos)
    args.out.mkdir(parents=True, exist_ok=True)
    from classifier.store import describe_model  # torch: only once locust's gevent has patched the stdlib

    try:
        model = describe_model(args.model).tag  # one version for every contender and round
    except ContractError as exc:
        raise SystemExit(f"error: {exc}") from None
    skipped: dict[str, str] = {}
    engine_runs, runs, auto = measure(args, model, skipped)
    engines = median_engines(engine_runs)
    results = {name: [median_level(rounds) for rounds in per_level.values()] for name, per_level in runs.items()}
    host = describe_host()
    text, targets = table(engines, results, host["flags"], auto.engine, auto.eligible)
    write_csv(results, args.out / "benchmark.csv")
    sizes = f"photos at {args.sizes} px" if args.sizes else "photos as they are"
    plot(results, args.out / "benchmark.png", f"{model} on this machine, one photo per request, {sizes}")
    report = (
        f"{host_line(host)}\nLoad: one photo per request, {sizes}, from {args.photos}. Medians of {args.rounds} "
        f"interleaved rounds.\n\n{text}\n\n"
        + "\n".join(targets)
        + "\n"
        + "".join(f"\nLeft out: {name}: {why}\n" for name, why in skipped.items())
    )
    (args.out / "benchmark.md").write_text(report)
    (args.out / "engines.json").write_text(json.dumps(engines, indent=2) + "\n")
    (args.out / "benchmark.json").write_text(
        json.dumps(
            {
                "host": host,
                "engines": engines,
                "auto_chose": auto.engine,
                "auto_eligible": auto.eligible,
                "auto_candidates": list(auto.candidates),
                "skipped": skipped,
                "services": {name: [vars(lv) for lv in levels] for name, levels in results.items()},
                "rounds": {
                    "engines": [r["images_per_s"] for r in engine_runs],
                    "services": {
                        name: {users: [vars(lv) for lv in rounds] for users, rounds in per_level.items()}
                        for name, per_level in runs.items()
                    },
                },
            },
            indent=2,
        )
        + "\n"
    )
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
