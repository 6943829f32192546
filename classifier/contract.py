"""The model contract: the one description training and serving must agree on.

Training writes it into the saved model's metadata; the service reads it back and derives
its whole preprocessing and response vocabulary from it, so the two can never drift apart.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

CONTRACT_VERSION = 1
METADATA_KEY = "contract"
DEFAULT_MODEL_NAME = "transfer-classifier"  # what training saves and the service serves by default


_PREPROCESSING: dict[str, Any] = {"preprocessing": True}
_NOT_PREPROCESSING: dict[str, Any] = {"preprocessing": False}


class ContractError(ValueError):
    """A saved model's metadata does not hold a valid contract."""


class OodContract(BaseModel):
    """The out-of-distribution score the serving graph computes beside the probabilities, and where "unknown"
    starts. The score is the squared Mahalanobis distance of the pooled features to the nearest class mean
    (shared covariance, fitted on the training features), divided by ``dims``: about 1 for a typical training
    image, larger for images unlike any class."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: Literal["mahalanobis"] = "mahalanobis"
    dims: int = Field(ge=1, description="width of the whitened feature space the distance is taken in")
    threshold: float = Field(gt=0.0, description="scores above this are answered as unknown")
    accept_rate: float = Field(
        gt=0.0, le=1.0, description="share of the validation split at or below the threshold (how it was chosen)"
    )
    score_scales: dict[str, float] = Field(
        default_factory=dict,
        description="per engine whose scores run on another scale than PyTorch's in float32 (INT8's quantized "
        "features score higher; 'torch:bfloat16' and 'torch:float16' are the torch engine on a GPU): the factor "
        "that maps them onto it, measured on the validation split; absent engines use 1",
    )

    def scale_for(self, engine: str) -> float:
        return self.score_scales.get(engine, 1.0)


class ModelContract(BaseModel):
    """Everything needed to rebuild the network and feed it exactly as in training.

    Preprocessing: decode to RGB, resize the shorter side to ``resize_size`` with
    ``interpolation`` (antialiased), center-crop to ``image_size`` squared, scale to [0, 1],
    then normalise with ``mean`` / ``std`` per channel.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Every field says whether it shapes the pixels the network sees (PREPROCESSING): training's feature
    # cache is keyed by exactly those, so a new preprocessing field can never reuse stale features.
    contract_version: int = Field(CONTRACT_VERSION, json_schema_extra=_NOT_PREPROCESSING)
    class_names: tuple[str, ...] = Field(min_length=2, json_schema_extra=_NOT_PREPROCESSING)
    backbone: str = Field(json_schema_extra=_NOT_PREPROCESSING)
    weights: str = Field(
        description="Weights the backbone started from, e.g. ResNet50_Weights.IMAGENET1K_V2",
        json_schema_extra=_NOT_PREPROCESSING,
    )
    image_size: int = Field(ge=32, le=1024, json_schema_extra=_PREPROCESSING)
    resize_size: int = Field(ge=32, le=2048, json_schema_extra=_PREPROCESSING)
    interpolation: Literal["bilinear", "bicubic"] = Field("bilinear", json_schema_extra=_PREPROCESSING)
    mean: tuple[float, float, float] = Field(json_schema_extra=_PREPROCESSING)
    std: tuple[float, float, float] = Field(json_schema_extra=_PREPROCESSING)
    dropout: float = Field(ge=0.0, lt=1.0, json_schema_extra=_NOT_PREPROCESSING)
    temperature: float = Field(
        1.0,
        gt=0.0,
        description="Calibration: probabilities are softmax(logits / temperature), fitted on the validation split "
        "(1.0: uncalibrated, as in models saved before calibration)",
        json_schema_extra=_NOT_PREPROCESSING,
    )
    ood: OodContract | None = Field(
        None,
        description="the out-of-distribution score, the graph's last output column (None: a model saved before "
        "OOD detection, whose graph outputs probabilities only)",
        json_schema_extra=_NOT_PREPROCESSING,
    )

    @model_validator(mode="after")
    def _check(self) -> ModelContract:
        if self.contract_version != CONTRACT_VERSION:
            raise ValueError(
                f"contract version {self.contract_version} is not supported (this code reads "
                f"version {CONTRACT_VERSION}); retrain the model with this version of the project"
            )
        if self.resize_size < self.image_size:
            raise ValueError(f"resize_size {self.resize_size} is smaller than image_size {self.image_size}")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
        if len(set(self.class_names)) != len(self.class_names) or not all(self.class_names):
            raise ValueError("class names must be unique and non-empty")
        return self

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def output_width(self) -> int:
        """Columns of the serving graph's output: the class probabilities, then the OOD score if the model has one."""
        return self.num_classes + (1 if self.ood else 0)

    @classmethod
    def preprocessing_fields(cls) -> tuple[str, ...]:
        """The fields that shape the pixels the network sees (each field declares whether it does)."""
        return tuple(
            name
            for name, field in cls.model_fields.items()
            if isinstance(field.json_schema_extra, dict) and field.json_schema_extra["preprocessing"]
        )

    def preprocessing(self) -> dict[str, Any]:
        """The preprocessing fields and their values, JSON-safe (e.g. for a cache key)."""
        return self.model_dump(mode="json", include=set(self.preprocessing_fields()))

    def to_metadata(self) -> dict[str, Any]:
        """JSON-safe form for the BentoML model's metadata."""
        return self.model_dump(mode="json")

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> ModelContract:
        """Read the contract back from a saved model's metadata; raises ContractError."""
        raw = metadata.get(METADATA_KEY)
        if not isinstance(raw, dict):
            raise ContractError(
                f"the model's metadata has no '{METADATA_KEY}' entry: it was not saved by "
                "`python -m training`; retrain it with this project"
            )
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise ContractError(f"the model's contract is invalid: {exc}") from exc
