"""Delivery through the production server (gunicorn as `vodflow web` runs it), with real clients:
ffmpeg plays every rendition, sendfile()d ranges keep keep-alive connections in step, raw paths
reach the app un-normalised, and a video deleted mid-play answers 410. Local storage and moto's
S3 server alike."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import m3u8
import pytest
import requests

from tests.hls_support import S3_BUCKET, hls_ladder, moto_s3, publish_video  # noqa: F401
from tests.servers import free_port, share_settings, web_process

ADMIN_TOKEN = "delivery-test-admin"


@dataclass
class Server:
    base: str
    env: dict


@contextmanager
def vodflow_web(env: dict, log_path):
    """`vodflow web` itself (migrate, then exec gunicorn) on a free port."""
    port = free_port()
    env = {**os.environ, **env, "VODFLOW_WEB_HOST": "127.0.0.1", "VODFLOW_WEB_PORT": str(port),
           "VODFLOW_WEB_WORKERS": "2"}
    with web_process([sys.executable, "-m", "deployments.cli", "web"], env, log_path, port) as base:
        yield base


@pytest.fixture(scope="module", params=["local", "s3"])
def server(request, tmp_path_factory):
    home = tmp_path_factory.mktemp(f"web-{request.param}")
    env = {"VODFLOW_DATA_DIR": str(home / "var"), "VODFLOW_ADMIN_TOKEN": ADMIN_TOKEN}
    if request.param == "s3":
        endpoint = request.getfixturevalue("moto_s3")
        env.update(VODFLOW_STORAGE_URL=f"s3://{S3_BUCKET}/web-{os.getpid()}", VODFLOW_S3_ENDPOINT_URL=endpoint)
    with vodflow_web(env, home / "gunicorn.log") as base:
        yield Server(base, env)


@pytest.fixture
def served(server, monkeypatch, hls_ladder):
    """A video published into the running server's catalog and storage."""
    share_settings(server.env, monkeypatch)
    return server.base, publish_video(hls_ladder)


def test_ffmpeg_reads_every_rendition(served, hls_ladder):
    base, video = served
    out = subprocess.run(["ffmpeg", "-hide_banner", "-nostdin", "-i", base + video.master_path,
                          "-map", "0", "-f", "null", "-"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    problems = [line for line in out.stderr.splitlines()
                if any(w in line.lower() for w in ("error", "invalid", "corrupt", "non-monoton", "failed"))]
    assert not problems, problems
    # every rendition was opened and decoded: one video and one audio output per variant
    for rung in hls_ladder.rungs:
        assert f"{video.run}/{rung.name}/index.m3u8" in out.stderr
    mapped = [line for line in out.stderr.splitlines() if line.strip().startswith("Stream #") and "->" in line]
    assert len(mapped) == 2 * len(hls_ladder.rungs), mapped


def test_sendfile_ranges_keep_keepalive_connections_in_step(served):
    """A range sent with the server's file wrapper must stop at Content-Length: any extra byte
    would corrupt the next response on the same connection."""
    base, video = served
    seg = video.local_file("360p", "seg_00000.ts").read_bytes()
    s = requests.Session()
    for spec, expected in (("bytes=1000-1999", seg[1000:2000]), ("bytes=-10", seg[-10:]),
                           ("bytes=0-0", seg[:1]), (None, seg), ("bytes=5000-", seg[5000:])):
        r = s.get(base + video.path("360p", "seg_00000.ts"), headers={"Range": spec} if spec else {})
        assert r.status_code == (206 if spec else 200)
        assert r.content == expected, spec
        h = s.head(base + video.path("360p", "seg_00001.ts"))
        assert h.status_code == 200 and h.content == b""
    playlist = s.get(base + video.path("360p", "index.m3u8"))
    assert m3u8.loads(playlist.text).segments[0].uri == "seg_00000.ts"


def test_raw_paths_are_not_normalised_and_still_refused(served):
    base, video = served
    host = urlsplit(base)
    conn = http.client.HTTPConnection(host.hostname, host.port, timeout=10)
    prefix = f"/v/{video.video_id}/{video.run}"
    for raw in (f"{prefix}/../../../../etc/passwd", f"{prefix}/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
                f"{prefix}/..%2f..%2f..%2f..%2fetc%2fpasswd", f"{prefix}/..\\..\\..\\etc\\passwd",
                f"{prefix}//etc/passwd", "/v/..%2f..%2f..%2fetc/master.m3u8"):
        conn.request("GET", raw)
        r = conn.getresponse()
        body = r.read()
        assert r.status == 404, raw
        assert r.getheader("Content-Type") == "application/json" and b"root:" not in body, raw


def test_video_deleted_while_being_played(served):
    base, video = served
    s = requests.Session()
    assert s.get(base + video.master_path).status_code == 200
    assert s.get(base + video.path("360p", "index.m3u8")).status_code == 200
    assert s.get(base + video.path("360p", "seg_00000.ts")).status_code == 200

    assert s.delete(f"{base}/api/videos/{video.video_id}",
                    headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).status_code == 204

    # the next segment is gone: the server re-reads the catalog instead of trusting its cache
    r = s.get(base + video.path("360p", "seg_00001.ts"))
    assert r.status_code == 410 and r.json()["status"] == 410
    # the master follows within the documented cache lifetime (VIEW_TTL)
    deadline = time.monotonic() + 3
    while (r := s.get(base + video.master_path)).status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert r.status_code == 410
