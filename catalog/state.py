"""Every change of a Video's state goes through here, so invalid transitions are refused."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from catalog.models import Rendition, RenditionStatus, Video, VideoStatus

S = VideoStatus
ALLOWED: dict[VideoStatus, set[VideoStatus]] = {
    S.UPLOADED: {S.PROCESSING, S.FAILED, S.DELETED},
    S.PROCESSING: {S.PROCESSING, S.READY, S.PARTIAL, S.FAILED, S.DELETED},
    S.READY: {S.PROCESSING, S.DELETED},
    S.PARTIAL: {S.PROCESSING, S.DELETED},
    S.FAILED: {S.PROCESSING, S.DELETED},
    S.DELETED: set(),
}


class InvalidTransition(ValueError):
    """A state change the lifecycle does not allow (e.g. READY → UPLOADED)."""


class VideoNotFound(LookupError):
    pass


def now() -> datetime:
    return datetime.now(timezone.utc)


def get_video(session: Session, video_id: str, *, lock: bool = False) -> Video:
    """The video; with `lock`, held against other writers until the session ends, so a
    read-modify-write of it cannot lose a concurrent one."""
    stmt = select(Video).where(Video.id == video_id)
    if lock:
        dialect = session.get_bind().dialect.name
        if dialect == "sqlite":
            # SQLite has no row locks, and Python's driver opens a transaction only at the first
            # write: a plain read would take no lock at all. Write first (a no-op that keeps
            # updated_at) so this transaction holds the database's write lock from here on.
            session.execute(update(Video).where(Video.id == video_id)
                            .values(updated_at=Video.updated_at))
        else:
            stmt = stmt.with_for_update()
    video = session.scalars(stmt).first()
    if video is None:
        raise VideoNotFound(video_id)
    return video


def transition(session: Session, video: Video, new: VideoStatus, *, error: str | None = None) -> Video:
    old = VideoStatus(video.status)
    if new not in ALLOWED[old]:
        raise InvalidTransition(f"video {video.id}: {old.value} → {new.value} is not allowed")
    video.status = new
    if new == S.PROCESSING and old != S.PROCESSING:
        video.processing_started_at = now()
        video.progress = 0.0
        video.error = None
        video.attempts = (video.attempts or 0) + 1
    if new in (S.READY, S.PARTIAL):
        video.ready_at = now()
        if new == S.READY:
            video.progress = 100.0
    if new == S.FAILED:
        video.error = error or video.error or "processing failed"
    elif error is not None:
        video.error = error
    if new == S.DELETED:
        video.deleted_at = now()
    return video


def set_progress(session: Session, video_id: str, progress: float, stage: str | None = None) -> None:
    """Move progress forward only (parallel tasks report out of order)."""
    progress = max(0.0, min(100.0, float(progress)))
    values: dict = {"progress": progress}
    if stage:
        values["stage"] = stage
    session.execute(
        update(Video)
        .where(Video.id == video_id, Video.progress < progress, Video.status == S.PROCESSING)
        .values(**values)
    )


PLAYABLE_RENDITIONS = (RenditionStatus.READY, RenditionStatus.GROWING)


def published_renditions(session: Session, video: Video, kind: str = "video") -> list[Rendition]:
    """Renditions of the video's current run that players may use (READY, or GROWING: published
    chunk by chunk), by bandwidth. `kind="audio"`: the run's audio renditions, the default first,
    then in the source's order."""
    if not video.current_run:
        return []
    return list(
        session.scalars(
            select(Rendition)
            .where(
                Rendition.video_id == video.id,
                Rendition.run == video.current_run,
                Rendition.status.in_(PLAYABLE_RENDITIONS),
                Rendition.kind == kind,
            )
            .order_by(*((Rendition.is_default.desc(), Rendition.id) if kind == "audio"
                        else (Rendition.bandwidth, Rendition.height)))
        )
    )
