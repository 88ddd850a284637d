"""Uploads survive the web server: a clean restart, and kill -9 in the middle of a PATCH; with
the catalog on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import pytest
import requests
from sqlalchemy import text
from tusclient.client import TusClient

from tests.upload_support import OFFSET_TYPE, Server, create, head, metadata, sha256, wait_until


ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def clip_bytes(clip) -> bytes:
    return clip.read_bytes()


def has_bytes(path: Path) -> bool:
    return path.exists() and path.stat().st_size > 0


def moved(url: str, server: Server) -> str:
    """The same upload on the restarted server (new port)."""
    return server.files_url + url.rsplit("/", 1)[1]


def test_upload_resumes_after_server_restart(tmp_path, clip, clip_bytes, database_env):
    srv = Server(tmp_path / "var", tmp_path / "gunicorn.log", **database_env)
    with srv:
        up = TusClient(srv.files_url).uploader(str(clip), chunk_size=100_000,
                                               metadata={"filename": "restart.mp4"})
        up.upload(stop_at=500_000)
        url = up.url
    assert srv.proc is None  # stopped
    with srv:  # same data dir, new process, new port
        url = moved(url, srv)
        r = head(url)
        assert r.status_code == 200 and r.headers["Upload-Offset"] == "500000"
        again = TusClient(srv.files_url).uploader(str(clip), url=url, chunk_size=100_000)
        assert again.offset == 500_000
        again.upload()
        vid = head(url).headers["Vodflow-Video-Id"]
        assert sha256(srv.stored_source(vid)) == sha256(clip_bytes)
        assert srv.video(vid)["original_filename"] == "restart.mp4"


def test_kill_9_mid_patch_reports_exactly_what_is_on_disk(tmp_path, clip, clip_bytes, database_env):
    srv = Server(tmp_path / "var", tmp_path / "gunicorn.log", **database_env).start()
    try:
        url = create(srv, len(clip_bytes), meta=metadata(filename="killed.mp4")).headers["Location"]
        upload_id = url.rsplit("/", 1)[1]
        part = srv.part_file(upload_id)
        u = urlparse(url)
        sent = 600_000
        conn = socket.create_connection((u.hostname, u.port))
        # one PATCH for the whole file, of which only the first 600 kB ever leave the client
        conn.sendall((f"PATCH {u.path} HTTP/1.1\r\nHost: {u.netloc}\r\nTus-Resumable: 1.0.0\r\n"
                      f"Upload-Offset: 0\r\nContent-Type: {OFFSET_TYPE}\r\n"
                      f"Content-Length: {len(clip_bytes)}\r\n\r\n").encode() + clip_bytes[:sent])
        # kill as soon as part of the body is on disk; the worker writes whole buffers, so the
        # tail of what was sent may still be in its memory and die with it
        wait_until(lambda: has_bytes(part), "the worker wrote part of the body")
        srv.kill9()
        conn.close()
        on_disk = part.stat().st_size
        assert 0 < on_disk <= sent
        srv.start()
        url = moved(url, srv)
        r = head(url)
        assert r.status_code == 200
        offset = int(r.headers["Upload-Offset"])
        assert offset == on_disk
        assert part.read_bytes() == clip_bytes[:offset]
        # the client carries on from there with a real tus client
        rest = TusClient(srv.files_url).uploader(str(clip), url=url, chunk_size=256 * 1024)
        assert rest.offset == offset
        rest.upload()
        vid = head(url).headers["Vodflow-Video-Id"]
        assert sha256(srv.stored_source(vid)) == sha256(clip_bytes)
        assert len(srv.videos()) == 1
    finally:
        srv.stop()


def test_kill_9_during_a_checksummed_patch_counts_none_of_it(tmp_path, clip, clip_bytes, database_env):
    """A chunk with Upload-Checksum cannot be verified if it never fully arrived: none of it
    may count, even though part of it reached the disk before the crash."""
    import base64
    import hashlib

    srv = Server(tmp_path / "var", tmp_path / "gunicorn.log", **database_env).start()
    try:
        url = create(srv, len(clip_bytes)).headers["Location"]
        upload_id = url.rsplit("/", 1)[1]
        u = urlparse(url)
        digest = base64.b64encode(hashlib.sha1(clip_bytes).digest()).decode()
        conn = socket.create_connection((u.hostname, u.port))
        conn.sendall((f"PATCH {u.path} HTTP/1.1\r\nHost: {u.netloc}\r\nTus-Resumable: 1.0.0\r\n"
                      f"Upload-Offset: 0\r\nContent-Type: {OFFSET_TYPE}\r\nUpload-Checksum: sha1 {digest}\r\n"
                      f"Content-Length: {len(clip_bytes)}\r\n\r\n").encode() + clip_bytes[:400_000])
        chunk = srv.part_file(upload_id).with_suffix(".chunk")
        wait_until(lambda: has_bytes(chunk), "part of the chunk is on disk, unverified")
        srv.kill9()
        conn.close()
        srv.start()
        assert head(moved(url, srv)).headers["Upload-Offset"] == "0"
        assert srv.part_file(upload_id).stat().st_size == 0
    finally:
        srv.stop()


def test_hand_off_interrupted_by_a_crash_is_finished_later(tmp_path, clip_bytes, database_env):
    """Two crash points of the last PATCH, recreated on disk and in the catalog as a killed
    worker leaves them: (a) all bytes written, nothing else done — the client's next HEAD
    finishes the hand-off; (b) the video id already reserved — housekeeping finishes it with
    that very id, so a retry can never make a second video."""
    import subprocess
    import sys

    with Server(tmp_path / "var", tmp_path / "gunicorn.log", **database_env) as srv:
        ids = []
        for name in ("a.mp4", "b.mp4"):
            url = create(srv, len(clip_bytes), meta=metadata(filename=name)).headers["Location"]
            r = requests.patch(url, data=clip_bytes[:-1000], headers={
                "Tus-Resumable": "1.0.0", "Upload-Offset": "0", "Content-Type": OFFSET_TYPE})
            assert r.status_code == 204
            upload_id = url.rsplit("/", 1)[1]
            with open(srv.part_file(upload_id), "ab") as fh:
                fh.write(clip_bytes[-1000:])
            ids.append((url, upload_id))
        (url_a, _), (url_b, id_b) = ids
        r = head(url_a)
        assert r.status_code == 200 and r.headers["Upload-Offset"] == str(len(clip_bytes))
        vid_a = r.headers["Vodflow-Video-Id"]
        assert sha256(srv.stored_source(vid_a)) == sha256(clip_bytes)

        with srv.db() as conn:
            conn.execute(text("UPDATE upload_sessions SET video_id = 'c0ffee000001' WHERE id = :id"), {"id": id_b})
        out = subprocess.run([sys.executable, "-m", "deployments.cli", "cleanup", "--json"],
                             env={**os.environ, **srv.env},
                             capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["handed_off"] == 1
        assert head(url_b).headers["Vodflow-Video-Id"] == "c0ffee000001"
        assert sha256(srv.stored_source("c0ffee000001")) == sha256(clip_bytes)
        assert len(srv.videos()) == 2
