"""/, /upload, /watch/{id} (and, as it is built, /stats/{id})."""

from __future__ import annotations

from flask import abort, current_app, render_template, url_for
from sqlalchemy import select

from catalog.db import session_scope
from catalog.models import Video, VideoStatus
from catalog.state import VideoNotFound, get_video
from config.settings import get_settings
from streaming_app.api.serialize import video_dict
from streaming_app.pages import bp
from tasks.intake import SUPPORTED_EXTENSIONS


def upload_page_url() -> str:
    return url_for("pages.upload") if "pages.upload" in current_app.view_functions else "/upload"


@bp.get("/")
def index():
    with session_scope() as s:
        videos = s.scalars(
            select(Video).where(Video.status != VideoStatus.DELETED).order_by(Video.created_at.desc()).limit(500)
        ).all()
        items = [video_dict(v) for v in videos]
    return render_template("library.html", videos=items, upload_url=upload_page_url())


@bp.get("/upload")
def upload():
    """Drag-and-drop resumable uploads (tus-js-client against /files/)."""

    limit = get_settings().max_upload_bytes
    return render_template(
        "upload.html",
        max_bytes=limit,
        max_human=f"{limit / 1e9:.3g} GB" if limit >= 1e9 else f"{limit / 1e6:.3g} MB",
        # small enough that a proxy's body limit or a retry costs little, big enough that the
        # per-request overhead is noise on a fast link
        chunk_size=16 * 1024 * 1024,
        extensions=sorted(SUPPORTED_EXTENSIONS),
    )


@bp.get("/watch/<video_id>")
def watch(video_id: str):
    with session_scope() as s:
        try:
            v = get_video(s, video_id)
        except VideoNotFound:
            abort(404, f"no video with id '{video_id}'")
        if v.status == VideoStatus.DELETED:
            abort(410, f"video '{video_id}' was deleted")
        video = video_dict(v)
    player_config = {
        "videoId": video["id"],
        "masterUrl": url_for("delivery.master_playlist", video_id=video["id"]),
        "statusUrl": url_for("api.get_video", video_id=video["id"]),
        "analyticsUrl": url_for("api.analytics_events"),
        "video": video,
    }
    return render_template("watch.html", video=video, player_config=player_config)
