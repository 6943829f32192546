"""The API key: where a request may carry it, how it is compared, and that routes check it before anything else."""

import pytest
from fastapi import FastAPI, Query
from fastapi.testclient import TestClient
from pydantic import SecretStr

from service.http.app import error_body, handle_errors
from service.http.auth import API_KEY, check_api_key, presented_key
from service.http.errors import ApiError

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


def _app(**state) -> FastAPI:
    app = FastAPI(dependencies=[API_KEY])
    handle_errors(app, error_body)
    for name, value in state.items():
        setattr(app.state, name, value)

    @app.post("/predict")
    async def predict(top_k: int | None = Query(None, ge=1)) -> dict:
        return {"top_k": top_k}

    return app


def test_the_key_is_checked_before_the_query_parameters():
    client = TestClient(_app(api_key=KEY))
    refused = client.post("/predict?top_k=0")
    assert refused.status_code == 401 and refused.json()["error"]["reason"] == "unauthorized"
    keyed = client.post("/predict?top_k=0", headers={"x-api-key": KEY.get_secret_value()})
    assert keyed.status_code == 400 and keyed.json()["error"]["reason"] == "bad_parameter"
    assert TestClient(_app(api_key=None)).post("/predict?top_k=2").json() == {"top_k": 2}


def test_an_app_never_given_the_setting_refuses_rather_than_opening():
    answer = TestClient(_app(), raise_server_exceptions=False).post("/predict")
    assert answer.status_code == 500 and answer.json()["error"]["reason"] == "internal_error"
