"""The CPU service runs without torch: with an ONNX Runtime engine no process of the server loads it. And BentoML's
manager, which checks the engine's file before any worker starts, does not keep that engine's memory."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import psutil

from classifier.store import describe_model
from loadtests.servers import serve_process
from service.bentoml_compat import worker_service
from service.memory import glibc_trim
from tests.conftest import ODD_IMAGES
from tests.integration.conftest import ONNX, SERVER_ENV


def _mib(process: psutil.Process, field: str) -> float:
    """VmRSS (resident now) or VmHWM (the peak) of ``process``, in MiB."""
    with open(f"/proc/{process.pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(f"{field}:")) / 1024


def _maps(process: psutil.Process, library: str) -> bool:
    with open(f"/proc/{process.pid}/maps") as fh:
        return library in fh.read()


def test_no_server_process_loads_torch_on_the_cpu_path(trained_model):
    with serve_process({"CLASSIFIER_MODEL_TAG": trained_model, **SERVER_ENV, **ONNX}) as server:
        photo = (ODD_IMAGES / "hopper.jpg").read_bytes()
        assert httpx.post(f"{server.url}/v1/predict", files={"image": ("h.jpg", photo)}, timeout=60).status_code == 200
        info = httpx.get(f"{server.url}/v1/model", timeout=10).json()
        assert (info["engine"], info["device"]) == ("onnx", "cpu")
        name = trained_model.split(":")[0]
        tensor = {"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(photo).decode()]}
        infer = httpx.post(f"{server.url}/v2/models/{name}/infer", json={"inputs": [tensor]}, timeout=60)
        assert infer.status_code == 200 and httpx.get(f"{server.url}/v2/health/ready").status_code == 200
        manager = psutil.Process(server.process.pid)
        processes = [manager, *manager.children(recursive=True)]
        assert len(processes) >= 3  # the manager, the front's worker, the model runner's worker
        assert [worker_service(p) or "manager" for p in processes if _maps(p, "libtorch")] == []
        runners = [p for p in processes if worker_service(p) == "model_runner"]
        assert runners and all(_maps(p, "onnxruntime") for p in runners)  # the engine runs there
        # The manager built the engine once to check its file, then gave at least that file's size (the weights) of
        # memory back: without the trim malloc kept nearly all of it for the server's life (peak 380, 356 MiB after).
        if glibc_trim() is not None:
            weights = Path(describe_model(trained_model).engine_files["onnx"]).stat().st_size / 2**20
            peak, now = _mib(manager, "VmHWM"), _mib(manager, "VmRSS")
            print(f"manager: peak {peak:.0f} MiB, resident {now:.0f} MiB, the graph {weights:.0f} MiB")
            assert peak - now > weights, f"the manager keeps {now:.0f} MiB of its {peak:.0f} MiB peak"
