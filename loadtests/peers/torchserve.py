"""TorchServe 0.12 serving our model as its users typically deploy an image classifier: a TorchScript model in a
.mar archive, TorchServe's own ``image_classifier`` handler (Pillow decode, torchvision resize, crop and
normalise, softmax, top classes), and its documented batching (``batchSize``, ``maxBatchDelay``).

    python -m loadtests.peers.torchserve --model transfer-classifier:latest   # set up, start, one request, stop

It gets its own virtual environment with the project's torch and torchvision versions (a mismatched pair makes
the handler fail with "operator torchvision::nms does not exist") and needs Java (Debian:
openjdk-17-jre-headless). One worker with all the cores, as our service's one model worker gets them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

from loadtests.peers import PeerUnavailable, ensure_venv
from loadtests.servers import REPO, free_port, run_until_ready

VERSION = "0.12.0"
MODEL = "classifier"
# A subclass only to size top-k to the model's classes (the stock handler asks for 5) and take the contract's
# resize and crop: everything else is TorchServe's image_classifier.
HANDLER = """
import json, os
from torchvision import transforms
from ts.torch_handler.image_classifier import ImageClassifier

class Handler(ImageClassifier):
    def initialize(self, context):
        super().initialize(context)
        with open(os.path.join(context.system_properties["model_dir"], "preprocess.json")) as fh:
            p = json.load(fh)
        self.topk = min(5, p["classes"])
        self.image_processing = transforms.Compose([
            transforms.Resize(p["resize"]), transforms.CenterCrop(p["size"]), transforms.ToTensor(),
            transforms.Normalize(mean=p["mean"], std=p["std"]),
        ])
"""


def packages() -> list[str]:
    torch, vision = metadata.version("torch"), metadata.version("torchvision")
    return [f"torch=={torch}", f"torchvision=={vision}", f"torchserve=={VERSION}", f"torch-model-archiver=={VERSION}"]


def setup() -> Path:
    """The peer's python, with TorchServe installed; PeerUnavailable without Java or when pip cannot install it."""
    if shutil.which("java") is None:
        raise PeerUnavailable("TorchServe needs Java: apt-get install openjdk-17-jre-headless")
    return ensure_venv("torchserve", [*packages(), "pyyaml", "captum"])  # its vision handlers import captum


def export(model_tag: str, folder: Path) -> None:
    """The model as TorchScript (normalised float images in, logits out), its preprocessing and class names."""
    import torch

    from classifier.store import load_model

    loaded = load_model(model_tag)
    contract = loaded.contract
    example = torch.zeros(1, 3, contract.image_size, contract.image_size)
    with torch.inference_mode():
        traced = torch.jit.trace(loaded.network.eval(), example, check_trace=False)
    traced.save(str(folder / "model.pt"))
    (folder / "index_to_name.json").write_text(json.dumps(dict(enumerate(contract.class_names))))
    preprocess = {
        "classes": contract.num_classes,
        "resize": contract.resize_size,
        "size": contract.image_size,
        "mean": list(contract.mean),
        "std": list(contract.std),
    }
    (folder / "preprocess.json").write_text(json.dumps(preprocess))
    (folder / "handler.py").write_text(textwrap.dedent(HANDLER))


def archive(python: Path, model_tag: str, store: Path) -> None:
    """Export the model (in this project's environment) and pack it as ``store/classifier.mar``."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        subprocess.run(
            [sys.executable, "-m", "loadtests.peers.torchserve", "--export", model_tag, "--to", str(work)],
            cwd=REPO,
            check=True,
        )
        archiver = python.parent / "torch-model-archiver"
        extra = ",".join(str(work / f) for f in ("index_to_name.json", "preprocess.json"))
        subprocess.run(
            [str(archiver), "--model-name", MODEL, "--version", "1.0", "--serialized-file", str(work / "model.pt"),
             "--handler", str(work / "handler.py"), "--extra-files", extra, "--export-path", str(store), "--force"],
            check=True,
        )  # fmt: skip


def config(store: Path, ports: dict[str, int], max_batch_size: int, max_delay_ms: int) -> str:
    """config.properties: ``ports`` {"inference", "management", "metrics"}, one worker with the model's batching."""
    model = {
        MODEL: {
            "1.0": {
                "defaultVersion": True,
                "marName": f"{MODEL}.mar",
                "minWorkers": 1,
                "maxWorkers": 1,
                "batchSize": max_batch_size,
                "maxBatchDelay": max_delay_ms,
                "responseTimeout": 120,
            }
        }
    }
    lines = [f"{name}_address=http://127.0.0.1:{p}" for name, p in ports.items()]
    lines += [
        f"model_store={store}",
        f"load_models={MODEL}.mar",
        f"models={json.dumps(model)}",
        "default_workers_per_model=1",
        "disable_token_authorization=true",
        "enable_model_api=true",
        "metrics_mode=prometheus",
        "install_py_dep_per_model=false",
        "vmargs=-Xmx1g",
    ]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def serve(
    model_tag: str, *, max_batch_size: int = 16, max_delay_ms: int = 50, timeout: float = 300
) -> Iterator[tuple[str, int]]:
    """Yield TorchServe's inference URL serving ``model_tag`` (POST /predictions/classifier, the photo in
    multipart field ``data``) and the pid at the root of its processes; stop it afterwards."""
    python = setup()
    with tempfile.TemporaryDirectory(prefix="torchserve-") as tmp:
        root = Path(tmp)
        store = root / "store"
        store.mkdir()
        archive(python, model_tag, store)
        ports = {"inference": free_port(), "management": free_port(), "metrics": free_port()}
        (root / "config.properties").write_text(config(store, ports, max_batch_size, max_delay_ms))
        threads = str(os.cpu_count() or 1)
        env = {"OMP_NUM_THREADS": threads, "LOG_LOCATION": str(root / "logs"), "METRICS_LOCATION": str(root / "logs")}
        command = [
            str(python.parent / "torchserve"),
            "--start",
            "--foreground",
            "--ncs",
            "--disable-token-auth",
            "--ts-config",
            str(root / "config.properties"),
            "--model-store",
            str(store),
        ]
        probe = f"http://127.0.0.1:{ports['management']}/models/{MODEL}"
        with run_until_ready(command, probe, env=env, cwd=root, timeout=timeout, ready=_worker_ready) as process:
            yield f"http://127.0.0.1:{ports['inference']}", process.pid


def _worker_ready(body: bytes) -> bool:
    """The management API's description of the model: ready once its worker has loaded it (/ping says Healthy
    before that, and also while a worker that cannot load the model restarts again and again)."""
    try:
        (described,) = json.loads(body)
        return any(worker.get("status") == "READY" for worker in described.get("workers", []))
    except (ValueError, TypeError, AttributeError):
        return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.peers.torchserve", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="transfer-classifier:latest", help="model to serve (default: %(default)s)")
    p.add_argument("--export", metavar="TAG", help=argparse.SUPPRESS)  # internal: the archive's export step
    p.add_argument("--to", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.export:
        export(args.export, args.to)
        return 0
    photo = (REPO / "tests" / "data" / "odd-images" / "hopper.jpg").read_bytes()
    import httpx

    with serve(args.model) as (url, _):
        answer = httpx.post(f"{url}/predictions/{MODEL}", files={"data": ("hopper.jpg", photo)}, timeout=120)
    print(answer.status_code, answer.text)
    return 0 if answer.status_code == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
