"""Expired uploads answer 410 and lose their bytes; `vodflow cleanup` removes abandoned uploads
and orphaned temp files, and leaves live uploads alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path

import requests
from sqlalchemy import bindparam, text

from catalog.models import UTCDateTime

from tests.upload_support import Server, create, head, metadata, patch, sha256, wait_until

ROOT = Path(__file__).resolve().parent.parent
# the column type writes moments as each database stores them (text in SQLite, timestamptz in PostgreSQL)
UPDATE_SESSION = text("UPDATE upload_sessions SET expires_at = :expires_at, updated_at = :updated_at "
                      "WHERE id = :id").bindparams(bindparam("expires_at", type_=UTCDateTime()),
                                                   bindparam("updated_at", type_=UTCDateTime()))


def test_upload_expires_after_inactivity(tmp_path, clip):
    data = clip.read_bytes()
    with Server(tmp_path / "var", tmp_path / "gunicorn.log", VODFLOW_UPLOAD_EXPIRY_HOURS="0.0005") as srv:
        url = create(srv, len(data), meta=metadata(filename="slow.mp4")).headers["Location"]
        r = patch(url, 0, data[:100_000])
        assert r.status_code == 204
        expires = parsedate_to_datetime(r.headers["Upload-Expires"])
        assert expires <= datetime.now(timezone.utc) + timedelta(seconds=3)
        # nothing more arrives: the upload expires on its own (HEAD does not keep it alive)
        wait_until(lambda: head(url).status_code == 410, "the idle upload to expire", every=0.2)
        assert datetime.now(timezone.utc) >= expires
        r = patch(url, 100_000, data[100_000:])
        assert r.status_code == 410 and "expired" in r.json()["message"]
        assert requests.get(url).json()["status"] == "EXPIRED"
        assert srv.upload_bytes_on_disk() == []


def vodflow_cleanup(data_dir: Path, *args: str, **env_vars: str) -> dict:
    env = {**os.environ, "VODFLOW_DATA_DIR": str(data_dir), **env_vars}
    out = subprocess.run([sys.executable, "-m", "deployments.cli", "cleanup", "--json", *args], env=env,
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_vodflow_cleanup_removes_abandoned_and_orphaned_only(tmp_path, clip):
    data = clip.read_bytes()
    with Server(tmp_path / "var", tmp_path / "gunicorn.log") as srv:
        idle = create(srv, len(data), meta=metadata(filename="idle.mp4")).headers["Location"]
        assert patch(idle, 0, data[:200_000]).status_code == 204
        live = create(srv, len(data), meta=metadata(filename="live.mp4")).headers["Location"]
        assert patch(live, 0, data[:300_000]).status_code == 204
        idle_id = idle.rsplit("/", 1)[1]
        # a day passes without a byte for the idle upload
        now = datetime.now(timezone.utc)
        with srv.db() as conn:
            conn.execute(UPDATE_SESSION, {"expires_at": now - timedelta(hours=1),
                                          "updated_at": now - timedelta(hours=25), "id": idle_id})
        uploads = srv.data_dir / "uploads"
        two_hours_ago = time.time() - 7200
        stale_post = uploads / "post-dead.part"  # a one-shot POST whose worker died
        stale_tus = uploads / "tus" / ("ab" * 16 + ".part")  # bytes without a session
        fresh_post = uploads / "post-now.part"  # a one-shot POST in flight
        for p in (stale_post, stale_tus, fresh_post):
            p.write_bytes(b"\0" * 1000)
        for p in (stale_post, stale_tus):
            os.utime(p, (two_hours_ago, two_hours_ago))

        dry = vodflow_cleanup(srv.data_dir, "--dry-run")
        assert dry["expired"] == 1 and dry["orphan_files"] == 2 and dry["dry_run"]
        assert stale_post.exists() and srv.part_file(idle_id).exists()

        report = vodflow_cleanup(srv.data_dir)
        assert report["expired"] == 1 and report["orphan_files"] == 2
        assert report["bytes_freed"] >= 200_000 + 2000
        assert not srv.part_file(idle_id).exists() and not stale_post.exists() and not stale_tus.exists()
        assert fresh_post.exists()
        assert head(idle).status_code == 410
        # the live upload did not notice
        assert head(live).headers["Upload-Offset"] == "300000"
        r = patch(live, 300_000, data[300_000:])
        assert r.status_code == 204
        assert sha256(srv.stored_source(r.headers["Vodflow-Video-Id"])) == sha256(data)


def test_maintenance_elsewhere_leaves_a_web_hosts_uploads_to_it(tmp_path, clip, monkeypatch):
    """Maintenance runs wherever Prefect schedules it, usually not on the web host holding the
    bytes: finding no bytes there must not fail (or expire) that host's uploads."""
    from catalog.db import reset_engines
    from config.settings import reset_settings
    from flows.maintenance import run_maintenance

    data = clip.read_bytes()
    with Server(tmp_path / "web", tmp_path / "gunicorn.log", VODFLOW_NODE_NAME="web-1") as srv:
        # the last PATCH's bytes landed, then the worker died before the hand-off finished
        cut = create(srv, len(data), meta=metadata(filename="cut.mp4")).headers["Location"]
        assert patch(cut, 0, data[:-1]).status_code == 204
        cut_id = cut.rsplit("/", 1)[1]
        with open(srv.part_file(cut_id), "ab") as f:
            f.write(data[-1:])
        idle = create(srv, len(data), meta=metadata(filename="idle.mp4")).headers["Location"]
        assert patch(idle, 0, data[:100_000]).status_code == 204
        idle_id = idle.rsplit("/", 1)[1]
        with srv.db() as conn:
            assert srv.session(cut_id)["host"] == "web-1"
            conn.execute(text("UPDATE upload_sessions SET video_id = 'a1b2c3d4e5f6' WHERE id = :id"), {"id": cut_id})
            conn.execute(text("UPDATE upload_sessions SET expires_at = :at WHERE id = :id")
                         .bindparams(bindparam("at", type_=UTCDateTime())),
                         {"at": datetime.now(timezone.utc) - timedelta(hours=1), "id": idle_id})

        # the flow-runner machine: same catalog, its own disk, another name
        monkeypatch.setenv("VODFLOW_DATA_DIR", str(tmp_path / "flows"))
        monkeypatch.setenv("VODFLOW_DATABASE_URL", f"sqlite:///{srv.data_dir / 'vodflow.db'}")
        monkeypatch.setenv("VODFLOW_NODE_NAME", "flows-1")
        monkeypatch.setenv("VODFLOW_DISPATCH", "off")
        reset_settings()
        reset_engines()
        report = run_maintenance()
        assert report.errors == [] and report.expired_uploads == 0
        for upload_id in (cut_id, idle_id):
            assert srv.session(upload_id)["status"] == "ACTIVE"
        assert srv.part_file(cut_id).stat().st_size == len(data)
        assert srv.part_file(idle_id).exists()
        reset_engines()

        # on the web host itself the same housekeeping finishes one and expires the other
        done = vodflow_cleanup(srv.data_dir, VODFLOW_NODE_NAME="web-1", VODFLOW_DISPATCH="off")
        assert done["handed_off"] == 1 and done["expired"] == 1 and done["elsewhere"] == 0
        assert srv.session(cut_id)["status"] == "COMPLETE" and srv.session(idle_id)["status"] == "EXPIRED"
        assert sha256(srv.stored_source("a1b2c3d4e5f6")) == sha256(data)
