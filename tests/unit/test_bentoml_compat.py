"""The one module that touches BentoML's internals still finds what it relies on in the installed BentoML."""

from __future__ import annotations

import logging
from pathlib import Path

import bentoml
import pytest

from service import bentoml_compat


def test_installed_bentoml_is_the_one_written_for():
    assert bentoml.__version__ == bentoml_compat.BENTOML_VERSION


def test_version_check_warns_on_another_version(caplog):
    with caplog.at_level(logging.WARNING, logger=bentoml_compat.__name__):
        bentoml_compat.check_version(bentoml_compat.BENTOML_VERSION)
        assert not caplog.records
        bentoml_compat.check_version("9.9.9")
    assert "9.9.9" in caplog.text and bentoml_compat.BENTOML_VERSION in caplog.text


def test_described_service_rewrites_only_the_info():
    @bentoml.service(name="probe", service_class=bentoml_compat.described_service("Probe", "What it does."))
    class Probe:
        @bentoml.api
        def echo(self, text: str) -> str:
            return text

    spec = Probe.openapi_spec.asdict()
    assert spec["info"]["title"] == "Probe" and spec["info"]["description"] == "What it does."
    assert spec["info"]["version"] == bentoml_compat.__version__
    assert "/echo" in spec["paths"]


def test_class_view_endpoints_get_their_service_on_the_event_loop(monkeypatch):
    """FastAPI runs a plain dependency in a worker thread on every request; with the override it runs none."""
    from _bentoml_sdk.service import get_current_service, set_current_service
    from fastapi import Depends, FastAPI
    from fastapi.dependencies import utils
    from fastapi.testclient import TestClient

    app = FastAPI()

    @app.get("/who")
    async def who(service: object = Depends(get_current_service)) -> str:
        return str(service)

    def no_thread(*args, **kwargs):
        raise AssertionError("a dependency ran in the thread pool")

    monkeypatch.setattr(utils, "run_in_threadpool", no_thread)
    set_current_service("the service")
    try:
        with pytest.raises(AssertionError, match="thread pool"):
            TestClient(app).get("/who")
        bentoml_compat.endpoints_on_the_loop(app)
        assert TestClient(app).get("/who").json() == "the service"
    finally:
        set_current_service(None)


def test_uvicorn_runs_on_uvloop_and_httptools():
    """Both are dependencies: without them uvicorn silently falls back to asyncio's loop and h11."""
    from uvicorn.loops.auto import auto_loop_factory
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    assert "uvloop" in auto_loop_factory().__module__ and AutoHTTPProtocol.__name__ == "HttpToolsProtocol"


def test_requests_are_traced_only_where_an_exporter_is_configured():
    def middlewares(**config) -> list[str]:
        @bentoml.service(name="probe", **config)
        class Probe:
            @bentoml.api
            def echo(self, text: str) -> str:
                return text

        return [m.cls.__name__ for m in Probe.to_asgi(is_main=True).user_middleware]

    bentoml_compat.adapt_middlewares()  # (importing service.service has already done it)
    bentoml_compat.adapt_middlewares()  # idempotent
    assert "OpenTelemetryMiddleware" not in middlewares() and "MetricsByRoute" in middlewares()
    assert "RunnerTrafficMetricsMiddleware" not in middlewares()
    # BentoML's own exporter for tests: with an exporter, spans can go somewhere, and BentoML's middleware is back
    assert "OpenTelemetryMiddleware" in middlewares(tracing={"exporter_type": "in_memory"})


def test_request_metrics_are_labelled_by_route_template():
    from fastapi import APIRouter, FastAPI
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    v1, v2, included = FastAPI(), FastAPI(), APIRouter()
    v1.post("/predict")(lambda: None)
    included.post("/explain")(lambda: None)
    v1.include_router(included)  # as BentoML does with a class view's endpoints
    v2.post("/v2/models/{model_name}/infer")(lambda: None)
    files = Mount("/static_content", StaticFiles(directory=Path(__file__).parent))
    routes = [Route("/livez", lambda r: None), Mount("/v1", v1), files, Mount("/", v2)]
    templates = bentoml_compat.route_templates(routes)
    label = lambda path: bentoml_compat.route_label(templates, path)  # noqa: E731
    assert label("/livez") == "/livez" and label("/v1/predict") == "/v1/predict"
    assert label("/v2/models/transfer-classifier/infer") == "/v2/models/{model_name}/infer"
    assert label("/v1/openapi.json") == "/v1/openapi.json" and label("/v1/explain") == "/v1/explain"
    assert label("/static_content/app.js") == "/static_content"
    for scanned in ("/wp-login.php", "/v1/predict/../x", "/v1", "/q\rx", "/v2/models/a/b/c/infer"):
        assert label(scanned) == bentoml_compat.UNMATCHED_ROUTE, scanned


def test_another_bentoml_keeps_its_tracing_and_says_so(monkeypatch, caplog):
    class Another:  # an app factory whose middlewares are not a property
        middlewares = ["as another version might have it"]

    monkeypatch.setattr(bentoml_compat, "_app_factory", lambda: Another)
    with caplog.at_level(logging.WARNING, logger=bentoml_compat.__name__):
        bentoml_compat.adapt_middlewares()
    assert Another.middlewares == ["as another version might have it"]
    assert "requests stay traced" in caplog.text and "labelled by path" in caplog.text


def test_a_bentoml_without_its_metrics_middleware_says_the_labels_stay_raw_paths(monkeypatch, caplog):
    class Another:  # an app factory whose metrics middleware has another class
        enable_metrics = True
        middlewares = property(lambda self: [])

    monkeypatch.setattr(bentoml_compat, "_app_factory", lambda: Another)
    bentoml_compat.adapt_middlewares()
    with caplog.at_level(logging.WARNING, logger=bentoml_compat.__name__):
        assert Another().middlewares == []
    assert "stay labelled by path" in caplog.text
