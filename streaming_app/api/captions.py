"""Captions and chapters of a video over HTTP:

POST /api/videos/{id}/captions (multipart: file, language, label, default; admin token),
GET /api/videos/{id}/captions, DELETE /api/videos/{id}/captions/{caption_id} (admin token),
GET/PUT /api/videos/{id}/chapters (PUT: JSON list of {start, title}; admin token).

The work is in flows/captions.py; this module turns requests and refusals into HTTP.
"""

from __future__ import annotations

from flask import jsonify, request, url_for
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import parse_form_data

from catalog.db import session_scope
from catalog.models import VideoStatus
from catalog.state import VideoNotFound, get_video
from flows.captions import (
    PREFIX,
    CaptionRefused,
    add_caption,
    chapters_file_path,
    delete_caption,
    list_captions,
    set_chapters,
)
from streaming_app.api import bp
from streaming_app.api.videos import admin_refusal
from streaming_app.errors import error_response
from tasks.captions import MAX_CAPTION_BYTES, CaptionError, normalize_language

MULTIPART_OVERHEAD = 64 * 1024
TRUE = {"1", "true", "yes", "on"}


def _delivery(video_id: str, path: str | None) -> str | None:
    return url_for("delivery.run_file", video_id=video_id, run=PREFIX, path=path) if path else None


def _public(video_id: str, c: dict) -> dict:
    return {**c, "vtt": _delivery(video_id, c["vtt"].split("/", 1)[1]),
            "playlist": _delivery(video_id, c["playlist"].split("/", 1)[1]) if c["playlist"] else None}


def _video_or_refusal(video_id: str):
    with session_scope() as s:
        try:
            v = get_video(s, video_id)
        except VideoNotFound:
            return None, error_response(404, f"no video with id '{video_id}'")
        if v.status == VideoStatus.DELETED:
            return None, error_response(410, f"video '{video_id}' was deleted")
        return {"chapters": v.chapters or [], "chapters_url": v.chapters_url, "duration": v.duration}, None


@bp.get("/api/videos/<video_id>/captions")
def get_captions(video_id: str):
    _, refused = _video_or_refusal(video_id)
    if refused is not None:
        return refused
    return jsonify(captions=[_public(video_id, c) for c in list_captions(video_id)])


@bp.post("/api/videos/<video_id>/captions")
def post_caption(video_id: str):
    refused = admin_refusal("adding a caption")
    if refused is not None:
        return refused
    size = request.content_length
    if size is not None and size > MAX_CAPTION_BYTES + MULTIPART_OVERHEAD:
        return error_response(413, f"the request is {size} bytes; a caption file may have at most "
                                   f"{MAX_CAPTION_BYTES} bytes")
    if not (request.mimetype or "").startswith("multipart/form-data"):
        return error_response(415, "send multipart/form-data with the fields 'file' (.srt or .vtt), "
                                   "'language' (BCP 47, e.g. 'en') and optionally 'label' and 'default'")
    # the app's request class sends file parts through the video upload checks; a caption is
    # parsed with werkzeug's own in-memory/spooled parts instead
    try:
        _, form, files = parse_form_data(request.environ, max_content_length=MAX_CAPTION_BYTES + MULTIPART_OVERHEAD,
                                         silent=False)
    except RequestEntityTooLarge:
        return error_response(413, f"a caption file may have at most {MAX_CAPTION_BYTES} bytes")
    except ValueError as exc:
        return error_response(400, f"the multipart body cannot be read: {exc}")
    upload = files.get("file")
    if upload is None:
        return error_response(400, "the form has no 'file' field: attach the .srt or .vtt file as 'file'")
    try:
        language = normalize_language(form.get("language"))
    except CaptionError as exc:
        return error_response(400, str(exc))
    data = upload.stream.read(MAX_CAPTION_BYTES + 1)
    if len(data) > MAX_CAPTION_BYTES:
        return error_response(413, f"the file is larger than {MAX_CAPTION_BYTES} bytes, the limit for captions")
    if not data.strip():
        return error_response(422, "the file is empty")
    try:
        caption = add_caption(video_id, data, language=language, label=form.get("label"),
                              default=(form.get("default") or "").strip().lower() in TRUE,
                              filename=upload.filename or "")
    except CaptionRefused as exc:
        return error_response(exc.status, str(exc))
    except CaptionError as exc:
        return error_response(422, f"the caption file cannot be used: {exc}")
    body = _public(video_id, caption)
    r = body["report"]
    body["message"] = (f"{r['cues']} cue(s) kept" + (f"; {len(r['dropped'])} dropped" if r["dropped"] else "")
                       + (f"; {'; '.join(r['changes'])}" if r["changes"] else ""))
    resp = jsonify(body)
    resp.status_code = 201
    resp.headers["Location"] = url_for("api.get_captions", video_id=video_id)
    return resp


@bp.delete("/api/videos/<video_id>/captions/<caption_id>")
def remove_caption(video_id: str, caption_id: str):
    refused = admin_refusal("deleting a caption")
    if refused is not None:
        return refused
    _, refused = _video_or_refusal(video_id)
    if refused is not None:
        return refused
    try:
        delete_caption(video_id, caption_id)
    except CaptionRefused as exc:
        return error_response(exc.status, str(exc))
    return "", 204


@bp.get("/api/videos/<video_id>/chapters")
def get_chapters(video_id: str):
    video, refused = _video_or_refusal(video_id)
    if refused is not None:
        return refused
    return jsonify(chapters=video["chapters"], url=_delivery(video_id, chapters_file_path(video["chapters_url"])))


@bp.put("/api/videos/<video_id>/chapters")
def put_chapters(video_id: str):
    refused = admin_refusal("setting chapters")
    if refused is not None:
        return refused
    if not request.is_json:
        return error_response(415, "send JSON (Content-Type: application/json): a list of "
                                   "{\"start\": seconds, \"title\": text}, or [] to remove the chapters")
    if (request.content_length or 0) > 256 * 1024:
        return error_response(413, "a chapter list may have at most 256 KiB")
    items = request.get_json(silent=True)
    if items is None:
        return error_response(400, "the body is not valid JSON")
    try:
        result = set_chapters(video_id, items)
    except CaptionRefused as exc:
        return error_response(exc.status, str(exc))
    except CaptionError as exc:
        return error_response(422, str(exc))
    return jsonify(chapters=result["chapters"], url=_delivery(video_id, result["url"]))
