"""The registry against SQLite and against a real PostgreSQL server."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa
from postgres import postgres_server

from service.errors import Conflict, JobConflict, NotFound
from service.retraining import db
from service.retraining.records import Decision
from service.retraining.registry import Registry


@pytest.fixture(scope="module")
def pg_url():
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def registry(request, tmp_path):
    if request.param == "sqlite":
        yield Registry(f"sqlite:///{tmp_path / 'registry.db'}")
        return
    url = request.getfixturevalue("pg_url")
    reg = Registry(url)
    yield reg
    with reg.engine.begin() as conn:  # a clean slate for the next test
        for table in reversed(db.metadata.sorted_tables):
            if table.name != "schema_version":
                conn.execute(table.delete())
    reg.engine.dispose()


def test_schema_is_versioned_and_migration_is_idempotent(registry):
    assert db.migrate(registry.engine) == db.SCHEMA_VERSION  # already there: nothing to do
    with registry.engine.connect() as conn:
        assert db.current_version(conn) == db.SCHEMA_VERSION


def test_first_model_becomes_champion_once(registry):
    assert registry.champion("m") is None
    assert registry.ensure_champion("m", "m:v1") == "m:v1"
    assert registry.ensure_champion("m", "m:v2") == "m:v1"  # a champion exists: unchanged
    assert [e.kind for e in registry.history("m")] == ["initial"]


def test_promote_rollback_is_a_stack(registry):
    registry.ensure_champion("m", "m:v1")
    registry.promote("m", "m:v2", "better", challenger={"accuracy": 0.9}, champion={"accuracy": 0.8})
    registry.promote("m", "m:v3", "better still")
    assert registry.champion("m") == "m:v3"
    with pytest.raises(Conflict):
        registry.promote("m", "m:v3", "again")
    event = registry.rollback("m", "v3 misbehaves")
    assert (event.kind, event.tag, event.previous_tag) == ("rollback", "m:v2", "m:v3")
    assert registry.rollback("m", "and v2").tag == "m:v1"
    with pytest.raises(Conflict, match="no earlier champion"):
        registry.rollback("m", "nothing left")
    kinds = [e.kind for e in registry.history("m")]
    assert kinds == ["rollback", "rollback", "promoted", "promoted", "initial"]
    promoted = registry.history("m")[3]
    assert promoted.challenger == {"accuracy": 0.9} and promoted.champion == {"accuracy": 0.8}


def test_refusal_is_recorded_and_changes_nothing(registry):
    registry.ensure_champion("m", "m:v1")
    registry.refuse("m", "m:v2", "worse", challenger={"accuracy": 0.3}, champion={"accuracy": 0.9}, job_id="j")
    assert registry.champion("m") == "m:v1"
    assert registry.history("m")[0].kind == "refused"


def test_one_active_job_per_model(registry):
    job = registry.create_job("m", "local", {"epochs": 1}, {"name": "m"})
    assert job.status == "queued"
    with pytest.raises(JobConflict) as err:
        registry.create_job("m", "local", {}, {})
    assert err.value.job_id == job.id
    registry.create_job("other", "local", {}, {})  # other model names are independent
    assert registry.start_job(job.id, pid=123, host="h")
    assert not registry.start_job(job.id)  # only from queued
    assert registry.heartbeat(job.id, {"epoch": 1}) is False
    decision = Decision(promote=True, reason="better", challenger={"primary": "accuracy", "accuracy": 0.9})
    assert registry.finish_job(job.id, "succeeded", result_tag="m:v2", decision=decision)
    assert not registry.finish_job(job.id, "failed")  # already ended
    ended = registry.job(job.id)
    assert ended.status == "succeeded" and ended.progress == {"epoch": 1} and ended.finished_at
    assert ended.decision == decision and ended.decision.challenger_score == 0.9
    registry.create_job("m", "local", {}, {})  # the slot is free again


def test_concurrent_job_requests_admit_exactly_one(registry):
    results: list[str] = []

    def attempt() -> None:
        try:
            registry.create_job("race", "local", {}, {})
            results.append("created")
        except JobConflict:
            results.append("conflict")

    threads = [threading.Thread(target=attempt) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["conflict"] * 5 + ["created"]


def test_cancel_queued_and_claims(registry):
    job = registry.create_job("m", "local", {}, {})
    assert registry.request_cancel(job.id).status == "cancelled"
    with pytest.raises(Conflict):
        registry.request_cancel(job.id)
    with pytest.raises(NotFound):
        registry.job("nope")
    assert [j.id for j in registry.claim_unobserved()] == [job.id]
    assert registry.claim_unobserved() == []  # each ended job is counted once


def test_feedback_deduplicates(registry):
    assert registry.add_feedback("m", "a" * 64, "cat", "/f/a.png")
    assert not registry.add_feedback("m", "a" * 64, "dog", "/f/a.png")
    registry.add_feedback("m", "b" * 64, "cat", "/f/b.png")
    assert registry.feedback_counts("m") == {"cat": 2}


def test_a_newer_schema_is_refused(tmp_path):
    reg = Registry(f"sqlite:///{tmp_path / 'r.db'}")
    with reg.engine.begin() as conn:
        conn.execute(sa.insert(db.schema_version).values(version=db.SCHEMA_VERSION + 1))
    with pytest.raises(RuntimeError, match="newer than this code"):
        db.migrate(reg.engine)


def test_promote_records_the_exact_stored_version_never_an_alias(trained_model, tmp_path):
    """name:latest, or a version in other letter case, is resolved before anything is recorded: workers compare
    the champion with the tag they serve, so an alias would make every worker reload at every poll."""
    from service.errors import InvalidInput, NotFound
    from service.retraining.operations import Operations
    from service.settings import Settings
    from training import store

    tag, _ = trained_model
    name, version = tag.split(":")
    registry = Registry(f"sqlite:///{tmp_path / 'r.db'}")

    class Waker:  # the serving state's one method promote calls: wake the watcher
        def wake(self) -> None:
            pass

    ops = Operations(Settings(model_name=name, jobs_dir=tmp_path / "jobs"), registry, Waker())
    latest = str(store.get(f"{name}:latest").tag)
    for alias, exact in (
        (f"{name}:latest", latest),
        (f"{name}:{version.upper()}", tag),
        (f"{name.upper()}:{version}", tag),
    ):
        if registry.champion(name) == exact:  # the registry compares exact tags: the alias is that champion
            with pytest.raises(Conflict, match=f"{exact} is already the champion"):
                ops.promote(alias, "test")
        else:
            ops.promote(alias, "test")
        assert registry.champion(name) == exact
    with pytest.raises(NotFound):
        ops.promote(f"{name}:doesnotexist", "test")
    with pytest.raises(InvalidInput, match="not a version of"):
        ops.promote("other:latest", "test")


def test_a_challenger_judged_against_one_champion_never_replaces_another(registry):
    registry.ensure_champion("m", "m:v1")
    registry.promote("m", "m:v2", "promoted by hand while a job trained")
    with pytest.raises(Conflict) as err:
        registry.promote("m", "m:v3", "passed the gate against v1", replacing="m:v1")
    assert err.value.reason == "champion_changed" and registry.champion("m") == "m:v2"
    assert registry.promote("m", "m:v3", "passed the gate against v2", replacing="m:v2").tag == "m:v3"


def test_policies_jobs_and_feedback_the_autopilot_reads(registry):
    """Policies set at run time round-trip, jobs remember their trigger, and feedback counts from a time."""
    assert registry.policies("m") is None and registry.last_job_at("m") is None
    registry.set_policies("m", {"feedback_labels": 3})
    registry.set_policies("m", {"drift_minutes": 5})
    assert registry.policies("m") == {"drift_minutes": 5}
    registry.set_policies("m", None)
    assert registry.policies("m") is None
    registry.add_feedback("m", "a" * 64, "red", "/f/a.png")
    trigger = {"policy": "feedback", "reason": "1 label", "evidence": {"new_feedback": 1}}
    job = registry.create_job("m", "local", {}, {}, trigger=trigger)
    assert job.trigger is not None and job.trigger.model_dump() == trigger
    since = registry.last_job_at("m")
    assert since is not None and since.tzinfo is not None
    assert registry.feedback_since("m", None) == 1 and registry.feedback_since("m", since) == 0
    registry.add_feedback("m", "b" * 64, "blue", "/f/b.png")
    assert registry.feedback_since("m", since) == 1
    registry.ensure_champion("m", "m:v1")
    assert registry.champion_since("m") is not None
