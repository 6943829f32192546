import pytest

from service.settings import ServiceSettings, SettingsError


def test_defaults_are_explicit():
    s = ServiceSettings.from_env({})
    assert s.model_tag == "transfer-classifier:latest"
    assert (s.max_batch_size, s.max_latency_ms, s.max_images) == (16, 10_000, 32)
    assert s.max_body_bytes == 20 * 1024 * 1024 and s.max_pixels == 40_000_000
    assert (s.engine, s.compile, s.jpeg_decode, s.model_workers) == ("auto", False, "auto", 1)


def test_engine_settings():
    s = ServiceSettings.from_env(
        {
            "CLASSIFIER_ENGINE": "onnx-int8",
            "CLASSIFIER_COMPILE": "true",
            "CLASSIFIER_JPEG_DECODE": "engine",
            "CLASSIFIER_MODEL_WORKERS": "2",
        }
    )
    assert (s.engine, s.compile, s.jpeg_decode, s.model_workers) == ("onnx-int8", True, "engine", 2)


def test_environment_overrides():
    s = ServiceSettings.from_env({"CLASSIFIER_MODEL_TAG": "m:1", "CLASSIFIER_MAX_BATCH_SIZE": "4", "OTHER": "x"})
    assert s.model_tag == "m:1" and s.max_batch_size == 4


@pytest.mark.parametrize(
    "var, value",
    [
        ("CLASSIFIER_MAX_BATCH_SIZE", "abc"),
        ("CLASSIFIER_MAX_BATCH_SIZE", "0"),
        ("CLASSIFIER_DEVICE", "tpu"),
        ("CLASSIFIER_ENGINE", "tensorrt"),
        ("CLASSIFIER_JPEG_DECODE", "gpu"),
        ("CLASSIFIER_MODEL_WORKERS", "0"),
        ("CLASSIFIER_UNKNOWN", "ignore"),
        ("CLASSIFIER_DRIFT_WINDOW", "5"),
    ],
)
def test_bad_values_name_the_variable(var, value):
    with pytest.raises(SettingsError, match=var) as info:
        ServiceSettings.from_env({var: value})
    assert "\n" not in str(info.value)


def test_api_key_is_secret_and_checked_without_echoing_it():
    s = ServiceSettings.from_env({"CLASSIFIER_API_KEY": "k" * 20})
    assert s.api_key.get_secret_value() == "k" * 20 and "k" * 20 not in repr(s)
    with pytest.raises(
        SettingsError, match="CLASSIFIER_API_KEY=\\(hidden\\): should be at least 16 characters long"
    ) as info:
        ServiceSettings.from_env({"CLASSIFIER_API_KEY": "short-key"})
    assert "short-key" not in str(info.value)


def test_admission_capacity_defaults_to_two_batches_and_fits_a_full_request():
    assert ServiceSettings().inflight_capacity == 32  # 2 x 16 x 1 worker, = MAX_IMAGES
    assert (
        ServiceSettings.from_env({"CLASSIFIER_MAX_BATCH_SIZE": "64", "CLASSIFIER_MODEL_WORKERS": "2"}).inflight_capacity
        == 256
    )
    assert ServiceSettings.from_env({"CLASSIFIER_MAX_INFLIGHT_IMAGES": "40"}).inflight_capacity == 40
    with pytest.raises(
        SettingsError, match="CLASSIFIER_MAX_INFLIGHT_IMAGES=8 must be at least CLASSIFIER_MAX_IMAGES=32"
    ):
        ServiceSettings.from_env({"CLASSIFIER_MAX_INFLIGHT_IMAGES": "8"})


@pytest.mark.parametrize(
    "var, value",
    [("CLASSIFIER_MAX_QUEUE", "-1"), ("CLASSIFIER_MAX_QUEUE_WAIT_MS", "0"), ("CLASSIFIER_GRACEFUL_TIMEOUT_S", "0")],
)
def test_admission_and_shutdown_limits_are_checked(var, value):
    with pytest.raises(SettingsError, match=var):
        ServiceSettings.from_env({var: value})
