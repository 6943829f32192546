"""Triton Inference Server serving our model through nvidia-pytriton 0.7: its wheel carries a real Triton server
(C++ HTTP front end, dynamic batcher) and runs the model as a Python function in a process of ours.

    python -m loadtests.peers.triton --model transfer-classifier:latest --engine onnx   # start, one request, stop

Two configurations, both with the model's own preprocessing (Pillow decoding, resize and crop, as our front does):
- ``onnx``: as Triton's users typically deploy an ONNX model, ONNX Runtime on the fp32 graph;
- the engine our service chose on this host (e.g. ``openvino-int8``), on the same graph, so that the comparison is
  of the serving stacks alone.
Requests use Triton's binary tensor extension: the JPEG's bytes as a BYTES tensor, no base64. pytriton pins
numpy<2, so it gets a virtual environment of its own; the Triton server finds libpython through LD_LIBRARY_PATH.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from loadtests.peers import ensure_venv
from loadtests.servers import REPO, free_port, run_until_ready

MODEL = "classifier"
ENGINES = ("onnx", "onnx-int8", "openvino", "openvino-int8")  # what runs in its environment (no torch there)
PACKAGES = ["nvidia-pytriton==0.7.0", "numpy<2", "onnxruntime", "openvino", "pillow", "pydantic>=2.6,<3"]


def setup() -> Path:
    """The peer's python, with pytriton installed; PeerUnavailable when pip cannot install it."""
    return ensure_venv("triton", PACKAGES)


@contextlib.contextmanager
def serve(
    model_tag: str, engine: str, *, max_batch_size: int = 16, max_delay_ms: int = 50, timeout: float = 300
) -> Iterator[tuple[str, int]]:
    """Yield Triton's HTTP URL serving ``model_tag`` with ``engine`` (POST /v2/models/classifier/infer) and the pid
    at the root of its processes; stop it afterwards."""
    from classifier.store import describe_model

    if engine not in ENGINES:
        raise ValueError(f"the Triton peer runs {', '.join(ENGINES)}, not {engine}")
    model = describe_model(model_tag)
    graph = model.engine_files["onnx-int8" if engine.endswith("int8") else "onnx"]
    python = setup()
    libdir = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    port = free_port()
    command = [str(python), "-m", "loadtests.peers.triton", "--serve", "--engine", engine, "--graph", graph]
    command += ["--contract", model.contract.model_dump_json(), "--port", str(port)]
    command += ["--max-batch-size", str(max_batch_size), "--max-delay-ms", str(max_delay_ms)]
    env = {
        "PYTHONPATH": str(REPO),
        "LD_LIBRARY_PATH": ":".join(filter(None, [libdir, os.environ.get("LD_LIBRARY_PATH")])),
    }
    url = f"http://127.0.0.1:{port}"
    with run_until_ready(command, f"{url}/v2/models/{MODEL}/ready", env=env, cwd=REPO, timeout=timeout) as process:
        yield url, process.pid


def run_server(args: argparse.Namespace) -> None:
    """In the peer's environment: bind the model to a Triton server and serve until stopped."""
    import numpy as np
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    from classifier.contract import ModelContract
    from classifier.preprocessing import prepare_image

    contract = ModelContract.model_validate_json(args.contract)
    threads = os.cpu_count() or 1
    if args.engine.startswith("openvino"):
        from classifier.engines.openvino_engine import OpenVinoEngine

        runner = OpenVinoEngine(args.graph, contract, threads=threads, name=args.engine)
    else:
        from classifier.engines.ort_engine import OnnxEngine

        runner = OnnxEngine(args.graph, contract, threads=threads, name=args.engine)
    classes = contract.num_classes

    @batch
    def infer(image: np.ndarray) -> dict[str, np.ndarray]:
        images = np.stack([prepare_image(bytes(row[0]), contract) for row in image])
        return {"probabilities": runner.predict(images)[:, :classes]}

    config = TritonConfig(
        http_address="127.0.0.1", http_port=args.port, grpc_port=free_port(), metrics_port=free_port()
    )
    with Triton(config=config) as triton:
        triton.bind(
            model_name=MODEL,
            infer_func=infer,
            inputs=[Tensor(name="image", dtype=np.bytes_, shape=(1,))],
            outputs=[Tensor(name="probabilities", dtype=np.float32, shape=(classes,))],
            config=ModelConfig(
                max_batch_size=args.max_batch_size,
                batcher=DynamicBatcher(max_queue_delay_microseconds=args.max_delay_ms * 1000),
            ),
        )
        triton.serve()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.peers.triton", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="transfer-classifier:latest", help="model to serve (default: %(default)s)")
    p.add_argument("--engine", default="onnx", choices=ENGINES, help="engine on the graph (default: %(default)s)")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # internal: the server, in the peer's venv
    p.add_argument("--graph", help=argparse.SUPPRESS)
    p.add_argument("--contract", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--max-batch-size", type=int, default=16, help="largest batch (default: %(default)s)")
    p.add_argument("--max-delay-ms", type=int, default=50, help="dynamic batcher's queue delay (default: %(default)s)")
    args = p.parse_args(argv)
    if args.serve:
        run_server(args)
        return 0
    import httpx

    from loadtests.traffic import triton_request  # urllib3: the benchmark imports this module before locust

    body, headers = triton_request((REPO / "tests" / "data" / "odd-images" / "hopper.jpg").read_bytes())
    with serve(args.model, args.engine) as (url, _):
        answer = httpx.post(f"{url}/v2/models/{MODEL}/infer", content=body, headers=headers, timeout=120)
    print(answer.status_code, answer.text[:500])
    return 0 if answer.status_code == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
