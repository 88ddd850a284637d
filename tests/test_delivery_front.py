"""nginx in front of the app, configured as `vodflow up` configures it, against `vodflow web`
alone on the same data dir: every delivery answer a player or a CDN can get (statuses, bodies,
ranges, conditional requests, CORS with an origin list, 404/410 refusals) is the same through
both, although nginx sends the files and answers from its caches; the app's decision on a run
file is asked at most once per DECISION_SECONDS; uploads pass through nginx unbuffered."""

from __future__ import annotations

import http.client
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from tests.hls_support import publish_video
from tests.servers import share_settings, vodflow_web

HOP_HEADERS = {"date", "server", "connection", "keep-alive", "transfer-encoding"}
ORIGIN = "https://a.example"


@dataclass
class Pair:
    app: str  # `vodflow web` alone
    front: str  # nginx in front of `vodflow web`
    env: dict
    home: Path


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    home = tmp_path_factory.mktemp("front")
    env = {"VODFLOW_DATA_DIR": str(home / "var"), "VODFLOW_CORS_ORIGINS": ORIGIN,
           "VODFLOW_WEB_ACCESS_LOG": "true", "VODFLOW_DISPATCH": "off"}
    with vodflow_web(env, home / "app.log", workers=1) as app, \
            vodflow_web(env, home / "front.log", workers=1, front=True) as front:
        yield Pair(app, front, env, home)


@pytest.fixture
def video(pair, monkeypatch, hls_ladder):
    share_settings(pair.env, monkeypatch)
    return publish_video(hls_ladder)


def _ask(base: str, method: str, path: str, headers: dict) -> tuple[int, dict, bytes]:
    """One raw request on a new connection (no client-side normalisation of the path)."""
    u = urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.request(method, path, headers=headers)
        r = conn.getresponse()
        body = r.read()
        seen = {k.lower(): v for k, v in r.getheaders() if k.lower() not in HOP_HEADERS}
        return r.status, seen, body
    finally:
        conn.close()


def _battery(video) -> list[tuple[str, str, dict, int]]:
    """(method, path, headers, expected status): every kind of delivery request."""
    out = []
    for path in (video.master_path, video.path("360p", "index.m3u8"), video.path("360p", "seg_00000.ts")):
        size = len(video.local_file("360p", "seg_00000.ts").read_bytes()) if path.endswith(".ts") else 10**7
        out += [
            ("GET", path, {}, 200),
            ("HEAD", path, {}, 200),
            ("GET", path, {"Origin": ORIGIN}, 200),
            ("GET", path, {"Origin": "https://elsewhere.example"}, 200),
            ("GET", path, {"Range": "bytes=100-199"}, 206),
            ("GET", path, {"Range": "bytes=-10"}, 206),
            ("GET", path, {"Range": "bytes=50-"}, 206),
            ("GET", path, {"Range": "bytes=-0"}, 416),
            ("GET", path, {"Range": "bytes=5-2"}, 416),
            ("GET", path, {"Range": f"bytes={size}-"}, 416),
            ("GET", path, {"Range": "bytes=0-1,5-9"}, 200),
            ("GET", path, {"Range": "items=0-5"}, 200),
            ("HEAD", path, {"Range": "bytes=0-9"}, 200),
            ("GET", path, {"If-Match": '"nope"'}, 412),
            ("GET", path, {"If-Unmodified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}, 412),
            ("GET", path, {"Range": "bytes=0-9", "If-Range": '"other"'}, 200),
        ]
    missing = video.path("360p", "seg_77777.ts")
    out += [("GET", missing, {}, 404), ("HEAD", missing, {}, 404),
            ("GET", "/v/nosuchvideo1/master.m3u8", {}, 404),
            ("GET", f"/v/nosuchvideo1/{video.run}/360p/seg_00000.ts", {}, 404),
            ("GET", f"/v/{video.video_id}/{video.run}/%2e%2e/%2e%2e/etc/passwd", {}, 404),
            ("GET", f"/v/{video.video_id}/{video.run}/360p/seg_00000.exe", {}, 404)]
    return out


def _validated(video, pair) -> list[tuple[str, str, dict, int]]:
    """Conditional requests built on the validators the app hands out."""
    out = []
    for path in (video.master_path, video.path("360p", "seg_00001.ts")):
        _, h, _ = _ask(pair.app, "GET", path, {})
        etag, modified = h["etag"], h["last-modified"]
        out += [("GET", path, {"If-None-Match": etag}, 304),
                ("GET", path, {"If-None-Match": f'W/{etag}, "x"'}, 304),
                ("GET", path, {"If-Modified-Since": modified}, 304),
                ("GET", path, {"If-None-Match": '"x"', "If-Modified-Since": modified}, 200),
                ("GET", path, {"If-Match": etag}, 200),
                ("GET", path, {"Range": "bytes=0-9", "If-Range": etag}, 206),
                ("GET", path, {"Range": "bytes=0-9", "If-Range": modified}, 206),
                ("GET", path, {"If-None-Match": etag, "Range": "bytes=0-9"}, 304)]
    return out


def test_a_path_above_the_root_is_refused_by_nginx_itself(pair, video):
    """More `..` than folders: nginx refuses the request line (400) before any location, so it
    never reaches a file; the app alone, which normalises nothing, says 404."""
    path = f"/v/{video.video_id}/{video.run}/../../../../etc/passwd"
    status, headers, body = _ask(pair.front, "GET", path, {})
    assert status == 400 and b"root:" not in body
    status, headers, body = _ask(pair.app, "GET", path, {})
    assert status == 404 and headers["content-type"] == "application/json"


def test_every_answer_through_nginx_is_the_apps(pair, video):
    for method, path, headers, expected in _battery(video) + _validated(video, pair):
        alone = _ask(pair.app, method, path, headers)
        # twice through the front: from the app's decision, then from nginx's caches
        for attempt in range(2):
            front = _ask(pair.front, method, path, headers)
            where = (method, path, headers, attempt)
            assert alone[0] == expected, (where, alone[0], alone[2][:200])
            assert front[0] == alone[0], (where, front[0], front[2][:200])
            assert front[2] == alone[2], where
            assert front[1] == alone[1], where
    # the bytes are the stored file's, and refusals are the app's JSON
    status, headers, body = _ask(pair.front, "GET", video.path("360p", "seg_00000.ts"), {"Origin": ORIGIN})
    assert body == video.local_file("360p", "seg_00000.ts").read_bytes()
    assert headers["access-control-allow-origin"] == ORIGIN and headers["vary"] == "Origin"
    assert headers["cache-control"] == "public, max-age=31536000, immutable"
    status, headers, body = _ask(pair.front, "GET", video.path("360p", "seg_00000.ts"), {"Range": "bytes=-0"})
    assert status == 416 and headers["content-type"] == "application/json"
    assert headers["content-range"].startswith("bytes */")


def _app_requests(pair: Pair, path: str) -> int:
    """Requests for `path` in the access log of the app behind the front."""
    text = (pair.home / "front.log").read_text(errors="replace")
    return len(re.findall(rf'"(?:GET|HEAD) {re.escape(path)} HTTP', text))


def test_nginx_sends_run_files_on_the_apps_decision_and_keeps_it_briefly(pair, video):
    from deployments.web import DECISION_SECONDS

    from config import storage

    url = storage.url_for("hls", video.video_id, video.run, "360p", "seg_00002.ts")
    expected = os.urandom(200_000)
    storage.write_bytes(url, expected)
    seg = video.path("360p", "seg_00002.ts")
    started = time.monotonic()
    for _ in range(40):
        status, _, body = _ask(pair.front, "GET", seg, {})
        assert status == 200 and body == expected
    elapsed = time.monotonic() - started
    # the access log is written as each answer leaves; wait for the first line, then count
    deadline = time.monotonic() + 10
    while _app_requests(pair, seg) == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    asked = _app_requests(pair, seg)
    assert 1 <= asked <= 2 + elapsed / DECISION_SECONDS, (asked, elapsed)

    # a file removed from disk (a deleted video's) goes back to the app at once, cached decision
    # or not: the answer is the app's
    storage.local_path_of(url).unlink()
    status, headers, body = _ask(pair.front, "GET", seg, {})
    assert status == 404 and headers["content-type"] == "application/json" and b"no such file" in body
    assert headers["cache-control"] == "no-store"


def test_uploads_pass_through_nginx(pair, tmp_path):
    """A tus upload through the front, offsets and all: nginx streams request bodies to the app."""
    from tusclient.client import TusClient

    from tests.media import make_clip

    src = make_clip(tmp_path / "clip.mp4", duration=1.0, size="160x90")
    client = TusClient(pair.front + "/files/")
    up = client.uploader(str(src), chunk_size=16 * 1024, metadata={"filename": "clip.mp4"})
    up.upload()
    r = requests.get(up.url, timeout=30)
    assert r.status_code == 200 and r.json()["status"] == "COMPLETE", r.text
    video_id = r.json()["video"]["id"]
    stored = requests.get(f"{pair.front}/api/videos/{video_id}", timeout=30)
    assert stored.status_code == 200 and stored.json()["metadata"]["size"] == src.stat().st_size, stored.text
