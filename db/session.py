"""One engine and one session factory per database URL; migrations applied at start-up.

SQLite (the default) is opened with WAL, a busy timeout and foreign keys on, and every transaction starts
with BEGIN IMMEDIATE: a transaction that reads and then writes would otherwise fail at once with "database is
locked" when another writer commits in between (WAL snapshots cannot be upgraded), instead of waiting its turn.
PostgreSQL needs none of this; the same code runs on both.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

T = TypeVar("T")

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
BUSY_TIMEOUT_MS = 30_000


def default_data_dir() -> Path:
    """`$RLHF_STUDIO_DATA`, else `$XDG_DATA_HOME/rlhf-studio` (~/.local/share/rlhf-studio)."""
    env = os.environ.get("RLHF_STUDIO_DATA")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base).expanduser() / "rlhf-studio"


def database_url(data_dir: Path | None = None) -> str:
    """`$DATABASE_URL` when set, else a SQLite file `studio.db` in the data dir."""
    env = os.environ.get("DATABASE_URL")
    if env:
        return env
    folder = Path(data_dir) if data_dir is not None else default_data_dir()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'studio.db'}"


def make_engine(url: str, **kwargs) -> Engine:
    try:
        parsed = make_url(url)
    except Exception as err:  # noqa: BLE001 - a bad URL gets one message with the expected shape
        raise ValueError(
            f"bad database URL {url!r} ({err}); use sqlite:///path/to/studio.db or "
            "postgresql+psycopg://user:password@host:5432/dbname"
        ) from err
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3 is the driver we ship
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, pool_pre_ping=True, **kwargs)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000}, **kwargs)
    _sqlite_setup(engine)
    return engine


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (below)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across app crashes, fast commits
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def retry_on_conflict(session_factory: sessionmaker[Session], work: Callable[[Session], T], attempts: int = 3) -> T:
    """`work(session)` in one transaction, run again (in a new one) when the commit breaks a unique constraint.

    For get-or-create and idempotent inserts: a concurrent request may insert the same row between our read and
    our insert; the next attempt then reads that row instead. After `attempts` conflicts the error propagates.
    """
    for attempt in range(1, attempts + 1):
        try:
            with session_factory.begin() as session:
                return work(session)
        except IntegrityError:
            if attempt == attempts:
                raise
    raise ValueError(f"attempts must be at least 1, got {attempts}")


def alembic_config(engine: Engine, connection=None):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    cfg.attributes["connection"] = connection
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply migrations up to `revision` (start-up calls this with head; tests with an older one)."""
    from alembic import command

    with engine.connect() as conn:
        command.upgrade(alembic_config(engine, conn), revision)
        conn.commit()
