"""The rollout's judgement on constructed counts (guards, stage ends, the plan's last step), and the registry
and conductor that apply it once (real SQLite, two workers' reports, two deciding threads). The whole path
through a real two-worker server under load is in tests/test_rollout_service.py."""

from __future__ import annotations

import datetime as dt
import threading

import pytest

from service.retraining.conductor import Conductor
from service.retraining.records import Rollout, RolloutPlan, StagePlan
from service.retraining.registry import Registry
from service.retraining.rollout import EDGES_MS, FeedbackScore, Side, Tally, judge

T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
PLAN = RolloutPlan(stages=["shadow", "canary"], shadow=StagePlan(fraction=0.5, min_requests=300, min_minutes=2),
                   canary=StagePlan(fraction=0.1, min_requests=200, min_minutes=2))  # fmt: skip


def rollout(stage: str = "shadow", plan: RolloutPlan = PLAN, minutes_in: float = 5) -> Rollout:
    at = (T0 - dt.timedelta(minutes=minutes_in)).isoformat()
    return Rollout(id=1, model_name="m", tag="m:new", champion_tag="m:old", status="active", stage=stage, plan=plan,
                   started_at=at, stage_started_at=at)  # fmt: skip


def side(images: int, ms: float = 4.0, low: int = 0, errors: int = 0) -> Side:
    s = Side()
    for i in range(images - errors):
        s.answered(ms / 1000, i < low)
    for _ in range(errors):
        s.failed()
    return s


def tally(n: int = 400, disagreed: int = 0, **challenger) -> Tally:
    return Tally(champion=side(n), challenger=side(n, **challenger), compared=n, disagreed=disagreed)


def guard(step, name):
    return next(g for g in step.guards if g.guard == name)


def test_a_healthy_challenger_moves_on_when_the_stage_minimums_are_met():
    step = judge(rollout("shadow"), tally(400, disagreed=20), None, T0)
    assert step.action == "advance" and step.to_stage == "canary", step.reason
    assert guard(step, "disagreement").value == 0.05 and guard(step, "disagreement").ok
    assert guard(step, "latency_ratio").ok is None  # never judged on a low-priority shadow
    step = judge(rollout("canary"), tally(400), None, T0)
    assert step.action == "promote" and "promoted to champion" in step.reason
    held = judge(rollout("canary", PLAN.model_copy(update={"promote": False})), tally(400), None, T0)
    assert held.action == "wait" and "waiting for an operator" in held.reason


def test_a_stage_waits_for_its_requests_its_minutes_and_its_guards():
    assert "250 of 300 comparisons" in judge(rollout("shadow"), tally(250), None, T0).reason
    assert "1.0 of 2 minutes" in judge(rollout("shadow", minutes_in=1), tally(400), None, T0).reason
    quick = PLAN.model_copy(update={"shadow": StagePlan(fraction=0.5, min_requests=10, min_minutes=0)})
    step = judge(rollout("shadow", quick), tally(50), None, T0)  # the guards need 100 each
    assert step.action == "wait" and "guards not yet judged: error_rate" in step.reason


@pytest.mark.parametrize(
    ("stage", "counts", "failed"),
    [
        ("shadow", tally(400, disagreed=240), "disagreement"),
        ("shadow", tally(400, errors=40), "error_rate"),
        ("shadow", tally(400, low=200), "low_confidence_increase"),
        ("canary", tally(400, ms=40.0), "latency_ratio"),
    ],
)
def test_a_failing_guard_aborts_with_its_reason(stage, counts, failed):
    step = judge(rollout(stage), counts, None, T0)
    assert step.action == "abort" and step.failed == failed, step.reason
    assert f"the {failed.replace('_', ' ')} guard failed" in step.reason
    g = guard(step, failed)
    print(f"{failed}: {step.reason}")
    assert g.ok is False and g.value is not None


def test_feedback_accuracy_is_judged_once_both_sides_have_enough_labels():
    worse = {"challenger": FeedbackScore(40, 28), "champion": FeedbackScore(40, 36)}  # 70% vs 90%
    step = judge(rollout("canary"), tally(400), worse, T0)
    assert (
        step.action == "abort" and step.failed == "feedback_accuracy" and guard(step, "feedback_accuracy").value == -0.2
    )
    few = {"challenger": FeedbackScore(10, 1), "champion": FeedbackScore(40, 36)}
    assert judge(rollout("canary"), tally(400), few, T0).action == "promote"


def test_an_observing_plan_never_aborts():
    watch = PLAN.model_copy(update={"guards": None, "stages": ["shadow"], "promote": False})
    step = judge(rollout("shadow", watch), tally(400, disagreed=400), None, T0)
    assert step.action == "wait" and guard(step, "disagreement").ok is False


def test_latency_quantiles_come_from_the_merged_histogram():
    s = side(990, ms=2.0)
    s.merge(side(10, ms=500.0))
    assert s.quantile_ms(0.5) == pytest.approx(2.0, rel=0.25)
    assert s.quantile_ms(0.995) == pytest.approx(500, rel=0.25)
    assert Side().quantile_ms(0.99) is None and len(s.latency) == len(EDGES_MS) + 1
    assert Tally.from_json(Tally(champion=s).to_json()).champion.latency == s.latency


# ---------------------------------------------------------------- the registry and the conductor
@pytest.fixture
def registry(tmp_path) -> Registry:
    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
    registry.ensure_champion("m", "m:old")
    return registry


def test_one_rollout_at_a_time_and_each_decision_taken_once(registry):
    started = registry.start_rollout("m", "m:new", PLAN.model_dump(mode="json"), "gate passed")
    assert started.stage == "shadow" and started.champion_tag == "m:old" and registry.rollout("m").id == started.id
    with pytest.raises(Exception, match="still active"):
        registry.start_rollout("m", "m:other", PLAN.model_dump(mode="json"), "another")
    moved = registry.step_rollout(started.id, "shadow", "advanced", "shadow done", [], to_stage="canary")
    assert moved.stage == "canary" and [s.action for s in moved.history] == ["started", "advanced"]
    assert registry.step_rollout(started.id, "shadow", "aborted", "late", []) is None  # decided already
    done = registry.step_rollout(started.id, "canary", "promoted", "canary done", [])
    assert done.status == "promoted" and registry.champion("m") == "m:new" and registry.rollout("m") is None


def test_a_rollout_whose_champion_changed_is_aborted_not_promoted(registry):
    started = registry.start_rollout("m", "m:new", PLAN.model_dump(mode="json"), "gate passed")
    registry.promote("m", "m:third", "by hand")
    done = registry.step_rollout(started.id, "shadow", "promoted", "promote", [])
    assert done.status == "aborted" and "champion changed" in done.history[-1].reason
    assert registry.champion("m") == "m:third"


def test_the_conductor_merges_every_workers_counts_and_decides_once(registry):
    plan = PLAN.model_copy(update={"shadow": StagePlan(fraction=0.5, min_requests=300, min_minutes=0)})
    started = registry.start_rollout("m", "m:new", plan.model_dump(mode="json"), "gate passed")
    registry.report_rollout(started.id, "shadow", "a:1", tally(200, disagreed=5).to_json())
    conductors = [Conductor("m", registry, PLAN) for _ in range(2)]
    for i, c in enumerate(conductors):
        c.holder = f"worker-{i}"
    assert conductors[0].tick() is None  # 200 of 300 comparisons: waits
    assert registry.rollout("m").guards  # the guards as last judged, for every worker to show
    registry.report_rollout(started.id, "shadow", "b:2", tally(200, disagreed=5).to_json())
    registry.report_rollout(started.id, "shadow", "a:1", tally(250, disagreed=5).to_json())  # replaces a's first
    assert Tally.merged(registry.rollout_tallies(started.id, "shadow")).compared == 450
    results = []
    threads = [threading.Thread(target=lambda c=c: results.append(c.tick())) for c in conductors]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    moved = [r for r in results if r is not None]
    assert len(moved) == 1 and moved[0].stage == "canary"  # one worker held the lease; one decision
    assert [s.action for s in registry.rollout("m").history] == ["started", "advanced"]


def test_feedback_on_answered_images_scores_each_side(registry):
    started = registry.start_rollout("m", "m:new", PLAN.model_dump(mode="json"), "gate passed")
    answers = [(f"{i:064x}", role, "cat" if (role == "champion" or i % 2) else "dog")
               for i in range(4) for role in ("champion", "challenger")]  # fmt: skip
    registry.report_rollout(started.id, "shadow", "a:1", Tally().to_json(), answers)
    registry.report_rollout(started.id, "shadow", "a:1", Tally().to_json(), answers[:2])  # kept once
    for i in range(4):
        registry.add_feedback("m", f"{i:064x}", "cat", f"/fb/{i}.png")
    assert registry.rollout_feedback(started.id, "m") == {"champion": (4, 4), "challenger": (4, 2)}


def test_an_operator_promotes_or_aborts_at_any_stage(registry):
    conductor = Conductor("m", registry, PLAN)
    conductor.start("m:new", "by hand")
    aborted = conductor.decide_by_hand(False, "not today")
    assert aborted.status == "aborted" and "by an operator in shadow: not today" in aborted.history[-1].reason
    conductor.start("m:new", "again")
    promoted = conductor.decide_by_hand(True, "looks good")
    assert promoted.status == "promoted" and registry.champion("m") == "m:new"
    with pytest.raises(Exception, match="no rollout"):
        conductor.decide_by_hand(True, "nothing there")


def test_a_job_whose_challenger_passes_the_gate_starts_a_rollout_instead_of_promoting(trained_model, tmp_path):
    from harness.variants import discard, variant
    from service.retraining.job import judge as judge_job
    from service.retraining.records import RetrainRequest
    from service.settings import Settings

    champion = trained_model[0]
    name = champion.split(":")[0]
    challenger = variant(champion)  # an exact copy: the gate cannot find it worse
    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
    registry.ensure_champion(name, champion)
    settings = Settings(model_name=name, evaluation_share=0.0, rollout=RolloutPlan(stages=["shadow", "canary"]))
    request = RetrainRequest().model_dump(mode="json")
    job = registry.create_job(name, "local", request, {}, champion_tag=champion)
    decision = judge_job(registry, settings, job, challenger)
    assert decision.promote and not decision.promoted and decision.rollout_id is not None, decision.reason
    assert "rolling out: shadow -> canary -> champion" in decision.reason
    rollout = registry.rollout(name)
    assert rollout.tag == challenger and rollout.stage == "shadow" and rollout.job_id == job.id
    assert registry.champion(name) == champion  # still serving until the rollout says otherwise

    direct = RetrainRequest(rollout=RolloutPlan()).model_dump(mode="json")  # the request overrides the settings
    registry.step_rollout(rollout.id, "shadow", "aborted", "test", [])
    registry.finish_job(job.id, "succeeded")
    job = registry.create_job(name, "local", direct, {}, champion_tag=champion)
    assert judge_job(registry, settings, job, challenger).promoted and registry.champion(name) == challenger
    discard(challenger)
