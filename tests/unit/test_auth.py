"""The API key: where a request may carry it, how it is compared, and that routes check it before anything else."""

import pytest
from fastapi import FastAPI, Query
from fastapi.testclient import TestClient
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.routing import Mount

from service.http.app import api, error_body, handle_errors
from service.http.auth import RequireApiKey, check_api_key, presented_key
from service.http.errors import ApiError
from service.http.oip_app import open_without_key

KEY = SecretStr("s3cret-key-0123456789")


@pytest.mark.parametrize(
    "headers, key",
    [
        ({"authorization": "Bearer abc"}, "abc"),
        ({"authorization": "bearer  abc "}, "abc"),
        ({"x-api-key": "abc"}, "abc"),
        ({"authorization": "Basic abc"}, None),
        ({"authorization": "Bearer "}, None),
        ({}, None),
    ],
)
def test_presented_key(headers, key):
    assert presented_key(headers) == key


def test_no_key_configured_lets_everything_through():
    check_api_key(None, {})


def test_the_right_key_passes_either_way():
    check_api_key(KEY, {"authorization": f"Bearer {KEY.get_secret_value()}"})
    check_api_key(KEY, {"x-api-key": KEY.get_secret_value()})


@pytest.mark.parametrize(
    "headers, message",
    [
        ({}, "needs an API key"),
        ({"x-api-key": "wrong"}, "not valid"),
        ({"authorization": "Bearer s3cret-key-012345678"}, "not valid"),
    ],
)
def test_missing_or_wrong_key_is_401(headers, message):
    with pytest.raises(ApiError) as info:
        check_api_key(KEY, headers)
    assert (info.value.status, info.value.reason) == (401, "unauthorized") and message in info.value.message
    assert KEY.get_secret_value() not in info.value.message


def _app(**state) -> Starlette:
    """A FastAPI app guarded as /v1 is (``/open`` left open), mounted at /v1 as BentoML mounts it."""
    app = FastAPI()
    handle_errors(app, error_body, open_without_key=lambda path: path == "/open")
    for name, value in state.items():
        setattr(app.state, name, value)

    @app.post("/predict")
    async def predict(top_k: int | None = Query(None, ge=1)) -> dict:
        return {"top_k": top_k}

    @app.get("/open")
    async def open_route() -> dict:
        return {}

    return Starlette(routes=[Mount("/v1", app)])


def test_the_key_is_checked_before_the_route_and_its_query_parameters():
    client = TestClient(_app(api_key=KEY))
    for refused in (client.post("/v1/predict?top_k=0"), client.get("/v1/predict"), client.get("/v1/nope")):
        assert refused.status_code == 401 and refused.json()["error"]["reason"] == "unauthorized"
        assert refused.headers["www-authenticate"].startswith("Bearer") and refused.headers["x-request-id"]
    keyed = client.post("/v1/predict?top_k=0", headers={"x-api-key": KEY.get_secret_value()})
    assert keyed.status_code == 400 and keyed.json()["error"]["reason"] == "bad_parameter"
    assert client.get("/v1/open").status_code == 200  # the path within the app, its mount prefix left out
    assert TestClient(_app(api_key=None)).post("/v1/predict?top_k=2").json() == {"top_k": 2}


def test_an_app_never_given_the_setting_refuses_rather_than_opening():
    answer = TestClient(_app(), raise_server_exceptions=False).post("/v1/predict")
    assert answer.status_code == 500 and answer.json()["error"]["reason"] == "internal_error"


@pytest.mark.parametrize(
    ("path", "is_open"),
    [
        ("/v2", False),
        ("/v2/models/m", False),
        ("/v2/models/m/versions/1", False),
        ("/v2/models/m/infer", False),
        ("/v2/health/live", True),
        ("/v2/health/ready", True),
        ("/v2/models/m/ready", True),
        ("/v2/models/m/versions/1/ready", True),
        ("/v2/models/ready", False),  # metadata of a model named "ready"
        ("/v2/models/m/infer/ready", False),
        ("/v2/health/other", False),
    ],
)
def test_v2_leaves_health_and_readiness_open_only(path, is_open):
    assert open_without_key(path) is is_open


def test_v1_leaves_its_description_open_only():
    for path, is_open in (("/docs", True), ("/openapi.json", True), ("/predict", False), ("/model", False)):
        guard = next(m for m in api.user_middleware if m.cls is RequireApiKey)
        assert guard.kwargs["is_open"](path) is is_open, path
