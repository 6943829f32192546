import pytest
from pydantic import SecretStr

from service.http.auth import check_api_key, presented_key
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
