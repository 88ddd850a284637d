"""Maintenance: stuck videos judged from Prefect's real run states, bounded re-dispatch, and
removal of expired uploads and orphaned files (only once they are old)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from catalog.db import session_scope
from catalog.models import UploadSession, UploadStatus, Video, VideoStatus
from config import storage
from config.settings import get_settings, reset_settings
from flows.dispatch import local_run_id
from flows.maintenance import maintenance, run_maintenance
from tests.ops_support import artifacts_of, prefect_get


@pytest.fixture
def ingest_deployment(prefect_api):
    """A registered `ingest/on-demand` with nobody serving it: dispatched runs wait SCHEDULED,
    so the test sees exactly what maintenance asked for."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("ingest")
        try:
            dep = client.read_deployment_by_name("ingest/on-demand")
            return dep.id
        except Exception:  # noqa: BLE001 - first use in this session
            return client.create_deployment(flow_id=flow_id, name="on-demand")


def _run_in_state(deployment_id, state) -> str:
    from prefect.client.orchestration import get_client
    from prefect.states import Pending, Running

    with get_client(sync_client=True) as client:
        run = client.create_flow_run_from_deployment(deployment_id, parameters={"video_id": "x"})
        if state.type.value in ("RUNNING", "COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            client.set_flow_run_state(run.id, Pending(), force=True)
            client.set_flow_run_state(run.id, Running(), force=True)
        if state.type.value != "RUNNING":
            client.set_flow_run_state(run.id, state, force=True)
        return str(run.id)


def _video(vid: str, status=VideoStatus.PROCESSING, run_id: str | None = None, attempts: int = 1) -> None:
    with session_scope() as s:
        s.add(Video(id=vid, title=vid, status=status, flow_run_id=run_id, attempts=attempts,
                    source_url=storage.url_for("sources", vid, "source.mp4")))


def _get(vid: str) -> Video:
    with session_scope() as s:
        return s.get(Video, vid)


def test_stuck_videos_are_redispatched_or_failed(prefect_api, ingest_deployment, monkeypatch):
    from prefect.states import Cancelled, Crashed, Running, Scheduled

    monkeypatch.setenv("VODFLOW_STALE_RUN_SECONDS", "4")
    monkeypatch.setenv("VODFLOW_MAX_INGEST_ATTEMPTS", "3")
    monkeypatch.setenv("VODFLOW_DISPATCH", "deployment")
    reset_settings()

    _video("crashed", run_id=_run_in_state(ingest_deployment, Crashed(message="worker lost")))
    _video("cancelled", run_id=_run_in_state(ingest_deployment, Cancelled()), attempts=3)
    _video("vanished", run_id=str(uuid.uuid4()))
    silent_run = _run_in_state(ingest_deployment, Running())
    _video("silent", run_id=silent_run)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _video("local", run_id=local_run_id(dead.pid))
    queued_run = _run_in_state(ingest_deployment, Scheduled())
    _video("queued", status=VideoStatus.UPLOADED, run_id=queued_run, attempts=0)
    with session_scope() as s:  # the silent run's video last moved long ago
        s.get(Video, "silent").updated_at = datetime.now(timezone.utc) - timedelta(minutes=5)
    time.sleep(5)  # the silent run's last state change is now older than the stale limit
    busy_run = _run_in_state(ingest_deployment, Running())
    _video("busy", run_id=busy_run)

    state = maintenance(cleanup=False, return_state=True)
    assert state.is_completed()
    report = state.result()
    verdicts = {v["video_id"]: v for v in report["videos"]}
    assert sorted(report["redispatched"]) == ["crashed", "local", "silent", "vanished"]
    assert report["failed"] == ["cancelled"]
    assert not verdicts["busy"]["stuck"] and not verdicts["queued"]["stuck"]
    assert "worker lost" in verdicts["crashed"]["reason"]

    for vid in ("crashed", "local", "silent", "vanished"):
        v = _get(vid)
        assert v.status == VideoStatus.PROCESSING and v.attempts == 2
        assert v.flow_run_id == verdicts[vid]["new_flow_run_id"]
        run = prefect_get(prefect_api, f"/flow_runs/{v.flow_run_id}")
        assert run["deployment_id"] == str(ingest_deployment)
        assert run["parameters"] == {"video_id": vid}
        assert run["state"]["type"] == "SCHEDULED"
    cancelled = _get("cancelled")
    assert cancelled.status == VideoStatus.FAILED
    assert "gave up after 3 attempts" in cancelled.error and "cancelled" in cancelled.error
    # the silent run is marked crashed in Prefect, so the UI and the concurrency limit agree
    old = prefect_get(prefect_api, f"/flow_runs/{silent_run}")
    assert old["state"]["type"] == "CRASHED" and "silent" in old["state"]["message"]
    assert _get("busy").flow_run_id == busy_run and _get("queued").flow_run_id == queued_run
    assert prefect_get(prefect_api, f"/flow_runs/{busy_run}")["state"]["type"] == "RUNNING"

    arts = artifacts_of(prefect_api, str(state.state_details.flow_run_id))
    (art,) = [a for a in arts if a["key"] == "maintenance-report"]
    assert "`cancelled`" in art["data"] and "redispatched" in art["data"]

    # the retries are bounded: crash the new run of one video until it gives up
    with session_scope() as s:
        s.get(Video, "crashed").attempts = 3
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(uuid.UUID(_get("crashed").flow_run_id), Crashed(message="again"), force=True)
    again = run_maintenance(cleanup=False).to_dict()
    assert again["failed"] == ["crashed"]
    assert _get("crashed").status == VideoStatus.FAILED and "again" in _get("crashed").error


def _age(path, hours: float) -> None:
    t = time.time() - hours * 3600
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.utime(p, (t, t))


def test_housekeeping_removes_only_old_unreferenced_files(monkeypatch):
    monkeypatch.setenv("VODFLOW_DISPATCH", "off")
    settings = get_settings()
    root = storage.local_path_of(settings.storage_url)
    # a READY video with its current run and an older superseded run
    with session_scope() as s:
        s.add(Video(id="ready1", status=VideoStatus.READY, current_run="r2"))
        s.add(Video(id="gone1", status=VideoStatus.DELETED))
    for run in ("r1", "r2"):
        storage.write_text(storage.url_for("hls", "ready1", run, "480p", "index.m3u8"), "#EXTM3U\n")
    storage.write_bytes(storage.url_for("sources", "ready1", "source.mp4"), b"x" * 10)
    storage.write_bytes(storage.url_for("sources", "ghost", "source.mp4"), b"x" * 100)  # no video row
    storage.write_bytes(storage.url_for("hls", "gone1", "r1", "seg_00000.ts"), b"x" * 50)
    storage.write_bytes(storage.url_for("sources", "fresh", "source.mp4"), b"x")  # a hand-off in progress
    work = settings.work_dir / "job-123"
    work.mkdir(parents=True)
    (work / "chunk_0000.mkv").write_bytes(b"x" * 20)
    uploads = settings.uploads_dir
    uploads.mkdir(parents=True, exist_ok=True)
    stray = uploads / "post-abc.part"
    stray.write_bytes(b"x" * 30)
    from flows.uploads import store as upload_store

    expired_id, live_id = upload_store.new_upload_id(), upload_store.new_upload_id()
    expired_tmp = upload_store.create_part(expired_id)
    expired_tmp.write_bytes(b"x" * 40)
    live_tmp = upload_store.create_part(live_id)
    live_tmp.write_bytes(b"x" * 40)
    now = datetime.now(timezone.utc)
    with session_scope() as s:
        s.add(UploadSession(id=expired_id, temp_path=str(expired_tmp), length=100, offset=40,
                            expires_at=now - timedelta(hours=1)))
        s.add(UploadSession(id=live_id, temp_path=str(live_tmp), length=100, offset=40,
                            expires_at=now + timedelta(hours=5)))
    for p in (root / "hls", root / "sources" / "ghost", root / "sources" / "ready1", work, stray,
              expired_tmp, live_tmp):
        _age(p, 48)

    dry = run_maintenance(dry_run=True).to_dict()
    assert dry["removed"] and (root / "sources" / "ghost").exists()

    report = run_maintenance().to_dict()
    removed = {r["url"].replace("file://", "") for r in report["removed"]}
    assert str(root / "hls" / "ready1" / "r1") in removed
    assert str(root / "sources" / "ghost") in removed
    assert str(root / "hls" / "gone1") in removed
    assert str(work) in removed
    assert not (root / "hls" / "ready1" / "r1").exists()
    assert (root / "hls" / "ready1" / "r2" / "480p" / "index.m3u8").exists()
    assert (root / "sources" / "ready1" / "source.mp4").exists()
    assert (root / "sources" / "fresh" / "source.mp4").exists()  # too young to be an orphan
    assert not (root / "sources" / "ghost").exists() and not work.exists() and not stray.exists()
    assert live_tmp.exists() and not expired_tmp.exists()
    assert report["expired_uploads"] == 1
    with session_scope() as s:
        assert s.get(UploadSession, expired_id).status == UploadStatus.EXPIRED
        assert s.get(UploadSession, live_id).status == UploadStatus.ACTIVE
    assert report["errors"] == []
