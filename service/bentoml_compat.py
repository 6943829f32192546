"""Every use of BentoML's internals, in one place, checked against the version they were written for.

BentoML's public API does not cover a few things this service needs; each is reached here and nowhere
else, so upgrading BentoML means reading this one module (and running tests/unit/test_bentoml_compat.py):
- the serde of the service-to-service hop (``_bentoml_impl.serde``): ours replaces pickle (service/transport.py);
- which BentoML service a worker process serves: its ``--service-name`` argument, read from sibling
  processes' command lines for the graceful shutdown and the soak's memory figures;
- what a failed call to the model runner means (BentoML's error codes, its client's exceptions), and whether
  it is ready (its client's ``is_ready``, as BentoML's own /readyz asks it);
- the OpenAPI document's title, version and description (BentoML writes its own name, "None" and
  its stock README there);
- the environment variables that make BentoML stop restarting dead workers (our image must not set them);
- the dependency through which BentoML hands a FastAPI class view its service instance
  (``_bentoml_sdk.service.get_current_service``): a plain function, which FastAPI runs in a worker thread on
  every request; ``endpoints_on_the_loop`` swaps in a coroutine (FastAPI's dependency_overrides);
- the middlewares BentoML wraps each service's app in (``_bentoml_impl.server.app.ServiceAppFactory``), which
  ``adapt_middlewares`` changes in two ways: its OpenTelemetry middleware builds a span per request even where
  no exporter is configured and nothing can read it, so it is left out there; its request metrics are labelled
  by the raw path, so every path a scanner tries would add series for the server's life (and a carriage return
  in one breaks the text format), so they are labelled by route template instead (``other`` where none matches).

Not a use but an order this service relies on: BentoML runs the entry service's deployment hook before it makes
any worker's environment, and a dependency's (the model runner's) only after making that dependency's. So the
start-up decision is made and pinned in ImageClassifier's hook; one in ModelRunner's would not reach the
runner's workers (a runner restarted after a newer model landed loaded that one).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Callable
from typing import Any, Literal

import attr
import bentoml
import psutil

from classifier import __version__

logger = logging.getLogger(__name__)

BENTOML_VERSION = "1.4.30"  # what this module was written and tested against (pinned in pyproject.toml)
# Where either is set, BentoML leaves a dead worker dead (it expects the container to be restarted).
NO_WORKER_RESTART_VARIABLES = ("BENTOML_CONTAINERIZED", "BENTOCLOUD_DEPLOYMENT_URL")
SERDE_MEDIA_TYPE = "application/vnd.bentoml+pickle"  # the type BentoML's service-to-service client sends


def check_version(installed: str | None = None) -> None:
    """Warn once at start-up when the installed BentoML is not the one this module was written for."""
    installed = installed or bentoml.__version__
    if installed != BENTOML_VERSION:
        logger.warning(
            "BentoML %s is installed; this service was written and tested against %s. "
            "Install bentoml==%s or run tests/unit/test_bentoml_compat.py first",
            installed,
            BENTOML_VERSION,
            BENTOML_VERSION,
        )


# --- the service-to-service serde ---


def install_serde(
    encode: Callable[[Any], tuple[list[Any], str]], decode: Callable[[bytes, str | None], Any], lengths_header: str
) -> type:
    """Make BentoML's service-to-service hop, in this process, use ``encode``/``decode`` in place of pickle.
    Returns the serde class installed (idempotent)."""
    from _bentoml_impl import serde as bentoml_serde

    class ArraySerde(bentoml_serde.GenericSerde, bentoml_serde.Serde):
        media_type = SERDE_MEDIA_TYPE

        def serialize_model(self, model: Any) -> Any:
            return self.serialize_value(model.model_dump())

        def deserialize_model(self, payload: Any, cls: type) -> Any:
            obj = self.deserialize_value(payload)
            return obj if isinstance(obj, cls) else cls.model_validate(obj)  # type: ignore[attr-defined]

        def serialize_value(self, obj: Any) -> Any:
            chunks, lengths = encode(obj)
            return bentoml_serde.Payload(chunks, {lengths_header: lengths})

        def deserialize_value(self, payload: Any) -> Any:
            return decode(b"".join(payload.data), payload.metadata.get(lengths_header))

    bentoml_serde.ALL_SERDE[SERDE_MEDIA_TYPE] = ArraySerde
    return ArraySerde


def installed_serde() -> type:
    """The serde BentoML uses for the service-to-service media type in this process."""
    from _bentoml_impl import serde as bentoml_serde

    return bentoml_serde.ALL_SERDE[SERDE_MEDIA_TYPE]


# --- worker processes ---


def service_name_of(cmdline: list[str]) -> str | None:
    """The BentoML service a worker process serves (its ``--service-name`` argument), if any."""
    if "--service-name" in cmdline[:-1]:
        return cmdline[cmdline.index("--service-name") + 1]
    return None


def worker_service(proc: psutil.Process) -> str | None:
    """The BentoML service that process ``proc`` serves; None for BentoML's process manager (or anything else)."""
    return service_name_of(proc.cmdline())


def service_workers_alive(service_name: str) -> Callable[[], bool]:
    """A check: is a sibling process (same parent: BentoML's process manager) serving ``service_name``?"""

    def alive() -> bool:
        try:
            siblings = psutil.Process(os.getppid()).children()
        except psutil.Error:
            return False
        for proc in siblings:
            try:
                if worker_service(proc) == service_name and proc.status() != psutil.STATUS_ZOMBIE:
                    return True
            except psutil.Error:
                continue
        return False

    return alive


# --- calls to the model runner ---

RunnerFailure = Literal["busy", "failed", "unreachable"]


def runner_failure(exc: BaseException) -> RunnerFailure | None:
    """What a failed call to the model runner means: "busy" (BentoML's batcher could not fit it in its latency
    budget: its error code 503), "failed" (another BentoML error), "unreachable" (the connection to the runner
    failed), or None (not the runner's failure: a bug of ours)."""
    import aiohttp
    import httpx
    from bentoml.exceptions import BentoMLException

    if isinstance(exc, BentoMLException):
        return "busy" if getattr(exc, "error_code", None) == 503 else "failed"
    if isinstance(exc, aiohttp.ClientError | httpx.HTTPError | OSError | asyncio.TimeoutError):
        return "unreachable"
    return None


async def runner_ready(runner: Any, timeout_s: int = 5) -> bool:
    """Whether the model runner (the front's ``bentoml.depends`` proxy) answers its readiness probe."""
    try:
        return bool(await runner.is_ready(timeout=timeout_s))
    except Exception as exc:  # noqa: BLE001 - the runner's failures mean "not ready"; anything else is re-raised
        if runner_failure(exc) is None:
            raise
        return False


# --- the OpenAPI document ---


class DescribedService(bentoml.Service):
    """A BentoML service whose OpenAPI document carries this project's title, version and description."""

    openapi_title: str = "Image classifier"
    openapi_description: str = ""

    @property
    def openapi_spec(self) -> Any:
        spec = super().openapi_spec
        info = attr.evolve(
            spec.info, title=self.openapi_title, version=__version__, description=self.openapi_description, contact=None
        )
        return attr.evolve(spec, info=info)


def described_service(title: str, description: str) -> type[DescribedService]:
    """A ``service_class`` for ``bentoml.service`` that writes ``title`` and ``description`` into /docs.json."""
    return type("Described", (DescribedService,), {"openapi_title": title, "openapi_description": description})


# --- the service instance of FastAPI class views ---


def endpoints_on_the_loop(*apps: Any) -> None:
    """Give the class-view endpoints of these FastAPI apps their service instance without a thread hop.

    BentoML injects ``self`` through ``Depends(get_current_service)``, a plain function; FastAPI runs plain
    dependencies in its thread pool, so every request paid a hand-off to a thread and back (a queue, a wake-up
    and the event loop's self-pipe) to read one global. A coroutine dependency runs on the event loop."""
    from _bentoml_sdk.service import get_current_service

    async def current_service() -> Any:
        return get_current_service()

    # With any override set, FastAPI re-derives each overridden dependency's own parameters per request: cheap for
    # this one (it has none), so keep dependencies with parameters off these apps or give them no override.
    for app in apps:
        app.dependency_overrides[get_current_service] = current_service


# --- the middlewares of each service's app ---

UNMATCHED_ROUTE = "other"  # the request metrics' endpoint label for a path no route matches
_ORIGINAL_PATH = "transfer_serve.path"  # where the request's own path rides past the metrics middleware


def adapt_middlewares() -> None:
    """Build services' apps without OpenTelemetry's ASGI middleware unless BentoML's ``tracing.exporter_type`` is
    set, and with request metrics labelled by route template (decided when each app is built, at a worker's
    start; idempotent).

    Without an exporter every span goes nowhere, yet the middleware still builds one per request with its
    attributes (about 0.5 ms of CPU per request on the front, a tenth of its share on a 2-core Xeon). Configure
    an exporter (BentoML's ``tracing`` settings) and requests are traced as before."""
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from starlette.middleware import Middleware

    factory = _app_factory()
    built = factory.__dict__.get("middlewares")
    if not isinstance(built, property) or built.fget is None:  # another BentoML: keep its middlewares as they are
        logger.warning(
            "BentoML's ServiceAppFactory.middlewares is not a property here: requests stay traced and their "
            "metrics stay labelled by path"
        )
        return
    if getattr(built.fget, "adapted", False):
        return
    original = built.fget
    by_route = _metrics_by_route(RunnerTrafficMetricsMiddleware)

    def middlewares(self: Any) -> list[Any]:
        found = [
            Middleware(by_route, *m.args, **m.kwargs) if m.cls is RunnerTrafficMetricsMiddleware else m
            for m in original(self)
        ]
        if getattr(self, "enable_metrics", False) and not any(m.cls is by_route for m in found):
            logger.warning("BentoML's request-metrics middleware was not found: its metrics stay labelled by path")
        if BentoMLContainer.tracing.exporter_type.get() is not None:
            return found
        return [m for m in found if m.cls is not OpenTelemetryMiddleware]

    middlewares.adapted = True  # type: ignore[attr-defined]
    factory.middlewares = property(middlewares)


def route_templates(routes: list[Any], prefix: str = "") -> list[tuple[re.Pattern[str], str]]:
    """(regex, template) of every route in Starlette's ``routes``, mounts and FastAPI's included routers followed,
    e.g. ``/v2/models/{name}/infer``; a mount of files (no routes) is its prefix and everything below it."""
    from starlette.routing import Mount, compile_path

    found: list[tuple[re.Pattern[str], str]] = []
    for route in routes:
        path = prefix + (getattr(route, "path", None) or "")
        if isinstance(route, Mount) and route.routes:
            found += route_templates(route.routes, path)
        elif isinstance(route, Mount):
            found.append((re.compile(re.escape(path) + "(/.*)?$"), path))
        elif (router := getattr(route, "original_router", None)) is not None:  # FastAPI 0.16x's include_router
            found += route_templates(router.routes, prefix + getattr(route.include_context, "prefix", ""))
        elif path:
            found.append((compile_path(path)[0], path))
    return found


def route_label(templates: list[tuple[re.Pattern[str], str]], path: str) -> str:
    """The template of the first of ``templates`` (route_templates') that ``path`` matches; else UNMATCHED_ROUTE."""
    return next((template for regex, template in templates if regex.match(path)), UNMATCHED_ROUTE)


def _metrics_by_route(metrics: Any) -> Any:
    """BentoML's request-metrics middleware ``metrics``, labelling each request by its route's template: the path
    it sees is the template, and the app behind it gets the request's own path back."""

    class MetricsByRoute(metrics):
        def __init__(self, app: Any, *args: Any, **options: Any) -> None:
            async def with_own_path(scope: dict, receive: Any, send: Any) -> None:
                if _ORIGINAL_PATH in scope:
                    scope = {**scope, "path": scope[_ORIGINAL_PATH]}
                await app(scope, receive, send)

            super().__init__(with_own_path, *args, **options)
            self._labels: dict[str, str] = {}
            self._templates: list[tuple[re.Pattern[str], str]] | None = None

        async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
            if scope["type"] == "http" and "app" in scope:
                label = self._label(scope["app"].routes, scope["path"])
                if label != scope["path"]:
                    scope = {**scope, "path": label, _ORIGINAL_PATH: scope["path"]}
            await super().__call__(scope, receive, send)

        def _label(self, routes: list[Any], path: str) -> str:
            if (label := self._labels.get(path)) is None:
                if self._templates is None:  # the app's routes are all there by its first request
                    self._templates = route_templates(routes)
                label = route_label(self._templates, path)
                if label != UNMATCHED_ROUTE and len(self._labels) < 1024:  # the app's paths, not a scanner's
                    self._labels[path] = label
            return label

    return MetricsByRoute


def _app_factory() -> Any:
    """BentoML's class that builds each service's ASGI app, with its middlewares."""
    from _bentoml_impl.server.app import ServiceAppFactory

    return ServiceAppFactory
