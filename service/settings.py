"""The service's settings: environment variables, read and validated once at start-up.

Every variable is prefixed ``CLASSIFIER_``; e.g. ``CLASSIFIER_MODEL_TAG=transfer-classifier:abc123``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from service.contract import DEFAULT_MODEL_NAME
from service.imaging import DEFAULT_MAX_PIXELS

ENV_PREFIX = "CLASSIFIER_"


class SettingsError(ValueError):
    """An environment variable holds a value the service cannot use."""


class ServiceSettings(BaseModel):
    """What an operator can configure; field names are the variables without the prefix."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    model_tag: str = Field(f"{DEFAULT_MODEL_NAME}:latest", description="BentoML model to serve (name or name:version)")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto (CUDA when present), cpu, cuda, cuda:N")
    engine: str = Field("auto", pattern=r"^(auto|torch|onnx|onnx-int8)$",
                        description="auto (ONNX Runtime fp32 on CPU when the model has it, else torch), torch, onnx, onnx-int8")
    compile: bool = Field(False, description="GPU: torch.compile the model for fixed batch sizes (slower start-up)")
    jpeg_decode: str = Field("auto", pattern=r"^(auto|front|engine)$",
                             description="where plain JPEGs are decoded: auto (batched on the GPU when the model runs "
                                         "there with torch, else in the front), front, engine")
    max_batch_size: int = Field(16, ge=1, le=512, description="largest batch the model service runs")
    max_latency_ms: int = Field(10_000, ge=10, le=600_000, description="adaptive batching's latency budget")
    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="largest request body accepted (413 above)")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="largest image (width x height) decoded")
    max_images: int = Field(32, ge=1, le=1024, description="most images in one multi-image request")
    model_workers: int = Field(1, ge=1, le=64, description="model runner processes; each gets its share of the cores")
    inference_threads: int = Field(0, ge=0, description="CPU inference threads per model worker; 0: the worker's share of the cores")
    api_key: SecretStr | None = Field(None, min_length=16, description="when set, the /v1 endpoints require this key "
                                      "(Authorization: Bearer or X-API-Key); health and metrics stay open")
    decode_concurrency: int = Field(0, ge=0, description="images decoded at once per front worker; 0: CPU cores")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServiceSettings:
        """Read ``CLASSIFIER_*`` variables; raises SettingsError with one line naming the variable."""
        environ = os.environ if environ is None else environ
        values = {
            name: environ[ENV_PREFIX + name.upper()]
            for name in cls.model_fields
            if ENV_PREFIX + name.upper() in environ
        }
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            first = exc.errors()[0]
            var = ENV_PREFIX + str(first["loc"][0]).upper() if first["loc"] else ENV_PREFIX
            shown = "(hidden)" if var == ENV_PREFIX + "API_KEY" else repr(values.get(str(first["loc"][0]), ""))
            raise SettingsError(f"{var}={shown}: {first['msg']}") from None
