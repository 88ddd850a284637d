"""Delivery through the production servers, with real clients: `vodflow web` alone, and nginx in
front of it as `vodflow up` runs them. ffmpeg plays every rendition, sendfile()d ranges keep
keep-alive connections in step, raw paths reach the app un-normalised, and a video deleted
mid-play answers 410. Local storage and moto's S3 server alike."""

from __future__ import annotations

import http.client
import os
import subprocess
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import m3u8
import pytest
import requests

from tests.hls_support import S3_BUCKET, publish_video
from tests.servers import share_settings, vodflow_web

ADMIN_TOKEN = "delivery-test-admin"


@dataclass
class Server:
    base: str
    env: dict
    front: bool


# how long a deleted video's master may still answer 200: the app's view (VIEW_TTL +
# STALE_GRACE) plus, through the front, nginx's one second copy; the test waits for the 410
# with a generous ceiling on top
MASTER_GONE_CEILING = 15.0


@pytest.fixture(scope="module", params=["local-app", "local-front", "s3-app", "s3-front"])
def server(request, tmp_path_factory):
    backend, kind = request.param.split("-")
    home = tmp_path_factory.mktemp(f"web-{request.param}")
    env = {"VODFLOW_DATA_DIR": str(home / "var"), "VODFLOW_ADMIN_TOKEN": ADMIN_TOKEN}
    if backend == "s3":
        endpoint = request.getfixturevalue("moto_s3")
        env.update(VODFLOW_STORAGE_URL=f"s3://{S3_BUCKET}/web-{os.getpid()}-{kind}", VODFLOW_S3_ENDPOINT_URL=endpoint)
    with vodflow_web(env, home / "web.log", front=kind == "front") as base:
        yield Server(base, env, kind == "front")


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


def test_raw_paths_are_not_normalised_and_still_refused(served, server):
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
        if server.front and r.status == 400:
            # more `..` (raw or encoded) than folders: nginx refuses the request line itself
            assert r.status == 400 and b"root:" not in body, raw
            conn.close()
            conn = http.client.HTTPConnection(host.hostname, host.port, timeout=10)
            continue
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
    # the master follows once the cached views expire (docs/delivery.md)
    deadline = time.monotonic() + MASTER_GONE_CEILING
    while (r := s.get(base + video.master_path)).status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert r.status_code == 410 and r.json()["status"] == 410
