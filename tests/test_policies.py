"""Retrain policies: the decision on constructed signals, and the autopilot against a real registry
(SQLite) with drift statuses written by hand; the whole loop through a real server is in
tests/test_drift_service.py."""

from __future__ import annotations

import datetime as dt
import threading

import pytest

from service.inference.drift import DriftStatus
from service.retraining.policies import Autopilot, Signals, due
from service.retraining.records import RetrainPolicies, RetrainRequest, Trigger
from service.retraining.registry import Registry

T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def status(detected: bool = False, low_share: float = 0.0, images: int = 100) -> DriftStatus:
    return DriftStatus(score=3.0 if detected else 0.4, statistic=0.1, threshold=0.03,
                       p_value=0.005 if detected else 0.6, detected=detected, images=images, window=100,
                       class_shift=0.2, mean_confidence=0.6, low_confidence_share=low_share,
                       reference_confidence=0.9, alpha=0.01, method="MMD")  # fmt: skip


def signals(at: dt.datetime = T0, **kw) -> Signals:
    base = dict(now=at, last_job_at=None, champion_since=T0 - dt.timedelta(hours=1), new_feedback=0, drift=status(),
                drift_since=None, low_confidence_since=None)  # fmt: skip
    return Signals(**(base | kw))


def test_everything_is_off_by_default():
    policies = RetrainPolicies()
    assert not policies.enabled
    long_ago = T0 - dt.timedelta(days=9)
    busy = signals(new_feedback=10**6, drift=status(True), drift_since=long_ago, low_confidence_since=long_ago,
                   champion_since=long_ago)  # fmt: skip
    assert due(policies, busy) is None


def test_each_policy_fires_on_its_own_evidence():
    hour = dt.timedelta(hours=1)
    trigger = due(RetrainPolicies(schedule_hours=24), signals(last_job_at=T0 - 25 * hour))
    assert trigger is not None and trigger.policy == "schedule" and "25.0 h" in trigger.reason
    assert due(RetrainPolicies(schedule_hours=24), signals(last_job_at=T0 - 23 * hour)) is None
    assert due(RetrainPolicies(schedule_hours=1), signals(last_job_at=None)).policy == "schedule"  # since promotion

    trigger = due(RetrainPolicies(feedback_labels=50), signals(new_feedback=50))
    assert trigger.policy == "feedback" and trigger.evidence["new_feedback"] == 50
    assert due(RetrainPolicies(feedback_labels=50), signals(new_feedback=49)) is None

    drifting = signals(drift=status(True), drift_since=T0 - dt.timedelta(minutes=31))
    trigger = due(RetrainPolicies(drift_minutes=30), drifting)
    assert trigger.policy == "drift" and trigger.evidence["drift"]["detected"] and "31.0 min" in trigger.reason
    assert due(RetrainPolicies(drift_minutes=60), drifting) is None

    unsure = signals(drift=status(low_share=0.6), low_confidence_since=T0 - dt.timedelta(minutes=10))
    trigger = due(RetrainPolicies(low_confidence_share=0.5, low_confidence_minutes=10), unsure)
    assert trigger.policy == "low_confidence" and "60%" in trigger.reason


def test_cooldown_counts_from_the_last_job_of_any_kind():
    policies = RetrainPolicies(feedback_labels=1, cooldown_minutes=60)
    assert due(policies, signals(new_feedback=5, last_job_at=T0 - dt.timedelta(minutes=59))) is None
    assert due(policies, signals(new_feedback=5, last_job_at=T0 - dt.timedelta(minutes=61))).policy == "feedback"


def test_policies_refuse_nonsense():
    with pytest.raises(ValueError):
        RetrainPolicies(low_confidence_share=1.5)
    with pytest.raises(ValueError):
        RetrainPolicies(feedback_labels=0)
    with pytest.raises(ValueError):
        RetrainPolicies(every_day=True)


class Recorder:
    """Stands in for Operations.start_retrain: creates the job in the real registry and remembers it."""

    def __init__(self, registry: Registry):
        self.registry = registry
        self.started: list[tuple[RetrainRequest, Trigger]] = []

    def __call__(self, request: RetrainRequest, trigger: Trigger):
        self.started.append((request, trigger))
        return self.registry.create_job("m", "local", request.model_dump(), {}, trigger=trigger.model_dump())


def test_autopilot_waits_for_sustained_drift_then_starts_one_job(tmp_path):
    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
    registry.ensure_champion("m", "m:v1")
    drift = [status()]
    start = Recorder(registry)
    pilot = Autopilot("m", RetrainPolicies(drift_minutes=0, cooldown_minutes=60), registry, lambda: drift[0], start)
    assert pilot.tick() is None and pilot.drift_since is None
    drift[0] = status(detected=True)
    job = pilot.tick()
    assert job is not None and job.trigger.policy == "drift" and pilot.drift_since is not None
    assert pilot.tick() is None  # the job is active and the cool-down runs
    assert len(start.started) == 1


def test_runtime_policies_override_the_settings_and_two_workers_start_one_job(tmp_path):
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    registry = Registry(url)
    registry.ensure_champion("m", "m:v1")
    for i in range(3):
        registry.add_feedback("m", f"{i}" * 64, "red", f"/f/{i}.png")
    pilots = [Autopilot("m", RetrainPolicies(), Registry(url), status, Recorder(registry)) for _ in range(2)]
    assert [p.tick() for p in pilots] == [None, None]  # off in the settings
    registry.set_policies("m", RetrainPolicies(feedback_labels=3).model_dump(mode="json"))
    assert pilots[0].policies()[1] == "admin"
    results: list = []
    threads = [threading.Thread(target=lambda p=p: results.append(p.tick())) for p in pilots]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    jobs = [j for j in results if j is not None]
    assert len(jobs) == 1 and jobs[0].trigger.policy == "feedback"
    assert len(registry.jobs("m")) == 1
