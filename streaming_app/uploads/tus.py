"""tus 1.0.0 resumable uploads under /files/.

Core protocol plus the creation, creation-with-upload, creation-defer-length, expiration,
checksum (sha1, md5, crc32), termination and concatenation extensions, with
`X-HTTP-Method-Override` for clients that cannot send PATCH or DELETE. Validation runs in the
three intake phases: the declared size, name and type at creation; the first bytes as they
arrive (a PNG or a playlist named .mp4 is refused before the rest is read); ffprobe once the
last byte is in, followed by the hand-off to the pipeline.

Beyond tus, for people and scripts: a finished upload's responses carry `Vodflow-Video-Id`,
`Vodflow-Status-Url` and `Vodflow-Watch-Url`, and `GET /files/{id}` answers JSON with the
upload's state and, once handed off, its video.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import time
from email.utils import format_datetime
from urllib.parse import urlparse

from flask import Response, g, jsonify, request
from werkzeug.exceptions import ClientDisconnected

from catalog.models import UploadSession, UploadStatus
from config import links
from config.settings import get_settings
from flows.uploads import sessions, store
from streaming_app import cors
from streaming_app.errors import error_response
from streaming_app.uploads import bp
from streaming_app.uploads import metadata as meta
from streaming_app.uploads.space import space_problem
from tasks.intake import SNIFF_BYTES, UploadRejected, check_declared, check_head

log = logging.getLogger(__name__)
# the app-wide CORS policy exposes the tus headers; a page on another origin also reads these
cors.expose_headers("Vodflow-Video-Id", "Vodflow-Status-Url", "Vodflow-Watch-Url")

TUS_VERSION = "1.0.0"
EXTENSIONS = ("creation", "creation-with-upload", "creation-defer-length", "termination",
              "expiration", "checksum", "concatenation")
OFFSET_TYPE = "application/offset+octet-stream"
METHODS = ["GET", "HEAD", "POST", "PATCH", "DELETE", "OPTIONS"]
LOCK_WAIT = 10.0  # s a request waits for another request on the same upload
READ_TIMEOUT = 60.0  # s without a byte before a PATCH gives up on its client
DRAIN_LIMIT = 32 * 1024 * 1024  # read (and drop) at most this much of a refused body
_NONNEG = re.compile(r"^\d{1,19}$")


# ---------------------------------------------------------------- helpers


def _effective_method() -> str:
    override = request.headers.get("X-HTTP-Method-Override", "").strip().upper()
    return override or request.method


def _error(status: int, message: str, **extra) -> Response:
    resp = error_response(status, message, **extra)
    if status == 460:
        resp.status = "460 Checksum Mismatch"
        resp.data = resp.data.replace(b'"Error"', b'"Checksum Mismatch"', 1)
    return resp


def _nonneg(name: str) -> int | None:
    """A non-negative integer header; None if absent; ValueError if malformed."""
    value = request.headers.get(name)
    if value is None:
        return None
    value = value.strip()
    if not _NONNEG.match(value):
        raise ValueError(f"{name} must be a non-negative integer (got {value!r})")
    return int(value)


def _http_date(dt) -> str:
    return format_datetime(sessions.aware(dt), usegmt=True)


def _upload_url(upload_id: str) -> str:
    # absolute, so curl scripts can use it as is (tus clients also resolve a relative one
    # against their endpoint); from VODFLOW_PUBLIC_URL or the request as the proxy forwarded it
    return links.upload_url(upload_id)


def _video_headers(resp: Response, video_id: str | None) -> Response:
    if video_id:
        video = links.video_links(video_id)
        resp.headers["Vodflow-Video-Id"] = video["id"]
        resp.headers["Vodflow-Status-Url"] = video["status_url"]
        resp.headers["Vodflow-Watch-Url"] = video["watch_url"]
    return resp


def _gone(sess: UploadSession) -> Response:
    why = {
        UploadStatus.TERMINATED: "this upload was deleted",
        UploadStatus.EXPIRED: "this upload expired after "
                              f"{get_settings().upload_expiry_hours:g} h without activity",
        UploadStatus.FAILED: f"this upload was refused: {sess.error or 'invalid file'}",
    }.get(sess.status, "this upload is over")
    return _error(410, f"{why}; start a new upload")


def _current(upload_id: str) -> UploadSession | None:
    """The session as it stands now: one past its expiry is expired first."""
    sess = sessions.get(upload_id)
    if sess is not None and sessions.is_expired(sess):
        _expire(upload_id)
        sess = sessions.get(upload_id)
    return sess


def _load(upload_id: str) -> UploadSession | Response:
    """The session if it can take requests; else the 404/410 response to send."""
    sess = _current(upload_id)
    if sess is None:
        return _error(404, f"no upload with id '{upload_id}' on this server; start a new upload")
    if sess.status in (UploadStatus.TERMINATED, UploadStatus.EXPIRED, UploadStatus.FAILED):
        return _gone(sess)
    return sess


def _expire(upload_id: str) -> None:
    try:
        with store.upload_lock(upload_id, timeout=0):
            sess = sessions.get(upload_id)
            if sess is not None and sessions.is_expired(sess):
                sessions.end(upload_id, UploadStatus.EXPIRED)
    except store.LockTimeout:
        pass  # a request is writing to it right now: not abandoned


def _drain_body() -> None:
    """Read and drop what is left of a refused request's body (up to DRAIN_LIMIT), so the
    client receives the answer instead of a reset connection; beyond that the server closes."""
    if g.get("body_done"):
        return
    g.body_done = True
    if not request.content_length and not request.environ.get("wsgi.input_terminated"):
        return
    stream = request.stream
    left = DRAIN_LIMIT
    deadline = time.monotonic() + 10
    try:
        while left > 0 and time.monotonic() < deadline:
            data = stream.read(min(store.BUFFER_BYTES, left))
            if not data:
                break
            left -= len(data)
    except (ClientDisconnected, OSError):
        pass


class _BodyReader:
    """request.stream as store.append wants it: b"" at the end, ClientGone on a dead client."""

    def __init__(self) -> None:
        self.stream = request.stream

    def __call__(self, n: int) -> bytes:
        try:
            return self.stream.read(n)
        except (ClientDisconnected, OSError, ValueError) as exc:
            raise store.ClientGone(str(exc)) from None


class _ReadTimeout:
    """Bound each socket read while a body streams in: a client that vanished without closing
    its connection must not hold the upload's lock forever."""

    def __enter__(self):
        self.sock = request.environ.get("gunicorn.socket")
        self.prior = None
        if isinstance(self.sock, socket.socket):
            try:
                self.prior = self.sock.gettimeout()
                self.sock.settimeout(READ_TIMEOUT)
            except OSError:
                self.sock = None
        else:
            self.sock = None
        return self

    def __exit__(self, *exc):
        if self.sock is not None:
            try:
                self.sock.settimeout(self.prior)
            except OSError:
                pass
        return False


def _has_body() -> bool:
    return bool(request.content_length) or bool(request.environ.get("wsgi.input_terminated")
                                                 and request.headers.get("Transfer-Encoding"))


# ---------------------------------------------------------------- hooks


@bp.after_request
def _tus_headers(resp: Response) -> Response:
    path = request.path
    if path.startswith("/files"):
        resp.headers["Tus-Resumable"] = TUS_VERSION
        if resp.status_code == 204 or (resp.status_code == 200 and not resp.content_length
                                       and "Content-Type" in resp.headers and resp.mimetype == "text/html"):
            del resp.headers["Content-Type"]  # nothing to type: HEAD answers and 204s
    if path.startswith(("/files", "/api/uploads")):
        if request.method in ("PATCH", "POST") and resp.status_code >= 400:
            _drain_body()
    return resp


def _version_ok() -> Response | None:
    """412 for a Tus-Resumable this server does not speak (OPTIONS and GET are exempt)."""
    given = request.headers.get("Tus-Resumable")
    if given != TUS_VERSION:
        resp = _error(412, f"this server speaks tus {TUS_VERSION}; send 'Tus-Resumable: {TUS_VERSION}'"
                      + (f" (got {given!r})" if given else ""))
        resp.headers["Tus-Version"] = TUS_VERSION
        return resp
    return None


# ---------------------------------------------------------------- routes


@bp.route("/files/", methods=METHODS, strict_slashes=False, endpoint="tus_collection")
def collection():
    method = _effective_method()
    if method == "OPTIONS":
        return _options()
    if method != "POST":
        resp = _error(405, "create uploads with POST /files/; each upload has its own URL")
        resp.headers["Allow"] = "POST, OPTIONS"
        return resp
    return _version_ok() or _create()


@bp.route("/files/<upload_id>", methods=METHODS, endpoint="tus_upload")
def resource(upload_id: str):
    method = _effective_method()
    if method == "OPTIONS":
        return _options()
    if method == "GET":
        return _status(upload_id)
    handler = {"HEAD": _head, "PATCH": _patch, "DELETE": _delete}.get(method)
    if handler is None:
        resp = _error(405, f"{method} is not a tus request for an upload")
        resp.headers["Allow"] = "GET, HEAD, PATCH, DELETE, OPTIONS"
        return resp
    return _version_ok() or handler(upload_id)


def _options() -> Response:
    resp = Response(status=204)
    resp.headers["Tus-Version"] = TUS_VERSION
    resp.headers["Tus-Extension"] = ",".join(EXTENSIONS)
    resp.headers["Tus-Max-Size"] = str(get_settings().max_upload_bytes)
    resp.headers["Tus-Checksum-Algorithm"] = ",".join(store.CHECKSUM_ALGORITHMS)
    return resp


def _head(upload_id: str) -> Response:
    loaded = _load(upload_id)
    if isinstance(loaded, Response):
        return _bodyless(loaded)
    sess = loaded
    if sess.status == UploadStatus.ACTIVE and sess.length is not None and sess.concat != "partial":
        _retry_handoff(upload_id)
        sess = sessions.get(upload_id)
        if sess.status != UploadStatus.ACTIVE and sess.status != UploadStatus.COMPLETE:
            return _bodyless(_gone(sess))
    if sess.status == UploadStatus.COMPLETE:
        offset = sess.length
    else:
        offset = store.offset_on_disk(upload_id)
        if offset is None:
            return _bodyless(_lost(upload_id))
    resp = Response(status=200)
    resp.headers["Upload-Offset"] = str(offset)
    if sess.length is not None:
        resp.headers["Upload-Length"] = str(sess.length)
    else:
        resp.headers["Upload-Defer-Length"] = "1"
    if sess.metadata_header:
        resp.headers["Upload-Metadata"] = sess.metadata_header
    if sess.concat_header:
        resp.headers["Upload-Concat"] = sess.concat_header
    if sess.status == UploadStatus.ACTIVE and sess.expires_at:
        resp.headers["Upload-Expires"] = _http_date(sess.expires_at)
    resp.headers["Cache-Control"] = "no-store"
    return _video_headers(resp, sess.video_id if sess.status == UploadStatus.COMPLETE else None)


def _bodyless(resp: Response) -> Response:
    resp.data = b""
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _lost(upload_id: str) -> Response:
    err = UploadRejected(410, "the bytes received so far were lost on the server")
    try:
        with store.upload_lock(upload_id, timeout=LOCK_WAIT):
            sessions.fail(upload_id, err)
    except store.LockTimeout:
        pass
    return _error(410, f"{err.message}; start a new upload")


def _retry_handoff(upload_id: str) -> None:
    """A complete upload whose hand-off did not finish (the last PATCH died, or ffprobe was
    briefly unavailable): finish it now if nobody else is working on it."""
    sess = sessions.get(upload_id)
    if sess.video_id is None and store.offset_on_disk(upload_id) != sess.length:
        return
    if store.termination_requested(upload_id):
        return  # a DELETE is waiting for the lock
    try:
        with store.upload_lock(upload_id, timeout=0):
            sessions.finish(upload_id)
    except (store.LockTimeout, UploadRejected):
        pass


def _status(upload_id: str) -> Response:
    """GET /files/{id}: the upload's state as JSON (not part of tus; for pages and scripts)."""
    sess = _current(upload_id)
    if sess is None:
        return _error(404, f"no upload with id '{upload_id}' on this server")
    offset = sess.length if sess.status == UploadStatus.COMPLETE else (store.offset_on_disk(upload_id) or 0)
    body = {
        "id": sess.id,
        "url": _upload_url(sess.id),
        "status": sess.status.value,
        "offset": offset,
        "length": sess.length,
        "filename": sess.filename,
        "mime_type": sess.mime_type,
        "metadata": sess.metadata_ or {},
        "concat": sess.concat,
        "error": sess.error,
        "created_at": sessions.aware(sess.created_at).isoformat(),
        "updated_at": sessions.aware(sess.updated_at).isoformat(),
        "expires_at": sessions.aware(sess.expires_at).isoformat()
        if sess.expires_at and sess.status == UploadStatus.ACTIVE else None,
        "video": None,
    }
    if sess.video_id and sess.status == UploadStatus.COMPLETE:
        body["video"] = links.video_links(sess.video_id)
    resp = jsonify(body)
    resp.headers["Cache-Control"] = "no-store"
    return _video_headers(resp, body["video"]["id"] if body["video"] else None)


def _delete(upload_id: str) -> Response:
    """tus termination. The status changes only under the upload's lock, so a hand-off running
    right now either finishes first (the upload is COMPLETE: nothing to terminate) or never
    starts; never both a 204 here and a video made from the bytes behind its back.

    A COMPLETE upload is no longer the client's to free: its bytes are the video's source now
    (deleting the video is `DELETE /api/videos/{id}`). Its DELETE answers 204, as the
    termination extension requires, changes nothing and names the video, so GET and HEAD keep
    pointing at it."""
    loaded = _load(upload_id)
    if isinstance(loaded, Response):
        return loaded
    if loaded.status == UploadStatus.COMPLETE:
        return _video_headers(Response(status=204), loaded.video_id)
    store.request_termination(upload_id)  # a PATCH streaming into it stops within seconds
    try:
        with store.upload_lock(upload_id, timeout=LOCK_WAIT):
            sess = sessions.get(upload_id)
            if sess.status == UploadStatus.COMPLETE:  # the hand-off won the race
                store.drop_termination_request(upload_id)
                return _video_headers(Response(status=204), sess.video_id)
            if sess.status != UploadStatus.ACTIVE:
                store.drop_termination_request(upload_id)
                return _gone(sess)
            sessions.end(upload_id, UploadStatus.TERMINATED)
    except store.LockTimeout:
        # the request holding the lock stops writing when it next looks; this one asks again
        resp = _error(423, "another request is still working on this upload; repeat the DELETE")
        resp.headers["Retry-After"] = "1"
        return resp
    log.info("upload %s terminated by the client", upload_id)
    return Response(status=204)


# ---------------------------------------------------------------- creation


def _create() -> Response:
    settings = get_settings()
    concat = request.headers.get("Upload-Concat")
    try:
        metadata = meta.parse(request.headers.get("Upload-Metadata"))
        length = _nonneg("Upload-Length")
    except ValueError as exc:
        return _error(400, str(exc))
    filename, mime = meta.filename_of(metadata), meta.mime_of(metadata)
    kind = None
    if concat is not None:
        concat = concat.strip()
        if concat.startswith("final;") or concat == "final":
            if length is not None:
                return _error(400, "a final upload takes its length from its parts: omit Upload-Length")
            return _create_final(concat, metadata, filename, mime)
        if concat != "partial":
            return _error(400, "Upload-Concat must be 'partial' or 'final;<url> <url>…'")
        kind = "partial"
    defer = request.headers.get("Upload-Defer-Length")
    if defer is not None and defer.strip() != "1":
        return _error(400, "Upload-Defer-Length must be 1")
    if (length is None) == (defer is None):
        return _error(400, "send either Upload-Length (the file size in bytes) or Upload-Defer-Length: 1")
    if length is not None and length > settings.max_upload_bytes:
        return _error(413, f"the file is {length} bytes, over this server's limit of "
                           f"{settings.max_upload_bytes} bytes (Tus-Max-Size); compress or trim it first")
    try:
        if kind == "partial":
            if length == 0:
                raise UploadRejected(400, "a partial upload cannot be empty")
        else:
            check_declared(length, filename, mime)
    except UploadRejected as exc:
        return _error(exc.status, exc.message)
    short = space_problem(settings, length or 0)
    if short:
        return _error(507, short)
    body = _has_body()
    if body and request.mimetype != OFFSET_TYPE:
        return _error(415, f"data sent with the creation request needs 'Content-Type: {OFFSET_TYPE}'")
    upload_id = store.new_upload_id()
    store.create_part(upload_id)
    sess = sessions.create(
        id=upload_id, length=length, offset=0, metadata_=metadata, filename=filename, mime_type=mime,
        temp_path=str(store.files(upload_id).part), concat=kind, status=UploadStatus.ACTIVE,
        metadata_header=request.headers.get("Upload-Metadata", "").strip() or None,
        concat_header=concat if kind else None,
    )
    log.info("upload %s created: %s, %s bytes%s", upload_id, filename or "(no name)",
             length if length is not None else "deferred", ", partial" if kind else "")
    if body:
        resp = _receive(upload_id, offset=0, creating=True)
    else:
        resp = Response(status=201)
        resp.headers["Upload-Expires"] = _http_date(sess.expires_at)
    if resp.status_code < 300:
        resp.status_code = 201
        resp.headers["Location"] = _upload_url(upload_id)
    return resp


def _part_id(url: str) -> str | None:
    path = urlparse(url).path.rstrip("/")
    m = re.match(r"^(?:.*/)?files/([0-9a-f]{32})$", path)
    return m.group(1) if m else None


def _create_final(concat: str, metadata: dict, filename: str | None, mime: str | None) -> Response:
    settings = get_settings()
    urls = [u for u in concat[len("final;"):].split(" ") if u] if concat.startswith("final;") else []
    if not urls:
        return _error(400, "Upload-Concat: final needs the partial upload URLs, e.g. 'final;/files/a /files/b'")
    ids = []
    for u in urls:
        pid = _part_id(u)
        if pid is None:
            return _error(400, f"'{u}' is not an upload URL of this server")
        ids.append(pid)
    try:
        check_declared(None, filename, mime)
    except UploadRejected as exc:
        return _error(exc.status, exc.message)
    upload_id = store.new_upload_id()
    with contextlib.ExitStack() as locks:
        try:
            for pid in sorted(set(ids)):  # one order for everyone: no deadlock between finals
                locks.enter_context(store.upload_lock(pid, timeout=LOCK_WAIT))
        except store.LockTimeout:
            return _error(423, "a partial upload is still being written to; retry when all parts are done")
        total = 0
        for u, pid in zip(urls, ids):
            part = sessions.get(pid)
            if part is None or part.status != UploadStatus.ACTIVE or sessions.is_expired(part):
                return _error(400, f"partial upload '{u}' does not exist (or expired); upload it again")
            if part.concat != "partial":
                return _error(400, f"'{u}' was not created with 'Upload-Concat: partial'")
            have = store.offset_on_disk(pid)
            if part.length is None or have != part.length:
                return _error(400, f"partial upload '{u}' is not complete ({have or 0} of "
                                   f"{part.length if part.length is not None else '?'} bytes); finish it first")
            total += part.length
        if total > settings.max_upload_bytes:
            return _error(413, f"the parts add up to {total} bytes, over this server's limit of "
                               f"{settings.max_upload_bytes} bytes (Tus-Max-Size)")
        sessions.create(
            id=upload_id, length=total, offset=0, metadata_=metadata, filename=filename, mime_type=mime,
            temp_path=str(store.files(upload_id).part), concat="final", parts=ids,
            status=UploadStatus.ACTIVE, concat_header=concat,
            metadata_header=request.headers.get("Upload-Metadata", "").strip() or None,
        )
        with store.upload_lock(upload_id, timeout=LOCK_WAIT):
            try:
                store.concat_into(upload_id, ids)
            except OSError as exc:
                sessions.fail(upload_id, UploadRejected(507, f"could not assemble the parts: {exc}"))
                return _error(507, "the server could not assemble the parts (disk full?); retry later")
            sessions.touch(upload_id, total)
            try:
                done = sessions.finish(upload_id)
            except UploadRejected as exc:
                return _error(exc.status, exc.message)
        # the parts now live in the final upload's video
        for pid in set(ids):
            sessions.update(pid, status=UploadStatus.COMPLETE, video_id=done.video_id if done else None,
                            temp_path=None)
            store.remove(pid)
    log.info("upload %s concatenated from %d parts", upload_id, len(ids))
    resp = Response(status=201)
    resp.headers["Location"] = _upload_url(upload_id)
    resp.headers["Upload-Offset"] = str(total)
    return _video_headers(resp, done.video_id if done else None)


# ---------------------------------------------------------------- PATCH


def _patch(upload_id: str) -> Response:
    loaded = _load(upload_id)
    if isinstance(loaded, Response):
        return loaded
    if loaded.concat == "final":
        return _error(403, "a final upload is assembled from its parts and cannot be written to")
    if request.mimetype != OFFSET_TYPE:
        return _error(415, f"PATCH needs 'Content-Type: {OFFSET_TYPE}' (got '{request.mimetype or 'none'}')")
    try:
        offset = _nonneg("Upload-Offset")
    except ValueError as exc:
        return _error(400, str(exc))
    if offset is None:
        return _error(400, "PATCH needs an Upload-Offset header: HEAD the upload to learn it")
    return _receive(upload_id, offset=offset)


def _receive(upload_id: str, *, offset: int, creating: bool = False) -> Response:
    """Append this request's body at `offset` (PATCH, or POST with creation-with-upload)."""
    settings = get_settings()
    checksum = None
    if "Upload-Checksum" in request.headers:
        try:
            checksum = store.parse_checksum(request.headers["Upload-Checksum"])
        except ValueError as exc:
            return _error(400, str(exc))
    try:
        new_length = None if creating else _nonneg("Upload-Length")
    except ValueError as exc:
        return _error(400, str(exc))
    try:
        with store.upload_lock(upload_id, timeout=LOCK_WAIT):
            return _receive_locked(upload_id, offset, checksum, new_length, settings)
    except store.LockTimeout:
        resp = _error(423, "another request is writing to this upload right now; "
                           "HEAD it for the current offset and retry")
        resp.headers["Retry-After"] = "1"
        return resp


def _receive_locked(upload_id, offset, checksum, new_length, settings) -> Response:
    sess = sessions.get(upload_id)
    if sess.status == UploadStatus.COMPLETE:
        return _error(409, f"this upload is complete ({sess.length} bytes) and handed off",
                      offset=sess.length, video_id=sess.video_id)
    if sess.status != UploadStatus.ACTIVE:
        return _gone(sess)
    if store.termination_requested(upload_id):
        return _error(410, "this upload is being deleted; start a new upload")
    current = store.offset_on_disk(upload_id)
    if current is None:
        return _lost(upload_id)
    if offset != current:
        return _error(409, f"Upload-Offset is {offset} but the server has {current} bytes; "
                           f"HEAD the upload and continue from {current}", offset=current)
    length = sess.length
    if new_length is not None:
        if length is None:
            if new_length < current:
                return _error(400, f"Upload-Length {new_length} is less than the {current} bytes already received")
            try:
                check_declared(new_length, None, None)
            except UploadRejected as exc:
                return _error(exc.status, exc.message)
            length = new_length
            sessions.update(upload_id, length=length)
        elif new_length != length:
            return _error(400, f"Upload-Length is already {length}; it cannot change")
    room = (length if length is not None else settings.max_upload_bytes) - offset
    if request.content_length is not None and request.content_length > room:
        if length is None:
            return _error(413, f"this would make the upload larger than this server's limit of "
                               f"{settings.max_upload_bytes} bytes")
        return _error(413, f"the body has {request.content_length} bytes but only {room} remain "
                           f"of the declared {length}")

    sniff = None
    head = b""
    sniff_at = 0
    if sess.concat != "partial" and offset < SNIFF_BYTES:
        sniff_at = min(SNIFF_BYTES, length) if length is not None else SNIFF_BYTES
        head = store.read_head(upload_id, offset) if offset else b""
        filename = sess.filename

        def sniff(first: bytes) -> None:
            check_head(first, filename)

    def still_wanted() -> bool:
        if store.termination_requested(upload_id):
            return False
        s = sessions.get(upload_id)
        return s is not None and s.status == UploadStatus.ACTIVE

    g.body_done = True
    try:
        with _ReadTimeout():
            got = store.append(upload_id, _BodyReader(), max_bytes=room, checksum=checksum, sniff=sniff,
                               head=head, sniff_at=sniff_at, still_wanted=still_wanted)
    except UploadRejected as exc:
        g.body_done = False  # let the client finish sending this request, then read the answer
        sessions.fail(upload_id, exc)
        return _error(exc.status, exc.message)
    except store.ChecksumMismatch:
        sessions.touch(upload_id, offset)
        return _error(460, f"the chunk does not match its {checksum.algorithm} checksum and was "
                           f"discarded; send it again from offset {offset}", offset=offset)
    except store.TooMuchData:
        return _error(413, f"the body is larger than the {room} bytes this upload can still take")
    except store.Cancelled:  # what arrived was not kept; the DELETE ends the upload under the lock
        return _error(410, "this upload was deleted while the data was arriving")
    except OSError as exc:
        log.exception("upload %s: could not store data", upload_id)
        sessions.touch(upload_id, store.offset_on_disk(upload_id) or 0)
        return _error(507, f"the server could not store the data ({exc.strerror or exc}); "
                           "retry later from the offset HEAD reports")
    new_offset = offset + got.written
    expires = sessions.touch(upload_id, new_offset)
    if not still_wanted():  # a DELETE came in as the last bytes did: no hand-off
        return _error(410, "this upload was deleted while the data was arriving")
    if not got.complete:
        log.info("upload %s: client went away at %d bytes", upload_id, new_offset)
    video_id = None
    if length is not None and new_offset == length and sess.concat != "partial":
        try:
            done = sessions.finish(upload_id)
        except UploadRejected as exc:
            resp = _error(exc.status, exc.message)
            if exc.status == 503:
                resp.headers["Retry-After"] = "30"
            return resp
        video_id = done.video_id if done else None
    resp = Response(status=204)
    resp.headers["Upload-Offset"] = str(new_offset)
    if video_id is None:
        resp.headers["Upload-Expires"] = _http_date(expires)
    return _video_headers(resp, video_id)
