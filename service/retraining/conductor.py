"""Drives rollouts: starts one for a challenger, judges the active one on every worker tick (under a lease, so
one worker judges at a time), and applies its decision once in the registry; operators promote or abort by hand.
"""

from __future__ import annotations

import datetime as dt
import logging

from service import telemetry
from service.errors import Conflict
from service.retraining.records import Rollout, RolloutPlan
from service.retraining.registry import Registry, holder_id
from service.retraining.rollout import FeedbackScore, Step, Tally, judge

log = logging.getLogger(__name__)


class Conductor:
    def __init__(self, model_name: str, registry: Registry, default_plan: RolloutPlan):
        self.model_name = model_name
        self.registry = registry
        self.default_plan = default_plan
        self.holder = holder_id()

    def start(self, tag: str, reason: str, plan: RolloutPlan | None = None, job_id: str | None = None) -> Rollout:
        """Put ``tag`` on the plan's first stage. Raises :class:`Conflict` while another rollout is active."""
        plan = plan or self.default_plan
        if plan.direct:
            raise ValueError("a direct plan has no stages to roll out through")
        rollout = self.registry.start_rollout(self.model_name, tag, plan.model_dump(mode="json"), reason,
                                              job_id=job_id)  # fmt: skip
        log.warning("rollout %d of %s started in %s: %s", rollout.id, tag, rollout.stage, reason)
        return rollout

    def evidence(self, rollout: Rollout) -> tuple[Tally, dict[str, FeedbackScore]]:
        """Every worker's counts of the current stage, merged, and the feedback on images either side answered."""
        tally = Tally.merged(self.registry.rollout_tallies(rollout.id, rollout.stage or ""))
        scores = self.registry.rollout_feedback(rollout.id, self.model_name)
        feedback = {role: FeedbackScore(n, ok) for role, (n, ok) in scores.items()}
        return tally, feedback

    def tick(self, at: dt.datetime | None = None) -> Rollout | None:
        """Judge the active rollout and apply the decision (one worker at a time: the lease); returns the rollout
        when a decision was taken here (it moved on, was promoted or aborted), else None."""
        rollout = self.registry.rollout(self.model_name)
        if rollout is None or not self.registry.lease(f"rollout:{self.model_name}", self.holder, 30):
            return None
        tally, feedback = self.evidence(rollout)
        step = judge(rollout, tally, feedback, at or dt.datetime.now(dt.UTC))
        guards = [g.model_dump(mode="json") for g in step.guards]
        if step.action == "wait":
            self.registry.judged_rollout(rollout.id, guards)
            return None
        return self._apply(rollout, step, guards, tally)

    def _apply(self, rollout: Rollout, step: Step, guards: list[dict], tally: Tally) -> Rollout | None:
        action = {"advance": "advanced", "promote": "promoted", "abort": "aborted"}[step.action]
        summary = {"stage": rollout.stage, **tally.summary()}
        done = self.registry.step_rollout(rollout.id, rollout.stage or "", action, step.reason, guards,
                                          to_stage=step.to_stage, challenger=summary)  # fmt: skip
        if done is None:
            return None  # decided elsewhere meanwhile
        self._count(done, step.failed or "champion_changed", "guards")
        log.warning("rollout %d of %s: %s", rollout.id, rollout.tag, done.history[-1].reason)
        return done

    @staticmethod
    def _count(done: Rollout, abort_reason: str, by: str) -> None:
        if done.status == "aborted":
            telemetry.ROLLOUT_ABORTS.labels(abort_reason).inc()
            telemetry.PROMOTIONS.labels("refused").inc()
        elif done.status == "promoted":
            telemetry.ROLLOUT_PROMOTIONS.labels(by).inc()
            telemetry.PROMOTIONS.labels("promoted").inc()

    def decide_by_hand(self, promote: bool, reason: str) -> Rollout:
        """An operator promotes the active rollout's challenger now, or aborts it, at any stage."""
        rollout = self.registry.rollout(self.model_name)
        if rollout is None:
            raise Conflict(f"no rollout of {self.model_name} is active", reason="no_rollout")
        tally, feedback = self.evidence(rollout)
        guards = [g.model_dump(mode="json") for g in judge(rollout, tally, feedback, dt.datetime.now(dt.UTC)).guards]
        what = "promoted" if promote else "aborted"
        reason = f"{what} by an operator in {rollout.stage}: {reason}"
        done = self.registry.step_rollout(rollout.id, rollout.stage or "", what, reason, guards,
                                          challenger={"stage": rollout.stage, **tally.summary()})  # fmt: skip
        if done is None:
            raise Conflict("the rollout changed meanwhile; look again (GET /rollout)", reason="rollout_changed")
        self._count(done, "operator" if done.history[-1].reason == reason else "champion_changed", "operator")
        log.warning("rollout %d of %s: %s", rollout.id, rollout.tag, done.history[-1].reason)
        return done

    def status(self) -> dict | None:
        """The active rollout with its merged counts (None: none is active)."""
        rollout = self.registry.rollout(self.model_name)
        if rollout is None:
            return None
        tally, _ = self.evidence(rollout)
        return {**rollout.model_dump(mode="json"), "fraction": rollout.fraction, "counts": tally.summary()}
