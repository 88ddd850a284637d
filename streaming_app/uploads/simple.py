"""POST /api/uploads: one-shot multipart upload (field `file`) for small files and curl.

The body is parsed by werkzeug straight into a temp file in the uploads folder (never held in
memory), checked in the same three phases as a tus upload, then handed off.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from flask import current_app, request, url_for
from werkzeug.exceptions import RequestEntityTooLarge

from config.settings import get_settings
from streaming_app.errors import error_response
from flows import intake
from streaming_app.uploads import bp
from tasks.intake import (
    SNIFF_BYTES,
    UploadRejected,
    check_complete,
    check_declared,
    check_head,
)

log = logging.getLogger(__name__)
MULTIPART_OVERHEAD = 64 * 1024


def _stream_factory(total_content_length, content_type, filename, content_length=None):
    """Where werkzeug writes an uploaded file part: a real file in the uploads folder."""
    d = get_settings().uploads_dir
    d.mkdir(parents=True, exist_ok=True)
    return tempfile.NamedTemporaryFile("wb+", dir=d, prefix="post-", suffix=".part", delete=False)


def _cleanup(files) -> None:
    for f in files.values():
        name = getattr(f.stream, "name", None)
        try:
            f.stream.close()
        except Exception:  # noqa: BLE001
            pass
        if isinstance(name, str) and os.path.exists(name):
            os.unlink(name)


def video_links(video_id: str) -> dict:
    return {
        "id": video_id,
        "status_url": url_for("api.get_video", video_id=video_id, _external=True),
        "watch_url": url_for("pages.watch", video_id=video_id, _external=True),
    }


@bp.post("/api/uploads")
def post_upload():
    settings = get_settings()
    limit = settings.max_upload_bytes
    declared = request.content_length
    if declared is not None and declared > limit + MULTIPART_OVERHEAD:
        return error_response(413, f"the upload is {declared} bytes, over this server's limit of {limit} bytes "
                                   "(VODFLOW_MAX_UPLOAD_BYTES); use the resumable /files/ endpoint or a smaller file")
    if not (request.mimetype or "").startswith("multipart/form-data"):
        return error_response(415, "send the video as multipart/form-data in the field 'file' "
                                   "(curl -F file=@video.mp4 …)")
    request.max_content_length = limit + MULTIPART_OVERHEAD
    try:
        files = request.files  # parses the body to disk now
    except RequestEntityTooLarge:
        return error_response(413, f"the upload is over this server's limit of {limit} bytes (VODFLOW_MAX_UPLOAD_BYTES)")
    try:
        upload = files.get("file")
        if upload is None or not upload.filename:
            return error_response(400, "no file: send the video in the multipart field 'file'")
        filename = Path(upload.filename).name
        upload.stream.flush()
        path = upload.stream.name
        size = os.path.getsize(path)
        try:
            check_declared(size, filename, upload.mimetype)
            with open(path, "rb") as fh:
                check_head(fh.read(SNIFF_BYTES), filename)
            info = check_complete(path)
        except UploadRejected as exc:
            return error_response(exc.status, exc.message)
        upload.stream.close()
        video_id = intake.accept(path, filename=filename, title=request.form.get("title"), info=info)
        resp = video_links(video_id)
        resp["status"] = "UPLOADED"
        out = current_app.json.response(resp)
        out.status_code = 201
        out.headers["Location"] = resp["status_url"]
        return out
    finally:
        _cleanup(files)
