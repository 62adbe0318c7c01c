"""Service settings from the environment (prefix ``IMGCLF_``), validated once at start-up."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Runtime = Literal["auto", "torch", "torch-bf16", "onnx", "openvino", "openvino-bf16", "openvino-int8", "torch-cuda"]


class Settings(BaseSettings):
    """Every knob of the serving side. ``IMGCLF_MODEL_NAME=fashion-cnn`` and so on."""

    model_config = SettingsConfigDict(env_prefix="IMGCLF_", extra="ignore")

    model_name: str = Field("fashion-cnn", description="Store name of the served model.")
    model_tag: str | None = Field(
        None, description="Pin an exact version (name:version). Default: the registry's champion, else newest."
    )
    runtime: Runtime = Field("auto", description="Inference runtime; auto measures the candidates and picks.")
    max_batch_size: int = Field(32, ge=1, le=1024, description="Most images in one inference batch.")
    max_latency_ms: float = Field(
        1.0, ge=0, le=10_000, description="Longest an image waits for company while the runtime is idle."
    )
    workers: int = Field(1, ge=1, le=64, description="Server worker processes.")
    threads: int | None = Field(None, ge=1, description="Inference threads per worker (default: cores / workers).")
    max_concurrency: int = Field(256, ge=1, description="Requests in flight per worker before 429.")
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1024, description="Largest accepted request body.")
    max_pixels: int = Field(40_000_000, ge=64, description="Largest accepted image (width x height).")
    max_batch_images: int = Field(64, ge=1, le=1024, description="Most images in one classify_batch request.")
    default_top_k: int = Field(5, ge=1)
    low_confidence: float = Field(0.5, gt=0, lt=1, description="Top-1 score below which a prediction is 'low'.")
    agreement_threshold: float = Field(0.995, gt=0, le=1, description="bf16/int8 top-1 agreement needed.")
    agreement_samples: int = Field(1000, ge=10, description="Test images used for the agreement check.")
    access_log: bool = Field(True, description="Log every request (BentoML's access log).")
    cors_origins: list[str] = Field(default_factory=list, description="Allowed CORS origins (none: CORS off).")

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.model_tag and not self.model_tag.startswith(self.model_name + ":"):
            raise ValueError(
                f"IMGCLF_MODEL_TAG={self.model_tag} is not a version of IMGCLF_MODEL_NAME={self.model_name}"
            )
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()
