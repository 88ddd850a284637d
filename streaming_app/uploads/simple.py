"""POST /api/uploads: one-shot multipart upload (field `file`) for small files and curl.

The body is parsed by werkzeug straight into a temp file in the uploads folder (never held in
memory), checked in the same three phases as a tus upload, then handed off.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from flask import current_app, g, request
from werkzeug.exceptions import RequestEntityTooLarge

from config import links
from config.settings import get_settings
from flows import intake
from flows.uploads import store
from streaming_app.errors import error_response
from streaming_app.uploads import bp
from streaming_app.uploads import metadata as meta
from streaming_app.uploads.space import space_problem
from tasks.intake import (
    SNIFF_BYTES,
    UploadRejected,
    check_complete,
    check_declared,
    check_head,
)

log = logging.getLogger(__name__)
MULTIPART_OVERHEAD = 64 * 1024


class _Refused(Exception):
    """Raised from inside werkzeug's form parser (which swallows ValueErrors) to stop reading."""

    def __init__(self, rejected: UploadRejected):
        super().__init__(rejected.message)
        self.rejected = rejected


class _SniffingFile:
    """The temp file a file part is parsed into: checks the part's name and type before the
    first byte, and its first bytes as soon as they arrive, so a PNG is refused without
    reading the rest of the body."""

    def __init__(self, raw, filename: str | None, content_type: str | None):
        self._raw = raw
        self._filename = filename
        self._head = bytearray()
        self._sniffed = False
        if filename:
            try:
                check_declared(None, Path(filename).name, content_type)
            except UploadRejected as exc:
                raise _Refused(exc) from None

    def write(self, data) -> int:
        if not self._sniffed:
            self._head += data[: SNIFF_BYTES - len(self._head)]
            if len(self._head) >= SNIFF_BYTES:
                self._sniff()
        return self._raw.write(data)

    def _sniff(self) -> None:
        self._sniffed = True
        try:
            check_head(bytes(self._head), self._filename)
        except UploadRejected as exc:
            raise _Refused(exc) from None

    def finish(self) -> None:
        """End of the part: judge a short file on what there is."""
        if not self._sniffed and self._head:
            self._sniff()

    def __getattr__(self, name):
        return getattr(self._raw, name)


def _stream_factory(total_content_length, content_type, filename, content_length=None):
    """Where werkzeug writes an uploaded file part: a real file in the uploads folder."""
    d = get_settings().uploads_dir
    d.mkdir(parents=True, exist_ok=True)
    raw = tempfile.NamedTemporaryFile("wb+", dir=d, prefix="post-", suffix=".part", delete=False)
    g.setdefault("post_parts", []).append(raw)
    try:
        return _SniffingFile(raw, filename, content_type)
    except _Refused:
        raw.close()
        os.unlink(raw.name)
        raise


def _remove_partial_parts() -> None:
    """A refused body leaves the parts parsed so far; werkzeug did not hand them back."""
    for f in g.get("post_parts", []):
        try:
            f.close()
            os.unlink(f.name)
        except OSError:
            pass


def _cleanup(files) -> None:
    for f in files.values():
        name = getattr(f.stream, "name", None)
        try:
            f.stream.close()
        except Exception:  # noqa: BLE001
            pass
        if isinstance(name, str) and os.path.exists(name):
            os.unlink(name)


@bp.post("/api/uploads")
def post_upload():
    settings = get_settings()
    limit = settings.max_upload_bytes
    declared = request.content_length
    if declared is not None and declared > limit + MULTIPART_OVERHEAD:
        return error_response(413, f"the upload is {declared} bytes, over this server's limit of {limit} bytes "
                                   "(VODFLOW_MAX_UPLOAD_BYTES); use the resumable /files/ endpoint or a smaller file")
    short = space_problem(settings, declared or 0)
    if short:
        return error_response(507, short)
    if not (request.mimetype or "").startswith("multipart/form-data"):
        return error_response(415, "send the video as multipart/form-data in the field 'file' "
                                   "(curl -F file=@video.mp4 …)")
    request.max_content_length = limit + MULTIPART_OVERHEAD
    try:
        files = request.files  # parses the body to disk now
    except RequestEntityTooLarge:
        return error_response(413, f"the upload is over this server's limit of {limit} bytes (VODFLOW_MAX_UPLOAD_BYTES)")
    except _Refused as exc:
        _remove_partial_parts()
        return error_response(exc.rejected.status, exc.rejected.message)
    try:
        upload = files.get("file")
        if upload is None or not upload.filename:
            return error_response(400, "no file: send the video in the multipart field 'file'")
        filename = meta.filename_of({"filename": upload.filename})
        upload.stream.flush()
        path = upload.stream.name
        size = os.path.getsize(path)
        try:
            check_declared(size, filename, upload.mimetype)
            upload.stream.finish()
            info = check_complete(path)
        except _Refused as exc:
            return error_response(exc.rejected.status, exc.rejected.message)
        except UploadRejected as exc:
            return error_response(exc.status, exc.message)
        upload.stream.close()
        store.sync(path)
        title = meta.clean_text(request.form.get("title"), 300)
        video_id = intake.accept(path, filename=filename, title=title, info=info)
        resp = links.video_links(video_id)
        resp["status"] = "UPLOADED"
        out = current_app.json.response(resp)
        out.status_code = 201
        out.headers["Location"] = resp["status_url"]
        return out
    finally:
        _cleanup(files)
