"""The model registry: which version is champion, every promotion, refusal and rollback, every job.

Methods over :mod:`service.retraining.db` tables returning the typed records of
:mod:`service.retraining.records`; every write is one transaction. Shared by the service workers (any number,
any replica) and the training job processes. Errors are domain errors (:mod:`service.errors`).

One class of about 320 lines on purpose: the champion stack, the jobs, the feedback and the mirror's leases
share its engine, its locking and its retry-on-outage wrapper, and every method is one short transaction.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from service.errors import Conflict, JobConflict, NotFound, RegistryUnavailable
from service.retraining import db
from service.retraining.records import ACTIVE, TERMINAL, Capture, ChampionEvent, Job, Rollout

log = logging.getLogger(__name__)
RETRIES = 3

ANY = object()  # promote(..., replacing=ANY): whatever the champion is now


def holder_id() -> str:
    """This process, as leases and per-worker rows name it: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite gives naive datetimes back: every stored time is UTC."""
    return value if value is None or value.tzinfo else value.replace(tzinfo=dt.UTC)


def _plain(row: Any) -> dict[str, Any]:
    """A row as JSON-able dict: datetimes as ISO 8601 UTC strings."""
    out = dict(row._mapping)
    for key, value in out.items():
        if isinstance(value, dt.datetime):
            out[key] = _aware(value).isoformat()
    return out


def _json(values: dict[str, Any]) -> dict[str, Any]:
    """Column values with records (a gate decision, say) as their JSON."""
    return {k: v.model_dump(mode="json") if hasattr(v, "model_dump") else v for k, v in values.items()}


def retrying(fn: Callable) -> Callable:
    """Retry a registry call when the database is unreachable or locked; then :class:`RegistryUnavailable`.

    Each call is one transaction (or none), so a failed attempt left nothing behind and may be repeated.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        for attempt in range(RETRIES):
            try:
                return fn(*args, **kwargs)
            except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
                if attempt == RETRIES - 1:
                    reason = str(exc.orig if getattr(exc, "orig", None) else exc).splitlines()[0]
                    raise RegistryUnavailable(f"the registry database is unavailable ({reason}); serving goes on "
                                              "with the current model: retry shortly") from exc  # fmt: skip
                log.warning("registry %s failed (%s); retrying", fn.__name__, type(exc).__name__)
                time.sleep(0.2 * 2**attempt)
        raise AssertionError("unreachable")

    return wrapper


class Registry:
    def __init__(self, engine: Engine | str | None = None, timeout: float = 5.0):
        self.engine = engine if isinstance(engine, Engine) else db.create_db_engine(engine, timeout)

    # ------------------------------------------------------------ champion
    def champion(self, model_name: str) -> str | None:
        with self.engine.connect() as conn:
            row = self._champion_row(conn, model_name)
        return row["tag"] if row else None

    @staticmethod
    def _champion_row(conn: Connection, model_name: str) -> Any:
        t = db.champions
        query = (sa.select(t).where(t.c.model_name == model_name, t.c.rolled_back_at.is_(None))
                 .order_by(t.c.id.desc()).limit(1))  # fmt: skip
        row = conn.execute(query).first()
        return row._mapping if row else None

    def ensure_champion(self, model_name: str, tag: str) -> str:
        """The champion, making ``tag`` the first one when there is none yet."""
        with self.engine.begin() as conn:
            db.lock(conn, f"champion:{model_name}")
            row = self._champion_row(conn, model_name)
            if row is not None:
                return row["tag"]
            self._push(conn, model_name, tag, "initial", "first trained model becomes champion", None)
            return tag

    def promote(
        self,
        model_name: str,
        tag: str,
        reason: str,
        *,
        kind: str = "promoted",
        challenger: dict | None = None,
        champion: dict | None = None,
        job_id: str | None = None,
        replacing: Any = ANY,
    ) -> ChampionEvent:
        """Make ``tag`` the champion; returns the recorded event. With ``replacing`` (a tag, or None for "no
        champion yet"), only if that is still the champion: a challenger judged against one champion never
        replaces another (:class:`Conflict`, reason ``champion_changed``)."""
        with self.engine.begin() as conn:
            db.lock(conn, f"champion:{model_name}")
            current = self._champion_row(conn, model_name)
            if current is not None and current["tag"] == tag:
                raise Conflict(f"{tag} is already the champion of {model_name}", reason="already_champion")
            now_tag = current["tag"] if current else None
            if replacing is not ANY and replacing != now_tag:
                raise Conflict(f"the champion of {model_name} changed from {replacing} to {now_tag} since {tag} was "
                               "judged; judge it again or promote it by hand", reason="champion_changed")  # fmt: skip
            return self._push(conn, model_name, tag, kind, reason, current["tag"] if current else None,
                              challenger=challenger, champion=champion, job_id=job_id)  # fmt: skip

    def _push(self, conn: Connection, model_name: str, tag: str, kind: str, reason: str, previous: str | None,
              **extra: Any) -> ChampionEvent:  # fmt: skip
        event = self._event(conn, model_name, kind, tag, previous, reason, **extra)
        conn.execute(db.champions.insert().values(model_name=model_name, tag=tag, promoted_at=now(),
                                                  event_id=event.id))  # fmt: skip
        return event

    def refuse(self, model_name: str, tag: str, reason: str, *, challenger: dict, champion: dict | None,
               job_id: str | None = None) -> ChampionEvent:  # fmt: skip
        with self.engine.begin() as conn:
            current = self._champion_row(conn, model_name)
            return self._event(conn, model_name, "refused", tag, current["tag"] if current else None, reason,
                               challenger=challenger, champion=champion, job_id=job_id)  # fmt: skip

    def rollback(self, model_name: str, reason: str) -> ChampionEvent:
        """Pop the champion: the one before it serves again. Raises :class:`Conflict` with nothing to pop."""
        with self.engine.begin() as conn:
            db.lock(conn, f"champion:{model_name}")
            t = db.champions
            live = conn.execute(sa.select(t).where(t.c.model_name == model_name, t.c.rolled_back_at.is_(None))
                                .order_by(t.c.id.desc()).limit(2)).all()  # fmt: skip
            if len(live) < 2:
                raise Conflict(f"{model_name} has no earlier champion to roll back to", reason="nothing_to_roll_back")
            current, previous = live[0]._mapping, live[1]._mapping
            conn.execute(t.update().where(t.c.id == current["id"]).values(rolled_back_at=now()))
            return self._event(conn, model_name, "rollback", previous["tag"], current["tag"], reason)

    def _event(self, conn: Connection, model_name: str, kind: str, tag: str | None, previous: str | None,
               reason: str, **extra: Any) -> ChampionEvent:  # fmt: skip
        values = dict(model_name=model_name, kind=kind, tag=tag, previous_tag=previous, reason=reason,
                      created_at=now(), **extra)  # fmt: skip
        event_id = conn.execute(db.events.insert().values(**values)).inserted_primary_key[0]
        row = conn.execute(sa.select(db.events).where(db.events.c.id == event_id)).one()
        return ChampionEvent.model_validate(_plain(row))

    def history(self, model_name: str, limit: int = 100) -> list[ChampionEvent]:
        """Champion events, newest first."""
        t = db.events
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t).where(t.c.model_name == model_name).order_by(t.c.id.desc()).limit(limit))
            return [ChampionEvent.model_validate(_plain(r)) for r in rows]

    def champion_tags(self, model_name: str) -> list[str]:
        """Every tag that has been champion (and not rolled back), oldest first."""
        t = db.champions
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t.c.tag).where(t.c.model_name == model_name, t.c.rolled_back_at.is_(None))
                                .order_by(t.c.id)).scalars()  # fmt: skip
            return list(rows)

    # ------------------------------------------------------------ jobs
    def create_job(self, model_name: str, backend: str, request: dict, config: dict, *,
                   champion_tag: str | None = None, holdout: str | None = None,
                   trigger: dict | None = None) -> Job:  # fmt: skip
        """A new queued job, built against ``champion_tag`` with ``holdout`` kept out of its training. Raises
        :class:`JobConflict` while another job for ``model_name`` is active."""
        job_id = uuid.uuid4().hex[:12]
        try:
            with self.engine.begin() as conn:
                conn.execute(db.active_jobs.insert().values(model_name=model_name, job_id=job_id))
                conn.execute(db.jobs.insert().values(id=job_id, model_name=model_name, status="queued",
                                                     backend=backend, request=request, config=config,
                                                     champion_tag=champion_tag, holdout=holdout,
                                                     trigger=trigger, created_at=now(), cancel_requested=False,
                                                     observed=False))  # fmt: skip
        except sa.exc.IntegrityError:
            with self.engine.connect() as conn:
                running = conn.execute(sa.select(db.active_jobs.c.job_id)
                                       .where(db.active_jobs.c.model_name == model_name)).scalar()  # fmt: skip
            raise JobConflict(f"a training job for {model_name} is already active: {running}; wait for it or cancel "
                              f"it (POST /jobs/{running}/cancel)", job_id=running or "") from None  # fmt: skip
        return self.job(job_id)

    def job(self, job_id: str) -> Job:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(db.jobs).where(db.jobs.c.id == job_id)).first()
        if row is None:
            raise NotFound(f"no job {job_id!r}")
        return Job.model_validate(_plain(row))

    def jobs(self, model_name: str | None = None, status: str | None = None, limit: int = 50) -> list[Job]:
        t = db.jobs
        query = sa.select(t).order_by(t.c.created_at.desc()).limit(limit)
        if model_name:
            query = query.where(t.c.model_name == model_name)
        if status:
            query = query.where(t.c.status == status)
        with self.engine.connect() as conn:
            return [Job.model_validate(_plain(r)) for r in conn.execute(query)]

    def update_job(self, job_id: str, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(db.jobs.update().where(db.jobs.c.id == job_id).values(**_json(values)))

    def start_job(self, job_id: str, **values: Any) -> bool:
        """queued -> running; False when the job is no longer queued (cancelled meanwhile)."""
        t = db.jobs
        with self.engine.begin() as conn:
            started = now()
            query = t.update().where(t.c.id == job_id, t.c.status == "queued")
            result = conn.execute(query.values(status="running", started_at=started, heartbeat_at=started, **values))
            return result.rowcount == 1

    def heartbeat(self, job_id: str, progress: dict | None = None) -> bool:
        """Record progress; returns whether a cancel was requested."""
        t = db.jobs
        values: dict[str, Any] = {"heartbeat_at": now()}
        if progress is not None:
            values["progress"] = progress
        with self.engine.begin() as conn:
            conn.execute(t.update().where(t.c.id == job_id).values(**values))
            return bool(conn.execute(sa.select(t.c.cancel_requested).where(t.c.id == job_id)).scalar())

    def finish_job(self, job_id: str, status: str, **values: Any) -> bool:
        """Move an active job to a terminal ``status``; False when it had already ended."""
        assert status in TERMINAL, status
        t = db.jobs
        with self.engine.begin() as conn:
            done = conn.execute(t.update().where(t.c.id == job_id, t.c.status.in_(ACTIVE))
                                .values(status=status, finished_at=now(), **_json(values))).rowcount == 1  # fmt: skip
            conn.execute(db.active_jobs.delete().where(db.active_jobs.c.job_id == job_id))
            return done

    def request_cancel(self, job_id: str) -> Job:
        job = self.job(job_id)
        if not job.active:
            raise Conflict(f"job {job_id} has already ended ({job.status})", reason="job_ended")
        self.update_job(job_id, cancel_requested=True)
        if job.status == "queued":
            self.finish_job(job_id, "cancelled", error="cancelled before it started")
        return self.job(job_id)

    def claim_unobserved(self) -> list[Job]:
        """Ended jobs no worker has counted in its metrics yet; each is handed to exactly one caller."""
        t = db.jobs
        claimed = []
        with self.engine.begin() as conn:
            ids = conn.execute(sa.select(t.c.id).where(t.c.status.in_(TERMINAL), t.c.observed.is_(False))).scalars()
            for job_id in list(ids):
                won = conn.execute(t.update().where(t.c.id == job_id, t.c.observed.is_(False))
                                   .values(observed=True)).rowcount == 1  # fmt: skip
                if won:
                    claimed.append(Job.model_validate(_plain(conn.execute(sa.select(t).where(t.c.id == job_id)).one())))
        return claimed

    # ------------------------------------------------------------ mirroring (MLflow) and leases
    def unmirrored_events(self, model_name: str, limit: int = 100) -> list[ChampionEvent]:
        """Events not yet written to the mirror, oldest first."""
        t = db.events
        query = (sa.select(t).where(t.c.model_name == model_name, t.c.mirrored_at.is_(None))
                 .order_by(t.c.id).limit(limit))  # fmt: skip
        with self.engine.connect() as conn:
            return [ChampionEvent.model_validate(_plain(r)) for r in conn.execute(query)]

    def mark_mirrored(self, event_ids: list[int]) -> None:
        with self.engine.begin() as conn:
            conn.execute(db.events.update().where(db.events.c.id.in_(event_ids)).values(mirrored_at=now()))

    def lease(self, key: str, holder: str, seconds: float) -> bool:
        """Hold ``key`` for ``seconds`` (renewing it when ``holder`` has it); False while another holds it."""
        t = db.leases
        until = now() + dt.timedelta(seconds=seconds)
        with self.engine.begin() as conn:
            db.lock(conn, f"lease:{key}")
            row = conn.execute(sa.select(t).where(t.c.key == key)).first()
            if row is None:
                conn.execute(t.insert().values(key=key, holder=holder, expires_at=until))
                return True
            expires = _aware(row.expires_at)
            if row.holder != holder and expires > now():
                return False
            conn.execute(t.update().where(t.c.key == key).values(holder=holder, expires_at=until))
            return True

    def last_job_at(self, model_name: str) -> dt.datetime | None:
        """When the newest job of ``model_name`` was created (any status), or None."""
        t = db.jobs
        with self.engine.connect() as conn:
            return _aware(conn.execute(sa.select(sa.func.max(t.c.created_at)).where(t.c.model_name == model_name))
                          .scalar())  # fmt: skip

    def champion_since(self, model_name: str) -> dt.datetime | None:
        """When the current champion became champion, or None."""
        with self.engine.connect() as conn:
            row = self._champion_row(conn, model_name)
        return _aware(row["promoted_at"]) if row else None

    # ------------------------------------------------------------ rollouts
    def rollout(self, model_name: str) -> Rollout | None:
        """The active rollout of ``model_name``, or None."""
        t, a = db.rollouts, db.active_rollouts
        query = sa.select(t).join(a, a.c.rollout_id == t.c.id).where(a.c.model_name == model_name)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return Rollout.model_validate(_plain(row)) if row else None

    def rollout_by_id(self, rollout_id: int) -> Rollout:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(db.rollouts).where(db.rollouts.c.id == rollout_id)).first()
        if row is None:
            raise NotFound(f"no rollout {rollout_id}", reason="rollout_not_found")
        return Rollout.model_validate(_plain(row))

    def rollouts(self, model_name: str, limit: int = 20) -> list[Rollout]:
        """Rollouts of ``model_name``, newest first."""
        t = db.rollouts
        query = sa.select(t).where(t.c.model_name == model_name).order_by(t.c.id.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [Rollout.model_validate(_plain(r)) for r in conn.execute(query)]

    def start_rollout(self, model_name: str, tag: str, plan: dict, reason: str, *,
                      job_id: str | None = None) -> Rollout:  # fmt: skip
        """Start ``tag`` on the plan's first stage against the champion of this moment. Raises
        :class:`Conflict` while another rollout of ``model_name`` is active, or when ``tag`` is the champion."""
        stage = plan["stages"][0]
        with self.engine.begin() as conn:
            db.lock(conn, f"champion:{model_name}")
            champion = self._champion_row(conn, model_name)
            if champion is not None and champion["tag"] == tag:
                raise Conflict(f"{tag} is already the champion of {model_name}", reason="already_champion")
            active = conn.execute(sa.select(db.active_rollouts.c.rollout_id)
                                  .where(db.active_rollouts.c.model_name == model_name)).scalar()  # fmt: skip
            if active is not None:
                raise Conflict(f"rollout {active} of {model_name} is still active; promote or abort it first "
                               "(POST /rollout/promote, POST /rollout/abort)", reason="rollout_active")  # fmt: skip
            at = now()
            step = {"at": at.isoformat(), "action": "started", "stage": stage, "reason": reason, "guards": []}
            rollout_id = conn.execute(db.rollouts.insert().values(
                model_name=model_name, tag=tag, champion_tag=champion["tag"] if champion else None, status="active",
                stage=stage, plan=plan, job_id=job_id, reason=reason, started_at=at, stage_started_at=at, guards=[],
                history=[step])).inserted_primary_key[0]  # fmt: skip
            conn.execute(db.active_rollouts.insert().values(model_name=model_name, rollout_id=rollout_id))
        return self.rollout_by_id(rollout_id)

    def step_rollout(self, rollout_id: int, stage: str, action: str, reason: str, guards: list[dict],
                     to_stage: str | None = None, challenger: dict | None = None) -> Rollout | None:  # fmt: skip
        """Take one decision on an active rollout still in ``stage``: ``advanced`` to ``to_stage``,
        ``promoted`` (the challenger becomes champion in the same transaction, if the champion it was compared
        with still is) or ``aborted``. None when it is no longer there: someone decided first, and every
        decision is taken once."""
        t = db.rollouts
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(t).where(t.c.id == rollout_id)).first()
            if row is None or row.status != "active" or row.stage != stage:
                return None
            db.lock(conn, f"champion:{row.model_name}")
            at = now()
            values: dict[str, Any] = {"guards": guards}
            if action == "promoted":
                current = self._champion_row(conn, row.model_name)
                current_tag = current["tag"] if current else None
                if current_tag != row.champion_tag:
                    action = "aborted"
                    reason = (f"aborted: the champion changed from {row.champion_tag} to {current_tag} during the "
                              "rollout; the comparison no longer holds")  # fmt: skip
                else:
                    self._push(conn, row.model_name, row.tag, "promoted", reason, current_tag,
                               challenger=challenger, job_id=row.job_id)  # fmt: skip
            if action == "advanced":
                values.update(stage=to_stage, stage_started_at=at)
            else:
                values.update(status=action, stage=None, ended_at=at)
                conn.execute(db.active_rollouts.delete().where(db.active_rollouts.c.rollout_id == rollout_id))
            step = {"at": at.isoformat(), "action": action, "stage": to_stage or stage, "reason": reason,
                    "guards": guards}  # fmt: skip
            conn.execute(t.update().where(t.c.id == rollout_id).values(history=[*row.history, step], **values))
        return self.rollout_by_id(rollout_id)

    def judged_rollout(self, rollout_id: int, guards: list[dict]) -> None:
        """Keep the guards as last judged (every worker shows them)."""
        with self.engine.begin() as conn:
            conn.execute(db.rollouts.update().where(db.rollouts.c.id == rollout_id).values(guards=guards))

    def report_rollout(self, rollout_id: int, stage: str, worker: str, tally: dict,
                       answers: list[tuple[str, str, str]] = ()) -> None:  # fmt: skip
        """One worker's running totals for a stage (replacing its last report), and (sha256, role, predicted)
        of images it answered, for the feedback guard."""
        t = db.rollout_tallies
        key = (t.c.rollout_id == rollout_id) & (t.c.stage == stage) & (t.c.worker == worker)
        with self.engine.begin() as conn:
            if conn.execute(t.update().where(key).values(tally=tally, updated_at=now())).rowcount == 0:
                conn.execute(t.insert().values(rollout_id=rollout_id, stage=stage, worker=worker, tally=tally,
                                               updated_at=now()))  # fmt: skip
            a = db.rollout_answers
            for sha, role, predicted in answers:
                exists = sa.select(a.c.sha256).where(a.c.rollout_id == rollout_id, a.c.sha256 == sha, a.c.role == role)
                if conn.execute(exists).first() is None:
                    conn.execute(a.insert().values(rollout_id=rollout_id, sha256=sha, role=role, predicted=predicted))

    def rollout_tallies(self, rollout_id: int, stage: str) -> list[dict]:
        t = db.rollout_tallies
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(t.c.tally).where(t.c.rollout_id == rollout_id, t.c.stage == stage))
                        .scalars())  # fmt: skip

    def rollout_feedback(self, rollout_id: int, model_name: str) -> dict[str, tuple[int, int]]:
        """Per side: feedback labels received for images it answered in the rollout, and how many it got right."""
        a, f = db.rollout_answers, db.feedback
        right = sa.func.sum(sa.case((a.c.predicted == f.c.label, 1), else_=0))
        query = (sa.select(a.c.role, sa.func.count(), right).join(f, (f.c.sha256 == a.c.sha256)
                 & (f.c.model_name == model_name)).where(a.c.rollout_id == rollout_id).group_by(a.c.role))  # fmt: skip
        with self.engine.connect() as conn:
            return {role: (int(n), int(ok or 0)) for role, n, ok in conn.execute(query)}

    # ------------------------------------------------------------ retrain policies
    def policies(self, model_name: str) -> dict | None:
        """Policies set at run time for ``model_name`` (None: the settings' apply)."""
        t = db.policies
        with self.engine.connect() as conn:
            return conn.execute(sa.select(t.c.policies).where(t.c.model_name == model_name)).scalar()

    def set_policies(self, model_name: str, policies: dict | None) -> None:
        """Store ``policies`` for every worker and replica; None removes them (back to the settings)."""
        t = db.policies
        with self.engine.begin() as conn:
            db.lock(conn, f"policies:{model_name}")
            conn.execute(t.delete().where(t.c.model_name == model_name))
            if policies is not None:
                conn.execute(t.insert().values(model_name=model_name, policies=policies, updated_at=now()))

    # ------------------------------------------------------------ feedback
    def add_feedback(self, model_name: str, sha256: str, label: str, path: str) -> bool:
        """Record one feedback image; False when the same content was already given."""
        try:
            with self.engine.begin() as conn:
                conn.execute(db.feedback.insert().values(model_name=model_name, sha256=sha256, label=label,
                                                         path=path, created_at=now()))  # fmt: skip
        except sa.exc.IntegrityError:
            return False
        return True

    # ------------------------------------------------------------ captures
    def add_capture(self, model_name: str, sha256: str, path: str, size: int, reason: str, tag: str,
                    predicted: str, confidence: float, margin: float) -> bool:  # fmt: skip
        """Keep one capture; False when the same image is already kept."""
        try:
            with self.engine.begin() as conn:
                conn.execute(db.captures.insert().values(
                    model_name=model_name, sha256=sha256, path=path, bytes=size, reason=reason, tag=tag,
                    predicted=predicted, confidence=confidence, margin=margin, status="pending",
                    created_at=now()))  # fmt: skip
        except sa.exc.IntegrityError:
            return False
        return True

    def captures(self, model_name: str, status: str | None = "pending", limit: int = 50) -> list[Capture]:
        """Captures, the labelling queue's order: smallest margin first, then oldest."""
        t = db.captures
        query = sa.select(t).where(t.c.model_name == model_name).order_by(t.c.margin, t.c.created_at).limit(limit)
        if status:
            query = query.where(t.c.status == status)
        with self.engine.connect() as conn:
            return [Capture.model_validate(_plain(r)) for r in conn.execute(query)]

    def capture(self, model_name: str, sha256: str) -> tuple[Capture, str]:
        """One capture and its file's path. Raises :class:`NotFound`."""
        t = db.captures
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(t).where(t.c.model_name == model_name, t.c.sha256 == sha256)).first()
        if row is None:
            raise NotFound(f"no capture {sha256!r} of {model_name} (GET /captures lists them)",
                           reason="capture_not_found")  # fmt: skip
        return Capture.model_validate(_plain(row)), row.path

    def settle_capture(self, model_name: str, sha256: str, status: str, label: str | None = None) -> Capture:
        t = db.captures
        with self.engine.begin() as conn:
            conn.execute(t.update().where(t.c.model_name == model_name, t.c.sha256 == sha256)
                         .values(status=status, label=label, labelled_at=now()))  # fmt: skip
        return self.capture(model_name, sha256)[0]

    def capture_counts(self, model_name: str) -> dict[str, int]:
        return self._count_by(db.captures.c.status, model_name)

    def _count_by(self, column: sa.Column, model_name: str) -> dict[str, int]:
        """Rows of ``column``'s table for ``model_name``, counted by that column's value."""
        t = column.table
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(column, sa.func.count()).where(t.c.model_name == model_name)
                                .group_by(column))  # fmt: skip
            return {value: int(n) for value, n in rows}

    def capture_bytes(self, model_name: str) -> int:
        t = db.captures
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.sum(t.c.bytes)).where(t.c.model_name == model_name)).scalar()
                       or 0)  # fmt: skip

    def expire_captures(self, model_name: str, older_than_hours: float) -> list[str]:
        """Forget captures older than ``older_than_hours``; returns their files' paths (to delete)."""
        t = db.captures
        cutoff = now() - dt.timedelta(hours=older_than_hours)
        where = (t.c.model_name == model_name) & (t.c.created_at < cutoff)
        with self.engine.begin() as conn:
            paths = [r.path for r in conn.execute(sa.select(t.c.path).where(where))]
            conn.execute(t.delete().where(where))
        return paths

    def feedback_since(self, model_name: str, since: dt.datetime | None) -> int:
        """Feedback labels for ``model_name`` recorded after ``since`` (all of them for None)."""
        t = db.feedback
        query = sa.select(sa.func.count()).where(t.c.model_name == model_name)
        if since is not None:
            query = query.where(t.c.created_at > since)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar() or 0)

    def feedback_items(self, model_name: str) -> list[tuple[str, str, str, dt.datetime]]:
        """Every feedback image of ``model_name``: (sha256, label, path, created_at), newest first."""
        t = db.feedback
        query = (sa.select(t.c.sha256, t.c.label, t.c.path, t.c.created_at).where(t.c.model_name == model_name)
                 .order_by(t.c.created_at.desc()))  # fmt: skip
        with self.engine.connect() as conn:
            return [(sha, label, path, _aware(at)) for sha, label, path, at in conn.execute(query)]

    def feedback_counts(self, model_name: str) -> dict[str, int]:
        return self._count_by(db.feedback.c.label, model_name)


# Every public registry call retries when the database is unreachable or locked (see ``retrying``).
for _name, _fn in list(vars(Registry).items()):
    if callable(_fn) and not _name.startswith("_"):
        setattr(Registry, _name, retrying(_fn))
