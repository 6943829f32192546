"""The GPU check, one prepared run for a machine lent for minutes: raw engine speed and served images/s.

    python -m loadtests.gpu_bench --out runs/gpu            # trains a small model first unless --model

In one run: (1) unless --model is given, a ResNet50 with random weights (no download needed: speed does
not depend on the weights) is trained for one epoch on generated images and saved without CPU graphs;
(2) `loadtests.engine_bench` on the device: the torch engine (bf16, or fp16 where bf16 is missing) at each
batch size, and batched JPEG decoding; (3) the service on the device, with plain JPEGs decoded next to
the model (CLASSIFIER_JPEG_DECODE=auto) and then in the front (=front), loaded by closed-loop clients
posting the real photos in loadtests/photos: images/s with JPEG decoding, and the server's CPU time per
image; (4) last, as it takes minutes, the engine again with torch.compile. Writes gpu.json after (3) and
again after (4), and prints a summary with the host and the GPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from classifier.cli import DefaultsHelp
from loadtests.host import describe_host, host_line
from loadtests.openloop import measure_capacity, photo_bodies, setup_logging
from loadtests.processes import cpu_seconds
from loadtests.servers import REPO, serve_process
from loadtests.traffic import PHOTOS

logger = logging.getLogger("loadtests.gpu_bench")
MODEL_NAME = "gpu-bench"


def make_images(folder: Path, per_class: int = 12) -> Path:
    """Two classes of random-noise JPEGs, enough for training to run end to end."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (folder / label).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / label / f"{i}.jpg", quality=90)
    return folder


def train_small(device: str, workdir: Path) -> str:
    """Train and save a random-weight ResNet50 for one epoch; its tag."""
    data = make_images(workdir / "data")
    command = [
        sys.executable, "-m", "training", "--data", str(data), "--weights", "none", "--epochs", "1",
        "--export", "none", "--device", device, "--no-grid-heatmaps", "--name", MODEL_NAME,
        "--cache-dir", str(workdir / "cache"), "--output", str(workdir / "runs"),
    ]  # fmt: skip
    subprocess.run(command, cwd=REPO, check=True)
    return f"{MODEL_NAME}:latest"


def engine_speed(model: str, device: str, batch_sizes: str, seconds: float, compiled: bool, out: Path) -> dict:
    command = [
        sys.executable, "-m", "loadtests.engine_bench", "--model", model, "--device", device,
        "--batch-sizes", batch_sizes, "--seconds", str(seconds), "--out", str(out),
    ]  # fmt: skip
    subprocess.run(command + (["--compile"] if compiled else []), cwd=REPO, check=True)
    return json.loads(out.read_text())


def served_speed(
    model: str, device: str, decode: str, clients: list[int], seconds: float, model_workers: int = 1
) -> list[dict]:
    """Images/s and the server's CPU ms per image at each client count, with JPEG decoding where ``decode`` says."""
    env = {
        "CLASSIFIER_MODEL_TAG": model,
        "CLASSIFIER_DEVICE": device,
        "CLASSIFIER_ENGINE": "torch",
        "CLASSIFIER_JPEG_DECODE": decode,
        "CLASSIFIER_MAX_BATCH_SIZE": "64",
        "CLASSIFIER_MAX_INFLIGHT_IMAGES": "512",
        "CLASSIFIER_MODEL_WORKERS": str(model_workers),
    }
    bodies = photo_bodies(PHOTOS)
    rows = []
    with serve_process(env, timeout=600) as server:
        for n in clients:
            measure_capacity(server.url, bodies, clients=n, seconds=3)  # warm-up at this concurrency
            before, client, start = cpu_seconds(server.process.pid), time.process_time(), time.monotonic()
            rate = measure_capacity(server.url, bodies, clients=n, seconds=seconds)
            elapsed, after = time.monotonic() - start, cpu_seconds(server.process.pid)
            images = max(rate * elapsed, 1)
            rows.append(
                {
                    "jpeg_decode": decode,
                    "model_workers": model_workers,
                    "clients": n,
                    "images_per_s": round(rate, 1),
                    **{
                        f"{role}_cpu_ms_per_image": round(1000 * (after[role] - before.get(role, 0.0)) / images, 2)
                        for role in sorted(after)
                    },
                    # the load generator is one asyncio process: near 1000 / images_per_s it is the bottleneck
                    "client_cpu_ms_per_image": round(1000 * (time.process_time() - client) / images, 2),
                }
            )
            logger.info("decode=%s %3d clients: %s", decode, n, rows[-1])
    return rows


def gpu_name(device: str) -> str:
    import torch

    return torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "none"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.gpu_bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=DefaultsHelp,
    )
    p.add_argument("--model", default=None, help="BentoML model tag (default: train a small random-weight one)")
    p.add_argument("--device", default="cuda", help="where the model runs (cpu only to try this script)")
    p.add_argument("--batch-sizes", default="1,8,32,64", help="raw engine batch sizes, comma-separated")
    p.add_argument("--engine-seconds", type=float, default=3.0, help="seconds per raw engine and batch size")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile engine run (minutes)")
    p.add_argument("--clients", default="16,64", help="closed-loop clients of the served runs, comma-separated")
    p.add_argument("--seconds", type=float, default=15.0, help="seconds measured per served level")
    p.add_argument("--decode", default="auto,front", help="CLASSIFIER_JPEG_DECODE values served, comma-separated")
    p.add_argument("--model-workers", type=int, default=1, help="model runner processes sharing the device")
    p.add_argument("--out", type=Path, default=Path("runs/gpu"), help="folder for gpu.json and the engine JSONs")
    return p


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = build_parser().parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict = {"host": describe_host(), "gpu": gpu_name(args.device)}
    with tempfile.TemporaryDirectory() as tmp:
        if args.model is None:  # the trained model goes to a store of its own, removed afterwards
            os.environ["BENTOML_HOME"] = str(Path(tmp) / "bentoml")
        model = args.model or train_small(args.device, Path(tmp))
        result["engines"] = engine_speed(
            model, args.device, args.batch_sizes, args.engine_seconds, False, args.out / "engines.json"
        )
        clients = [int(n) for n in args.clients.split(",")]
        runs = [
            served_speed(model, args.device, decode, clients, args.seconds, args.model_workers)
            for decode in args.decode.split(",")
        ]
        result["served"] = [row for rows in runs for row in rows]
        (args.out / "gpu.json").write_text(json.dumps(result, indent=2) + "\n")
        if not args.no_compile and args.device != "cpu":  # last: compiling takes minutes and may not finish
            result["engines_compiled"] = engine_speed(
                model, args.device, args.batch_sizes, args.engine_seconds, True, args.out / "engines-compiled.json"
            )
    (args.out / "gpu.json").write_text(json.dumps(result, indent=2) + "\n")
    print(host_line(result["host"]), f"GPU: {result['gpu']}")
    print(json.dumps({k: v for k, v in result.items() if k != "host"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
