"""Upload sessions in the catalog, expiry, and the hand-off of a finished upload.

A session row survives restarts of the web server; its bytes are in `store`. The hand-off
runs under the upload's lock and is written so that it happens exactly once even if the
last PATCH is retried or the process dies half-way:

1. validate (first bytes again, then ffprobe) — refused: FAILED, bytes deleted;
2. reserve a video id on the session (the marker that hand-off has begun);
3. `flows.intake.accept(video_id=…)`: store the source, create the Video, dispatch — each
   step is skipped if a previous attempt already did it;
4. mark the session COMPLETE.

No Flask here: the maintenance flow and the CLI use this module too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from catalog.db import session_scope
from catalog.models import UploadSession, UploadStatus, Video, new_id
from config import storage
from config.settings import get_settings
from flows import intake
from flows.uploads import store
from tasks.intake import KIND_EXTENSIONS, SNIFF_BYTES, UploadRejected, check_complete, check_head

log = logging.getLogger(__name__)
TERMINAL = (UploadStatus.COMPLETE, UploadStatus.FAILED, UploadStatus.TERMINATED, UploadStatus.EXPIRED)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def aware(dt: datetime | None) -> datetime | None:
    """SQLite hands datetimes back without a zone; they were written in UTC."""
    if dt is not None and dt.tzinfo is None:
        return dt.replace(tzinfo=timezone.utc)
    return dt


def expiry_from(now: datetime | None = None) -> datetime:
    return (now or utcnow()) + timedelta(hours=get_settings().upload_expiry_hours)


def get(upload_id: str) -> UploadSession | None:
    if not store.is_upload_id(upload_id):
        return None
    with session_scope() as s:
        return s.get(UploadSession, upload_id)


def create(**fields) -> UploadSession:
    now = utcnow()
    fields.setdefault("host", get_settings().node_name)  # the bytes will be on this machine's disk
    sess = UploadSession(created_at=now, updated_at=now, expires_at=expiry_from(now), **fields)
    with session_scope() as s:
        s.add(sess)
    return sess


def update(upload_id: str, **values) -> None:
    with session_scope() as s:
        sess = s.get(UploadSession, upload_id)
        if sess is None:
            return
        for k, v in values.items():
            setattr(sess, k, v)
        sess.updated_at = utcnow()


def touch(upload_id: str, offset: int) -> datetime:
    """Record progress; an upload expires a fixed time after its last activity."""
    expires = expiry_from()
    update(upload_id, offset=offset, expires_at=expires)
    return expires


def is_expired(sess: UploadSession, now: datetime | None = None) -> bool:
    return (sess.status == UploadStatus.ACTIVE and sess.expires_at is not None
            and aware(sess.expires_at) <= (now or utcnow()))


def end(upload_id: str, status: UploadStatus, error: str | None = None) -> int:
    """Move a session to a terminal state and delete its bytes. Caller holds the lock."""
    update(upload_id, status=status, error=error, temp_path=None)
    freed = store.remove(upload_id)
    log.info("upload %s %s%s (%d bytes freed)", upload_id, status.value.lower(),
             f": {error}" if error else "", freed)
    return freed


def fail(upload_id: str, exc: UploadRejected) -> None:
    end(upload_id, UploadStatus.FAILED, exc.message)


@dataclass
class Finished:
    video_id: str


def _extension_for(sess: UploadSession, head: bytes) -> str:
    if sess.filename:
        return sess.filename
    try:
        kind = check_head(head)
    except UploadRejected:
        kind = None
    return "upload" + KIND_EXTENSIONS.get(kind or "", ".bin")


def finish(upload_id: str) -> Finished | None:
    """Hand a fully received upload to the pipeline, once. Caller holds the lock.

    Returns None if the upload is not complete yet (or is a partial upload, which waits for
    its final). Raises UploadRejected when validation refuses it (the session is FAILED and
    its bytes are gone) or, with status 503, when it could not be checked right now (the
    bytes stay; a retry or the maintenance job tries again)."""
    sess = get(upload_id)
    if sess is None:
        return None
    if sess.status == UploadStatus.COMPLETE and sess.video_id:
        return Finished(sess.video_id)
    if sess.status != UploadStatus.ACTIVE or sess.concat == "partial" or sess.length is None:
        return None
    f = store.files(upload_id)
    size = store.offset_on_disk(upload_id)
    video_id = sess.video_id
    info = None
    head = b""
    if size is not None:
        if size != sess.length:
            return None
        head = store.read_head(upload_id, SNIFF_BYTES)
    if video_id is None:
        if size is None:
            return None
        try:
            check_head(head, sess.filename)
            info = check_complete(f.part)
        except UploadRejected as exc:
            if exc.status < 500:
                fail(upload_id, exc)
            raise
        video_id = new_id()
        update(upload_id, video_id=video_id)
    filename = _extension_for(sess, head)
    title = (sess.metadata_ or {}).get("title") or None
    with session_scope() as s:
        have_video = s.get(Video, video_id) is not None
    if not have_video and size is None:
        # an earlier attempt moved the bytes into storage and died before the catalog row:
        # bring them back so the steps below can run again
        stored = intake.source_url_for(video_id, filename)
        if not storage.exists(stored):
            fail(upload_id, UploadRejected(410, "the uploaded bytes were lost; upload the file again"))
            raise UploadRejected(410, "the uploaded bytes were lost; upload the file again")
        storage.get_file(stored, f.part)
        storage.delete(stored)
        size = store.offset_on_disk(upload_id)
    if have_video:
        store.remove(upload_id)  # the Video already owns the stored copy
        intake.dispatch_once(video_id)
    else:
        if info is None:
            info = check_complete(f.part)
        store.sync(f.part)
        intake.accept(f.part, filename=filename, title=title, info=info, video_id=video_id)
    update(upload_id, status=UploadStatus.COMPLETE, offset=sess.length, temp_path=None, error=None)
    log.info("upload %s handed off as video %s", upload_id, video_id)
    return Finished(video_id)
