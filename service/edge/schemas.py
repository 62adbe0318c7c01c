"""Request and response schemas, named by role (the retraining loop's records are its own:
:mod:`service.retraining.records`)."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.retraining.records import Capture, ChampionEvent, Job, RetrainPolicies, Rollout, RolloutPlan

TASK_DESCRIPTION = (
    "multiclass: the top-k classes. multilabel: every label at or above its threshold (top-k by score when top_k "
    "is given). hierarchical: the top-k leaves (or nodes of the requested level), each with its path."
)


class PathNode(BaseModel):
    label: str
    level: int = Field(..., ge=1, description="Depth in the class tree (1 = the top).")
    score: float = Field(..., ge=0, le=1, description="The sum of the probabilities of the leaves below.")


class Prediction(BaseModel):
    label: str
    index: int = Field(..., ge=0, description="Position in the model's classes (or in the level's nodes).")
    score: float = Field(..., ge=0, le=1)
    threshold: float | None = Field(None, description="Multi-label: this label's decision threshold.")
    positive: bool | None = Field(None, description="Multi-label: the score reaches the threshold.")
    path: list[PathNode] | None = Field(None, description="Hierarchical: from the top of the tree to this node.")


class Classified(BaseModel):
    predictions: list[Prediction] = Field(..., description=TASK_DESCRIPTION)
    labels: list[str] | None = Field(None, description="Multi-label: the labels at or above their thresholds.")
    level: int | None = Field(None, description="Hierarchical: the tree level the predictions are from.")
    abstained: bool | None = Field(
        None, description="With IMGCLF_ABSTAIN_BELOW: the top score is below it (the predictions are still listed)."
    )


class Answered(BaseModel):
    model: str = Field(..., description="Tag of the model that answered (name:version).")
    task: str = Field("multiclass", description="multiclass, multilabel or hierarchical.")


class ClassifyResponse(Classified, Answered):
    pass


class Indexed(BaseModel):
    index: int = Field(..., description="Position of the image in the request.")


class BatchItem(Classified, Indexed):
    predictions: list[Prediction] | None = Field(None, description=TASK_DESCRIPTION)
    error: str | None = Field(None, description="Why this image could not be classified.")


class ClassifyBatchResponse(Answered):
    results: list[BatchItem]


class ClassifyJSONRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    images: list[str] = Field(..., min_length=1, description="Base64-encoded image files (JPEG, PNG, ...).")
    top_k: int | None = Field(None, ge=1, le=1000, description="How many classes to return (default 5).")
    level: int | None = Field(None, ge=1, le=100, description="Hierarchical models: the tree level to answer at.")


class ModelInfo(BaseModel):
    tag: str
    architecture: str
    task: str = Field("multiclass", description="multiclass, multilabel or hierarchical.")
    classes: list[str]
    thresholds: dict[str, float] | None = Field(None, description="Multi-label: each label's decision threshold.")
    taxonomy: dict[str, str] | None = Field(None, description="Hierarchical: each node's parent ('' at the top).")
    levels: list[list[str]] | None = Field(None, description="Hierarchical: the nodes of each level, top first.")
    preprocessing: dict[str, Any]
    metrics: dict[str, Any]
    created: str
    runtime: dict[str, Any] = Field(..., description="Runtime in use, with its measured agreement with fp32.")
    worker_pid: int = Field(..., description="The server worker process that answered (each serves one version).")
    serving: dict[str, Any] | None = Field(
        None, description="The server's workers, inference and decode threads, the cores it may use, and how each "
        "was chosen (IMGCLF_WORKERS / IMGCLF_THREADS, or from the cores).",
    )  # fmt: skip
    dataset_fingerprint: str | None = Field(None, description="SHA-256 of the training data's file list and labels.")
    report_pictures: list[str] = Field(default_factory=list, description="Pictures at GET /model/report/{name}.")
    calibration: dict[str, Any] | None = Field(
        None, description="How the served scores are calibrated (temperature, or per-label Platt) and its effect."
    )
    drift: dict[str, Any] | None = Field(
        None, description="This worker's drift monitor: the live window's statistic against the model's reference, "
        "its threshold and p-value, the class-distribution shift and mean confidence (none: no reference stored).",
    )  # fmt: skip
    training: dict[str, Any] | None = Field(
        None,
        description="How the run went: epochs planned and run, why it stopped, its measured precision, and a "
        "note when a time budget shortened the schedule.",
    )


class ErrorResponse(BaseModel):
    error: str = Field(..., description="What was wrong and what is accepted.")
    reason: str = Field(..., description="A short machine-readable code.")


def error_responses(*statuses: HTTPStatus) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for error statuses, all with the :class:`ErrorResponse` body."""
    return {int(s): {"model": ErrorResponse, "description": s.phrase} for s in statuses}


# ---------------------------------------------------------------- retraining and registry


class PoliciesResponse(BaseModel):
    policies: RetrainPolicies
    source: Literal["settings", "admin"] = Field(..., description="admin: set by PUT /policies, for every worker.")
    drift: dict[str, Any] | None = Field(None, description="The answering worker's drift monitor (GET /model).")
    drift_since: str | None = Field(None, description="This worker has seen drift without a break since then.")
    low_confidence_since: str | None = Field(
        None, description="This worker's low-confidence share has been above the policy's threshold since then."
    )


class CapturesResponse(BaseModel):
    counts: dict[str, int] = Field(..., description="Captures by status: pending, labelled, skipped, none.")
    classes: list[str] = Field(..., description="The served model's classes: the labels to choose from.")
    items: list[Capture] = Field(..., description="The queue, most useful first (smallest top-2 margin).")


class LabelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: Literal["label", "skip", "none"] = Field(
        "label", description="label: give it a class (it becomes feedback); skip; none: none of the classes."
    )
    label: str | None = Field(None, max_length=200, description="The class, with action=label.")

    @model_validator(mode="after")
    def _label_given(self) -> LabelRequest:
        if self.action == "label" and not self.label:
            raise ValueError("action 'label' needs a label (one of the model's classes)")
        return self


class JobInfo(Job):
    log_tail: list[str] = Field(default_factory=list, description="The last lines of the job's log.")
    rollout: Rollout | None = Field(None, description="The rollout the job's challenger went on to: its stage, "
                                    "guards and decisions.")  # fmt: skip


class JobAccepted(BaseModel):
    job_id: str
    status: str
    url: str = Field(..., description="Where to follow the job.")


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tag: str = Field(
        ...,
        min_length=3,
        max_length=200,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*:[A-Za-z0-9_.-]+$",
        description="The version to serve (name:version); an alias such as name:latest is resolved to the exact "
        "stored version before anything is recorded.",
    )
    reason: str = Field("manual promotion", max_length=500)


class ShadowRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tag: str = Field(..., min_length=3, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*:[A-Za-z0-9_.-]+$",
                     description="The version to score beside the champion (name:version, or an alias).")  # fmt: skip
    fraction: float = Field(0.25, gt=0, le=1, description="Share of classified images it also scores.")
    reason: str = Field("manual shadow", max_length=500)


class RolloutRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tag: str = Field(..., min_length=3, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*:[A-Za-z0-9_.-]+$",
                     description="The challenger (name:version, or an alias).")  # fmt: skip
    reason: str = Field("manual rollout", max_length=500)
    plan: RolloutPlan | None = Field(None, description="Stages, their fractions and minimums, and the guards "
                                     "(default: IMGCLF_ROLLOUT's, else shadow then canary).")  # fmt: skip


class RolloutDecisionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field("decided by hand", max_length=500)


class RolloutResponse(BaseModel):
    active: dict[str, Any] | None = Field(
        ..., description="The active rollout: its record, every worker's counts merged (``counts``), the answering "
        "worker's (``this_worker``).",
    )  # fmt: skip
    recent: list[Rollout] = Field(..., description="The latest rollouts, newest first, with their decisions.")
    default_plan: RolloutPlan = Field(..., description="IMGCLF_ROLLOUT: what a passing challenger goes through.")


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field("manual rollback", max_length=500)


class ModelVersion(BaseModel):
    tag: str
    created: str
    champion: bool
    architecture: str
    metrics: dict[str, Any]


class ModelsResponse(BaseModel):
    name: str
    champion: str | None
    versions: list[ModelVersion]
    history: list[ChampionEvent] = Field(..., description="Promotions, refusals and rollbacks, newest first.")
    feedback: dict[str, int] = Field(..., description="Feedback images collected per label.")
    shadow: dict[str, Any] | None = Field(
        None, description="The challenger in shadow, and what the answering worker saw of it: images compared, "
        "agreement with the champion, dropped while busy.",
    )  # fmt: skip
    rollout: dict[str, Any] | None = Field(None, description="The active rollout (as GET /rollout's ``active``).")
    evaluation_set: dict[str, Any] | None = Field(
        None, description="The rolling evaluation set: feedback images kept out of training that the gate judges "
        "both sides on (images, oldest, newest, share).",
    )  # fmt: skip


class FeedbackResponse(BaseModel):
    sha256: str
    label: str
    duplicate: bool = Field(..., description="The same image was already collected (kept once).")
