"""Player and analytics tests: published videos (made by `bench.published`, which the player
benchmark shares) and what the server stored of a player's session."""

from __future__ import annotations

from pathlib import Path

import m3u8
from sqlalchemy import select

from bench.published import (  # noqa: F401 - the tests' names for them
    DEFAULT_RUNGS,
    TestRung,
    catalog_at,
    create_video,
    encode_ladder,
    launch_chromium,
    make_published_video,
    measure_rung,
    publish,
    server_env,
)
from catalog.db import session_scope
from catalog.models import Rendition, RenditionStatus, VideoStatus
from catalog.state import get_video, now
from config import storage
from tasks.package import media_playlist


def stored_events(data_dir: Path, session_id: str, database_url: str | None = None) -> list[dict]:
    """What the server stored for one player session, in order."""
    from sqlalchemy import select

    from catalog.db import session_scope
    from catalog.models import PlaybackEvent

    with catalog_at(data_dir, database_url):
        with session_scope() as s:
            rows = s.scalars(select(PlaybackEvent).where(PlaybackEvent.session_id == session_id)
                             .order_by(PlaybackEvent.seq)).all()
            return [{"seq": r.seq, "type": r.type, "t": r.client_ts, "pos": r.position, "data": r.data or {}}
                    for r in rows]


def wait_for_events(data_dir: Path, session_id: str, until, what: str, timeout: float = 60.0,
                    database_url: str | None = None) -> list[dict]:
    """The session's stored events once `until(events)` holds: beacons and batches arrive when
    the browser sends them, so wait for them (with a generous ceiling) instead of a fixed pause."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        events = stored_events(data_dir, session_id, database_url)
        if until(events):
            return events
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:.0f} s for {what}; stored: {[e['type'] for e in events]}")
        time.sleep(0.2)


def set_progress(data_dir: Path, video_id: str, progress: float, stage: str | None = None) -> None:
    from catalog.db import session_scope
    from catalog.state import get_video

    with catalog_at(data_dir):
        with session_scope() as s:
            v = get_video(s, video_id)
            v.progress = progress
            v.stage = stage or v.stage


def grow(data_dir: Path, video_id: str, workdir: Path, segments: int | None, run: str = "r1") -> None:
    """Publish the run as the pipeline does chunk by chunk: every rendition's playlist (audio
    included) a growing EVENT playlist of its first `segments` segments, the rows GROWING and
    the video PROCESSING; `segments=None`: the finished VOD playlists, the rows and the video
    READY. The segments themselves are already in storage (`publish`)."""
    final = segments is None
    with catalog_at(data_dir):
        with session_scope() as s:
            rows = s.scalars(select(Rendition).where(Rendition.video_id == video_id, Rendition.run == run)).all()
            for r in rows:
                durations = [seg.duration for seg in m3u8.load(str(workdir / r.name / "index.m3u8")).segments]
                count = len(durations) if final else min(segments, len(durations))
                storage.write_text(r.playlist_url, media_playlist(durations, count, final=final))
                r.status = RenditionStatus.READY if final else RenditionStatus.GROWING
                r.segment_count = count
                r.available_seconds = round(sum(durations[:count]), 6)
            v = get_video(s, video_id)
            v.status = VideoStatus.READY if final else VideoStatus.PROCESSING
            v.progress = 100.0 if final else max(float(v.progress or 0), 50.0)
            if final:
                v.ready_at = now()
