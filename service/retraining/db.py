"""The registry's database: engine, schema and migrations (SQLite by default, PostgreSQL by URL).

SQLite lives in the model store folder (``$BENTOML_HOME/registry.db``); ``DATABASE_URL`` (or
``IMGCLF_DATABASE_URL``) points at PostgreSQL instead, e.g. ``postgresql+psycopg://user@host/db``.
The schema is versioned in ``schema_version`` and migrated forward on start-up, under a lock, by
whichever process gets there first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from training._env import bentoml_home

log = logging.getLogger(__name__)

metadata = sa.MetaData()

jobs = sa.Table(
    "jobs", metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("model_name", sa.String(200), nullable=False, index=True),
    sa.Column("status", sa.String(16), nullable=False),  # queued running succeeded failed cancelled
    sa.Column("backend", sa.String(16), nullable=False),
    sa.Column("request", sa.JSON, nullable=False),
    sa.Column("config", sa.JSON, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("heartbeat_at", sa.DateTime(timezone=True)),
    sa.Column("host", sa.String(255)),
    sa.Column("pid", sa.Integer),
    sa.Column("external_id", sa.String(255)),  # the Kubernetes Job's name
    sa.Column("log_path", sa.Text),
    sa.Column("progress", sa.JSON),
    sa.Column("result_tag", sa.String(255)),
    sa.Column("decision", sa.JSON),
    sa.Column("error", sa.Text),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, default=False),
    sa.Column("observed", sa.Boolean, nullable=False, default=False),  # counted in some worker's metrics
    sa.Column("champion_tag", sa.String(255)),  # added in version 2
    sa.Column("holdout", sa.Text),  # added in version 2
    sa.Column("trigger", sa.JSON),  # added in version 4: the policy that started the job
)  # fmt: skip

# One row per model name while a job runs: the primary key makes "one job at a time" race-free.
active_jobs = sa.Table(
    "active_jobs", metadata,
    sa.Column("model_name", sa.String(200), primary_key=True),
    sa.Column("job_id", sa.String(32), nullable=False),
)  # fmt: skip

# The champion history as a stack: a promotion pushes, a rollback pops (sets rolled_back_at).
champions = sa.Table(
    "champions", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model_name", sa.String(200), nullable=False, index=True),
    sa.Column("tag", sa.String(255), nullable=False),
    sa.Column("promoted_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("rolled_back_at", sa.DateTime(timezone=True)),
    sa.Column("event_id", sa.Integer),
)  # fmt: skip

# Everything that happened to the champion: initial, promoted, refused, manual, rollback.
events = sa.Table(
    "events", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model_name", sa.String(200), nullable=False, index=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("tag", sa.String(255)),
    sa.Column("previous_tag", sa.String(255)),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("challenger", sa.JSON),
    sa.Column("champion", sa.JSON),
    sa.Column("job_id", sa.String(32)),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("mirrored_at", sa.DateTime(timezone=True)),  # added in version 3: written to MLflow
)  # fmt: skip

feedback = sa.Table(
    "feedback", metadata,
    sa.Column("model_name", sa.String(200), primary_key=True),
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("label", sa.String(200), nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)  # fmt: skip

# Short leases (version 3): one worker at a time does a piece of periodic work, e.g. mirroring to MLflow.
leases = sa.Table(
    "leases", metadata,
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("holder", sa.String(200), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
)  # fmt: skip

# Retrain policies set through the admin endpoint (version 4); absent: the settings' policies.
policies = sa.Table(
    "policies", metadata,
    sa.Column("model_name", sa.String(200), primary_key=True),
    sa.Column("policies", sa.JSON, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)  # fmt: skip

# Live images worth labelling (version 4): the image is a file, this its prediction and its fate.
captures = sa.Table(
    "captures", metadata,
    sa.Column("model_name", sa.String(200), primary_key=True),
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("bytes", sa.Integer, nullable=False),
    sa.Column("reason", sa.String(32), nullable=False),  # low_confidence near_tie drift random
    sa.Column("tag", sa.String(255), nullable=False),  # the version that answered
    sa.Column("predicted", sa.String(200), nullable=False),
    sa.Column("confidence", sa.Float, nullable=False),
    sa.Column("margin", sa.Float, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # pending labelled skipped none
    sa.Column("label", sa.String(200)),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("labelled_at", sa.DateTime(timezone=True)),
)  # fmt: skip

# Rollouts (version 5): a challenger's way to champion through shadow and canary, at most one active per name.
rollouts = sa.Table(
    "rollouts", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model_name", sa.String(200), nullable=False, index=True),
    sa.Column("tag", sa.String(255), nullable=False),
    sa.Column("champion_tag", sa.String(255)),
    sa.Column("status", sa.String(16), nullable=False),  # active promoted aborted
    sa.Column("stage", sa.String(16)),  # shadow canary (while active)
    sa.Column("plan", sa.JSON, nullable=False),
    sa.Column("job_id", sa.String(32)),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("stage_started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("ended_at", sa.DateTime(timezone=True)),
    sa.Column("guards", sa.JSON),  # as last judged
    sa.Column("history", sa.JSON, nullable=False),
)  # fmt: skip

# One row per model name while a rollout is active: the primary key makes "one at a time" race-free.
active_rollouts = sa.Table(
    "active_rollouts", metadata,
    sa.Column("model_name", sa.String(200), primary_key=True),
    sa.Column("rollout_id", sa.Integer, nullable=False),
)  # fmt: skip

# Each worker's running totals of a rollout's stage (rollout.Tally as JSON), overwritten as they grow.
rollout_tallies = sa.Table(
    "rollout_tallies", metadata,
    sa.Column("rollout_id", sa.Integer, primary_key=True),
    sa.Column("stage", sa.String(16), primary_key=True),
    sa.Column("worker", sa.String(200), primary_key=True),
    sa.Column("tally", sa.JSON, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)  # fmt: skip

# What each side answered for a sample of rollout images, by content: feedback on them judges both sides.
rollout_answers = sa.Table(
    "rollout_answers", metadata,
    sa.Column("rollout_id", sa.Integer, primary_key=True),
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("role", sa.String(16), primary_key=True),  # champion challenger
    sa.Column("predicted", sa.String(200), nullable=False),
)  # fmt: skip

schema_version = sa.Table("schema_version", metadata, sa.Column("version", sa.Integer, nullable=False))

V1_TABLES = [jobs, active_jobs, champions, events, feedback]


def _v1(conn: Connection) -> None:
    metadata.create_all(conn, tables=V1_TABLES)


def _add_columns(conn: Connection, table: sa.Table, *columns: sa.Column) -> None:
    """Add ``columns`` the table lacks (a database created by this code at an earlier step already has them:
    ``_v1`` creates the current tables)."""
    have = {c["name"] for c in sa.inspect(conn).get_columns(table.name)}
    for column in columns:
        if column.name not in have:
            kind = column.type.compile(conn.dialect)
            conn.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}"))


def _v2(conn: Connection) -> None:
    """Jobs record the champion they were built against and the holdout kept out of their training."""
    _add_columns(conn, jobs, jobs.c.champion_tag, jobs.c.holdout)


def _v3(conn: Connection) -> None:
    """Events remember when they were mirrored to MLflow; leases let one worker at a time do the mirroring."""
    _add_columns(conn, events, events.c.mirrored_at)
    leases.create(conn, checkfirst=True)


def _v4(conn: Connection) -> None:
    """Jobs record the policy that started them; retrain policies set at run time; captures; shadows."""
    _add_columns(conn, jobs, jobs.c.trigger)
    policies.create(conn, checkfirst=True)
    captures.create(conn, checkfirst=True)
    _V4_SHADOWS.create(conn, checkfirst=True)


# Version 4's single shadow per model name (dropped by version 5: a rollout's shadow stage replaces it).
_V4_SHADOWS = sa.Table(
    "shadows", sa.MetaData(),
    sa.Column("model_name", sa.String(200), primary_key=True),
    sa.Column("tag", sa.String(255), nullable=False),
    sa.Column("fraction", sa.Float, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
)  # fmt: skip


def _v5(conn: Connection) -> None:
    """Rollouts (shadow, canary, champion) replace the single shadow of version 4."""
    for table in (rollouts, active_rollouts, rollout_tallies, rollout_answers):
        table.create(conn, checkfirst=True)
    _V4_SHADOWS.drop(conn, checkfirst=True)


# Append (version, function) to change the schema; never edit a released step.
MIGRATIONS: list[tuple[int, Callable[[Connection], None]]] = [(1, _v1), (2, _v2), (3, _v3), (4, _v4), (5, _v5)]
SCHEMA_VERSION = MIGRATIONS[-1][0]


def default_url() -> str:
    home = bentoml_home()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'registry.db'}"


def create_db_engine(url: str | None = None, timeout: float = 5.0) -> Engine:
    """An engine for ``url`` (default: SQLite in the store folder), its schema migrated.

    ``timeout``: how long to wait for a lock (SQLite) or a connection (PostgreSQL) before giving up.
    """
    url = url or default_url()
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": timeout})
        _sqlite_pragmas(engine, timeout)
    else:
        engine = sa.create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=2,
                                  connect_args={"connect_timeout": max(1, int(timeout))})  # fmt: skip
    migrate(engine)
    return engine


def _sqlite_pragmas(engine: Engine, timeout: float) -> None:
    """WAL (readers never block), a busy timeout, and BEGIN IMMEDIATE so writers queue up front."""

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(conn) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def lock(conn: Connection, key: str) -> None:
    """Serialise writers of ``key`` for the rest of the transaction (SQLite: BEGIN IMMEDIATE does)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": key})


def current_version(conn: Connection) -> int:
    if not sa.inspect(conn).has_table("schema_version"):
        return 0
    return conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar() or 0


def migrate(engine: Engine) -> int:
    """Bring the schema to :data:`SCHEMA_VERSION`; return the version found before."""
    with engine.begin() as conn:
        lock(conn, "imgclf-schema")
        schema_version.create(conn, checkfirst=True)
        found = current_version(conn)
        if found > SCHEMA_VERSION:
            raise RuntimeError(f"registry schema is version {found}, newer than this code ({SCHEMA_VERSION})")
        for version, step in MIGRATIONS:
            if version > found:
                log.info("migrating the registry schema to version %d", version)
                step(conn)
                conn.execute(schema_version.insert().values(version=version))
    return found
