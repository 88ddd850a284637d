"""Maintenance (deployment `maintenance/hourly`): recover stuck videos, remove what nobody needs.

Recovery. A video in PROCESSING (or UPLOADED with a dispatched run) is stuck when its flow run
- ended without finishing the video: CRASHED, CANCELLED, FAILED, or COMPLETED while the video
  still says PROCESSING;
- vanished: Prefect no longer knows the run id;
- went silent: still RUNNING (or PENDING) in Prefect, but neither a heartbeat event, a state
  change nor a catalog update for `VODFLOW_STALE_RUN_SECONDS` (the process running it was killed,
  or its machine died; Prefect itself never notices, see prefect #17384);
- ran outside Prefect (`local:<host>:<pid>`) in a process that no longer exists.
A stuck video is re-dispatched through the `ingest/on-demand` deployment while it has had fewer
than `VODFLOW_MAX_INGEST_ATTEMPTS` attempts, else it becomes FAILED with the reason. A silent
run is first marked CRASHED in Prefect, so the UI tells the truth and its concurrency slot frees.

Housekeeping. Expired uploads and their temporary files, scratch files and intermediate or
superseded outputs nobody references, once older than `VODFLOW_ORPHAN_FILE_HOURS`.

Every run leaves a markdown report artifact and returns the same facts as a dict.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from uuid import UUID

import requests
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from prefect.states import Crashed
from sqlalchemy import select

from catalog.db import session_scope
from catalog.models import Video, VideoStatus
from catalog.state import transition
from config import storage
from config.settings import get_settings, prefect_api_url
from flows.dispatch import LOCAL_PREFIX, dispatch_ingest
from flows.uploads.cleanup import cleanup_uploads

log = logging.getLogger(__name__)

# Prefect state types
DEAD_STATES = {"CRASHED", "CANCELLED", "FAILED", "COMPLETED"}
QUEUED_STATES = {"SCHEDULED", "PAUSED"}
LIVE_STATES = {"RUNNING", "PENDING", "CANCELLING"}
# storage prefixes that only ever hold scratch or intermediate files
SCRATCH_PREFIXES = ("scratch", "tmp")


def _utc(dt: datetime | None) -> datetime | None:
    if dt is None:
        return None
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class RunVerdict:
    """What maintenance concluded about one video's flow run."""

    video_id: str
    status: str
    flow_run_id: str | None
    run_state: str  # Prefect state type, 'VANISHED', 'LOCAL-ALIVE', 'LOCAL-DEAD', 'NONE'
    stuck: bool
    reason: str
    action: str = "none"  # none | redispatched | failed | marked-crashed+redispatched …
    new_flow_run_id: str | None = None


@dataclass
class MaintenanceReport:
    started_at: str
    videos: list[RunVerdict] = field(default_factory=list)
    removed: list[dict] = field(default_factory=list)  # {'what', 'url', 'bytes'}
    expired_uploads: int = 0
    errors: list[str] = field(default_factory=list)
    dry_run: bool = False

    def to_dict(self) -> dict:
        return {
            "started_at": self.started_at,
            "dry_run": self.dry_run,
            "videos": [asdict(v) for v in self.videos],
            "redispatched": [v.video_id for v in self.videos if "redispatched" in v.action.split("+")],
            "failed": [v.video_id for v in self.videos if "failed" in v.action.split("+")],
            "removed": self.removed,
            "removed_bytes": sum(r.get("bytes", 0) for r in self.removed),
            "expired_uploads": self.expired_uploads,
            "errors": self.errors,
        }


# ---------------------------------------------------------------- Prefect run states

class PrefectRuns:
    """The few questions maintenance asks the Prefect API (None when no API is configured)."""

    def __init__(self) -> None:
        self.api = prefect_api_url()

    @property
    def available(self) -> bool:
        return bool(self.api)

    def read(self, run_id: str):
        """The flow run, or None when Prefect does not know it (vanished)."""
        try:
            rid = UUID(run_id)
        except ValueError:
            return None
        with get_client(sync_client=True) as client:
            try:
                return client.read_flow_run(rid)
            except ObjectNotFound:
                return None

    def last_heartbeat(self, run_id: str, since: datetime) -> datetime | None:
        """When the run's engine last said it was alive (`prefect.flow-run.heartbeat` events)."""
        body = {
            "filter": {
                "occurred": {"since": since.isoformat()},
                "event": {"name": ["prefect.flow-run.heartbeat"]},
                "resource": {"id": [f"prefect.flow-run.{run_id}"]},
                "order": "DESC",
            },
            "limit": 1,
        }
        # Unanswered, this must raise rather than return None: "no heartbeat" would condemn a
        # healthy run. Prefect answers 503 while its database is busy; ask again a few times.
        for attempt in range(5):
            r = requests.post(f"{self.api.rstrip('/')}/events/filter", json=body, timeout=15)
            if r.status_code not in (429, 503):
                break
            time.sleep(0.5 * (attempt + 1))
        r.raise_for_status()
        events = r.json().get("events") or []
        if not events:
            return None
        return _utc(datetime.fromisoformat(events[0]["occurred"].replace("Z", "+00:00")))

    def mark_crashed(self, run_id: str, message: str) -> None:
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(UUID(run_id), Crashed(message=message), force=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited: it only waits to be reaped
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _parse_local(run_id: str) -> tuple[str | None, int | None]:
    rest = run_id[len(LOCAL_PREFIX):]
    host, _, pid = rest.rpartition(":")
    try:
        return (host or None), int(pid)
    except ValueError:
        return None, None


def judge(video: Video, runs: PrefectRuns, stale_after: float) -> RunVerdict:
    """Is this PROCESSING/UPLOADED video's run still alive, queued, or gone?"""
    now = _now()
    updated = _utc(video.updated_at) or _utc(video.created_at) or now
    quiet = (now - updated).total_seconds()
    v = RunVerdict(video_id=video.id, status=video.status.value, flow_run_id=video.flow_run_id,
                   run_state="NONE", stuck=False, reason="")
    run_id = video.flow_run_id
    if not run_id:
        v.stuck = quiet > stale_after
        v.reason = (f"no flow run recorded and no progress for {quiet:.0f} s" if v.stuck
                    else "not dispatched yet")
        return v
    if run_id.startswith(LOCAL_PREFIX):
        host, pid = _parse_local(run_id)
        if pid is not None and host in (None, socket.gethostname()):
            alive = _pid_alive(pid)
            v.run_state = "LOCAL-ALIVE" if alive else "LOCAL-DEAD"
            v.stuck = not alive
            v.reason = f"local process {pid} " + ("is running" if alive else "has exited")
        else:
            v.run_state = "LOCAL-ELSEWHERE"
            v.stuck = quiet > stale_after
            v.reason = f"runs on {host}; no progress for {quiet:.0f} s" if v.stuck else f"runs on {host}"
        return v
    if not runs.available:
        v.run_state = "UNKNOWN"
        v.stuck = quiet > stale_after
        v.reason = f"no Prefect API to ask; no progress for {quiet:.0f} s"
        return v
    run = runs.read(run_id)
    if run is None:
        v.run_state, v.stuck, v.reason = "VANISHED", True, f"flow run {run_id} is unknown to Prefect"
        return v
    state = run.state
    stype = state.type.value if state is not None else "NONE"
    v.run_state = stype if state is None or state.name.upper() == stype else f"{stype}({state.name})"
    if stype in DEAD_STATES:
        v.stuck = True
        msg = (state.message or "").strip() if state is not None else ""
        v.reason = f"flow run {state.name.lower() if state else 'ended'}" + (f": {msg}" if msg else "")
        if stype == "COMPLETED":
            v.reason = "flow run completed but left the video " + video.status.value
        return v
    if stype in QUEUED_STATES:
        v.reason = "queued"
        return v
    # RUNNING / PENDING / CANCELLING: alive only if something moved recently
    marks = [updated, _utc(state.timestamp) if state is not None else None, _utc(run.start_time)]
    hb = runs.last_heartbeat(run_id, since=now - timedelta(seconds=stale_after * 4 + 3600))
    marks.append(hb)
    last = max(m for m in marks if m is not None)
    silent = (now - last).total_seconds()
    v.stuck = silent > stale_after
    v.reason = (f"{stype.lower()} but silent for {silent:.0f} s (no heartbeat, state change or progress)"
                if v.stuck else f"{stype.lower()}, last sign of life {silent:.0f} s ago")
    return v


def recover_stuck_videos(report: MaintenanceReport, *, dry_run: bool = False) -> None:
    settings = get_settings()
    runs = PrefectRuns()
    with session_scope() as s:
        candidates = s.scalars(select(Video).where(
            Video.status.in_([VideoStatus.PROCESSING, VideoStatus.UPLOADED]))).all()
    for video in candidates:
        try:
            verdict = judge(video, runs, settings.stale_run_seconds)
        except Exception as exc:  # noqa: BLE001 - Prefect unreachable: decide nothing
            report.errors.append(f"{video.id}: could not check its run: {exc}")
            continue
        report.videos.append(verdict)
        if not verdict.stuck or dry_run:
            continue
        try:
            _act_on(verdict, runs, settings.max_ingest_attempts, dispatch_ingest)
        except Exception as exc:  # noqa: BLE001 - one video must not stop the others
            report.errors.append(f"{video.id}: {exc}")
            verdict.action = f"error: {exc}"


def _act_on(verdict: RunVerdict, runs: PrefectRuns, max_attempts: int, dispatch) -> None:
    actions = []
    if runs.available and verdict.flow_run_id and not verdict.flow_run_id.startswith(LOCAL_PREFIX) \
            and verdict.run_state.split("(")[0] in LIVE_STATES:
        runs.mark_crashed(verdict.flow_run_id, f"maintenance: {verdict.reason}")
        actions.append("marked-crashed")
    with session_scope() as s:
        video = s.get(Video, verdict.video_id)
        if video is None or video.status not in (VideoStatus.PROCESSING, VideoStatus.UPLOADED) \
                or video.flow_run_id != verdict.flow_run_id:
            verdict.action = "none (changed meanwhile)"
            return
        attempts = int(video.attempts or 0)
        if attempts >= max_attempts:
            reason = (f"gave up after {attempts} attempt{'s' if attempts != 1 else ''}: {verdict.reason}")
            transition(s, video, VideoStatus.FAILED, error=reason)
            actions.append("failed")
            verdict.action = "+".join(actions)
            return
        # the next run is a new attempt (PROCESSING → PROCESSING does not count it)
        video.attempts = attempts + 1
        video.stage = "requeued"  # the new run sets its own stages; error stays for real failures
    verdict.new_flow_run_id = dispatch(verdict.video_id, reason="recovery")
    actions.append("redispatched")
    verdict.action = "+".join(actions)


# ---------------------------------------------------------------- housekeeping

def expire_uploads(report: MaintenanceReport, *, dry_run: bool = False) -> None:
    """Upload housekeeping belongs to the upload service: expired and abandoned uploads lose
    their bytes, interrupted hand-offs are finished, orphaned temp files go."""
    result = cleanup_uploads(dry_run=dry_run)
    report.expired_uploads += result.expired
    if result.orphan_files or result.expired:
        report.removed.append({"what": f"upload temp files ({result.expired} expired, "
                                       f"{result.orphan_files} orphaned)",
                               "url": str(get_settings().uploads_dir), "bytes": result.bytes_freed})


def _remove_old_local(folder: Path, cutoff: float, keep: set[str], what: str,
                      report: MaintenanceReport, dry_run: bool) -> None:
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if str(entry.resolve()) in keep:
            continue
        newest, size = _newest_mtime_and_size(entry)
        if newest is None or newest > cutoff:
            continue
        if any(str(p) in keep for p in _walk(entry)):
            continue
        if not dry_run:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        report.removed.append({"what": what, "url": str(entry), "bytes": size})


def _walk(entry: Path):
    if entry.is_dir() and not entry.is_symlink():
        yield from (p.resolve() for p in entry.rglob("*"))
    yield entry.resolve()


def _newest_mtime_and_size(entry: Path) -> tuple[float | None, int]:
    try:
        if entry.is_dir() and not entry.is_symlink():
            newest, total = entry.stat().st_mtime, 0
            for p in entry.rglob("*"):
                st = p.lstat()
                newest = max(newest, st.st_mtime)
                total += st.st_size if p.is_file() else 0
            return newest, total
        st = entry.lstat()
        return st.st_mtime, st.st_size
    except FileNotFoundError:
        return None, 0


def _tree(url: str) -> tuple[float | None, int, bool]:
    """(newest mtime, total bytes, any file) of everything under a storage URL."""
    fs, path = storage.filesystem(url)
    try:
        found = fs.find(path, detail=True)
    except FileNotFoundError:
        return None, 0, False
    newest, total = None, 0
    for info in found.values():
        m = info.get("mtime") or info.get("LastModified") or info.get("created")
        if hasattr(m, "timestamp"):
            m = m.timestamp()
        if m is not None:
            newest = max(newest or 0.0, float(m))
        total += int(info.get("size") or 0)
    return newest, total, bool(found)


def remove_orphans(report: MaintenanceReport, *, dry_run: bool = False) -> None:
    """Outputs and sources no video points at, superseded runs, scratch files; all only once
    they are older than VODFLOW_ORPHAN_FILE_HOURS (a run in progress writes fresh files)."""
    settings = get_settings()
    cutoff = time.time() - settings.orphan_file_hours * 3600
    with session_scope() as s:
        videos = {v.id: (v.status, v.current_run) for v in s.scalars(select(Video))}

    def drop(url: str, what: str) -> None:
        newest, size, anything = _tree(url)
        if anything and newest is not None and newest > cutoff:
            return
        if not dry_run:
            storage.delete(url)
        report.removed.append({"what": what, "url": url, "bytes": size})

    for entry in storage.list_dir(storage.url_for("sources")):
        vid = entry["name"]
        status = videos.get(vid, (None, None))[0]
        if status is None or status == VideoStatus.DELETED:
            drop(entry["url"], "source without a video")
    for entry in storage.list_dir(storage.url_for("captions")):
        # captions/{video_id}/: captions and chapters belong to the video, kept across runs
        status = videos.get(entry["name"], (None, None))[0]
        if status is None or status == VideoStatus.DELETED:
            drop(entry["url"], "captions without a video")
    for entry in storage.list_dir(storage.url_for("hls")):
        vid = entry["name"]
        status, current = videos.get(vid, (None, None))
        if status is None or status == VideoStatus.DELETED:
            drop(entry["url"], "output without a video")
            continue
        if status == VideoStatus.PROCESSING:
            continue  # a run folder may be filling right now
        for run in storage.list_dir(entry["url"]):
            if run["type"] == "directory" and run["name"] != current:
                drop(run["url"], "superseded or failed run")
    for prefix in SCRATCH_PREFIXES:
        for entry in storage.list_dir(storage.url_for(prefix)):
            # scratch/{video_id}/{run}/: chunks of a run in progress are not orphans
            if videos.get(entry["name"], (None, None))[0] == VideoStatus.PROCESSING:
                continue
            drop(entry["url"], "intermediate files")
    _remove_old_local(settings.work_dir, cutoff, set(), "scratch files", report, dry_run)


# ---------------------------------------------------------------- report

def report_markdown(report: MaintenanceReport) -> str:
    d = report.to_dict()
    lines = [
        f"# Maintenance {report.started_at}" + (" (dry run)" if report.dry_run else ""),
        "",
        f"{len(d['redispatched'])} re-dispatched, {len(d['failed'])} marked FAILED, "
        f"{d['expired_uploads']} uploads expired, {len(report.removed)} orphans removed "
        f"({d['removed_bytes'] / 1e6:.1f} MB).",
        "",
        "## Videos in flight",
        "",
        "| video | status | flow run | run state | verdict | action |",
        "|---|---|---|---|---|---|",
    ]
    for v in report.videos:
        lines.append(f"| `{v.video_id}` | {v.status} | `{v.flow_run_id or ''}` | {v.run_state} | "
                     f"{v.reason.replace('|', '/')} | {v.action}"
                     + (f" → `{v.new_flow_run_id}`" if v.new_flow_run_id else "") + " |")
    if not report.videos:
        lines.append("| (none) | | | | | |")
    lines += ["", "## Removed", "", "| what | where | bytes |", "|---|---|---:|"]
    for r in report.removed:
        lines.append(f"| {r['what']} | `{r['url']}` | {r.get('bytes', 0)} |")
    if not report.removed:
        lines.append("| (nothing) | | |")
    if report.errors:
        lines += ["", "## Errors", ""] + [f"- {e}" for e in report.errors]
    return "\n".join(lines) + "\n"


def run_maintenance(*, dry_run: bool = False, cleanup: bool = True) -> MaintenanceReport:
    report = MaintenanceReport(started_at=_now().isoformat(timespec="seconds"), dry_run=dry_run)
    recover_stuck_videos(report, dry_run=dry_run)
    if cleanup:
        for step in (expire_uploads, remove_orphans):
            try:
                step(report, dry_run=dry_run)
            except Exception as exc:  # noqa: BLE001 - report and carry on with the next step
                log.exception("maintenance step %s failed", step.__name__)
                report.errors.append(f"{step.__name__}: {exc}")
    return report


@flow(name="maintenance", log_prints=True)
def maintenance(dry_run: bool = False, cleanup: bool = True) -> dict:
    """Recover stuck videos and remove expired uploads and orphaned files; leaves a report."""
    logger = get_run_logger()
    report = run_maintenance(dry_run=dry_run, cleanup=cleanup)
    create_markdown_artifact(key="maintenance-report", markdown=report_markdown(report),
                             description="what maintenance found and did")
    d = report.to_dict()
    logger.info("maintenance: %d re-dispatched, %d failed, %d removed, %d errors",
                len(d["redispatched"]), len(d["failed"]), len(report.removed), len(report.errors))
    return d


if __name__ == "__main__":
    print(json.dumps(run_maintenance(dry_run="--dry-run" in sys.argv).to_dict(), indent=2))
