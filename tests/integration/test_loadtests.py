"""The load-test tools against the real server: locust headless, the sweep runner, the benchmark."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys

import pytest

from loadtests.peers import triton
from loadtests.servers import REPO

PNG = b"\x89PNG\r\n\x1a\n"


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_locustfile_runs_headless_without_unexpected_failures(server, tmp_path):
    """Realistic traffic, malformed share included (they must get their 4xx), for a few seconds."""
    result = _run(
        "-m",
        "locust",
        "-f",
        "loadtests/locustfile.py",
        "ClassifierUser",
        "--headless",
        "--host",
        server,
        "-u",
        "4",
        "-r",
        "4",
        "-t",
        "10s",
        "--sizes",
        "100,640,1200",
        "--malformed-share",
        "0.3",
        "--batch-share",
        "0.2",
        "--seed",
        "3",
        "--csv",
        str(tmp_path / "run"),
        "--only-summary",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {row["Name"]: row for row in csv.DictReader((tmp_path / "run_stats.csv").open())}
    assert int(rows["Aggregated"]["Request Count"]) > 0
    assert int(rows["Aggregated"]["Failure Count"]) == 0  # malformed requests got their 4xx, which is success
    # Which kinds a 10 s run reaches depends on the host's speed (the mix itself is in tests/unit/test_traffic.py);
    # every kind it sent is one the traffic model makes.
    kinds = set(rows) - {"Aggregated"}
    assert kinds and all(re.fullmatch(r"single \d+px|batch of \d+|malformed: .+", name) for name in kinds), kinds


def test_locust_counts_a_wrong_answer_as_a_failure(server, tmp_path):
    """The check is real: photos sent to the wrong field get 400 missing_field, which must fail."""
    result = _run(
        "-m",
        "locust",
        "-f",
        "loadtests/locustfile.py",
        "PhotoUser",
        "--headless",
        "--host",
        server,
        "-u",
        "1",
        "-r",
        "1",
        "-t",
        "3s",
        "--field",
        "file",
        "--csv",
        str(tmp_path / "run"),
        "--only-summary",
    )
    assert result.returncode == 1
    rows = {row["Name"]: row for row in csv.DictReader((tmp_path / "run_stats.csv").open())}
    assert int(rows["Aggregated"]["Failure Count"]) == int(rows["Aggregated"]["Request Count"]) > 0


def test_sweep_writes_csv_and_plot(server, tmp_path):
    out = tmp_path / "sweep"
    result = _run(
        "-m",
        "loadtests.sweep",
        "--host",
        server,
        "--users",
        "1,3",
        "--warm-up",
        "1",
        "--duration",
        "3",
        "--malformed-share",
        "0.2",
        "--sizes",
        "100,640,1200",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert [int(r["users"]) for r in rows] == [1, 3]
    assert all(int(r["requests"]) > 0 for r in rows), rows  # at least one answer per level, however slow the host
    assert all(int(r["failures"]) == 0 and float(r["images_per_s"]) > 0 for r in rows)
    assert float(rows[0]["p99_ms"]) >= float(rows[0]["p50_ms"]) > 0
    assert out.with_suffix(".png").read_bytes().startswith(PNG)


def test_sweep_refuses_remote_hosts(tmp_path):
    result = _run("-m", "loadtests.sweep", "--host", "http://example.com", "--out", str(tmp_path / "x"))
    assert result.returncode == 2 and "only http://127.0.0.1" in result.stderr


def test_benchmark_refuses_bad_settings_in_one_line(tmp_path):
    rounds = _run("-m", "loadtests.benchmark", "--rounds", "0", "--out", str(tmp_path / "a"))
    assert rounds.returncode != 0 and rounds.stderr.strip() == "error: --rounds must be at least 1"
    model = _run(
        "-m",
        "loadtests.benchmark",
        "--model",
        "no-such-model:1",
        "--photos",
        "loadtests/photos",
        "--out",
        str(tmp_path / "b"),
    )
    assert model.returncode != 0 and model.stderr.startswith("error: ") and "no-such-model" in model.stderr
    assert "Traceback" not in model.stderr


@pytest.mark.slow
def test_benchmark_runs_in_a_tiny_configuration(trained_model, tmp_path):
    """Raw engines, our service with both ONNX engines, and the reference service, briefly."""
    result = _run(
        "-m",
        "loadtests.benchmark",
        "--model",
        trained_model,
        "--photos",
        "loadtests/photos",
        "--concurrency",
        "2",
        "--batch-sizes",
        "1,2",
        "--engine-seconds",
        "0.2",
        "--warm-up",
        "1",
        "--duration",
        "3",
        "--sizes",
        "100,640",
        "--rounds",
        "2",
        "--peers",
        "triton",  # TorchServe has its own test (test_peers): one peer proves the wiring
        "--out",
        str(tmp_path),
        timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Load: one photo per request, photos at 100,640 px" in result.stdout
    report = json.loads((tmp_path / "benchmark.json").read_text())
    assert report["host"]["cores"] and "Host: " in result.stdout  # the CPU and its flags go with every result
    assert set(report["engines"]["images_per_s"]) == {"torch", "onnx", "onnx-int8", "openvino", "openvino-int8"}
    assert 0 <= report["engines"]["int8_top1_agreement"] <= 1
    assert report["engines"]["top1_agreement_with_fp32"]["onnx"] == 1.0
    services = report["services"]
    ours = {"ours (auto)", "ours (onnx)", "ours (onnx-int8)", "reference"}
    peers = set()
    if report["skipped"]:  # pytriton cannot be installed here: the reason is in the report and its output
        assert "triton (onnx)" in report["skipped"] and "Left out: triton (onnx)" in result.stdout
    else:
        chosen = report["auto_chose"]
        assert chosen in report["auto_eligible"]  # the service's own measurement, which the targets now use
        peers = {"triton (onnx)"} | ({f"triton ({chosen})"} if chosen in triton.ENGINES else set())
        assert "x triton (onnx) (target >= 2)" in result.stdout
    assert set(services) == ours | peers
    assert "ours (auto) at 2 clients: " in result.stdout and "of the best eligible raw engine" in result.stdout
    assert "ms of CPU per image outside the engine" in result.stdout
    # the engine's CPU is read from our servers' /metrics; the reference and the peers have no such figure
    assert all(services[name][0]["engine_cpu_ms_per_image"] > 0 for name in ours - {"reference"})
    assert all(services[name][0]["engine_cpu_ms_per_image"] is None for name in peers | {"reference"})
    for levels in services.values():
        assert levels[0]["users"] == 2 and levels[0]["failures"] == 0 and levels[0]["images_per_s"] > 0
    assert "| reference | 2 |" in result.stdout and "x reference" in result.stdout
    assert (tmp_path / "benchmark.png").read_bytes().startswith(PNG)
    assert len(report["rounds"]["engines"]) == 2
    assert all(len(rounds) == 2 for per_level in report["rounds"]["services"].values() for rounds in per_level.values())
    assert len(list(csv.DictReader((tmp_path / "benchmark.csv").open()))) == len(services)


def test_hotpath_splits_the_cpu_per_image_by_process(trained_model, tmp_path):
    result = _run(
        "-m", "loadtests.hotpath", "--model", trained_model, "--photos", "loadtests/photos", "--users", "2",
        "--seconds", "2", "--rounds", "1", "--engine", "onnx", "--variant", "CLASSIFIER_DECODE_CONCURRENCY=1",
        "--variant", "CLASSIFIER_ENGINE=onnx-int8", "--out", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((tmp_path / "hotpath.json").read_text())["rounds"]
    assert [r["variant"] for r in rows] == [{"CLASSIFIER_DECODE_CONCURRENCY": "1"}, {"CLASSIFIER_ENGINE": "onnx-int8"}]
    for row in rows:
        assert row["failures"] == 0 and row["images_per_s"] > 0 and row["mean_batch"] >= 1
        assert row["cpu_ms_per_image"]["front"] > 0 and row["cpu_ms_per_image"]["runner"] > 0
        # the engine's calls are part of the runner's CPU; the rest of the server's is outside the engine
        assert 0 < row["engine_cpu_ms_per_image"] < row["cpu_ms_per_image"]["runner"]
        server = sum(row["cpu_ms_per_image"].values())
        assert abs(row["outside_engine_ms_per_image"] - (server - row["engine_cpu_ms_per_image"])) < 0.05
    assert "Host: " in result.stdout


def test_explain_benchmark_runs_in_a_tiny_configuration(server, tmp_path):
    """Idle explains of the real photos, then one round of predictions alone and beside explain requests."""
    result = _run(
        "-m", "loadtests.explain_bench", "--url", server, "--clients", "2", "--explain-clients", "1",
        "--seconds", "2", "--rounds", "1", "--repeats", "1", "--out", str(tmp_path),
    )  # fmt: skip
    assert result.returncode in (0, 1), result.stderr[-3000:]  # 1: the verdict, too noisy to judge in 2 s
    report = json.loads((tmp_path / "explain.json").read_text())
    assert report["idle_explain"]["count"] == 4 and report["host"]["cores"]
    summary = report["summary"]
    assert summary["predictions_per_s_alone"] > 0 and summary["prediction_failures"] == 0
    assert summary["explains_per_s"] > 0 and summary["explain_cpu_share"] > 0
    assert "Host: " in result.stdout and "| predictions alone |" in result.stdout
    assert (tmp_path / "explain.png").read_bytes().startswith(PNG)


def test_explain_benchmark_refuses_bad_settings(tmp_path):
    result = _run("-m", "loadtests.explain_bench", "--rounds", "0", "--out", str(tmp_path))
    assert result.returncode == 2 and result.stderr.startswith("error: --clients")
