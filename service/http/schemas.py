"""Request-independent response schemas; they appear in the OpenAPI documents (/docs.json, /v1/openapi.json)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

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


_REQUEST_ID = (
    "this request's id (the X-Request-ID header sent, else a new one; also in the response's X-Request-ID "
    "header): POST /v1/feedback takes it with the true label"
)


class PredictResponse(Prediction):
    model: str = Field(description="tag of the model that answered (name:version)")
    request_id: str = Field(description=_REQUEST_ID)


class BatchPredictResponse(BaseModel):
    model: str = Field(description="tag of the model that answered (name:version)")
    request_id: str = Field(description=_REQUEST_ID + " and the image's index")
    results: list[Prediction] = Field(description="one result per image, in the order they were sent")


class ExplainResponse(Prediction):
    """The prediction for one image, and a Grad-CAM heatmap of what made the model answer ``target``."""

    model: str = Field(description="tag of the model that answered (name:version)")
    request_id: str = Field(description=_REQUEST_ID)
    target: str = Field(description="the class explained: the most probable one unless ?target= asked for another")
    heatmap: list[list[float]] = Field(
        description="Grad-CAM over the center crop the model saw, rows top to bottom, in [0, 1] (1: what counted "
        "most for target); the last convolutional block's grid, 7 x 7 for ResNet50 at 224 px"
    )
    width: int = Field(description="the overlay's width: the photo's, upright")
    height: int = Field(description="the overlay's height")
    overlay_png: str = Field(
        description="base64 PNG: the photo with the heatmap laid over the crop the model saw (the rest dimmed); "
        "send Accept: image/png to get it as the body instead"
    )


class FeedbackRequest(BaseModel):
    """The true label of an image the service answered, by the answer's request id."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=128, description="the request_id of the answer")
    index: int = Field(0, ge=0, description="the image's position in a /v1/predict/batch request (0 otherwise)")
    label: str = Field(description="the true class, one of the model's class names")


class FeedbackResponse(BaseModel):
    label: str = Field(description="the true class received")
    request_id: str | None = Field(None, description="the answer it is about (feedback by request id)")
    index: int | None = Field(None, description="the image's position in that request")
    answered: str | None = Field(None, description="the label the service answered")
    correct: bool | None = Field(None, description="whether that answer was right (counted in the live accuracy)")
    stored: str | None = Field(
        None,
        description="where the image was kept in the feedback folder (class/file, for retraining); null when no "
        "image was kept (no CLASSIFIER_FEEDBACK_DIR, or the image had left the recent-request memory)",
    )


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


class EngineCandidate(BaseModel):
    name: str
    agreement: float | None = Field(description="top-1 agreement with PyTorch fp32 on the model's reference sample")
    expected_agreement: float | None = Field(
        None,
        description="top-1 agreement to expect: each sample image's shift of fp32's margin applied to every sample "
        "image's margin (the near-ties a few dozen images seldom show)",
    )
    probability_diff: float | None = Field(description="mean over the sample of the largest probability difference")
    known_agreement: float | None = Field(
        None, description="agreement of the known/unknown flag with PyTorch fp32's (models with an OOD score)"
    )
    expected_known_agreement: float | None = Field(
        None, description="the known/unknown flag's agreement to expect, as expected_agreement's, from the OOD scores"
    )
    images_per_s: float | None = Field(description="at the served batch size on this host (eligible engines only)")
    eligible: bool
    error: str | None = Field(None, description="why it could not be measured")


class EngineChoiceInfo(BaseModel):
    chosen: str
    cached: bool = Field(description="read from the cache of an earlier start on this host, not measured now")
    host: str = Field(description="what the measurement depends on: CPU and its flags, threads, batch size, packages")
    candidates: list[EngineCandidate]


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
    engine_choice: EngineChoiceInfo | None = Field(
        None, description="how CLASSIFIER_ENGINE=auto chose the engine on this host (null: set, or not measured)"
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
