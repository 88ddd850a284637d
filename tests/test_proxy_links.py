"""Behind a load balancer or CDN: links in answers use the scheme and host the user reached, the
analytics limit counts the real client, and forwarded headers are believed only from as many
proxies as VODFLOW_TRUSTED_PROXIES says (gunicorn, run as `vodflow web` runs it)."""

from __future__ import annotations

import json
import secrets
import subprocess

import requests

from tests.player_support import catalog_at, create_video
from tests.servers import vodflow_web
from tests.upload_support import OFFSET_TYPE, TUS, metadata

FORWARDED = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "vod.example", "X-Forwarded-For": "203.0.113.5"}


def _create_with_body(base: str, body: bytes, headers: dict) -> requests.Response:
    r = requests.post(f"{base}/files/", data=body, timeout=60, headers={
        **TUS, **headers, "Upload-Length": str(len(body)), "Content-Type": OFFSET_TYPE,
        "Upload-Metadata": metadata(filename="proxied.mp4")})
    assert r.status_code == 201, r.text
    return r


def _events(base: str, video_id: str, client: str) -> int:
    body = {"session_id": secrets.token_hex(16), "video_id": video_id,
            "events": [{"seq": 0, "type": "session_start", "t": 0}]}
    r = requests.post(f"{base}/api/analytics/events", json=body, timeout=10,
                      headers={"X-Forwarded-For": client})
    return r.status_code


def test_links_and_client_address_follow_one_trusted_proxy(tmp_path, clip):
    data = tmp_path / "var"
    with catalog_at(data):
        watched = create_video("watched", duration=10, status="READY", progress=100)
    env = {"VODFLOW_DATA_DIR": str(data), "VODFLOW_DISPATCH": "off", "VODFLOW_TRUSTED_PROXIES": "1"}
    with vodflow_web(env, tmp_path / "gunicorn.log", workers=1) as base:
        # tus creation: the upload's URL and the video's links as the user sees them
        created = _create_with_body(base, clip.read_bytes(), FORWARDED)
        assert created.headers["Location"].startswith("https://vod.example/files/")
        vid = created.headers["Vodflow-Video-Id"]
        assert created.headers["Vodflow-Status-Url"] == f"https://vod.example/api/videos/{vid}"
        assert created.headers["Vodflow-Watch-Url"] == f"https://vod.example/watch/{vid}"
        # GET of the upload (JSON) and the catalog agree
        upload = requests.get(created.headers["Location"].replace("https://vod.example", base),
                              headers=FORWARDED, timeout=10).json()
        assert upload["url"] == created.headers["Location"]
        assert upload["video"] == {"id": vid, "status_url": f"https://vod.example/api/videos/{vid}",
                                   "watch_url": f"https://vod.example/watch/{vid}"}
        video = requests.get(f"{base}/api/videos/{vid}", headers=FORWARDED, timeout=10).json()
        assert video["watch_url"] == f"https://vod.example/watch/{vid}"
        ready = requests.get(f"{base}/api/videos/{watched}", headers=FORWARDED, timeout=10).json()
        assert ready["master_url"] == f"https://vod.example/v/{watched}/master.m3u8"
        # the one-shot POST, with curl
        out = subprocess.run(["curl", "-sS", "-H", "X-Forwarded-Proto: https", "-H", "X-Forwarded-Host: vod.example",
                              "-F", f"file=@{clip}", f"{base}/api/uploads"],
                             capture_output=True, text=True, check=True, timeout=60)
        posted = json.loads(out.stdout)
        assert posted["watch_url"] == f"https://vod.example/watch/{posted['id']}"
        assert posted["status_url"] == f"https://vod.example/api/videos/{posted['id']}"

        # the per-client analytics limit counts the address the proxy saw, not the proxy's:
        # one flooding viewer is cut off, another behind the same proxy is not
        codes = [_events(base, watched, "203.0.113.5") for _ in range(130)]
        assert codes[:60] == [202] * 60 and codes.count(429) >= 20
        assert _events(base, watched, "198.51.100.7") == 202
        # a forged hop prepended by the flooding client does not give it a fresh allowance (five
        # tries: the bucket refills 5 tokens a second, so one answer alone may be a refilled token)
        forged = [_events(base, watched, "192.0.2.99, 203.0.113.5") for _ in range(5)]
        assert forged.count(429) >= 4, forged


def test_forwarded_headers_are_ignored_without_trusted_proxies(tmp_path, clip):
    """Default: nothing in front, so X-Forwarded-* come from the client and prove nothing."""
    env = {"VODFLOW_DATA_DIR": str(tmp_path / "var"), "VODFLOW_DISPATCH": "off"}
    with vodflow_web(env, tmp_path / "gunicorn.log", workers=1) as base:
        created = _create_with_body(base, clip.read_bytes(), FORWARDED)
        assert created.headers["Location"].startswith(f"{base}/files/")
        assert created.headers["Vodflow-Watch-Url"].startswith(f"{base}/watch/")


def test_public_url_wins_over_the_request(tmp_path, clip):
    env = {"VODFLOW_DATA_DIR": str(tmp_path / "var"), "VODFLOW_DISPATCH": "off",
           "VODFLOW_PUBLIC_URL": "https://videos.example/vod/", "VODFLOW_TRUSTED_PROXIES": "1"}
    with vodflow_web(env, tmp_path / "gunicorn.log", workers=1) as base:
        created = _create_with_body(base, clip.read_bytes(), FORWARDED)
        upload_id = created.headers["Location"].rsplit("/", 1)[1]
        assert created.headers["Location"] == f"https://videos.example/vod/files/{upload_id}"
        vid = created.headers["Vodflow-Video-Id"]
        assert created.headers["Vodflow-Watch-Url"] == f"https://videos.example/vod/watch/{vid}"


def test_behind_vodflows_nginx_links_and_the_client_address_are_the_real_ones(tmp_path, clip):
    """nginx in front as `vodflow up` runs it, nothing trusted beyond it: links use the Host the
    client asked for, forwarded headers sent by the client prove nothing, and the analytics
    limit counts the address nginx saw (here every request comes from one client, whatever
    X-Forwarded-For it claims)."""
    data = tmp_path / "var"
    with catalog_at(data):
        watched = create_video("watched", duration=10, status="READY", progress=100)
    env = {"VODFLOW_DATA_DIR": str(data), "VODFLOW_DISPATCH": "off"}
    with vodflow_web(env, tmp_path / "web.log", workers=1, front=True) as base:
        created = _create_with_body(base, clip.read_bytes(), FORWARDED)
        assert created.headers["Location"].startswith(f"{base}/files/")
        assert created.headers["Vodflow-Watch-Url"].startswith(f"{base}/watch/")
        # 200 viewers by their forged headers, one by nginx's account: were the forged addresses
        # believed, each would have its own allowance of 100 and none would be refused
        codes = [_events(base, watched, f"203.0.113.{i}") for i in range(200)]
        assert codes[:50] == [202] * 50 and 429 in codes
