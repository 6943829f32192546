"""A server that cannot serve correctly must not start: one clear line on stderr and a non-zero exit."""

from __future__ import annotations

import os
import subprocess
import sys

import bentoml
import pytest

from classifier.contract import METADATA_KEY
from classifier.engines import ENGINES
from classifier.store import WEIGHTS_FILE
from loadtests.servers import REPO, free_port

pytestmark = pytest.mark.slow


def start(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bentoml", "serve", "service.service:ImageClassifier", "--port", str(free_port())],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=180,
    )


def assert_refused(result: subprocess.CompletedProcess, message: str) -> None:
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def copy_model(
    source_tag: str,
    name: str,
    *,
    weights=None,
    metadata_change: dict | None = None,
    files: dict[str, bytes] | None = None,
) -> str:
    """A copy of the model's weights and metadata (not its ONNX graphs), changed as asked; ``files`` are added."""
    source = bentoml.models.get(source_tag)
    metadata = dict(source.info.metadata)
    if metadata_change:
        metadata[METADATA_KEY] = {**metadata[METADATA_KEY], **metadata_change}
    with bentoml.models.create(name, metadata=metadata) as model:
        data = open(source.path_of(WEIGHTS_FILE), "rb").read()
        with open(model.path_of(WEIGHTS_FILE), "wb") as fh:
            fh.write(data if weights is None else weights(data))
        for file, content in (files or {}).items():
            with open(model.path_of(file), "wb") as fh:
                fh.write(content)
    return str(model.tag)


def test_missing_model(trained_model):
    assert_refused(start({"CLASSIFIER_MODEL_TAG": "no-such-model:latest"}), "is not in the BentoML store")


def test_bad_setting():
    assert_refused(start({"CLASSIFIER_MAX_BATCH_SIZE": "many"}), "CLASSIFIER_MAX_BATCH_SIZE")


def test_truncated_weights(trained_model):
    tag = copy_model(trained_model, "truncated", weights=lambda data: data[: len(data) // 2])
    assert_refused(start({"CLASSIFIER_MODEL_TAG": tag}), "missing or unreadable")


def test_metadata_that_does_not_match_the_weights(trained_model):
    tag = copy_model(trained_model, "mismatch", metadata_change={"class_names": ["a", "b", "c"]})
    assert_refused(start({"CLASSIFIER_MODEL_TAG": tag}), "do not match its contract")


def test_an_engine_the_model_does_not_have(trained_model):
    tag = copy_model(trained_model, "torch-only")
    assert_refused(start({"CLASSIFIER_MODEL_TAG": tag, "CLASSIFIER_ENGINE": "onnx-int8"}), "has no model.int8.onnx")


def test_a_corrupt_onnx_graph(trained_model):
    graph = open(bentoml.models.get(trained_model).path_of(ENGINES["onnx"].file), "rb").read()
    tag = copy_model(trained_model, "corrupt-onnx", files={ENGINES["onnx"].file: graph[: len(graph) // 2]})
    # set: auto would record the broken graph among its candidates and serve another engine
    assert_refused(
        start({"CLASSIFIER_MODEL_TAG": tag, "CLASSIFIER_DEVICE": "cpu", "CLASSIFIER_ENGINE": "onnx"}), "cannot load"
    )


def test_a_cached_engine_choice_still_refuses_a_corrupt_graph(trained_model, tmp_path):
    """A restart that reads the engine choice from the cache builds nothing while deciding: the start-up check
    must still build the chosen engine, so a graph corrupted since stops the server in one line."""
    from classifier.engines.choice import Candidate, EngineChoice, remember
    from classifier.store import REFERENCE_FILE, describe_model
    from service.settings import ServiceSettings
    from service.startup import candidates_here

    source = bentoml.models.get(trained_model)
    names = (ENGINES["onnx"].file, ENGINES["onnx-int8"].file, REFERENCE_FILE)
    files = {name: open(source.path_of(name), "rb").read() for name in names}
    graph = files[ENGINES["onnx"].file]
    tag = copy_model(trained_model, "cached-choice", files={**files, ENGINES["onnx"].file: graph[: len(graph) // 2]})
    env = {"CLASSIFIER_MODEL_TAG": tag, "CLASSIFIER_DEVICE": "cpu", "CLASSIFIER_CACHE_DIR": str(tmp_path)}
    _, _, host = candidates_here(describe_model(tag), ServiceSettings.from_env(env))
    assert remember(tmp_path, tag, EngineChoice("onnx", (Candidate("onnx", 1.0, 0.0, images_per_s=50.0),), host))
    assert_refused(start(env), "cannot load")


def test_a_port_taken_before_the_server_binds_it_is_tried_again(trained_model, monkeypatch):
    """The test harness's servers: a port found free and then taken by another process (ours, or one of the ZMQ
    ports BentoML's process manager picks) fails that start only; the next start gets other ports."""
    import socket
    import urllib.request

    from loadtests import servers

    found: list[int] = []
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()

        def first_one_taken() -> int:
            found.append(taken.getsockname()[1] if not found else free_port())
            return found[-1]

        monkeypatch.setattr(servers, "free_port", first_one_taken)
        with servers.serve({"CLASSIFIER_MODEL_TAG": trained_model, "CLASSIFIER_ENGINE": "onnx"}) as url:
            with urllib.request.urlopen(f"{url}/readyz", timeout=30) as response:
                assert response.status == 200
    assert len(found) == 2 and url.endswith(f":{found[1]}")
