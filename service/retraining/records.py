"""The retraining loop's records, from the database layer up: a training job, a champion event, and the
promotion gate's decision (typed here once; the registry returns them, the edge serialises them)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ACTIVE = ("queued", "running")
TERMINAL = ("succeeded", "failed", "cancelled")
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
EventKind = Literal["initial", "promoted", "refused", "manual", "rollback"]


class RetrainRequest(BaseModel):
    """What an operator (or a policy) asks of a retraining job."""

    model_config = ConfigDict(extra="forbid")

    data: str | None = Field(
        None,
        max_length=1024,
        description="'fashion-mnist', a class-per-folder directory or a CSV manifest inside the configured data "
        "roots (relative paths are taken from the first root). Default: the champion's data source.",
        examples=["fashion-mnist"],
    )
    include_feedback: bool = Field(True, description="Add the collected feedback images to the training split.")
    model: str | None = Field(
        None,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_./-]*$",
        description="Architecture ('scratch-cnn' or a timm name). Default: the champion's.",
    )
    epochs: int | None = Field(None, ge=1, le=1000, description="Maximum epochs. Default: the champion's config.")
    overrides: dict[Annotated[str, Field(max_length=100)], Any] = Field(
        default_factory=dict,
        max_length=64,
        description="Training config overrides as dotted keys, e.g. {'optim.lr': 0.001, 'augment.preset': 'medium'}.",
        examples=[{"optim.lr": 0.001}],
    )
    auto_promote: bool = Field(True, description="Promote the new model when it passes the gate.")


class PairedComparison(BaseModel):
    """The challenger's primary metric minus the champion's on the same images, with its uncertainty."""

    metric: str = Field(..., description="accuracy, or map for multi-label models.")
    test: str = Field(..., description="How the interval and the p-value were computed.")
    images: int
    difference: float = Field(..., description="Challenger minus champion.")
    ci_low: float
    ci_high: float
    confidence: float = 0.95
    p_value: float | None = Field(None, description="Two-sided: the models differ at all.")
    challenger_only: int | None = Field(None, description="Images only the challenger got right (accuracy).")
    champion_only: int | None = Field(None, description="Images only the champion got right (accuracy).")

    def describe(self) -> str:
        pct = int(round(self.confidence * 100))
        p = f", p={self.p_value:.3g}" if self.p_value is not None else ""
        return (
            f"{self.metric} difference {self.difference:+.4f} ({pct}% CI {self.ci_low:+.4f} to {self.ci_high:+.4f}"
            f"{p}, {self.images} images)"
        )


class Decision(BaseModel):
    """May a challenger replace the champion, and why: both sides' metric summaries measured on the same
    holdout (:func:`service.retraining.gate.summary`), and what came of it."""

    promote: bool = Field(..., description="The challenger passed the gate.")
    reason: str
    challenger: dict[str, Any] = Field(..., description="The challenger's metric summary on the holdout.")
    champion: dict[str, Any] | None = Field(None, description="The champion's, on the same holdout.")
    recall_drops: dict[str, float] = Field(default_factory=dict, description="Classes (labels) that fell too far.")
    paired: PairedComparison | None = Field(None, description="The paired test on the primary metric.")
    holdout: str | None = Field(None, description="What the two were judged on.")
    champion_tag: str | None = None
    challenger_tag: str | None = None
    promoted: bool = Field(False, description="The challenger became champion.")

    @property
    def challenger_score(self) -> float | None:
        """The challenger's primary metric (accuracy; mAP for a multi-label model)."""
        return self.challenger.get(self.challenger.get("primary", "accuracy"))


class Job(BaseModel):
    """One training job: the request, the config it trains, what it was built against, and how it went."""

    model_config = ConfigDict(extra="ignore")

    id: str
    model_name: str
    status: JobStatus
    backend: str
    request: dict[str, Any]
    config: dict[str, Any]
    champion_tag: str | None = Field(None, description="The champion when the job was created: its base and rival.")
    holdout: str | None = Field(None, description="The recorded split kept out of training and judged on.")
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    heartbeat_at: str | None = None
    host: str | None = None
    pid: int | None = None
    external_id: str | None = None  # the Kubernetes Job's name
    log_path: str | None = None
    progress: dict[str, Any] | None = None
    result_tag: str | None = None
    decision: Decision | None = None
    error: str | None = None
    cancel_requested: bool = False
    observed: bool = False

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


class ChampionEvent(BaseModel):
    """Something that happened to a model name's champion (a promotion, refusal, rollback...)."""

    model_config = ConfigDict(extra="ignore")

    id: int
    model_name: str
    kind: EventKind
    tag: str | None = None
    previous_tag: str | None = None
    reason: str
    challenger: dict[str, Any] | None = None
    champion: dict[str, Any] | None = None
    job_id: str | None = None
    created_at: str
    mirrored_at: str | None = None
