"""Upload housekeeping: expire abandoned uploads, finish interrupted hand-offs, remove orphans.

Run by the maintenance flow on a schedule and by `vodflow cleanup` on demand; safe to run
while the web app serves uploads (every upload is touched under its lock, and a file that is
still being written is never older than the grace period). Call it on each web host: upload
bytes live on the host that received them, so it only touches uploads whose session names this
machine (`VODFLOW_NODE_NAME`, default the host name) and leaves other hosts' uploads to them;
a machine without uploads (one that only runs flows) then finds nothing to do but prune.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, or_, select

from catalog.db import session_scope
from catalog.models import UploadSession, UploadStatus
from config.settings import get_settings
from flows.uploads import sessions, store
from tasks.intake import UploadRejected

log = logging.getLogger(__name__)
_TUS_FILE = re.compile(r"^([0-9a-f]{32})\.(part|chunk|lock|terminating)$")


@dataclass
class CleanupReport:
    expired: int = 0  # abandoned uploads whose bytes were removed
    handed_off: int = 0  # complete uploads whose interrupted hand-off was finished
    refused: int = 0  # ... or refused on that second look
    orphan_files: int = 0  # temp files no live upload owns
    bytes_freed: int = 0
    pruned_sessions: int = 0  # finished sessions forgotten after `keep_days`
    busy: int = 0  # uploads skipped because a request is writing to them right now
    elsewhere: int = 0  # expired or interrupted uploads left to the web host that holds their bytes
    dry_run: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def cleanup_uploads(*, now: datetime | None = None, orphan_grace: float = 3600.0, keep_days: float = 7.0,
                    dry_run: bool = False) -> CleanupReport:
    """Expire uploads idle past their `Upload-Expires` (VODFLOW_UPLOAD_EXPIRY_HOURS after the
    last byte, 24 h by default), finish hand-offs a crash interrupted, delete temp files that
    no active upload owns and that nobody touched for `orphan_grace` seconds, and forget
    finished sessions after `keep_days` (until then their URLs answer 410 Gone)."""
    now = now or sessions.utcnow()
    report = CleanupReport(dry_run=dry_run)
    _count_elsewhere(now, report)
    _expire(now, report)
    _finish_interrupted(report)
    _remove_orphans(now, orphan_grace, report)
    _prune(now - timedelta(days=keep_days), report)
    log.info("upload cleanup%s: %s", " (dry run)" if dry_run else "", report.to_dict())
    return report


def _on_this_host():
    """Sessions whose bytes are on this machine's disk (and those from before hosts were
    recorded, which a single machine wrote). Upload locks are local too: another host's upload
    could be written to right now, and its missing bytes here say nothing about it."""
    return or_(UploadSession.host == get_settings().node_name, UploadSession.host.is_(None))


def _expired(now: datetime):
    return (UploadSession.status == UploadStatus.ACTIVE) & (UploadSession.expires_at <= now)


def _interrupted():
    """A video id reserved but the session still ACTIVE: the process died mid hand-off."""
    return (UploadSession.status == UploadStatus.ACTIVE) & UploadSession.video_id.is_not(None)


def _count_elsewhere(now: datetime, report: CleanupReport) -> None:
    with session_scope() as s:
        report.elsewhere = len(list(s.scalars(select(UploadSession.id).where(
            _expired(now) | _interrupted(), ~_on_this_host()))))


def _expire(now: datetime, report: CleanupReport) -> None:
    with session_scope() as s:
        ids = list(s.scalars(select(UploadSession.id).where(_expired(now), _on_this_host())))
    for upload_id in ids:
        try:
            with store.upload_lock(upload_id, timeout=0):
                sess = sessions.get(upload_id)
                if sess is None or not sessions.is_expired(sess, now):
                    continue
                report.expired += 1
                if report.dry_run:
                    report.bytes_freed += store.offset_on_disk(upload_id) or 0
                else:
                    report.bytes_freed += sessions.end(upload_id, UploadStatus.EXPIRED)
        except store.LockTimeout:
            report.busy += 1


def _finish_interrupted(report: CleanupReport) -> None:
    with session_scope() as s:
        ids = list(s.scalars(select(UploadSession.id).where(_interrupted(), _on_this_host())))
    for upload_id in ids:
        if report.dry_run:
            report.handed_off += 1
            continue
        try:
            with store.upload_lock(upload_id, timeout=0):
                if sessions.finish(upload_id):
                    report.handed_off += 1
        except store.LockTimeout:
            report.busy += 1
        except UploadRejected as exc:
            report.refused += 1
            log.warning("upload %s refused on hand-off retry: %s", upload_id, exc.message)


def _remove_orphans(now: datetime, grace: float, report: CleanupReport) -> None:
    root = get_settings().uploads_dir
    if not root.exists():
        return
    with session_scope() as s:
        active = set(s.scalars(select(UploadSession.id).where(UploadSession.status == UploadStatus.ACTIVE)))
    cutoff = now.timestamp() - grace
    tus = store.tus_dir()
    for dirpath, _dirs, names in os.walk(root):
        in_tus = os.path.samefile(dirpath, tus)
        for name in names:
            path = os.path.join(dirpath, name)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            m = _TUS_FILE.match(name) if in_tus else None
            if m and m.group(1) in active:
                continue  # a live upload's bytes (an idle one is expired above, not here)
            if st.st_mtime > cutoff:
                continue  # maybe being written or created right now
            if m and store.is_locked(m.group(1)):
                report.busy += 1
                continue
            report.orphan_files += 1
            report.bytes_freed += st.st_size
            if not report.dry_run:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass


def _prune(before: datetime, report: CleanupReport) -> None:
    stmt = select(UploadSession.id).where(UploadSession.status.in_(sessions.TERMINAL),
                                          UploadSession.updated_at < before)
    with session_scope() as s:
        ids = list(s.scalars(stmt))
        report.pruned_sessions = len(ids)
        if ids and not report.dry_run:
            s.execute(delete(UploadSession).where(UploadSession.id.in_(ids)))
    if not report.dry_run:
        for upload_id in ids:
            report.bytes_freed += store.remove(upload_id, lock_file=True)

