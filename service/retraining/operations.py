"""The retraining loop's use-cases, framework-free: start and follow jobs, promote, roll back, feedback.

The admin routes call these; every worker also runs :meth:`Operations.tick` on its watcher thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from service import telemetry
from service.errors import InvalidInput, NotFound, Unavailable
from service.inference.drift import DriftStatus
from service.retraining.backends import Backend, make_backend, sweep
from service.retraining.conductor import Conductor
from service.retraining.evaluation import EvaluationSet, evaluation_set
from service.retraining.feedback import Feedback, save_feedback
from service.retraining.policies import Autopilot
from service.retraining.records import (
    Capture,
    ChampionEvent,
    Job,
    RetrainPolicies,
    RetrainRequest,
    Rollout,
    RolloutPlan,
    StagePlan,
    Trigger,
)
from service.retraining.registry import Registry
from service.retraining.requests import job_config
from service.serving.follower import ModelFollower
from service.settings import Settings
from training import store
from training.stored import StoredModel

log = logging.getLogger(__name__)
STAGES = ["shadow", "canary"]


class JobStartFailed(Unavailable):
    reason = "job_start_failed"


class Operations:
    """``follower`` is this worker's model follower (feedback checks labels against the served model);
    ``refresh()`` makes it look at the registry now (after a promotion or rollback handled here)."""

    def __init__(self, settings: Settings, registry: Registry, follower: ModelFollower,
                 refresh: Callable[[], None] = lambda: None, backend: Backend | None = None,
                 rollout_status: Callable[[], dict | None] = lambda: None):  # fmt: skip
        self.settings = settings
        self.registry = registry
        self.follower = follower
        self.refresh = refresh
        self.backend = backend or make_backend(settings, registry)
        self.model_name = settings.model_name
        self.rollout_status = rollout_status  # what this worker loaded and counted of the active rollout
        self.conductor = Conductor(self.model_name, registry, settings.rollout)
        self.autopilot = Autopilot(self.model_name, settings.retrain_policies, registry, self._drift,
                                   self.start_retrain)  # fmt: skip

    # ------------------------------------------------------------ jobs
    def start_retrain(self, req: RetrainRequest, trigger: Trigger | None = None) -> Job:
        """A job for ``req``, built against the champion of this moment (resolved once: its config is the
        base, its test split the holdout, and the gate judges against it); ``trigger`` when a policy asks."""
        champion = self.registry.champion(self.model_name)
        cfg = job_config(req, self.settings, champion)
        job = self.registry.create_job(self.model_name, self.backend.name, req.model_dump(mode="json"),
                                       cfg.model_dump(mode="json"), champion_tag=champion,
                                       holdout=cfg.data.holdout,
                                       trigger=trigger.model_dump(mode="json") if trigger else None)  # fmt: skip
        try:
            self.backend.submit(job)
        except Exception as exc:
            self.registry.finish_job(job.id, "failed", error=f"could not start: {type(exc).__name__}: {exc}")
            raise JobStartFailed(f"could not start the training job ({self.backend.name} backend): {exc}") from exc
        return self.registry.job(job.id)

    def log_tail(self, job: Job, lines: int = 40) -> list[str]:
        try:
            return self.backend.log_tail(job, lines)
        except Exception as exc:  # noqa: BLE001 - the log is a convenience
            return [f"(log unavailable: {exc})"]

    def cancel(self, job_id: str) -> Job:
        job = self.registry.request_cancel(job_id)
        if job.status == "running":
            self.backend.cancel(job)
        return self.registry.job(job_id)

    def tick(self) -> None:
        """Fail jobs whose process has gone; count ended jobs in this worker's metrics; judge the retrain
        policies."""
        sweep(self.registry, self.backend, self.settings.job_stale_seconds)
        for job in self.registry.claim_unobserved():
            telemetry.observe_job(job)
        if self.conductor.tick() is not None:  # a stage changed, or the rollout ended: follow it now
            self.refresh()
        self.autopilot.tick()

    def _drift(self) -> DriftStatus | None:
        served = self.follower.served
        return served.classifier.drift.status if served and served.classifier.drift else None

    def policies(self) -> dict[str, Any]:
        policies, source = self.autopilot.policies()
        drift = self._drift()
        since = {
            k: t.isoformat() if t else None
            for k, t in (
                ("drift_since", self.autopilot.drift_since),
                ("low_confidence_since", self.autopilot.low_since),
            )
        }
        return {"policies": policies, "source": source, "drift": drift.to_dict() if drift else None, **since}

    def set_policies(self, policies: RetrainPolicies | None) -> dict[str, Any]:
        if policies is not None:
            job_config(policies.request, self.settings, self.registry.champion(self.model_name))  # refuse bad ones now
        self.registry.set_policies(self.model_name, policies.model_dump(mode="json") if policies else None)
        return self.policies()

    # ------------------------------------------------------------ champion
    def promote(self, tag: str, reason: str) -> ChampionEvent:
        """Serve ``tag``, resolved first to the exact stored version (an alias or other letter case is
        never recorded: workers compare the champion with the tag they serve)."""
        tag, stored = self._loadable(tag)
        test = stored.metadata.get("metrics", {}).get("test", {})
        event = self.registry.promote(self.model_name, tag, reason, kind="manual",
                                      challenger={"accuracy": test.get("accuracy")})  # fmt: skip
        telemetry.PROMOTIONS.labels("manual").inc()
        self.refresh()
        return event

    # ------------------------------------------------------------ rollouts
    def start_rollout(self, tag: str, reason: str, plan: RolloutPlan | None = None) -> Rollout:
        """Roll ``tag`` out on ``plan`` (default: IMGCLF_ROLLOUT's); with no stages named, shadow then canary."""
        tag, _ = self._loadable(tag)
        plan = plan or self.settings.rollout
        if "stages" not in plan.model_fields_set and plan.direct:  # stages not said: shadow, then canary
            plan = plan.model_copy(update={"stages": STAGES})
        if plan.direct:
            raise InvalidInput("a rollout needs at least one stage (shadow, canary); to promote at once use "
                               "POST /models/promote", reason="no_stages")  # fmt: skip
        rollout = self.conductor.start(tag, reason, plan)
        self.refresh()
        return rollout

    def decide_rollout(self, promote: bool, reason: str) -> Rollout:
        rollout = self.conductor.decide_by_hand(promote, reason)
        self.refresh()
        return rollout

    def rollout(self) -> dict[str, Any]:
        """The active rollout (merged counts of every worker, and this worker's), and the recent ones."""
        active = self.conductor.status()
        if active is not None:
            active["this_worker"] = self.rollout_status()
        recent = [r.model_dump(mode="json") for r in self.registry.rollouts(self.model_name, limit=10)]
        return {"active": active, "recent": recent, "default_plan": self.settings.rollout.model_dump(mode="json")}

    def shadow(self, tag: str | None, fraction: float = 0.25, reason: str = "") -> dict | None:
        """Have every worker score ``tag`` beside the champion, observing only (None: stop the active rollout)."""
        if tag is None:
            if self.registry.rollout(self.model_name) is not None:
                self.decide_rollout(False, reason or "shadow stopped")
            return None
        tag, _ = self._loadable(tag)
        if tag == self.registry.champion(self.model_name):
            raise InvalidInput(f"{tag} is the champion; shadow another version", reason="shadow_is_champion")
        plan = RolloutPlan(stages=["shadow"], shadow=StagePlan(fraction=fraction, min_requests=0, min_minutes=0),
                           guards=None, promote=False)  # fmt: skip
        active = self.registry.rollout(self.model_name)
        if active is not None and active.plan == plan.model_copy(update={"shadow": active.plan.shadow}):
            self.decide_rollout(False, f"replaced by a shadow of {tag}")  # one observing shadow replaces another
        self.start_rollout(tag, reason or "manual shadow", plan)
        return self._shadow(self.conductor.status())

    def _loadable(self, tag: str) -> tuple[str, StoredModel]:
        """The exact stored version ``tag`` names, loaded (a damaged model is refused before any use)."""
        if tag.split(":")[0].lower() != self.model_name.lower():
            raise InvalidInput(f"{tag} is not a version of {self.model_name}", reason="wrong_model")
        try:
            exact = str(store.get(tag).tag)
        except (store.StoreError, ValueError) as exc:
            raise NotFound(f"{exc}", reason="model_not_found") from None
        if not exact.startswith(self.model_name + ":"):
            raise InvalidInput(f"{exact} is not a version of {self.model_name}", reason="wrong_model")
        try:
            stored = store.load_model(exact)  # refuses a damaged model before it can be served
        except store.StoreError as exc:
            raise NotFound(str(exc), reason="model_not_loadable") from None
        return exact, stored

    def rollback(self, reason: str) -> ChampionEvent:
        event = self.registry.rollback(self.model_name, reason)
        telemetry.PROMOTIONS.labels("rollback").inc()
        self.refresh()
        return event

    def models(self) -> dict[str, Any]:
        champion = self.registry.champion(self.model_name)
        versions = [
            {"tag": str(m.tag), "created": m.info.creation_time.isoformat(), "champion": str(m.tag) == champion,
             "architecture": m.info.metadata.get("architecture", "?"), "metrics": m.info.metadata.get("metrics", {})}
            for m in store.list_versions(self.model_name)
        ]  # fmt: skip
        active = self.conductor.status()
        return {"name": self.model_name, "champion": champion, "versions": versions,
                "history": self.registry.history(self.model_name),
                "feedback": self.registry.feedback_counts(self.model_name), "shadow": self._shadow(active),
                "rollout": active, "evaluation_set": self.evaluation_set().summary()}  # fmt: skip

    def evaluation_set(self) -> EvaluationSet:
        return evaluation_set(self.registry, self.model_name, self.settings.evaluation_share,
                              self.settings.evaluation_max_images)  # fmt: skip

    def _shadow(self, active: dict | None) -> dict | None:
        """The challenger in shadow (``active``: the conductor's status), as the web page shows it: what this
        worker compared."""
        if active is None or active["stage"] != "shadow":
            return None
        mine = self.rollout_status() or {}
        seen = {"compared": mine.get("compared", 0), "agreement": mine.get("agreement"),
                "dropped": mine.get("dropped", 0)}  # fmt: skip
        return {"tag": active["tag"], "fraction": active["fraction"], "reason": active["reason"],
                "started_at": active["started_at"], "rollout_id": active["id"], "loaded": bool(mine.get("loaded")),
                "this_worker": seen}  # fmt: skip

    # ------------------------------------------------------------ the labelling queue
    def captures(self, status: str | None, limit: int) -> dict[str, Any]:
        clf = self.follower.served.classifier if self.follower.served else None
        return {"counts": self.registry.capture_counts(self.model_name), "classes": clf.classes if clf else [],
                "items": self.registry.captures(self.model_name, status, limit)}  # fmt: skip

    def capture_file(self, sha256: str) -> Path:
        _, path = self.registry.capture(self.model_name, sha256)
        if not Path(path).is_file():
            raise NotFound(f"capture {sha256} has no file any more (expired or deleted)", reason="capture_gone")
        return Path(path)

    def settle_capture(self, sha256: str, action: str, label: str | None = None) -> Capture:
        """``label`` the capture (it becomes feedback, for the next retrain and the feedback policy), ``skip``
        it, or say it is ``none`` of the model's classes."""
        if action == "label":
            fb = self.feedback(self.capture_file(sha256).read_bytes(), label or "")
            return self.registry.settle_capture(self.model_name, sha256, "labelled", fb.label)
        self.registry.capture(self.model_name, sha256)  # NotFound for an unknown one
        return self.registry.settle_capture(self.model_name, sha256, "skipped" if action == "skip" else "none")

    # ------------------------------------------------------------ feedback
    def feedback(self, data: bytes, label: str) -> Feedback:
        clf = self.follower.require()
        if clf.task.multilabel:
            raise InvalidInput("feedback takes one label per image, and a multi-label model needs all of an "
                               "image's labels: add the image to the model's CSV manifest instead",
                               reason="multilabel_feedback")  # fmt: skip
        fb = save_feedback(self.registry, self.settings.feedback_dir, self.model_name, data, label, clf.classes,
                           self.settings.feedback_new_labels, self.settings.max_pixels)  # fmt: skip
        if not fb.duplicate:
            telemetry.FEEDBACK.labels(self.model_name).inc()
        return fb
