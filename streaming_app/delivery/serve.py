"""What to answer for a delivery URL, decided from the WSGI environ alone.

Run files live under `hls/{id}/{run}/`; a run folder is never rewritten once the catalog points at
it (a new encode gets a new run), so their URLs are content-addressed and cached for a year. The
master playlist is the only mutable URL: short max-age, revalidated by ETag.

Who sends the bytes of a local file depends on what runs in front of the app:
- behind vodflow's nginx (`vodflow up`; VODFLOW_WEB_SOCKET set), the app decides (published?
  deleted? validators, headers) and answers `X-Accel-Redirect` to nginx's internal location
  ACCEL_PREFIX; nginx sends the file with sendfile() and evaluates ranges and conditionals
  itself, on the same validators (config.storage gives local files nginx's ETag);
- alone (`vodflow web`), the open file goes to the server's `wsgi.file_wrapper` (gunicorn:
  sendfile(), ranges too, since the server stops at Content-Length as PEP 3333 requires).
S3 objects are read range by range, only the bytes asked for; with VODFLOW_REDIRECT_SEGMENTS the
media files answer with a 302 to a presigned URL instead.

The functions here return an `Outcome`, which routes.py turns into a Flask response (refusals as
JSON errors).
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from catalog.models import VideoStatus
from config import storage
from config.settings import get_settings
from streaming_app.delivery.conditional import Representation, decide, epoch_seconds
from streaming_app.delivery.master import MASTER_MAX_AGE, TEXT_TRACKS, VideoView, stored_url, video_view

log = logging.getLogger(__name__)

ID_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")  # Video.id
# one path part: no leading dot (so no '.', '..' or hidden files), no slashes or backslashes
PART_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")
MAX_DEPTH = 3  # {rung}/{file}, or {thumbs}/{size}/{file}

CONTENT_TYPES = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".ts": "video/mp2t",
    ".m4s": "video/iso.segment",
    ".mp4": "video/mp4",
    ".aac": "audio/aac",
    ".vtt": "text/vtt; charset=utf-8",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
}
# large, immutable bytes a presigned URL may serve directly (playlists stay on this origin so
# their relative URLs keep pointing here)
REDIRECTABLE = {".ts", ".m4s", ".mp4", ".aac", ".jpg", ".jpeg", ".png", ".webp"}

IMMUTABLE = "public, max-age=31536000, immutable"
MASTER_CACHE = f"public, max-age={MASTER_MAX_AGE}, must-revalidate"
# A playlist that still grows (a rendition published chunk by chunk), and the master while the
# video is processing (rungs appear, BANDWIDTH is re-measured): a CDN may keep them one second,
# well under half the shortest target duration, so no viewer waits a segment for news.
GROWING_CACHE = "public, max-age=1, must-revalidate"
PRESIGN_SECONDS = 3600
BLOCK_SIZE = 256 * 1024
# nginx's `internal` location for local run files: ACCEL_PREFIX + "{id}/{run}/{rung}/{file}" is
# the storage's hls/{id}/{run}/{rung}/{file} (deployments/nginx.conf)
ACCEL_PREFIX = "/_vodflow_files/"


class RemoteInfoCache:
    """Size and validators of remote (S3) run files, per worker process.

    Run files never change once published, so asking S3 for their info (a HEAD request) on every
    request is a round trip for nothing: with the info known, a segment costs one ranged GET, and
    a HEAD or a revalidation (304) costs no S3 request at all. What the catalog no longer lets
    us serve is refused before this cache is asked; a file that vanished anyway is found by the
    read, forgotten here, and answered as missing. Entries live `ttl` seconds at most."""

    def __init__(self, maxsize: int = 10_000, ttl: float = 300.0):
        self.maxsize, self.ttl = maxsize, ttl
        self._entries: dict[str, tuple[float, int, float | None, str | None]] = {}
        self._lock = threading.Lock()

    def open(self, url: str) -> storage.StoredObject:
        hit = self._entries.get(url)
        if hit is not None and hit[0] > time.monotonic():
            return storage.StoredObject(url, hit[1], hit[2], hit[3])
        obj = storage.open_object(url)
        with self._lock:
            if len(self._entries) >= self.maxsize:
                self._entries.pop(next(iter(self._entries)))  # the oldest
            self._entries[url] = (time.monotonic() + self.ttl, obj.size, obj.mtime, obj.etag)
        return obj

    def forget(self, url: str | None = None) -> None:
        with self._lock:
            if url is None:
                self._entries.clear()
            else:
                self._entries.pop(url, None)


remote_info = RemoteInfoCache()


@dataclass
class Outcome:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: Iterable[bytes] = ()
    # set for refusals: the person-readable reason, rendered as JSON by the Flask view
    message: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def refused(self) -> bool:
        return self.message is not None


def _refuse(status: int, message: str, cache: str = "no-store", **extra) -> Outcome:
    return Outcome(status, [("Cache-Control", cache)], message=message, extra=extra)


def _no_video(video_id: str) -> Outcome:
    return _refuse(404, f"no video with id '{video_id}'")


def _no_file() -> Outcome:
    return _refuse(404, "no such file")


def _storage_unavailable(exc: Exception) -> Outcome:
    # a CDN retries a 503 (or serves stale) where it would cache a 404
    log.warning("storage read failed: %s", exc)
    out = _refuse(503, "the media store could not be read; try again shortly")
    out.headers.append(("Retry-After", "2"))
    return out


def _unavailable(view: VideoView) -> Outcome | None:
    if not view.exists:
        return _no_video(view.video_id)
    if view.deleted:
        # deletion is final: let caches keep the answer
        return _refuse(410, f"video '{view.video_id}' was deleted", cache="public, max-age=3600")
    return None


class RequestHeaders:
    """Case-insensitive read access to a WSGI environ's request headers."""

    __slots__ = ("environ",)

    def __init__(self, environ: dict):
        self.environ = environ

    def get(self, name: str, default=None):
        return self.environ.get("HTTP_" + name.upper().replace("-", "_"), default)


def respond(environ: dict, rep: Representation, content_type: str, cache_control: str, body, close=None,
            missing=None) -> Outcome:
    """The answer to a GET/HEAD of `rep`: 200, 206, 304, 412 or 416 with every header a cache
    needs. `body(start, length)` gives the content iterable and is only called when bytes are
    sent; `close()` releases what was opened when they are not; `missing()` answers when the
    file turns out to be gone as it is read."""
    method = environ["REQUEST_METHOD"]
    decision = decide(method, RequestHeaders(environ), rep)
    headers = [("ETag", rep.etag_header), ("Last-Modified", rep.last_modified_header),
               ("Cache-Control", cache_control)]
    if decision.status not in (206, 304):
        # announced where ranges are news, as nginx does: a 206 or a 304 answers one already
        headers.append(("Accept-Ranges", "bytes"))
    sends_body = decision.status in (200, 206) and method == "GET" and decision.length > 0
    if not sends_body and close is not None:
        close()
    if decision.status == 304:
        return Outcome(304, headers)  # no Content-Type: a 304 describes no content (RFC 9110 §15.4.5)
    if decision.status == 412:
        out = _refuse(412, "a precondition (If-Match / If-Unmodified-Since) failed: the file has changed",
                      cache=cache_control)
    elif decision.status == 416:
        out = _refuse(416, f"the requested range is outside the file's {rep.size} bytes; "
                           f"ask for bytes=0-{max(rep.size - 1, 0)} or a part of it", cache=cache_control)
        out.headers.append(("Content-Range", f"bytes */{rep.size}"))
    else:
        try:
            content = body(decision.start, decision.length) if sends_body else ()
        except FileNotFoundError:  # removed between the size check and the read
            return missing() if missing is not None else _no_file()
        except storage.StorageError as exc:
            return _storage_unavailable(exc)
        headers += [("Content-Type", content_type), ("Content-Length", str(decision.length))]
        if decision.status == 206:
            last = decision.start + decision.length - 1
            headers.append(("Content-Range", f"bytes {decision.start}-{last}/{rep.size}"))
        return Outcome(decision.status, headers, content)
    out.headers = [h for h in headers if h[0] != "Cache-Control"] + out.headers
    return out


def master_playlist(environ: dict, video_id: str) -> Outcome:
    if not ID_RE.fullmatch(video_id):
        return _no_video(video_id)
    return _master_of(environ, video_view(video_id))


def _master_of(environ: dict, view: VideoView) -> Outcome:
    video_id = view.video_id
    gone = _unavailable(view)
    if gone is not None:
        return gone
    if view.master is None or view.master_rep is None:
        if view.status in (VideoStatus.UPLOADED, VideoStatus.PROCESSING):
            out = _refuse(404, f"video '{video_id}' has no published rendition yet "
                               f"(status {view.status.value}, {view.progress:.0f}% done); try again shortly",
                          status_value=view.status.value, progress=round(view.progress, 1))
            out.headers.append(("Retry-After", "5"))
            return out
        reason = f": {view.error}" if view.error else ""
        return _refuse(404, f"video '{video_id}' has no playable rendition "
                            f"(status {view.status.value if view.status else 'unknown'}){reason}")
    data = view.master
    cache = GROWING_CACHE if view.growing_run(view.current_run) else MASTER_CACHE
    return respond(environ, view.master_rep, CONTENT_TYPES[".m3u8"], cache,
                   lambda start, length: [data[start:start + length]])


def _file_kind(video_id: str, run: str, parts: list[str]) -> str | None:
    """The file's extension when the URL names something delivery may serve; None otherwise."""
    name = parts[-1]
    ext = name[name.rfind("."):].lower() if "." in name else ""
    if (not ID_RE.fullmatch(video_id) or not PART_RE.fullmatch(run) or len(parts) > MAX_DEPTH
            or not all(PART_RE.fullmatch(p) for p in parts) or ext not in CONTENT_TYPES):
        return None
    return ext


def _representation(obj: storage.StoredObject) -> Representation:
    return Representation(obj.size, obj.etag or f"{int(obj.mtime or 0):x}-{obj.size:x}", epoch_seconds(obj.mtime))


def _send_local(environ: dict, obj: storage.StoredObject, start: int, length: int):
    wrapper = environ.get("wsgi.file_wrapper")
    if wrapper is not None:
        # the server sends it with sendfile() and stops at Content-Length (PEP 3333)
        obj.file.seek(start)
        return wrapper(obj.file, BLOCK_SIZE)
    return storage.iter_object(obj, start, length)


def run_file(environ: dict, video_id: str, run: str, parts: list[str]) -> Outcome:
    ext = _file_kind(video_id, run, parts)
    if ext is None:
        return _no_file()
    view = video_view(video_id)
    gone = _unavailable(view)
    if gone is not None:
        return gone
    if not view.may_serve(run, parts):
        # not published (yet): maybe just now; ask the catalog before refusing
        view = video_view(video_id, fresh=True)
        gone = _unavailable(view)
        if gone is not None:
            return gone
        if not view.may_serve(run, parts):
            return _no_file()
    url = stored_url(video_id, run, parts)
    local = storage.is_local(url)
    if not local and ext in REDIRECTABLE and get_settings().redirect_segments:
        return Outcome(302, [("Location", storage.presigned_url(url, expires=PRESIGN_SECONDS)),
                             # well inside the signature's lifetime: a cached redirect never expires first
                             ("Cache-Control", f"public, max-age={PRESIGN_SECONDS // 6}")])

    def missing() -> Outcome:
        # deleted while being played? Ask the catalog now rather than trust the cached view.
        if not local:
            remote_info.forget(url)
        gone = _unavailable(video_view(video_id, fresh=True))
        return gone if gone is not None else _no_file()

    try:
        obj = storage.open_object(url) if local else remote_info.open(url)
    except FileNotFoundError:
        return missing()
    except storage.StorageError as exc:
        return _storage_unavailable(exc)

    # a growing rendition's playlist changes with every chunk; everything else in a run folder
    # never changes once listed
    cache = GROWING_CACHE if ext == ".m3u8" and (run, parts[0]) in view.growing else IMMUTABLE
    if local and environ["REQUEST_METHOD"] == "GET" and get_settings().web_socket is not None \
            and run != TEXT_TRACKS:  # nginx's internal location maps hls/ only
        # (a HEAD sends no bytes: the app answers it itself, as alone, Range ignored)
        return _accel(environ, obj, ext, "/".join((video_id, run, *parts)), missing, cache)

    def body(start: int, length: int):
        if local:
            return _send_local(environ, obj, start, length)
        chunks = storage.iter_object(obj, start, length)
        # fetch the first range now: an object removed since its HEAD is a 404, not a cut 200
        first = next(chunks)
        return itertools.chain([first], chunks)

    return respond(environ, _representation(obj), CONTENT_TYPES[ext], cache, body, close=obj.close,
                   missing=missing)


def _accel(environ: dict, obj: storage.StoredObject, ext: str, path: str, missing,
           cache: str = IMMUTABLE) -> Outcome:
    """The answer behind vodflow's nginx: the app's decision and headers, and `X-Accel-Redirect`
    for nginx to send the file itself. Refusals (304, 412, 416, a file gone) are the app's own
    answers; a 200 or 206 becomes a redirect to the whole file, and nginx cuts the same range
    from the same validators (ETag, Last-Modified and Content-Length it derives from the file,
    as this app does). Cache-Control travels as X-Accel-Cache-Control, which nginx never shows a
    client: Cache-Control itself would be copied onto every answer that follows the redirect,
    including the app's own if the file turns out to be gone. nginx copies the other headers the
    app adds (CORS, Vary) as deployments/nginx.conf lists them."""
    obj.close()  # opened for its size and validators only; nginx opens it again to send it
    out = respond(environ, _representation(obj), CONTENT_TYPES[ext], cache, lambda start, length: (),
                  missing=missing)
    if out.status not in (200, 206):
        return out
    return Outcome(200, [("Content-Type", CONTENT_TYPES[ext]), ("X-Accel-Cache-Control", cache),
                         ("Content-Length", "0"), ("X-Accel-Redirect", ACCEL_PREFIX + path)])
