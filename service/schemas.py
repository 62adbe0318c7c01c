"""Request and response schemas, named by role."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Prediction(BaseModel):
    label: str
    index: int = Field(..., ge=0)
    score: float = Field(..., ge=0, le=1)


class ClassifyResponse(BaseModel):
    model: str = Field(..., description="Tag of the model that answered (name:version).")
    predictions: list[Prediction] = Field(..., description="Top-k classes, highest score first.")


class BatchItem(BaseModel):
    index: int = Field(..., description="Position of the image in the request.")
    predictions: list[Prediction] | None = None
    error: str | None = Field(None, description="Why this image could not be classified.")


class ClassifyBatchResponse(BaseModel):
    model: str
    results: list[BatchItem]


class ClassifyJSONRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    images: list[str] = Field(..., min_length=1, description="Base64-encoded image files (JPEG, PNG, ...).")
    top_k: int | None = Field(None, ge=1, le=1000, description="How many classes to return (default 5).")


class ModelInfo(BaseModel):
    tag: str
    architecture: str
    classes: list[str]
    preprocessing: dict[str, Any]
    metrics: dict[str, Any]
    created: str
    runtime: dict[str, Any] = Field(..., description="Runtime in use, with its measured agreement with fp32.")


class ErrorResponse(BaseModel):
    error: str = Field(..., description="What was wrong and what is accepted.")
    reason: str = Field(..., description="A short machine-readable code.")
