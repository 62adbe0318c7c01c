"""Service settings from the environment (prefix ``IMGCLF_``), validated once at start-up."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.inference.capacity import Capacity, plan, usable_cores
from service.inference.options import InferenceOptions
from service.retraining.records import RetrainPolicies, RolloutPlan
from training._env import REPO_ROOT

Runtime = Literal[
    "auto", "torch", "torch-bf16", "onnx", "openvino", "openvino-bf16", "openvino-int8",
    "torch-cuda", "torch-cuda-fp16", "torch-cuda-bf16",
]  # fmt: skip


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
    workers: int | None = Field(
        None, ge=1, le=64, description="Server worker processes (default: one a core the server may use, at most 8)."
    )
    threads: int | None = Field(None, ge=1, description="Inference threads per worker (default: cores / workers).")
    max_concurrency: int = Field(256, ge=1, description="Requests in flight per worker before 429.")
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1024, description="Largest accepted image file.")
    max_request_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="Largest body of a request carrying several images (batch, JSON, /v2)."
    )
    body_timeout_seconds: float = Field(
        30.0, gt=0, le=3600, description="A request body must arrive within this time of its headers (else 408)."
    )
    header_timeout_seconds: float = Field(
        10.0, gt=0, le=600, description="A request's headers must arrive within this time (else 408)."
    )
    max_header_bytes: int = Field(64 * 1024, ge=1024, le=16 * 1024 * 1024, description="Largest request head (431).")
    max_connections: int = Field(
        512, ge=8, description="Open HTTP connections per worker; past it the slowest waiting one is shed."
    )
    max_pixels: int = Field(40_000_000, ge=64, description="Largest accepted image (width x height).")
    max_batch_images: int = Field(64, ge=1, le=1024, description="Most images in one classify_batch request.")
    default_top_k: int = Field(5, ge=1)
    low_confidence: float = Field(0.5, gt=0, lt=1, description="Top-1 score below which a prediction is 'low'.")
    abstain_below: float | None = Field(
        None, gt=0, lt=1, description="Answer with abstained=true when the (calibrated) top score is below this."
    )
    drift_sample: float = Field(
        0.5, ge=0, le=1, description="Share of served images the drift monitor samples into its window (0: off)."
    )
    agreement_threshold: float = Field(0.995, gt=0, le=1, description="bf16/int8 top-1 agreement needed.")
    agreement_samples: int = Field(1000, ge=10, description="Test images used for the agreement check.")
    agreement_images: Path | None = Field(None, description="A folder of representative images (unlabelled) for "
                                          "checking bf16/int8 against fp32 and calibrating int8, for a model with "
                                          "no recorded split and no sample images of its own.")  # fmt: skip
    access_log: bool = Field(
        False, description="Log every request (BentoML's access log): a line per request written from the event "
        "loop, ~10% of a worker's Python time at concurrency 32 with the 28-px model, and a slow log reader stalls "
        "the worker; requests are counted in the metrics either way.",
    )  # fmt: skip
    trace_requests: bool = Field(
        False, description="OpenTelemetry spans for HTTP requests (BentoML's tracing settings say where they go); "
        "off, no span is made: a span cost ~14% of a worker's Python time per request at concurrency 32.",
    )  # fmt: skip
    cors_origins: list[str] = Field(default_factory=list, description="Allowed CORS origins (none: CORS off).")
    reuse_port: bool = Field(
        True, description="Each HTTP worker listens on its own SO_REUSEPORT socket, so the kernel spreads "
        "connections evenly between workers (off: every worker accepts from BentoML's one shared socket).",
    )  # fmt: skip
    grpc_port: int = Field(8001, ge=0, le=65535, description="gRPC (Open Inference Protocol) port; 0: off.")
    grpc_host: str = Field("0.0.0.0", description="gRPC bind address.")
    grpc_max_message_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="Largest gRPC/v2 message.")

    # ---- registry and retraining
    database_url: str | None = Field(
        None, validation_alias=AliasChoices("IMGCLF_DATABASE_URL", "DATABASE_URL"),
        description="Registry database (postgresql://...). Default: SQLite in the model store folder.",
    )  # fmt: skip
    database_timeout_seconds: float = Field(5.0, gt=0, le=120, description="Wait for a lock or connection.")
    admin_token: SecretStr | None = Field(None, description="Bearer token for the admin endpoints.")
    admin_token_file: Path | None = Field(None, description="File holding the admin token (a mounted Secret).")
    dev_mode: bool = Field(False, description="Admin endpoints open without a token (local development only).")
    registry_poll_seconds: float = Field(5.0, ge=0.2, le=3600, description="How often workers check the champion.")
    retrain_backend: Literal["local", "kubernetes"] = Field("local", description="Where training jobs run.")
    retrain_threads: int = Field(1, ge=1, description="torch threads of a local training job (serving keeps the rest).")
    retrain_nice: int = Field(10, ge=0, le=19, description="Scheduling niceness of a local training job.")
    job_stale_seconds: float = Field(1800, ge=10, description="A job silent this long on another host is failed.")
    jobs_dir: Path = Field(REPO_ROOT / "runs" / "jobs", description="Job logs, checkpoints and reports.")
    data_roots: list[Path] = Field(
        default_factory=lambda: [REPO_ROOT / "data"],
        description="Folders that retrain requests may read datasets from (plus the feedback folder).",
    )
    feedback_dir: Path = Field(REPO_ROOT / "data" / "feedback", description="Where feedback images are kept.")
    evaluation_share: float = Field(0.2, ge=0, lt=1, description="Share of feedback images (by content hash) kept "
                                    "out of training: the rolling evaluation set both sides of the gate are "
                                    "judged on.")  # fmt: skip
    evaluation_max_images: int = Field(5000, ge=1, description="The evaluation set keeps the newest this many.")
    feedback_new_labels: bool = Field(False, description="Accept feedback labels the model does not know.")
    label_audit: Literal["off", "report", "exclude"] = Field(
        "report", description="Before a retrain, audit its training labels with the champion (confident learning): "
        "list the suspects in the job's report, or also keep them out of training.",
    )  # fmt: skip
    retrain_policies: RetrainPolicies = Field(
        default_factory=RetrainPolicies,
        description="When to retrain without a person, as JSON, e.g. '{\"drift_minutes\": 30}' (all off by "
        "default; PUT /policies overrides them at run time for every worker).",
    )  # fmt: skip
    capture: list[Literal["disagreement", "low_confidence", "near_tie", "drift", "random"]] = Field(
        default_factory=list, description="Keep live images worth labelling, for these reasons (none: off), e.g. "
        "'[\"low_confidence\", \"near_tie\", \"drift\"]'; only the image is kept, never the request's headers.",
    )  # fmt: skip
    capture_sample: float = Field(0.1, ge=0, le=1, description="Share of qualifying images kept.")
    capture_dir: Path = Field(REPO_ROOT / "data" / "capture", description="Where captured images are kept.")
    capture_max_bytes: int = Field(512 * 1024 * 1024, ge=0, description="Disk quota of the captured images.")
    capture_retention_hours: float = Field(24 * 14, gt=0, description="Captures older than this are deleted.")
    near_tie_margin: float = Field(0.1, gt=0, lt=1, description="Top-1 minus top-2 score below which it is a tie.")
    rollout: RolloutPlan = Field(
        default_factory=RolloutPlan,
        description="What a challenger that passed the gate goes through, as JSON, e.g. '{\"stages\": [\"shadow\", "
        "\"canary\"]}' with each stage's fraction, minimum requests and minutes and the guards' thresholds (default: "
        "no stages, promoted at once; a retrain request's 'rollout' overrides it).",
    )  # fmt: skip
    gate_tolerance: float = Field(0.01, ge=0, le=1, description="Challenger accuracy may trail by this much.")
    gate_max_recall_drop: float = Field(
        0.05, ge=0, le=1, description="Largest allowed per-class recall drop (multi-label: per-label AP drop)."
    )
    mlflow_tracking_uri: str | None = Field(
        None, validation_alias=AliasChoices("IMGCLF_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI"),
        description="MLflow server: retrain jobs log their runs there, and the loop's decisions are mirrored as "
        "model-version aliases and tags (none: off). The registry stays the source of truth.",
    )  # fmt: skip
    k8s_namespace: str = Field("default", description="Namespace of training Jobs (kubernetes backend).")
    k8s_job_template: Path = Field(REPO_ROOT / "k8s" / "base" / "retrain-job.yaml", description="Job template.")

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.model_tag and not self.model_tag.startswith(self.model_name + ":"):
            raise ValueError(
                f"IMGCLF_MODEL_TAG={self.model_tag} is not a version of IMGCLF_MODEL_NAME={self.model_name}"
            )
        if self.admin_token is None and self.admin_token_file is not None:
            token = self.admin_token_file.read_text().strip()
            self.admin_token = SecretStr(token) if token else None
        return self

    def capacity(self) -> Capacity:
        """Workers and threads: as set, else chosen from the cores this process may use."""
        return plan(usable_cores(), self.workers, self.threads)

    def inference(self) -> InferenceOptions:
        """What the predictor needs of these settings."""
        capacity = self.capacity()
        return InferenceOptions(self.runtime, self.max_batch_size, capacity.threads, capacity.workers, self.max_pixels,
                                self.agreement_threshold, self.agreement_samples, self.drift_sample,
                                self.low_confidence,
                                str(self.agreement_images) if self.agreement_images else None,
                                str(self.feedback_dir / self.model_name), capacity.lone_threads)  # fmt: skip

    def allowed_roots(self) -> list[Path]:
        return [p.resolve() for p in (*self.data_roots, self.feedback_dir)]


@lru_cache
def get_settings() -> Settings:
    return Settings()
