"""The service's response schemas (visible in the OpenAPI page)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ClassScore(BaseModel):
    label: str = Field(description="class name, as the model was trained on it")
    probability: float = Field(ge=0.0, le=1.0, description="softmax probability")


class Prediction(BaseModel):
    model: str = Field(description="tag of the model that answered, name:version")
    top_k: list[ClassScore] = Field(description="most probable classes first")
