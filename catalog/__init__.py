"""The catalog: videos, renditions, uploads and playback events, in SQL."""

from catalog.db import get_engine, session_scope
from catalog.models import (
    IngestedSource,
    PlaybackEvent,
    Rendition,
    RenditionStatus,
    UploadSession,
    UploadStatus,
    Video,
    VideoStatus,
)

__all__ = [
    "get_engine",
    "session_scope",
    "Video",
    "VideoStatus",
    "Rendition",
    "RenditionStatus",
    "UploadSession",
    "UploadStatus",
    "PlaybackEvent",
    "IngestedSource",
]
