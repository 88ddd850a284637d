"""The catalog's tables (SQLAlchemy 2). Changes go through alembic migrations in migrations/."""

from __future__ import annotations

import enum
import secrets
from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_id() -> str:
    """Short, URL-safe, unguessable ids (12 hex chars)."""
    return secrets.token_hex(6)


class UTCDateTime(TypeDecorator):
    """A moment, always handed back as an aware datetime in `timezone.utc`, whatever the
    database: SQLite returns naive values, and PostgreSQL returns them in the connection's
    time zone (a ZoneInfo even when that is UTC), which `email.utils.format_datetime(...,
    usegmt=True)` refuses and comparisons with naive values break on. Naive values written
    are taken as UTC, as everything here writes UTC. Same column type as `DateTime(timezone=True)`:
    no migration."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime()}


class VideoStatus(str, enum.Enum):
    UPLOADED = "UPLOADED"
    PROCESSING = "PROCESSING"
    READY = "READY"
    PARTIAL = "PARTIAL"  # some renditions published, others failed
    FAILED = "FAILED"
    DELETED = "DELETED"


class RenditionStatus(str, enum.Enum):
    PENDING = "PENDING"
    GROWING = "GROWING"  # published chunk by chunk: an EVENT playlist of the segments so far
    READY = "READY"
    FAILED = "FAILED"


class UploadStatus(str, enum.Enum):
    ACTIVE = "ACTIVE"
    COMPLETE = "COMPLETE"  # all bytes in, validated, handed off
    FAILED = "FAILED"  # refused by validation
    TERMINATED = "TERMINATED"  # deleted by the client
    EXPIRED = "EXPIRED"


def _enum(e: type[enum.Enum]) -> Enum:
    return Enum(e, native_enum=False, length=16, validate_strings=True)


class Video(Base):
    __tablename__ = "videos"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    title: Mapped[str] = mapped_column(String(300), default="")
    original_filename: Mapped[str | None] = mapped_column(String(500))
    source_url: Mapped[str | None] = mapped_column(Text)
    source_size: Mapped[int | None] = mapped_column(BigInteger)
    content_hash: Mapped[str | None] = mapped_column(String(128), index=True)
    status: Mapped[VideoStatus] = mapped_column(_enum(VideoStatus), default=VideoStatus.UPLOADED, index=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    stage: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    # probed metadata
    duration: Mapped[float | None] = mapped_column(Float)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    display_width: Mapped[int | None] = mapped_column(Integer)
    display_height: Mapped[int | None] = mapped_column(Integer)
    display_aspect: Mapped[str | None] = mapped_column(String(32))
    rotation: Mapped[int | None] = mapped_column(Integer)
    frame_rate: Mapped[float | None] = mapped_column(Float)
    video_codec: Mapped[str | None] = mapped_column(String(32))
    pix_fmt: Mapped[str | None] = mapped_column(String(32))
    bitrate: Mapped[int | None] = mapped_column(BigInteger)
    audio_codec: Mapped[str | None] = mapped_column(String(32))
    audio_channels: Mapped[int | None] = mapped_column(Integer)
    audio_sample_rate: Mapped[int | None] = mapped_column(Integer)
    probe: Mapped[dict | None] = mapped_column(JSON)
    # processing
    current_run: Mapped[str | None] = mapped_column(String(64))
    flow_run_id: Mapped[str | None] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    poster_url: Mapped[str | None] = mapped_column(Text)
    thumbnails_url: Mapped[str | None] = mapped_column(Text)
    # chapters belong to the video (not to a run): [{start, end, title}] and the published
    # WebVTT chapters file, both replaced together by PUT /api/videos/{id}/chapters or ingest
    chapters: Mapped[list | None] = mapped_column(JSON)
    chapters_url: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    processing_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    ready_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    renditions: Mapped[list["Rendition"]] = relationship(
        back_populates="video", cascade="all, delete-orphan", order_by="Rendition.bandwidth"
    )


class Rendition(Base):
    __tablename__ = "renditions"
    __table_args__ = (Index("ix_renditions_video_run", "video_id", "run"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    video_id: Mapped[str] = mapped_column(ForeignKey("videos.id", ondelete="CASCADE"))
    run: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(32))  # "720p"
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    bandwidth: Mapped[int | None] = mapped_column(Integer)  # peak segment bit rate
    average_bandwidth: Mapped[int | None] = mapped_column(Integer)
    codecs: Mapped[str | None] = mapped_column(String(64))
    frame_rate: Mapped[float | None] = mapped_column(Float)
    playlist_url: Mapped[str | None] = mapped_column(Text)  # storage URL of index.m3u8
    segment_count: Mapped[int | None] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(8), default="video", server_default="video")  # "video" | "audio"
    available_seconds: Mapped[float | None] = mapped_column(Float)  # published so far (all, once READY)
    # an audio rendition's EXT-X-MEDIA attributes (`tasks.audio.audio_renditions`); empty for video
    language: Mapped[str | None] = mapped_column(String(35))  # BCP 47, "und" when unknown
    label: Mapped[str | None] = mapped_column(String(100))
    is_default: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    role: Mapped[str | None] = mapped_column(String(16))  # main, commentary, description
    characteristics: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[RenditionStatus] = mapped_column(_enum(RenditionStatus), default=RenditionStatus.PENDING)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    video: Mapped[Video] = relationship(back_populates="renditions")


class CaptionSource(str, enum.Enum):
    UPLOAD = "upload"
    SOURCE = "source"  # a text subtitle stream of the uploaded file


class Caption(Base):
    """A subtitle track of a video. Captions belong to the video, not to a transcode run: their
    files live under `captions/{video_id}/{caption_id}/` and are never rewritten (a replaced
    caption gets a new id). `vtt_url` is the cleaned cue file; `playlist_url` the segmented HLS
    rendition whose X-TIMESTAMP-MAP uses `timing_pts`, the first video PTS of the run it was
    aligned to (None until a run is published)."""

    __tablename__ = "captions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    video_id: Mapped[str] = mapped_column(ForeignKey("videos.id", ondelete="CASCADE"), index=True)
    language: Mapped[str] = mapped_column(String(35))  # BCP 47
    label: Mapped[str] = mapped_column(String(100))
    source: Mapped[CaptionSource] = mapped_column(_enum(CaptionSource), default=CaptionSource.UPLOAD)
    source_stream: Mapped[int | None] = mapped_column(Integer)  # ffprobe stream index in the source
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    cue_count: Mapped[int] = mapped_column(Integer, default=0)
    vtt_url: Mapped[str] = mapped_column(Text)
    playlist_url: Mapped[str | None] = mapped_column(Text)
    timing_pts: Mapped[int | None] = mapped_column(BigInteger)
    report: Mapped[dict | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class UploadSession(Base):
    """One tus upload (or one-shot POST) in flight. Bytes live in `temp_path` on the web host."""

    __tablename__ = "upload_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    length: Mapped[int | None] = mapped_column(BigInteger)  # None while deferred
    offset: Mapped[int] = mapped_column(BigInteger, default=0)
    metadata_: Mapped[dict] = mapped_column("metadata", JSON, default=dict)
    # tus answers HEAD with these headers exactly as the client sent them at creation
    metadata_header: Mapped[str | None] = mapped_column(Text)
    concat_header: Mapped[str | None] = mapped_column(Text)
    filename: Mapped[str | None] = mapped_column(String(500))
    mime_type: Mapped[str | None] = mapped_column(String(128))
    temp_path: Mapped[str | None] = mapped_column(Text)
    # the machine whose disk holds temp_path (VODFLOW_NODE_NAME); None: written before hosts were recorded
    host: Mapped[str | None] = mapped_column(String(255))
    concat: Mapped[str | None] = mapped_column(String(16))  # None | "partial" | "final"
    parts: Mapped[list | None] = mapped_column(JSON)  # ids of partial uploads, for "final"
    status: Mapped[UploadStatus] = mapped_column(_enum(UploadStatus), default=UploadStatus.ACTIVE, index=True)
    error: Mapped[str | None] = mapped_column(Text)
    video_id: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)


class PlaybackEvent(Base):
    __tablename__ = "playback_events"
    __table_args__ = (
        Index("ix_playback_video_session", "video_id", "session_id"),
        # a batch delivered twice (beacon + retry) is stored once
        Index("ux_playback_session_seq", "session_id", "seq", unique=True),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    video_id: Mapped[str] = mapped_column(String(32), index=True)
    session_id: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(Integer, default=0)
    type: Mapped[str] = mapped_column(String(32))
    client_ts: Mapped[float | None] = mapped_column(Float)  # ms since session start
    position: Mapped[float | None] = mapped_column(Float)  # seconds into the video
    data: Mapped[dict | None] = mapped_column(JSON)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class IngestedSource(Base):
    """A source file seen by bulk ingest, keyed by content hash so copies ingest once."""

    __tablename__ = "ingested_sources"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    content_hash: Mapped[str] = mapped_column(String(128), unique=True)
    source_url: Mapped[str] = mapped_column(Text)
    size: Mapped[int | None] = mapped_column(BigInteger)
    video_id: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="QUEUED")
    error: Mapped[str | None] = mapped_column(Text)
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    archived: Mapped[bool] = mapped_column(Boolean, default=False)
