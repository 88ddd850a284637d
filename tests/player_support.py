"""Player and analytics tests: published videos (made by `bench.published`, which the player
benchmark shares) and what the server stored of a player's session."""

from __future__ import annotations

from pathlib import Path

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


def stored_events(data_dir: Path, session_id: str) -> list[dict]:
    """What the server stored for one player session, in order."""
    from sqlalchemy import select

    from catalog.db import session_scope
    from catalog.models import PlaybackEvent

    with catalog_at(data_dir):
        with session_scope() as s:
            rows = s.scalars(select(PlaybackEvent).where(PlaybackEvent.session_id == session_id)
                             .order_by(PlaybackEvent.seq)).all()
            return [{"seq": r.seq, "type": r.type, "t": r.client_ts, "pos": r.position, "data": r.data or {}}
                    for r in rows]


def set_progress(data_dir: Path, video_id: str, progress: float, stage: str | None = None) -> None:
    from catalog.db import session_scope
    from catalog.state import get_video

    with catalog_at(data_dir):
        with session_scope() as s:
            v = get_video(s, video_id)
            v.progress = progress
            v.stage = stage or v.stage
