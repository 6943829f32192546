"""The service's settings: ``CLASSIFIER_*`` environment variables, read and validated once at start-up.

Declared once, with pydantic-settings: each field is the variable without its prefix, e.g.
``CLASSIFIER_MODEL_TAG=transfer-classifier:abc123``; its description is what docs/serving.md shows.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from classifier.cache import default_cache_dir
from classifier.contract import DEFAULT_MODEL_NAME
from classifier.engines import ENGINES
from classifier.imaging import DEFAULT_MAX_PIXELS
from service.http.schemas import UnknownPolicy

ENV_PREFIX = "CLASSIFIER_"
_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("environ", default=None)


class SettingsError(ValueError):
    """An environment variable holds a value the service cannot use."""


class ServiceSettings(BaseSettings):
    """What an operator can configure; field names are the variables without the prefix."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore", protected_namespaces=())

    model_tag: str = Field(
        f"{DEFAULT_MODEL_NAME}:latest",
        description="BentoML model to serve (name or name:version); pinned to the resolved version at start-up",
    )
    device: str = Field(
        "auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description="auto (CUDA when present), cpu, cuda, cuda:N; pinned at start-up",
    )
    engine: str = Field(
        "auto",
        description="auto (on the CPU the fastest engine that reproduces PyTorch fp32 on this host, by measurement: "
        f"docs/serving.md#engines; on a GPU torch), or one of: {', '.join(ENGINES)}; pinned at start-up",
    )
    compile: bool = Field(False, description="GPU: torch.compile the model for fixed batch sizes (slower start-up)")
    jpeg_decode: str = Field(
        "auto",
        pattern=r"^(auto|front|engine)$",
        description="where plain JPEGs are decoded: auto (batched on the GPU when the model runs "
        "there with torch, else in the front), front, engine",
    )
    max_batch_size: int = Field(16, ge=1, le=512, description="largest batch the model service runs")
    max_latency_ms: int = Field(10_000, ge=10, le=600_000, description="adaptive batching's latency budget")
    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="largest request body accepted (413 above)")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="largest image (width x height) decoded")
    max_images: int = Field(32, ge=1, le=1024, description="most images in one multi-image request")
    model_workers: int = Field(1, ge=1, le=64, description="model runner processes; each gets its share of the cores")
    inference_threads: int = Field(
        0, ge=0, description="CPU inference threads per model worker; 0: the worker's share of the cores"
    )
    api_key: SecretStr | None = Field(
        None,
        min_length=16,
        description="when set, /v1 and /v2's metadata and inference require this key "
        "(Authorization: Bearer or X-API-Key); health, readiness, metrics and the API description stay open",
    )
    decode_concurrency: int = Field(0, ge=0, description="images decoded at once per front worker; 0: CPU cores")
    max_inflight_images: int = Field(
        0,
        ge=0,
        description="images in flight past the admission gate per front worker "
        "(decoding, batching, inference); 0: 2 x max_batch_size x model_workers, at "
        "least max_images",
    )
    max_queue: int = Field(64, ge=0, description="requests waiting for admission; more are shed at once with 503")
    max_inflight_body_bytes: int = Field(
        128 * 1024 * 1024,
        ge=1024,
        description="request body bytes held at once per front worker, from before a body is read until its "
        "answer (its Content-Length, or max_body_bytes without one); a request that does not fit is shed at "
        "once with 503",
    )
    body_timeout_s: float = Field(
        10.0,
        gt=0,
        le=110,
        description="seconds a request body may stall, no bytes arriving, before it is answered 408 and the "
        "body budget it held is freed (raise it for clients on slow links)",
    )
    max_queue_wait_ms: int = Field(
        2_000,
        ge=1,
        le=60_000,
        description="longest wait for admission before a 503 (at most 60 s: requests time out after 120 s)",
    )
    unknown: UnknownPolicy = Field(
        "flag",
        description="images whose OOD score is above the model's threshold: flag (label kept, known=false), "
        'abstain (label "unknown", top_k kept) or off (no known flag)',
    )
    drift_window: int = Field(
        1000, ge=10, le=1_000_000, description="answers over which the class-share drift (PSI) is computed"
    )
    explain_queue: int = Field(
        2,
        ge=0,
        le=64,
        description="explain requests waiting behind the one running (one at a time per model worker); more, "
        "or a wait over max_queue_wait_ms, get 503",
    )
    explain_nice: int = Field(
        19,
        ge=0,
        le=19,
        description="niceness of the explain threads: how far Grad-CAM yields the CPU to the engine when both "
        "want it (19: a scheduler weight of 15 against 1024 per engine thread, so explain runs mostly on idle "
        "CPU; 10: 110; 0: equal)",
    )
    explain_max_pixels: int = Field(
        16_000_000, ge=1, description="largest image (width x height) explained: the overlay is the photo's size"
    )
    feedback_dir: Path | None = Field(
        None,
        description="folder where feedback images are written, one sub-folder per class (what "
        "`python -m training --extra-data` reads); unset: feedback is counted but no image is kept",
    )
    feedback_max_images: int = Field(10_000, ge=1, description="most images the feedback folder may hold")
    feedback_max_bytes: int = Field(2 * 1024**3, ge=1024, description="most bytes the feedback folder may hold")
    recent_requests: int = Field(
        1000, ge=0, le=1_000_000, description="latest requests whose answers feedback can refer to by request id"
    )
    recent_bytes: int = Field(
        64 * 1024**2,
        ge=0,
        description="memory for those requests' images (kept only with feedback_dir), so feedback by id needs no "
        "re-upload; the oldest are dropped first",
    )
    cache_dir: Path | None = Field(
        None,
        description="where the engine choice (per model and host) and compiled engines are kept, so a restart "
        "neither measures nor compiles again; unset: $TRANSFER_SERVE_CACHE, else $XDG_CACHE_HOME/transfer-serve, else "
        "~/.cache/transfer-serve",
    )
    malloc_trim_s: float = Field(
        60,
        ge=0,
        le=3600,
        description="every so many seconds each worker gives the memory glibc's malloc holds free back to the "
        "system (malloc_trim), so RSS follows use, and the manager does once after checking the engine's file at "
        "start; 0: never",
    )
    graceful_timeout_s: float = Field(
        60,
        gt=0,
        le=3600,
        description="on SIGTERM, the longest wait for in-flight requests to finish before the workers exit",
    )

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, value: str) -> str:
        if value != "auto" and value not in ENGINES:
            raise ValueError(f"choose auto or one of: {', '.join(ENGINES)}")
        return value

    @model_validator(mode="after")
    def _limits_fit_together(self) -> ServiceSettings:
        if self.max_inflight_images and self.max_inflight_images < self.max_images:
            raise ValueError(
                f"{ENV_PREFIX}MAX_INFLIGHT_IMAGES={self.max_inflight_images} must be at least "
                f"{ENV_PREFIX}MAX_IMAGES={self.max_images}, or a full request could never be admitted"
            )
        if self.graceful_timeout_s * 1000 <= self.max_queue_wait_ms:
            raise ValueError(
                f"{ENV_PREFIX}GRACEFUL_TIMEOUT_S={self.graceful_timeout_s:g} must be longer than "
                f"{ENV_PREFIX}MAX_QUEUE_WAIT_MS={self.max_queue_wait_ms}, or requests queued at SIGTERM "
                "would be cut off"
            )
        return self

    @property
    def cache_folder(self) -> Path:
        """CLASSIFIER_CACHE_DIR, or the project's cache folder (classifier.cache)."""
        return self.cache_dir or default_cache_dir()

    @property
    def inflight_capacity(self) -> int:
        """Images admitted at once per front worker (see max_inflight_images)."""
        auto = max(2 * self.max_batch_size * self.model_workers, self.max_images)
        return self.max_inflight_images or auto

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only the environment (no .env file, no secrets folder), or the mapping given to from_env."""
        environ = _ENVIRON.get()
        if environ is not None:  # from_env(mapping): read that mapping instead of the process environment
            env_settings.env_vars = {k.lower(): v for k, v in environ.items()}  # type: ignore[attr-defined]
        return init_settings, env_settings

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServiceSettings:
        """Read ``CLASSIFIER_*`` variables (of ``environ``, else the process's); raises SettingsError with one
        line naming the variable."""
        token = _ENVIRON.set(environ)
        try:
            return cls()
        except ValidationError as exc:
            first = exc.errors()[0]
            if not first["loc"]:  # a check across variables: the message names them
                raise SettingsError(first["msg"].removeprefix("Value error, ")) from None
            var = ENV_PREFIX + str(first["loc"][0]).upper()
            shown = "(hidden)" if var == ENV_PREFIX + "API_KEY" else repr(first.get("input", ""))
            message = first["msg"].removeprefix("Value error, ")
            if first["type"] == "too_short":  # pydantic counts "items", even of a string
                message = f"should be at least {first['ctx']['min_length']} characters long"
            raise SettingsError(f"{var}={shown}: {message}") from None
        finally:
            _ENVIRON.reset(token)
