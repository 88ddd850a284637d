"""Engine, sessions and migrations. SQLite (WAL) by default, PostgreSQL by URL.

A PostgreSQL server that restarts (an upgrade, a failover, `systemctl restart`) drops every
connection. The pool checks a connection before lending it (`pool_pre_ping`), so the next use
after a restart reconnects; a dropped connection is logged ("catalog connection lost"). Steps that
must not fail on a short outage (an ingest's catalog steps, `catalog/runs.py`) are wrapped in
`through_outages`: while the server is unreachable they wait and try again, for up to
OUTAGE_SECONDS, and say so in the log; each is one transaction, so trying it again is safe.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from config.settings import get_settings

log = logging.getLogger(__name__)
T = TypeVar("T")
# how long a catalog step waits for an unreachable PostgreSQL server to come back (a restart
# takes seconds, a failover up to a minute or so) before it gives up
OUTAGE_SECONDS = 120.0
# libpq waits forever for a host that drops packets; keepalives find a dead peer in about a minute
PG_CONNECT_ARGS = {"connect_timeout": 10, "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
                   "keepalives_count": 3}

_lock = threading.Lock()
_engines: dict[str, Engine] = {}
_migrated: set[str] = set()


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        db_path = url.split("///", 1)[-1]
        if db_path and db_path != ":memory:":
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url[len("postgresql://"):]
        engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10,
                               connect_args=dict(PG_CONNECT_ARGS))
        event.listen(engine, "handle_error", _log_disconnect)
    return engine


def _first_line(exc: BaseException) -> str:
    text_ = str(getattr(exc, "orig", None) or exc).strip()
    return text_.splitlines()[0] if text_ else type(exc).__name__


def _log_disconnect(context) -> None:
    """Say when the database dropped a connection (the pool then reconnects)."""
    if context.is_disconnect:
        log.warning("catalog connection lost (%s); reconnecting: %s",
                    "found dead before use" if getattr(context, "is_pre_ping", False) else "during a query",
                    _first_line(context.original_exception))


def unreachable(exc: BaseException) -> bool:
    """Whether a database error means the server could not be reached or dropped the connection
    (worth trying again), not that the statement was wrong. SQLite's own errors are not: it
    already waits for its lock (busy_timeout)."""
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    return isinstance(exc, OperationalError) and not type(exc.orig).__module__.startswith("sqlite3")


def through_outages(fn: Callable[..., T]) -> Callable[..., T]:
    """Run a catalog step (one transaction) again while the database is unreachable, for up to
    OUTAGE_SECONDS, logging when it starts waiting and when it gets through."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        started = None
        delay = 0.25
        while True:
            try:
                result = fn(*args, **kwargs)
            except DBAPIError as exc:
                if not unreachable(exc):
                    raise
                now = time.monotonic()
                if started is None:
                    started = now
                    log.warning("catalog unreachable (%s) in %s; trying again for up to %.0f s",
                                _first_line(exc), fn.__name__, OUTAGE_SECONDS)
                if now - started >= OUTAGE_SECONDS:
                    log.error("catalog still unreachable after %.0f s; %s gives up", now - started, fn.__name__)
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if started is not None:
                log.warning("catalog reachable again: %s went through after %.1f s", fn.__name__,
                            time.monotonic() - started)
            return result

    return wrapper


def get_engine() -> Engine:
    url = get_settings().database_url
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = make_engine(url)
        if url not in _migrated:
            migrate(engine)
            _migrated.add(url)
    return engine


def migrate(engine: Engine) -> None:
    """Apply alembic migrations up to head (idempotent; safe to call from every process)."""

    here = Path(__file__).parent
    cfg = Config()
    cfg.set_main_option("script_location", str(here / "migrations"))
    with _sqlite_migration_lock(engine), engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # one migrator at a time across processes
            conn.execute(text("SELECT pg_advisory_xact_lock(7215)"))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


@contextlib.contextmanager
def _sqlite_migration_lock(engine: Engine) -> Iterator[None]:
    """One migrator at a time for a SQLite file: gunicorn workers that boot together on a new
    database would otherwise both create the tables, and one of them dies."""
    db_path = engine.url.database if engine.dialect.name == "sqlite" else None
    if not db_path or db_path == ":memory:":
        yield
        return

    with open(f"{db_path}.migrate-lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def session_scope() -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = sessionmaker(bind=get_engine(), expire_on_commit=False)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def check() -> dict:
    """Reachability; for PostgreSQL also when its server started (a recent start is a restart)."""
    try:
        engine = get_engine()
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            out = {"ok": True, "dialect": engine.dialect.name}
            if engine.dialect.name == "postgresql":
                started = conn.execute(text("SELECT pg_postmaster_start_time()")).scalar()
                out["server_started_at"] = started.isoformat() if started is not None else None
        return out
    except Exception as exc:  # noqa: BLE001
        return {"ok": False, "error": str(exc)}


def reset_engines() -> None:
    """Dispose every engine (tests; after fork)."""
    with _lock:
        for e in _engines.values():
            e.dispose()
        _engines.clear()
        _migrated.clear()
