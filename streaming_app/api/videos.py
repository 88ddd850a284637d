"""GET/DELETE /api/videos…, GET /healthz."""

from __future__ import annotations

import hmac

from flask import jsonify, request
from sqlalchemy import select

from catalog.db import session_scope
from catalog.models import Video, VideoStatus
from catalog.state import InvalidTransition, VideoNotFound, get_video, transition
from config import storage
from config.settings import get_settings
from flows.captions import PREFIX as CAPTIONS_PREFIX
from flows.health import CRITICAL, check_all
from streaming_app.api import bp
from streaming_app.api.serialize import video_dict
from streaming_app.errors import error_response


def _admin_ok() -> bool:
    token = get_settings().admin_token
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    return hmac.compare_digest(given, token)


MAX_LIST = 5000


@bp.get("/api/videos")
def list_videos():
    status = request.args.get("status")
    raw_limit = request.args.get("limit", "500").strip()
    if not raw_limit.isdigit() or int(raw_limit) < 1:
        return error_response(400, f"limit must be a whole number from 1 to {MAX_LIST} (got '{raw_limit}')")
    limit = min(int(raw_limit), MAX_LIST)
    with session_scope() as s:
        stmt = select(Video).where(Video.status != VideoStatus.DELETED).order_by(Video.created_at.desc())
        if status:
            try:
                stmt = stmt.where(Video.status == VideoStatus(status.upper()))
            except ValueError:
                return error_response(400, f"unknown status '{status}'; use one of "
                                           f"{', '.join(x.value for x in VideoStatus)}")
        videos = s.scalars(stmt.limit(limit)).all()
        return jsonify(videos=[video_dict(v) for v in videos])


@bp.get("/api/videos/<video_id>", endpoint="get_video")
def get_video_route(video_id: str):
    with session_scope() as s:
        try:
            v = get_video(s, video_id)
        except VideoNotFound:
            return error_response(404, f"no video with id '{video_id}'")
        if v.status == VideoStatus.DELETED:
            return error_response(410, f"video '{video_id}' was deleted")
        return jsonify(video_dict(v))


def admin_refusal(doing: str):
    """None when the request carries the admin token; else the refusal: 403 when the server has
    no token at all (safe by default: an open change would let anyone who finds the server alter
    or wipe the library), 401 when the request's is missing or wrong."""
    if not get_settings().admin_token:
        return error_response(403, f"{doing} is disabled on this server: no VODFLOW_ADMIN_TOKEN is set; the "
                                   "operator sets one and sends it as 'Authorization: Bearer <token>'")
    if _admin_ok():
        return None
    resp = error_response(401, f"{doing} needs the admin token: send 'Authorization: Bearer <VODFLOW_ADMIN_TOKEN>'")
    # RFC 9110 §11.6.1: a 401 names the scheme to use; RFC 6750 §3 says why a sent token failed
    challenge = 'Bearer realm="vodflow"'
    if request.headers.get("Authorization"):
        challenge += ', error="invalid_token"'
    resp.headers["WWW-Authenticate"] = challenge
    return resp


@bp.delete("/api/videos/<video_id>")
def delete_video(video_id: str):
    refused = admin_refusal("deleting")
    if refused is not None:
        return refused
    with session_scope() as s:
        try:
            v = get_video(s, video_id, lock=True)
            transition(s, v, VideoStatus.DELETED)
        except VideoNotFound:
            return error_response(404, f"no video with id '{video_id}'")
        except InvalidTransition:
            return error_response(410, f"video '{video_id}' was already deleted")
    # the catalog no longer points at the files; remove them
    storage.delete(storage.url_for("hls", video_id))
    storage.delete(storage.url_for("sources", video_id))
    storage.delete(storage.url_for(CAPTIONS_PREFIX, video_id))
    return "", 204


@bp.get("/healthz")
def healthz():
    """DB, storage, Prefect API and Dask scheduler reachability. The HTTP status follows the
    parts needed to serve (database, storage): 503 takes this instance out of a load balancer;
    Prefect or Dask being down only delays transcoding, so it shows as "degraded" with 200."""
    checks = check_all()
    serving = all(checks[name]["ok"] for name in CRITICAL)
    ok = all(c["ok"] for c in checks.values())
    resp = jsonify(status="ok" if ok else "degraded", checks=checks)
    resp.status_code = 200 if serving else 503
    resp.headers["Cache-Control"] = "no-store"
    return resp
