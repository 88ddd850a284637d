"""The catalog: migrations at start-up, the video lifecycle, progress that only moves forward,
and row locks that hold against concurrent writers; each on SQLite and on PostgreSQL."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import inspect, select, text

from catalog.db import get_engine, session_scope
from catalog.models import Video, VideoStatus
from catalog.state import InvalidTransition, get_video, set_progress, transition

pytestmark = pytest.mark.usefixtures("catalog_db")


def test_migrations_create_every_table(catalog_db):
    engine = get_engine()
    assert engine.dialect.name == catalog_db
    tables = set(inspect(engine).get_table_names())
    assert {"videos", "renditions", "upload_sessions", "playback_events", "ingested_sources",
            "alembic_version"} <= tables
    if catalog_db == "sqlite":  # readers never wait for the writer
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"


def test_moments_come_back_in_utc_whatever_the_database_time_zone(catalog_db):
    """Every datetime read from the catalog is aware and in UTC, equal to what was written,
    even from a PostgreSQL server whose time zone is not UTC; it formats as an HTTP date (the
    tus Upload-Expires header)."""
    from datetime import datetime, timedelta, timezone
    from email.utils import format_datetime

    if catalog_db == "postgresql":
        with get_engine().begin() as conn:
            conn.execute(text(f"ALTER DATABASE \"{get_engine().url.database}\" SET timezone TO 'Asia/Kolkata'"))
        from catalog.db import reset_engines

        reset_engines()  # new connections get the database's time zone
        with get_engine().connect() as conn:
            assert conn.execute(text("SHOW timezone")).scalar() == "Asia/Kolkata"
    written = datetime(2026, 3, 1, 23, 30, tzinfo=timezone.utc)
    vid = _video(ready_at=written, processing_started_at=datetime(2026, 3, 1, 22, 0))  # naive: UTC
    with session_scope() as s:
        v = get_video(s, vid)
        for moment in (v.ready_at, v.created_at, v.processing_started_at):
            assert moment.tzinfo is timezone.utc
        assert v.ready_at == written
        assert v.processing_started_at == written - timedelta(minutes=90)
        assert format_datetime(v.ready_at, usegmt=True) == "Sun, 01 Mar 2026 23:30:00 GMT"
        # and a comparison in SQL means the same moment
        later = s.scalars(select(Video.id).where(Video.ready_at > written - timedelta(seconds=1))).all()
        assert later == [vid]


def _video(**kw) -> str:
    with session_scope() as s:
        v = Video(title="t", source_url="file:///x", **kw)
        s.add(v)
        s.flush()
        return v.id


def test_lifecycle_allows_the_normal_path():
    vid = _video()
    with session_scope() as s:
        v = get_video(s, vid)
        transition(s, v, VideoStatus.PROCESSING)
        assert v.attempts == 1 and v.processing_started_at is not None
        transition(s, v, VideoStatus.READY)
        assert v.progress == 100.0 and v.ready_at is not None


@pytest.mark.parametrize("path", [
    [VideoStatus.READY],  # UPLOADED cannot jump to READY
    [VideoStatus.PROCESSING, VideoStatus.READY, VideoStatus.UPLOADED],
    [VideoStatus.DELETED, VideoStatus.PROCESSING],
])
def test_invalid_transitions_are_refused(path):
    vid = _video()
    with session_scope() as s:
        v = get_video(s, vid)
        with pytest.raises(InvalidTransition):
            for status in path:
                transition(s, v, status)


def test_failed_keeps_a_reason_and_can_be_retried():
    vid = _video()
    with session_scope() as s:
        v = get_video(s, vid)
        transition(s, v, VideoStatus.PROCESSING)
        transition(s, v, VideoStatus.FAILED, error="the source is corrupt")
    with session_scope() as s:
        v = get_video(s, vid)
        assert v.error == "the source is corrupt"
        transition(s, v, VideoStatus.PROCESSING)
        assert v.error is None and v.attempts == 2


def test_progress_only_moves_forward():
    vid = _video()
    with session_scope() as s:
        transition(s, get_video(s, vid), VideoStatus.PROCESSING)
    for p in (10, 40, 25, 60, 5):
        with session_scope() as s:
            set_progress(s, vid, p)
    with session_scope() as s:
        assert get_video(s, vid).progress == 60


def test_a_locked_read_holds_off_other_writers_until_commit():
    """get_video(lock=True) is a read-modify-write lock: concurrent holders take turns, so no
    update is lost (each thread reads, pauses so the others catch up, then writes)."""
    vid = _video()
    threads, errors = 8, []
    start = threading.Barrier(threads)

    def bump():
        try:
            start.wait(30)
            with session_scope() as s:
                v = get_video(s, vid, lock=True)
                seen = v.attempts
                time.sleep(0.05)  # widen the window between read and write
                v.attempts = seen + 1
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    workers = [threading.Thread(target=bump) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(120)
    assert errors == []
    with session_scope() as s:
        assert get_video(s, vid).attempts == threads


def test_a_locked_read_does_not_touch_the_row():
    """Taking the lock is not activity: maintenance reads `updated_at` as a sign of life."""
    vid = _video()
    with session_scope() as s:
        before = get_video(s, vid).updated_at
    with session_scope() as s:
        get_video(s, vid, lock=True)
    with session_scope() as s:
        assert get_video(s, vid).updated_at == before
