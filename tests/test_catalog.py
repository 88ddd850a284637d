"""The catalog: migrations at start-up, the video lifecycle, progress that only moves forward."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, text

from catalog.db import get_engine, session_scope
from catalog.models import Video, VideoStatus
from catalog.state import InvalidTransition, get_video, set_progress, transition


def test_migrations_create_every_table_and_wal():
    engine = get_engine()
    tables = set(inspect(engine).get_table_names())
    assert {"videos", "renditions", "upload_sessions", "playback_events", "ingested_sources",
            "alembic_version"} <= tables
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"


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
