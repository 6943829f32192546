"""Raw engine speed, no HTTP: images/s of each engine the model carries at the served batch sizes.

    python -m loadtests.engine_bench --model transfer-classifier:latest --batch-sizes 1,4,8,16

Inputs are real photos preprocessed as the service does. Each engine gets the threads a model worker
gets (the machine's cores). Also reports every engine's top-1 agreement with fp32 on all the photos.
Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from classifier.cli import DefaultsHelp
from loadtests.traffic import PHOTOS, photo_files


def images_per_second(engine, batch: np.ndarray, seconds: float) -> tuple[float, float]:
    """Throughput of ``engine.predict`` on ``batch``, repeated for about ``seconds`` after one warm-up run, and the
    CPU milliseconds per image it took (all of this process's threads: the engine runs here alone)."""
    engine.predict(batch)
    done, start, cpu = 0, time.perf_counter(), time.process_time()
    while (elapsed := time.perf_counter() - start) < seconds or done == 0:
        engine.predict(batch)
        done += len(batch)
    return done / elapsed, (time.process_time() - cpu) * 1000 / done


def run(
    model_tag: str,
    photos: Path,
    batch_sizes: list[int],
    seconds: float,
    threads: int = 0,
    device: str = "cpu",
    compile_model: bool = False,
) -> dict:
    """Images/s per engine and batch size; on a GPU the torch engine (compiled if asked) and batched JPEG decoding."""
    from classifier.device import cpu_threads, pick_device
    from classifier.engines import ENGINES, make_engine
    from classifier.preprocessing import prepare_image
    from classifier.store import describe_model

    model = describe_model(model_tag)
    files = photo_files(photos)
    images = np.stack([prepare_image(p.read_bytes(), model.contract) for p in files])
    threads = cpu_threads(threads, workers=1)
    target = pick_device(device)
    names = [name for name in model.engines if target.type in ENGINES[name].devices]
    engines = {
        name: make_engine(
            model, name, target, threads=threads, compile_max_batch=max(batch_sizes) if compile_model else 0
        )
        for name in names
    }
    for engine in engines.values():
        engine.warm_up()
    result: dict = {
        "model": model.tag,
        "device": str(target),
        "threads": threads,
        "photos": len(images),
        "images_per_s": {},
        "cpu_ms_per_image": {},
    }
    for name, engine in engines.items():
        result["images_per_s"][name], result["cpu_ms_per_image"][name] = {}, {}
        for size in batch_sizes:
            batch = images[np.arange(size) % len(images)]
            speed, cpu_ms = images_per_second(engine, batch, seconds)
            result["images_per_s"][name][str(size)] = round(speed, 2)
            result["cpu_ms_per_image"][name][str(size)] = round(cpu_ms, 2)
            print(
                f"{name:>10} batch {size:>3}: {result['images_per_s'][name][str(size)]:7.2f} images/s", file=sys.stderr
            )
    if target.type == "cuda":
        result["gpu_jpeg_decode_images_per_s"] = _jpeg_decode_speed(
            files, model.contract, target, max(batch_sizes), seconds
        )
    classes = model.contract.num_classes  # the columns after them are the OOD score
    fp32 = next((name for name in ("onnx", "torch") if name in engines), None)
    if fp32 is not None and target.type == "cpu":
        answers = {name: engine.predict(images)[:, :classes].argmax(1) for name, engine in engines.items()}
        result["top1_agreement_with_fp32"] = {
            name: float((answer == answers[fp32]).mean()) for name, answer in answers.items()
        }
        if "onnx-int8" in answers and fp32 == "onnx":
            result["int8_top1_agreement"] = result["top1_agreement_with_fp32"]["onnx-int8"]
    return result


def _jpeg_decode_speed(files: list[Path], contract, device, batch_size: int, seconds: float) -> float:
    """Images/s of classifier.jpeg_batch.decode_batch (decode + resize + crop on the device) on plain JPEGs."""
    import torch

    from classifier.jpeg_batch import batch_decodable, decode_batch

    datas = [p.read_bytes() for p in files if batch_decodable(p.read_bytes(), 10**9)][:batch_size]

    class Decoder:
        def predict(self, batch):
            out = decode_batch(batch, contract, device)[0]
            torch.cuda.synchronize(device)
            return out

    return round(images_per_second(Decoder(), datas, seconds)[0], 2)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.engine_bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=DefaultsHelp,
    )
    p.add_argument("--model", default="transfer-classifier:latest", help="BentoML model tag")
    p.add_argument("--photos", type=Path, default=PHOTOS, help="folder of photos to preprocess and run")
    p.add_argument("--batch-sizes", default="1,4,8,16", help="batch sizes, comma-separated")
    p.add_argument("--seconds", type=float, default=5.0, help="seconds measured per engine and batch size")
    p.add_argument("--threads", type=int, default=0, help="inference threads (0: all cores, as one model worker)")
    p.add_argument(
        "--device",
        default="cpu",
        help="cpu (every engine the model has), or cuda[:N] (torch, and batched JPEG decoding)",
    )
    p.add_argument("--compile", action="store_true", help="GPU: torch.compile the torch engine for the batch sizes")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here (default: print it only)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = run(
        args.model,
        args.photos,
        [int(b) for b in args.batch_sizes.split(",")],
        args.seconds,
        args.threads,
        args.device,
        args.compile,
    )
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
