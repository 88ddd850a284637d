"""/, /watch/{id} (and, as they are built, /upload and /stats/{id})."""

from __future__ import annotations

from flask import abort, current_app, render_template, url_for
from sqlalchemy import select

from catalog.db import session_scope
from catalog.models import Video, VideoStatus
from catalog.state import VideoNotFound, get_video
from streaming_app.api.serialize import video_dict
from streaming_app.pages import bp


def upload_page_url() -> str:
    return url_for("pages.upload") if "pages.upload" in current_app.view_functions else "/upload"


@bp.get("/")
def library():
    with session_scope() as s:
        videos = s.scalars(
            select(Video).where(Video.status != VideoStatus.DELETED).order_by(Video.created_at.desc()).limit(500)
        ).all()
        items = [video_dict(v) for v in videos]
    return render_template("library.html", videos=items, upload_url=upload_page_url())


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
