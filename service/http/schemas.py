"""Request-independent response schemas; they appear in the OpenAPI documents (/docs.json, /v1/openapi.json)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from classifier.contract import ModelContract
from classifier.engines import ENGINES

UnknownPolicy = Literal["flag", "abstain", "off"]  # CLASSIFIER_UNKNOWN: what an image beyond the OOD threshold gets


class ClassScore(BaseModel):
    label: str = Field(description="class name, as the model was trained on it")
    probability: float = Field(
        ge=0.0, le=1.0, description="calibrated probability (temperature scaling fitted at training time)"
    )


class Prediction(BaseModel):
    """The result for one image."""

    label: str = Field(
        description='the most probable class; "unknown" when CLASSIFIER_UNKNOWN=abstain and the image is not known'
    )
    probability: float = Field(ge=0.0, le=1.0, description="the most probable class's calibrated probability")
    top_k: list[ClassScore] = Field(description="the k most probable classes, most probable first")
    ood_score: float | None = Field(
        None,
        ge=0.0,
        description="out-of-distribution score: squared Mahalanobis distance of the image's features to the nearest "
        "class, per dimension (about 1 for a typical training image, larger for images unlike every class); "
        "null for a model saved before OOD detection",
    )
    known: bool | None = Field(
        None,
        description="whether ood_score is within the model's threshold (GET /v1/model shows it): false means "
        "the image looks like none of the classes; null with CLASSIFIER_UNKNOWN=off or a model without an "
        "OOD score",
    )
    filename: str | None = Field(None, description="the uploaded file's name, when it had one")


class PredictResponse(Prediction):
    model: str = Field(description="tag of the model that answered (name:version)")


class BatchPredictResponse(BaseModel):
    model: str = Field(description="tag of the model that answered (name:version)")
    results: list[Prediction] = Field(description="one result per image, in the order they were sent")


class ErrorDetail(BaseModel):
    reason: str = Field(description="stable machine-readable code, e.g. not_an_image, too_many_pixels")
    message: str = Field(description="what was wrong, in words")
    file: str | None = Field(None, description="the file it concerns, in a multi-image request")
    index: int | None = Field(None, description="that file's position (0-based) in a multi-image request")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Limits(BaseModel):
    max_body_bytes: int
    max_pixels: int
    max_images: int


class Batching(BaseModel):
    max_batch_size: int
    max_latency_ms: int


class ModelInfo(BaseModel):
    tag: str = Field(description="the served model, name:version")
    class_names: list[str]
    backbone: str
    contract: ModelContract = Field(description="preprocessing and architecture the model was trained with")
    device: str = Field(description="where inference runs: cpu or cuda")
    engine: str = Field(
        description="inference engine, one of the registry's: "
        + "; ".join(f"{name} ({spec.summary})" for name, spec in ENGINES.items())
    )
    training_metrics: dict[str, Any] = Field(description="test-split metrics recorded at training time")
    ood: dict[str, Any] = Field(
        default_factory=dict,
        description="out-of-distribution detection measured at training time: the threshold, the share of the "
        "validation and test splits flagged, and with --ood-data the AUROC and share of those images flagged "
        "(empty for models saved before it)",
    )
    unknown: UnknownPolicy = Field(description="CLASSIFIER_UNKNOWN: what an unknown image gets")
    calibration: dict[str, Any] = Field(
        default_factory=dict,
        description="temperature scaling fitted at training time: the temperature, what it was fitted on, and the "
        "test split's expected calibration error and NLL before and after (empty for models saved before it)",
    )
    batching: Batching
    limits: Limits
