"""How a Video looks in the API."""

from __future__ import annotations

from flask import url_for

from catalog.models import Rendition, RenditionStatus, Video, VideoStatus
from catalog.state import PLAYABLE_RENDITIONS
from config import links, storage
from flows.captions import caption_path_parts


# a master playlist may list renditions (a processing video can be a reprocess of a published one)
PLAYABLE = {VideoStatus.READY, VideoStatus.PARTIAL, VideoStatus.PROCESSING}


def rendition_dict(r: Rendition) -> dict:
    return {
        "name": r.name,
        "width": r.width,
        "height": r.height,
        "bandwidth": r.bandwidth,
        "average_bandwidth": r.average_bandwidth,
        "codecs": r.codecs,
        "frame_rate": r.frame_rate,
        "segment_count": r.segment_count,
        # how much of it players can reach: grows chunk by chunk while GROWING, all once READY
        "available_seconds": r.available_seconds,
        "status": RenditionStatus(r.status).value,
        "error": r.error,
        "playlist": url_for("delivery.run_file", video_id=r.video_id, run=r.run, path=f"{r.name}/index.m3u8")
        if RenditionStatus(r.status) in PLAYABLE_RENDITIONS else None,
    }


def audio_track_dict(r: Rendition) -> dict:
    """An audio rendition with what a track menu shows: language (BCP 47, "und" when the source
    did not say), label, default, role (main, commentary, description)."""
    return {**rendition_dict(r), "language": r.language or "und", "label": r.label or r.name,
            "default": bool(r.is_default), "role": r.role or "main"}


def video_dict(v: Video, renditions: list[Rendition] | None = None) -> dict:
    status = VideoStatus(v.status)
    rends = renditions if renditions is not None else [
        r for r in v.renditions if r.run == v.current_run
    ]
    tracks = sorted((r for r in rends if (r.kind or "video") == "audio"),
                    key=lambda r: (not r.is_default, r.id or 0))
    audio = tracks[0] if tracks else None
    rends = [r for r in rends if (r.kind or "video") != "audio"]
    return {
        "id": v.id,
        "title": v.title,
        "filename": v.original_filename,
        "status": status.value,
        "progress": round(v.progress or 0.0, 1),
        "stage": v.stage,
        "error": v.error,
        # where to look in Prefect, and how many processing attempts recovery has made
        "flow_run_id": v.flow_run_id,
        "attempts": v.attempts or 0,
        "created_at": v.created_at.isoformat() if v.created_at else None,
        "ready_at": v.ready_at.isoformat() if v.ready_at else None,
        "metadata": {
            "duration": v.duration,
            "width": v.width,
            "height": v.height,
            "display_width": v.display_width,
            "display_height": v.display_height,
            "display_aspect": v.display_aspect,
            "rotation": v.rotation,
            "frame_rate": v.frame_rate,
            "video_codec": v.video_codec,
            "pix_fmt": v.pix_fmt,
            "bitrate": v.bitrate,
            "audio_codec": v.audio_codec,
            "audio_channels": v.audio_channels,
            "audio_sample_rate": v.audio_sample_rate,
            "size": v.source_size,
        },
        "renditions": [rendition_dict(r) for r in rends],
        # the audio rendition every variant shares by default (None for a silent video), and
        # every rendition of the audio group, that one first: one per language of the source
        "audio": rendition_dict(audio) if audio is not None else None,
        "audio_tracks": [audio_track_dict(r) for r in tracks],
        "master_url": links.master_url(v.id) if status in PLAYABLE else None,
        "watch_url": links.watch_url(v.id),
        "status_url": links.status_url(v.id),
        "poster_url": run_file_url(v.id, v.poster_url),
        "thumbnails_url": run_file_url(v.id, v.thumbnails_url),
        # [{start, end, title}] and the WebVTT chapters track (kind=chapters) built from them
        "chapters": v.chapters or [],
        "chapters_url": caption_file_url(v.id, v.chapters_url),
    }


def caption_file_url(video_id: str, stored_url: str | None) -> str | None:
    """Delivery URL (/v/{id}/captions/…) of a caption or chapters file, from its storage URL."""
    parts = caption_path_parts(stored_url) if stored_url else None
    if not parts or parts[1] != video_id:
        return None
    return url_for("delivery.run_file", video_id=video_id, run=parts[0], path="/".join(parts[2:]))


def run_file_url(video_id: str, stored_url: str | None) -> str | None:
    """Delivery URL (/v/{id}/{run}/…) of a file published in one of the video's run folders
    (`hls/{id}/{run}/poster.jpg`, `…/thumbs/thumbs.vtt`), from its storage URL."""
    if not stored_url:
        return None

    try:
        parts = storage.key_of(stored_url).split("/")
    except ValueError:
        return None
    if len(parts) < 4 or parts[0] != "hls" or parts[1] != video_id:
        return None
    return url_for("delivery.run_file", video_id=video_id, run=parts[2], path="/".join(parts[3:]))
