"""GET/DELETE /api/videos over real HTTP (gunicorn): what a script sees when it gets things wrong."""

from __future__ import annotations

import pytest
import requests

from tests.player_support import catalog_at, create_video
from tests.servers import vodflow_web

TOKEN = "s3cret-admin-token"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("videos-api") / "var"
    with catalog_at(data):
        ids = [create_video(f"video {i}", duration=10, status="READY", progress=100) for i in range(3)]
    with vodflow_web({"VODFLOW_DATA_DIR": str(data), "VODFLOW_ADMIN_TOKEN": TOKEN},
                      data.parent / "gunicorn.log", workers=1) as base:
        yield base, ids


def test_delete_without_the_token_is_a_401_challenge(server):
    base, ids = server
    r = requests.delete(f"{base}/api/videos/{ids[0]}", timeout=10)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="vodflow"'
    assert "VODFLOW_ADMIN_TOKEN" in r.json()["message"]
    r = requests.delete(f"{base}/api/videos/{ids[0]}", headers={"Authorization": "Bearer wrong"}, timeout=10)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="vodflow", error="invalid_token"'
    assert requests.get(f"{base}/api/videos/{ids[0]}", timeout=10).status_code == 200  # untouched
    r = requests.delete(f"{base}/api/videos/{ids[0]}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert r.status_code == 204
    assert requests.get(f"{base}/api/videos/{ids[0]}", timeout=10).status_code == 410


@pytest.mark.parametrize("limit", ["abc", "0", "-5", "2.5", ""])
def test_a_bad_limit_is_a_400_that_says_what_is_allowed(server, limit):
    r = requests.get(f"{server[0]}/api/videos", params={"limit": limit}, timeout=10)
    assert r.status_code == 400
    assert "limit must be a whole number from 1 to 5000" in r.json()["message"]


def test_limit_bounds_the_list(server):
    base, _ = server
    assert len(requests.get(f"{base}/api/videos", params={"limit": "1"}, timeout=10).json()["videos"]) == 1
    assert len(requests.get(f"{base}/api/videos", params={"limit": "99999"}, timeout=10).json()["videos"]) >= 2
