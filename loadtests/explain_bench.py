"""What explaining costs predictions: Grad-CAM heatmaps of real photos next to prediction load, in one run.

    python -m loadtests.explain_bench --model transfer-classifier:latest

1. On the idle server: the time to explain each real photo (PNG overlay of the photo's size), repeated.
2. Rounds, interleaved: --clients closed-loop prediction clients alone for --seconds, then the same with
   --explain-clients closed-loop explain clients beside them. The drop in prediction throughput is compared
   with the share of the CPU the explain thread used (its CPU seconds from /metrics over the wall time and
   cores): explaining must take from predictions no more than what it was given. Medians over rounds.
Writes explain.json, explain.md and explain.png to --out, with the host's CPU and flags.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import itertools
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import httpx
from PIL import Image

from classifier.cli import DefaultsHelp
from loadtests.host import describe_host, host_line
from loadtests.results import check_local
from loadtests.servers import REPO, serve
from loadtests.traffic import PHOTOS

logger = logging.getLogger("loadtests.explain_bench")
NOISE = 0.03  # how far apart two identical rounds land on a shared host (ratio): the verdict's tolerance
IDLE_TARGET_S = 1.0  # the stated time for one heatmap of a real photo on the idle CPU (median)
EXPLAIN_CPU_METRIC = "image_classifier_explain_cpu_seconds_total"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.explain_bench",
        description=__doc__.split("\n")[0],
        formatter_class=DefaultsHelp,
    )
    p.add_argument("--model", default="transfer-classifier:latest", help="model tag to serve")
    p.add_argument("--url", default=None, help="measure this running server (default: start one)")
    p.add_argument(
        "--explain-nice",
        type=int,
        default=None,
        help="CLASSIFIER_EXPLAIN_NICE for the server it starts (default: the service's)",
    )
    p.add_argument("--photos", type=Path, default=PHOTOS, help="folder of .jpg photos")
    p.add_argument("--clients", type=int, default=16, help="closed-loop prediction clients")
    p.add_argument("--explain-clients", type=int, default=2, help="closed-loop explain clients beside them")
    p.add_argument("--seconds", type=float, default=30, help="length of each measured phase")
    p.add_argument("--rounds", type=int, default=3, help="rounds of (predictions alone, with explain)")
    p.add_argument("--repeats", type=int, default=5, help="explains of each photo on the idle server")
    p.add_argument("--out", type=Path, default=REPO / "loadtests" / "results" / "explain", help="results folder")
    return p


async def _idle_latency(client: httpx.AsyncClient, url: str, photos: list[bytes], repeats: int) -> dict:
    """Seconds per explain on the idle server, and a check that each answer is a PNG of the photo's size."""
    times = []
    for data in photos * repeats:
        start = time.perf_counter()
        response = await client.post(
            f"{url}/v1/explain", content=data, headers={"content-type": "image/jpeg", "accept": "image/png"}
        )
        times.append(time.perf_counter() - start)
        response.raise_for_status()
        overlay = Image.open(io.BytesIO(response.content))
        if overlay.format != "PNG" or overlay.size != Image.open(io.BytesIO(data)).size:
            raise SystemExit(f"error: /v1/explain answered a {overlay.format} of {overlay.size}, not the photo's PNG")
    return {"median_s": statistics.median(times), "max_s": max(times), "count": len(times)}


async def _loop(client: httpx.AsyncClient, url: str, bodies, deadline: float, accept: str) -> dict[int, int]:
    statuses: dict[int, int] = {}
    for body in bodies:
        if time.monotonic() >= deadline:
            break
        try:
            response = await client.post(url, content=body, headers={"content-type": "image/jpeg", "accept": accept})
            status = response.status_code
        except httpx.HTTPError:
            status = 0
        statuses[status] = statuses.get(status, 0) + 1
        if status == 503:
            await asyncio.sleep(0.2)  # as a client honouring Retry-After would, without waiting a whole second
    return statuses


def _sum(parts: list[dict[int, int]]) -> dict[int, int]:
    total: dict[int, int] = {}
    for part in parts:
        for status, n in part.items():
            total[status] = total.get(status, 0) + n
    return total


async def _explain_cpu(client: httpx.AsyncClient, url: str) -> float:
    text = (await client.get(f"{url}/metrics")).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(EXPLAIN_CPU_METRIC))


async def _phase(client: httpx.AsyncClient, url: str, photos: list[bytes], args, explain: bool) -> dict:
    deadline = time.monotonic() + args.seconds
    cpu_before = await _explain_cpu(client, url)
    start = time.monotonic()

    def bodies(i: int):
        return itertools.islice(itertools.cycle(photos), i, None)

    predict = [_loop(client, f"{url}/v1/predict", bodies(i), deadline, "application/json") for i in range(args.clients)]
    explains = [
        _loop(client, f"{url}/v1/explain", bodies(i), deadline, "image/png")
        for i in range(args.explain_clients if explain else 0)
    ]
    results = await asyncio.gather(*predict, *explains)
    wall = time.monotonic() - start
    predicted, explained = _sum(results[: args.clients]), _sum(results[args.clients :])
    cpu = await _explain_cpu(client, url) - cpu_before
    return {
        "predictions_per_s": predicted.get(200, 0) / wall,
        "prediction_failures": sum(n for s, n in predicted.items() if s != 200),
        "explains_per_s": explained.get(200, 0) / wall,
        "explain_503": explained.get(503, 0),
        "explain_other": sum(n for s, n in explained.items() if s not in (200, 503)),
        "explain_cpu_share": cpu / (wall * (os.cpu_count() or 1)),
    }


async def measure(url: str, args: argparse.Namespace) -> dict:
    photos = [p.read_bytes() for p in sorted(args.photos.glob("*.jpg"))]
    if not photos:
        raise SystemExit(f"error: no .jpg photos in {args.photos}")
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=None), timeout=150) as client:
        idle = await _idle_latency(client, url, photos, args.repeats)
        logger.info("idle explain: median %.3f s, max %.3f s", idle["median_s"], idle["max_s"])
        rounds = []
        for r in range(args.rounds):
            alone = await _phase(client, url, photos, args, explain=False)
            beside = await _phase(client, url, photos, args, explain=True)
            rounds.append({"alone": alone, "with_explain": beside})
            logger.info(
                "round %d: %.1f predictions/s alone, %.1f beside explain",
                r + 1,
                alone["predictions_per_s"],
                beside["predictions_per_s"],
            )
    return {"idle_explain": idle, "rounds": rounds}


def summarize(measured: dict) -> dict:
    """Medians over rounds, the drop in prediction throughput and the explain thread's CPU share."""
    rounds = measured["rounds"]

    def median(phase: str, key: str) -> float:
        return statistics.median(r[phase][key] for r in rounds)

    alone, beside = median("alone", "predictions_per_s"), median("with_explain", "predictions_per_s")
    drop = 1 - beside / alone if alone else float("nan")
    share = median("with_explain", "explain_cpu_share")
    return {
        "predictions_per_s_alone": alone,
        "predictions_per_s_with_explain": beside,
        "prediction_drop": drop,
        "explain_cpu_share": share,
        "explains_per_s": median("with_explain", "explains_per_s"),
        "explain_503": sum(r["with_explain"]["explain_503"] for r in rounds),
        "prediction_failures": sum(r[p]["prediction_failures"] for r in rounds for p in ("alone", "with_explain")),
        "drop_within_share": drop <= share + NOISE,
        "idle_within_target": measured["idle_explain"]["median_s"] <= IDLE_TARGET_S,
    }


def met(summary: dict) -> bool:
    """Every target: the drop within explain's share, no failed prediction, the idle heatmap in time."""
    return summary["drop_within_share"] and not summary["prediction_failures"] and summary["idle_within_target"]


def report(summary: dict, idle: dict, args: argparse.Namespace, host: dict) -> str:
    verdict = "met" if met(summary) else "NOT met"
    return "\n".join(
        [
            "# Explain beside predictions",
            "",
            host_line(host),
            "",
            f"Idle server: one heatmap of a real photo (PNG overlay of the photo's size) in {idle['median_s']:.3f} s "
            f"median, {idle['max_s']:.3f} s at most ({idle['count']} explains; the first loads the network). "
            f"Target: a median within {IDLE_TARGET_S:g} s.",
            "",
            f"Under {args.clients} prediction clients, medians of {args.rounds} interleaved rounds of "
            f"{args.seconds:g} s:",
            "",
            "| | predictions/s | explains/s | explain CPU share |",
            "|---|---|---|---|",
            f"| predictions alone | {summary['predictions_per_s_alone']:.1f} | | |",
            f"| with {args.explain_clients} explain clients | {summary['predictions_per_s_with_explain']:.1f} | "
            f"{summary['explains_per_s']:.2f} | {summary['explain_cpu_share']:.1%} |",
            "",
            f"Prediction throughput dropped {summary['prediction_drop']:.1%}; the explain thread used "
            f"{summary['explain_cpu_share']:.1%} of the CPU ({summary['explain_503']} explain requests shed with "
            f"503, {summary['prediction_failures']} failed predictions). Target: a drop no larger than explain's CPU "
            f"share (+{NOISE:.0%} for noise), zero failed predictions, and the idle heatmap in time: {verdict}.",
            "",
        ]
    )


def plot(summary: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    values = [summary["predictions_per_s_alone"], summary["predictions_per_s_with_explain"]]
    bars = ax.bar(["predictions alone", "beside explain"], values, color=["tab:blue", "tab:orange"])
    ax.bar_label(bars, fmt="%.1f")
    ax.set_ylabel("predictions/s (200)")
    ax.set_title(
        f"drop {summary['prediction_drop']:.1%} vs explain CPU share {summary['explain_cpu_share']:.1%}", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    args = build_parser().parse_args(argv)
    if args.clients < 1 or args.explain_clients < 1 or args.rounds < 1 or args.seconds <= 0:
        print(
            "error: --clients, --explain-clients and --rounds must be at least 1, --seconds positive", file=sys.stderr
        )
        return 2
    host = describe_host()
    if args.url:
        measured = asyncio.run(measure(check_local(args.url), args))
    else:
        env = {"CLASSIFIER_MODEL_TAG": args.model, "CLASSIFIER_DEVICE": "cpu"}
        if args.explain_nice is not None:
            env["CLASSIFIER_EXPLAIN_NICE"] = str(args.explain_nice)
        with serve(env) as url:
            measured = asyncio.run(measure(url, args))
    summary = summarize(measured)
    args.out.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    payload = {"host": host, "settings": settings, "summary": summary, **measured}
    (args.out / "explain.json").write_text(json.dumps(payload, indent=2) + "\n")
    text = report(summary, measured["idle_explain"], args, host)
    (args.out / "explain.md").write_text(text)
    plot(summary, args.out / "explain.png")
    print(text)
    return 0 if met(summary) else 1


if __name__ == "__main__":
    sys.exit(main())
