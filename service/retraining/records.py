"""The retraining loop's records, from the database layer up: a training job, a champion event, and the
promotion gate's decision (typed here once; the registry returns them, the edge serialises them)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ACTIVE = ("queued", "running")
TERMINAL = ("succeeded", "failed", "cancelled")
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
EventKind = Literal["initial", "promoted", "refused", "manual", "rollback"]


Stage = Literal["shadow", "canary"]
RolloutStatus = Literal["active", "promoted", "aborted"]


class StagePlan(BaseModel):
    """How much of the traffic a stage sees, and when it may end."""

    model_config = ConfigDict(extra="forbid")

    fraction: float = Field(0.25, gt=0, le=1, description="Shadow: share of images the challenger also scores. "
                            "Canary: share of requests the challenger answers.")  # fmt: skip
    min_requests: int = Field(500, ge=0, le=10**9, description="Challenger answers (canary) or comparisons "
                              "(shadow) before the stage may end.")  # fmt: skip
    min_minutes: float = Field(5, ge=0, le=60 * 24 * 30, description="...and at least this long in the stage.")


class Guards(BaseModel):
    """Live checks of the challenger against the champion; one that fails aborts the rollout. Each is judged
    once its evidence is enough (``min_requests`` answers per side, ``min_feedback`` labels per side)."""

    model_config = ConfigDict(extra="forbid")

    max_error_rate: float = Field(0.01, ge=0, le=1, description="Share of the challenger's images that failed.")
    max_latency_ratio: float = Field(2.0, ge=1, description="Challenger's p99 model latency over the champion's "
                                     "(canary: both answer live requests at the same priority).")  # fmt: skip
    max_low_confidence_increase: float = Field(0.10, ge=0, le=1, description="Challenger's share of answers "
                                               "below IMGCLF_LOW_CONFIDENCE minus the champion's.")  # fmt: skip
    max_disagreement: float = Field(0.20, ge=0, le=1, description="Shadow: share of compared images whose top-1 "
                                    "(multi-label: label set) differs from the champion's.")  # fmt: skip
    feedback_tolerance: float = Field(0.05, ge=0, le=1, description="Challenger's accuracy on feedback labels of "
                                      "images it answered may trail the champion's by this much.")  # fmt: skip
    min_requests: int = Field(100, ge=1, description="Answers per side before a rate or latency guard is judged.")
    min_feedback: int = Field(30, ge=1, description="Feedback labels per side before the feedback guard is judged.")


class RolloutPlan(BaseModel):
    """The stages a challenger passes after the offline gate (none: promoted at once, ``direct``)."""

    model_config = ConfigDict(extra="forbid")

    stages: list[Stage] = Field(default_factory=list, max_length=2, description="In order, e.g. "
                                "[\"shadow\", \"canary\"]; [] promotes at once (direct).")  # fmt: skip
    shadow: StagePlan = Field(default_factory=StagePlan)
    canary: StagePlan = Field(default_factory=lambda: StagePlan(fraction=0.1))
    guards: Guards | None = Field(default_factory=Guards, description="None: observe only, never abort.")
    promote: bool = Field(True, description="Promote after the last stage by itself (off: it waits there for "
                          "POST /rollout/promote).")  # fmt: skip

    @property
    def direct(self) -> bool:
        return not self.stages


class GuardValue(BaseModel):
    """One guard as last judged: its live value, its threshold, and whether it holds."""

    guard: str
    value: float | None = Field(None, description="None: not enough evidence yet.")
    threshold: float
    ok: bool | None = Field(None, description="None: not judged yet (see ``evidence``).")
    evidence: str = ""


class RolloutStep(BaseModel):
    """One decision of a rollout: it started, changed stage, was promoted or aborted."""

    at: str
    action: Literal["started", "advanced", "promoted", "aborted"]
    stage: Stage | None = None
    reason: str
    guards: list[GuardValue] = Field(default_factory=list)


class Rollout(BaseModel):
    """A challenger on its way to champion, stage by stage; at most one active per model name."""

    model_config = ConfigDict(extra="ignore")

    id: int
    model_name: str
    tag: str = Field(..., description="The challenger.")
    champion_tag: str | None = Field(None, description="The champion it is compared with and would replace.")
    status: RolloutStatus
    stage: Stage | None = Field(None, description="The current stage while active.")
    plan: RolloutPlan
    job_id: str | None = None
    reason: str = ""
    started_at: str
    stage_started_at: str
    ended_at: str | None = None
    guards: list[GuardValue] = Field(default_factory=list, description="As last judged.")
    history: list[RolloutStep] = Field(default_factory=list)

    @property
    def fraction(self) -> float:
        return getattr(self.plan, self.stage).fraction if self.stage else 0.0


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
    rollout: RolloutPlan | None = Field(None, description="The stages after the gate (default: IMGCLF_ROLLOUT).")


PolicyName = Literal["schedule", "feedback", "drift", "low_confidence"]


class RetrainPolicies(BaseModel):
    """When the service starts a retrain by itself: each policy is off until set. A triggered job is an
    ordinary job (same gate, same promotion path) that records the policy and its evidence."""

    model_config = ConfigDict(extra="forbid")

    schedule_hours: float | None = Field(
        None, gt=0, le=24 * 366, description="Retrain this long after the last job (or the champion's promotion)."
    )
    feedback_labels: int | None = Field(
        None, ge=1, le=10**7, description="Retrain when this many feedback labels arrived since the last job."
    )
    drift_minutes: float | None = Field(
        None, ge=0, le=24 * 60 * 30, description="Retrain when drift has been detected without a break this long."
    )
    low_confidence_share: float | None = Field(
        None, gt=0, lt=1, description="Retrain when this share of the live window is below IMGCLF_LOW_CONFIDENCE..."
    )
    low_confidence_minutes: float = Field(10, ge=0, le=24 * 60 * 30, description="...for this long.")
    cooldown_minutes: float = Field(360, ge=0, le=24 * 60 * 366, description="No triggered job this soon after "
                                    "the last job (any job, manual or triggered).")  # fmt: skip
    request: RetrainRequest = Field(
        default_factory=RetrainRequest,
        description="What a triggered job asks for, as POST /retrain's body (default: the champion's recipe and "
        "the feedback).",
    )

    @property
    def enabled(self) -> bool:
        return any(v is not None for v in (self.schedule_hours, self.feedback_labels, self.drift_minutes,
                                           self.low_confidence_share))  # fmt: skip


CaptureStatus = Literal["pending", "labelled", "skipped", "none"]


class Capture(BaseModel):
    """A live image kept for labelling, with what the model answered."""

    model_config = ConfigDict(extra="ignore")

    sha256: str
    reason: str = Field(..., description="low_confidence, near_tie, drift or random.")
    tag: str = Field(..., description="The version that answered.")
    predicted: str
    confidence: float
    margin: float = Field(..., description="Top-1 minus top-2 score: the queue's order, smallest first.")
    status: CaptureStatus
    label: str | None = None
    bytes: int
    created_at: str
    labelled_at: str | None = None


class Trigger(BaseModel):
    """Why the service started a job by itself."""

    policy: PolicyName
    reason: str = Field(..., description="In words, with the numbers.")
    evidence: dict[str, Any] = Field(default_factory=dict, description="The signals as they were at the decision.")


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
    rollout_id: int | None = Field(None, description="The rollout it went on to (shadow, canary) instead.")
    evaluation: PairedComparison | None = Field(None, description="The same test on the rolling evaluation set.")

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
    trigger: Trigger | None = Field(None, description="The policy that started the job (none: started by hand).")
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
