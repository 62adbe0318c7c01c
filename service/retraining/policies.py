"""Retraining without a person: the policies (:class:`~service.retraining.records.RetrainPolicies`) judged on
this worker's signals, and the one worker that acts.

:func:`due` is the decision, pure: signals in, a :class:`~service.retraining.records.Trigger` (or None) out.
:class:`Autopilot` gathers the signals (the registry for jobs and feedback, this worker's drift monitor for
drift and the low-confidence share), keeps how long a condition has held, and starts the job under a short
registry lease, so two workers that see the same thing at once start one job. The registry's one-active-job
rule and the cool-down (counted from the last job of any kind) do the rest.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass

from service import telemetry
from service.inference.drift import DriftStatus
from service.retraining.records import Job, RetrainPolicies, RetrainRequest, Trigger
from service.retraining.registry import JobConflict, Registry, holder_id, now

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Signals:
    now: dt.datetime
    last_job_at: dt.datetime | None  # newest job of the model, any status
    champion_since: dt.datetime | None  # when the champion was promoted (the schedule's start before any job)
    new_feedback: int  # labels since the last job
    drift: DriftStatus | None  # this worker's monitor (None: no reference, or detection off)
    drift_since: dt.datetime | None  # detected without a break since
    low_confidence_since: dt.datetime | None  # the low-confidence share above the policy's threshold since


def due(policies: RetrainPolicies, s: Signals) -> Trigger | None:
    """The first policy whose condition holds, outside the cool-down; None otherwise."""
    if s.last_job_at is not None and s.now - s.last_job_at < dt.timedelta(minutes=policies.cooldown_minutes):
        return None
    drift = s.drift.to_dict() if s.drift else {}
    if policies.drift_minutes is not None and s.drift_since is not None:
        held = (s.now - s.drift_since).total_seconds() / 60
        if held >= policies.drift_minutes:
            reason = (f"drift detected for {held:.1f} min (policy: {policies.drift_minutes:g} min); score "
                      f"{drift['score']:.2f} x threshold, p = {drift['p_value']:.3g}, class shift "
                      f"{drift['class_shift']:.2f}")  # fmt: skip
            return Trigger(policy="drift", reason=reason,
                           evidence={"drift": drift, "detected_since": s.drift_since.isoformat()})  # fmt: skip
    if policies.low_confidence_share is not None and s.low_confidence_since is not None and s.drift is not None:
        held = (s.now - s.low_confidence_since).total_seconds() / 60
        if held >= policies.low_confidence_minutes:
            return Trigger(policy="low_confidence", reason=f"{s.drift.low_confidence_share:.0%} of the live window "
                           f"below the confidence threshold for {held:.1f} min (policy: above "
                           f"{policies.low_confidence_share:.0%} for {policies.low_confidence_minutes:g} min)",
                           evidence={"drift": drift, "since": s.low_confidence_since.isoformat()})  # fmt: skip
    if policies.feedback_labels is not None and s.new_feedback >= policies.feedback_labels:
        return Trigger(policy="feedback", reason=f"{s.new_feedback} feedback labels since the last job (policy: "
                       f"{policies.feedback_labels})", evidence={"new_feedback": s.new_feedback,
                       "last_job_at": s.last_job_at.isoformat() if s.last_job_at else None})  # fmt: skip
    start = s.last_job_at or s.champion_since
    if policies.schedule_hours is not None and start is not None:
        hours = (s.now - start).total_seconds() / 3600
        if hours >= policies.schedule_hours:
            return Trigger(policy="schedule", reason=f"{hours:.1f} h since the last job (policy: every "
                           f"{policies.schedule_hours:g} h)", evidence={"since": start.isoformat()})  # fmt: skip
    return None


class Held:
    """Since when a condition has held without a break (None while it does not)."""

    def __init__(self) -> None:
        self.since: dt.datetime | None = None

    def update(self, holds: bool, at: dt.datetime) -> dt.datetime | None:
        self.since = (self.since or at) if holds else None
        return self.since


class Autopilot:
    """Judges the policies on every periodic tick of one worker; ``start`` runs the job (``Operations``)."""

    def __init__(self, model_name: str, default: RetrainPolicies, registry: Registry,
                 drift: Callable[[], DriftStatus | None], start: Callable[[RetrainRequest, Trigger], Job]):  # fmt: skip
        self.model_name = model_name
        self.default = default
        self.registry = registry
        self.drift = drift
        self.start = start
        self.holder = holder_id()
        self._drift = Held()
        self._low = Held()

    @property
    def drift_since(self) -> dt.datetime | None:
        return self._drift.since

    @property
    def low_since(self) -> dt.datetime | None:
        return self._low.since

    def policies(self) -> tuple[RetrainPolicies, str]:
        """The policies in force and where they come from (``admin``: set at run time; else ``settings``)."""
        stored = self.registry.policies(self.model_name)
        return (RetrainPolicies.model_validate(stored), "admin") if stored else (self.default, "settings")

    def signals(self, policies: RetrainPolicies, at: dt.datetime | None = None) -> Signals:
        at = at or now()
        status = self.drift()
        low = status is not None and policies.low_confidence_share is not None and (
            status.images == status.window and status.low_confidence_share > policies.low_confidence_share
        )  # fmt: skip
        last = self.registry.last_job_at(self.model_name)
        return Signals(at, last, self.registry.champion_since(self.model_name),
                       self.registry.feedback_since(self.model_name, last), status,
                       self._drift.update(bool(status and status.detected), at), self._low.update(low, at))  # fmt: skip

    def tick(self) -> Job | None:
        policies, _ = self.policies()
        if not policies.enabled:
            self._drift.since = self._low.since = None
            return None
        trigger = due(policies, self.signals(policies))
        if trigger is None or not self.registry.lease(f"retrain-trigger:{self.model_name}", self.holder, 60):
            return None
        if due(policies, self.signals(policies)) is None:  # another worker acted while we took the lease
            return None
        try:
            job = self.start(policies.request, trigger)
        except JobConflict:
            return None  # a job is running (with a cool-down of 0): the next tick after it ends decides
        telemetry.RETRAIN_TRIGGERS.labels(trigger.policy).inc()
        log.warning("retrain job %s started by the %s policy: %s", job.id, trigger.policy, trigger.reason)
        return job
