"""GET/HEAD /v/{id}/master.m3u8 and /v/{id}/{run}/{rung}/… from storage."""

from __future__ import annotations

import re

from flask import Response, request, send_file

from catalog.db import session_scope
from catalog.models import VideoStatus
from catalog.state import VideoNotFound, get_video, published_renditions
from config import storage
from streaming_app.delivery import bp
from streaming_app.delivery.master import render_master
from streaming_app.errors import error_response

ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
PART_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$")
CONTENT_TYPES = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".ts": "video/mp2t",
    ".jpg": "image/jpeg",
    ".vtt": "text/vtt",
}
IMMUTABLE = "public, max-age=31536000, immutable"


def _not_found(what: str = "no such file"):
    return error_response(404, what)


@bp.route("/v/<video_id>/master.m3u8", methods=["GET", "HEAD"])
def master_playlist(video_id: str):
    if not ID_RE.match(video_id):
        return _not_found(f"no video with id '{video_id}'")
    with session_scope() as s:
        try:
            video = get_video(s, video_id)
        except VideoNotFound:
            return _not_found(f"no video with id '{video_id}'")
        if video.status == VideoStatus.DELETED:
            return error_response(410, f"video '{video_id}' was deleted")
        rends = published_renditions(s, video)
        if not rends:
            resp = error_response(404, f"video '{video_id}' has no published rendition yet "
                                       f"(status {video.status.value}, {video.progress:.0f}%)")
            resp.headers["Retry-After"] = "5"
            return resp
        body = render_master(rends)
    resp = Response(body, mimetype=CONTENT_TYPES[".m3u8"])
    resp.headers["Cache-Control"] = "public, max-age=5, must-revalidate"
    resp.add_etag()
    return resp.make_conditional(request)


def _run_file(video_id: str, run: str, parts: list[str]):
    if not ID_RE.match(video_id) or not ID_RE.match(run) or not all(PART_RE.match(p) for p in parts):
        return _not_found()
    url = storage.url_for("hls", video_id, run, *parts)
    ext = "." + parts[-1].rsplit(".", 1)[-1] if "." in parts[-1] else ""
    mimetype = CONTENT_TYPES.get(ext, "application/octet-stream")
    if storage.is_local(url):
        path = storage.local_path_of(url)
        if not path.is_file():
            return _not_found()
        resp = send_file(path, mimetype=mimetype, conditional=True, etag=True, max_age=31536000)
    else:
        try:
            data = storage.read_bytes(url)
        except FileNotFoundError:
            return _not_found()
        resp = Response(data, mimetype=mimetype)
        resp.add_etag()
    resp.headers["Cache-Control"] = IMMUTABLE
    return resp


@bp.route("/v/<video_id>/<run>/<rung>/index.m3u8", methods=["GET", "HEAD"])
def variant_playlist(video_id: str, run: str, rung: str):
    return _run_file(video_id, run, [rung, "index.m3u8"])


@bp.route("/v/<video_id>/<run>/<path:path>", methods=["GET", "HEAD"])
def run_file(video_id: str, run: str, path: str):
    return _run_file(video_id, run, path.split("/"))
