"""Bulk ingest: scan a watch location (any fsspec URL: a local folder, `s3://bucket/incoming/`)
and ingest every new video in it exactly once.

- A file is identified by the SHA-256 of its content, so a renamed or re-copied file is not
  transcoded twice (the `ingested_sources` table holds one row per content hash, and its unique
  key makes two concurrent scans agree on who ingests it).
- A file still being written is left for the next scan: the location is listed twice,
  `settle_seconds` apart, and only files whose size and modification time did not change are
  taken. Names that copy tools use for partial files (`.part`, `.crdownload`, dot-files…) are
  never taken.
- A file that fails (not a video, unreadable, storage error) is recorded with the reason and
  the batch goes on. A refused file is not retried until its content changes; a transient
  failure (storage, a busy machine) is retried by the next scan.
- A scan that dies between claiming a file and recording the outcome leaves its claim behind;
  once older than `VODFLOW_BULK_INGEST_CLAIM_GRACE_SECONDS` (1 h) the next scan takes it over,
  so a crash never blocks that content for good.
- The batch ends with a markdown artifact listing every file and what happened to it.

The scheduled deployment `bulk-ingest/scheduled` runs the flow; `vodflow ingest <folder|URL>`
runs the same scan on demand with a progress bar.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from catalog.db import session_scope
from catalog.models import IngestedSource, Video, VideoStatus
from config import links, storage
from config.settings import get_settings
from flows import intake
from tasks.intake import SUPPORTED_EXTENSIONS, UploadRejected

log = logging.getLogger(__name__)

# suffixes and prefixes copy tools give files they are still writing
PARTIAL_SUFFIXES = (".part", ".partial", ".tmp", ".temp", ".crdownload", ".download", ".filepart", "~", ".!qb")
HASH_BLOCK = 8 * 1024 * 1024

# IngestedSource.status values
CLAIMED, INGESTED, FAILED = "CLAIMED", "INGESTED", "FAILED"


@dataclass
class Candidate:
    url: str
    name: str
    size: int
    mtime: float | None


@dataclass
class Outcome:
    """What happened to one file: ingested | duplicate | known | failed | writing."""

    name: str
    url: str
    size: int
    result: str
    video_id: str | None = None
    note: str = ""


@dataclass
class BatchReport:
    watch_url: str
    started_at: str
    outcomes: list[Outcome] = field(default_factory=list)

    def count(self, result: str) -> int:
        return sum(1 for o in self.outcomes if o.result == result)

    @property
    def video_ids(self) -> list[str]:
        return [o.video_id for o in self.outcomes if o.result == "ingested" and o.video_id]

    def to_dict(self) -> dict:
        counts = {r: self.count(r) for r in ("ingested", "duplicate", "known", "failed", "writing")}
        return {"watch_url": self.watch_url, "started_at": self.started_at, "counts": counts,
                "video_ids": self.video_ids, "files": [asdict(o) for o in self.outcomes]}


def normalise_url(location: str) -> str:
    """A watch location as a URL: plain paths become file:// URLs."""
    if "://" in location:
        return location.rstrip("/")
    return f"file://{Path(location).expanduser().resolve()}"


def _url_of(location_url: str, path: str) -> str:
    proto = location_url.split("://", 1)[0]
    return f"{proto}://{path}" if proto != "file" else f"file://{path}"


def _mtime(info: dict) -> float | None:
    m = info.get("mtime") or info.get("LastModified") or info.get("last_modified") or info.get("created")
    if hasattr(m, "timestamp"):
        return m.timestamp()
    return float(m) if m is not None else None


def looks_complete(name: str) -> bool:
    """False for names that say 'partial', hidden files and non-video extensions."""
    base = posixpath.basename(name)
    if not base or base.startswith((".", "~")):
        return False
    lower = base.lower()
    if lower.endswith(PARTIAL_SUFFIXES):
        return False
    return posixpath.splitext(lower)[1] in SUPPORTED_EXTENSIONS


def scan(location_url: str) -> dict[str, Candidate]:
    """Every video-looking file under the location (recursively), by URL."""
    fs, root = storage.filesystem(location_url)
    try:
        found = fs.find(root, detail=True)
    except FileNotFoundError:
        return {}
    out: dict[str, Candidate] = {}
    root_prefix = root.rstrip("/") + "/"
    for path, info in found.items():
        if info.get("type", "file") != "file":
            continue
        rel = path[len(root_prefix):] if path.startswith(root_prefix) else posixpath.basename(path)
        if any(part.startswith(".") for part in rel.split("/")) or not looks_complete(path):
            continue
        url = _url_of(location_url, path)
        out[url] = Candidate(url=url, name=rel, size=int(info.get("size") or 0), mtime=_mtime(info))
    return out


def settled_files(location_url: str, settle_seconds: float,
                  sleep: Callable[[float], None] = time.sleep) -> tuple[list[Candidate], list[Candidate]]:
    """(files whose size and mtime held still for `settle_seconds`, files still changing)."""
    first = scan(location_url)
    if settle_seconds <= 0 or not first:
        return sorted(first.values(), key=lambda c: c.name), []
    sleep(settle_seconds)
    second = scan(location_url)
    stable, writing = [], []
    for url, c in sorted(second.items(), key=lambda kv: kv[1].name):
        before = first.get(url)
        if before is None or before.size != c.size or before.mtime != c.mtime or c.size == 0:
            writing.append(c)
        else:
            stable.append(c)
    return stable, writing


def content_hash(url: str) -> str:
    """SHA-256 of the file's bytes, streamed (never the whole file in memory)."""
    h = hashlib.sha256()
    with storage.open_url(url, "rb") as fh:
        while block := fh.read(HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def _claim_expiry() -> datetime:
    """Claims made before this moment belong to scans that died."""
    return datetime.now(timezone.utc) - timedelta(seconds=get_settings().bulk_ingest_claim_grace_seconds)


def _abandoned(row: IngestedSource) -> bool:
    seen = row.first_seen_at
    if seen.tzinfo is None:
        seen = seen.replace(tzinfo=timezone.utc)
    return row.status == CLAIMED and seen < _claim_expiry()


def _already_seen(c: Candidate) -> IngestedSource | None:
    """A row for this very URL and size recorded after the file last changed: no need to hash."""
    with session_scope() as s:
        row = s.scalars(select(IngestedSource).where(IngestedSource.source_url == c.url,
                                                    IngestedSource.size == c.size)).first()
        if row is None or _abandoned(row):
            return None
        seen = row.first_seen_at
        if seen.tzinfo is None:
            seen = seen.replace(tzinfo=timezone.utc)
        if c.mtime is not None and c.mtime > seen.timestamp():
            return None
        return row


def _claim(c: Candidate, digest: str) -> tuple[bool, IngestedSource | None]:
    """Record the content hash; (True, None) if this scan owns it, (False, row) if known."""
    with session_scope() as s:
        row = s.scalars(select(IngestedSource).where(IngestedSource.content_hash == digest)).first()
        if row is not None and not _abandoned(row):
            return False, row
        video = s.scalars(select(Video).where(Video.content_hash == digest,
                                              Video.status != VideoStatus.DELETED)).first()
        if video is not None:
            # uploaded another way already (or by the dead scan before it could say so):
            # remember it so the next scan skips without reading
            if row is None:
                s.add(IngestedSource(content_hash=digest, source_url=c.url, size=c.size,
                                     video_id=video.id, status=INGESTED))
            else:
                row.status, row.video_id, row.error = INGESTED, video.id, None
            return False, IngestedSource(content_hash=digest, source_url=c.url, video_id=video.id,
                                         status=INGESTED)
    if row is not None:
        # the scan that claimed it died: take the claim over, unless another scan just did
        with session_scope() as s:
            taken = s.execute(update(IngestedSource).where(
                IngestedSource.content_hash == digest, IngestedSource.status == CLAIMED,
                IngestedSource.first_seen_at < _claim_expiry(),
            ).values(source_url=c.url, size=c.size, first_seen_at=datetime.now(timezone.utc), error=None))
        if taken.rowcount == 1:
            log.info("%s: taking over a claim abandoned since %s", c.url, row.first_seen_at)
            return True, None
        with session_scope() as s:
            return False, s.scalars(select(IngestedSource).where(IngestedSource.content_hash == digest)).first()
    try:
        with session_scope() as s:
            s.add(IngestedSource(content_hash=digest, source_url=c.url, size=c.size, status=CLAIMED))
        return True, None
    except IntegrityError:  # another scan claimed it between our read and write
        with session_scope() as s:
            return False, s.scalars(select(IngestedSource).where(IngestedSource.content_hash == digest)).first()


def _settle_claim(digest: str, *, status: str | None = None, video_id: str | None = None,
                  error: str | None = None, forget: bool = False) -> None:
    with session_scope() as s:
        row = s.scalars(select(IngestedSource).where(IngestedSource.content_hash == digest)).first()
        if row is None:
            return
        if forget:
            s.delete(row)
            return
        if status:
            row.status = status
        if video_id:
            row.video_id = video_id
        row.error = error


def _fetch_local(c: Candidate) -> Path:
    """A private local copy in the uploads folder, which intake.accept then moves into storage."""
    tmpdir = get_settings().uploads_dir
    tmpdir.mkdir(parents=True, exist_ok=True)
    suffix = posixpath.splitext(c.name)[1].lower()
    fd, tmp = tempfile.mkstemp(dir=tmpdir, prefix="bulk-", suffix=suffix)
    os.close(fd)
    try:
        if storage.is_local(c.url):
            shutil.copyfile(storage.local_path_of(c.url), tmp)
        else:
            storage.get_file(c.url, tmp)
    except BaseException:
        os.unlink(tmp)
        raise
    return Path(tmp)


def ingest_candidate(c: Candidate, *, dispatch: bool = True) -> Outcome:
    """Ingest one settled file exactly once by content; never raises."""
    out = Outcome(name=c.name, url=c.url, size=c.size, result="failed")
    try:
        seen = _already_seen(c)
        if seen is not None:
            out.result, out.video_id = "known", seen.video_id
            out.note = "seen before" + (f" ({seen.status.lower()}: {seen.error})" if seen.error else "")
            return out
        digest = content_hash(c.url)
        owned, row = _claim(c, digest)
        if not owned:
            out.video_id = row.video_id if row else None
            if row is not None and row.status == FAILED:
                out.result, out.note = "known", f"same content failed before: {row.error}"
            else:
                out.result = "duplicate"
                out.note = f"same content as {row.source_url}" if row is not None else "same content seen"
            return out
    except Exception as exc:  # noqa: BLE001 - one unreadable file must not stop the batch
        out.note = f"could not read: {exc}"
        return out

    tmp: Path | None = None
    try:
        tmp = _fetch_local(c)
        info = intake.check_file(tmp, posixpath.basename(c.name))
        video_id = intake.accept(tmp, filename=posixpath.basename(c.name), title=None, info=info,
                                 dispatch=False)
        tmp = None  # moved into storage
        with session_scope() as s:
            v = s.get(Video, video_id)
            v.content_hash = digest
        _settle_claim(digest, status=INGESTED, video_id=video_id)
        out.result, out.video_id = "ingested", video_id
    except UploadRejected as exc:
        # the content itself is refused: remember, so the same bytes are not read again
        _settle_claim(digest, status=FAILED, error=exc.message)
        out.note = exc.message
        return out
    except Exception as exc:  # noqa: BLE001 - transient: let the next scan try again
        _settle_claim(digest, forget=True)
        out.note = f"will retry on the next scan: {exc}"
        return out
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()
    if dispatch:
        try:
            intake.dispatch_once(out.video_id)
        except Exception as exc:  # noqa: BLE001 - the video is stored; maintenance dispatches it later
            out.note = f"stored; dispatch failed ({exc}), maintenance will retry"
    return out


def run_bulk_ingest(
    watch_url: str,
    *,
    settle_seconds: float | None = None,
    dispatch: bool = True,
    on_file: Callable[[Outcome, int, int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> BatchReport:
    """Scan `watch_url` and ingest what is new. `on_start(n)` and `on_file(outcome, i, n)`
    report progress (the CLI's progress bar)."""
    settings = get_settings()
    url = normalise_url(watch_url)
    settle = settings.bulk_ingest_settle_seconds if settle_seconds is None else settle_seconds
    report = BatchReport(watch_url=url, started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    stable, writing = settled_files(url, settle)
    for c in writing:
        report.outcomes.append(Outcome(name=c.name, url=c.url, size=c.size, result="writing",
                                       note="still being written; next scan"))
    if on_start:
        on_start(len(stable))
    for i, c in enumerate(stable, 1):
        outcome = ingest_candidate(c, dispatch=dispatch)
        report.outcomes.append(outcome)
        log.info("%s: %s %s %s", c.name, outcome.result, outcome.video_id or "", outcome.note)
        if on_file:
            on_file(outcome, i, len(stable))
    return report


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def summary_markdown(report: BatchReport) -> str:
    d = report.to_dict()["counts"]
    lines = [
        f"# Bulk ingest of `{report.watch_url}`",
        "",
        f"Started {report.started_at}: **{d['ingested']} ingested**, {d['duplicate']} duplicates, "
        f"{d['known']} seen before, **{d['failed']} failed**, {d['writing']} still being written.",
        "",
        "| file | size | result | video | note |",
        "|---|---:|---|---|---|",
    ]
    for o in report.outcomes:
        video = f"[{o.video_id}]({links.watch_url(o.video_id)})" if o.video_id else ""
        note = (o.note or "").replace("|", "\\|").replace("\n", " ")[:300]
        name = o.name.replace("|", "\\|")
        lines.append(f"| `{name}` | {_size(o.size)} | {o.result} | {video} | {note} |")
    if not report.outcomes:
        lines.append("| (no video files) | | | | |")
    return "\n".join(lines) + "\n"


@flow(name="bulk-ingest", log_prints=True)
def bulk_ingest(watch_url: str | None = None, settle_seconds: float | None = None) -> dict:
    """Ingest every new video under `watch_url` (default: VODFLOW_BULK_INGEST_URL) once."""
    logger = get_run_logger()
    location = watch_url or get_settings().bulk_ingest_url
    if not location:
        raise ValueError("no watch location: pass watch_url or set VODFLOW_BULK_INGEST_URL")
    report = run_bulk_ingest(location, settle_seconds=settle_seconds)
    summary = report.to_dict()
    create_markdown_artifact(
        key="bulk-ingest-summary",
        markdown=summary_markdown(report),
        description=f"bulk ingest of {report.watch_url}",
    )
    logger.info("bulk ingest of %s: %s", report.watch_url, summary["counts"])
    return summary


if __name__ == "__main__":
    print(bulk_ingest(sys.argv[1] if len(sys.argv) > 1 else None))
