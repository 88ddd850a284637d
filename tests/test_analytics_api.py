"""POST /api/analytics/events and GET /api/videos/{id}/stats over real HTTP (gunicorn), with the
catalog on SQLite and on PostgreSQL.

Validation: schema per type, no unknown fields (nothing personal can ride along), sizes,
content types, unknown videos, rate per client; duplicates stored once. Stats: every figure
computed from sessions whose truth is known.
"""

from __future__ import annotations

import json
import secrets
import threading

import pytest
import requests

from tests.player_support import catalog_at, create_video
from tests.servers import vodflow_web

DURATION = 60.0


@pytest.fixture(scope="module")
def server(tmp_path_factory, module_database):
    data = tmp_path_factory.mktemp("analytics") / "var"
    with catalog_at(data, module_database.get("VODFLOW_DATABASE_URL")):
        ids = {name: create_video(name, duration=DURATION, status="READY", progress=100)
               for name in ("plain", "stats", "dupes", "race")}
    with vodflow_web({"VODFLOW_DATA_DIR": str(data), **module_database}, data.parent / "gunicorn.log") as base:
        yield base, ids


def sid() -> str:
    return secrets.token_hex(16)


def post(base, body, *, ctype="application/json", raw: bytes | None = None):
    data = raw if raw is not None else json.dumps(body).encode()
    return requests.post(f"{base}/api/analytics/events", data=data, headers={"Content-Type": ctype}, timeout=10)


def session(video_id, *, startup_ms, watched, ranges, rendition_time, ended=False, switches=(), stalls=(),
            errors=(), seeks=0):
    """The events a player would send for one view, as one batch."""
    evs = [("session_start", 0, {"duration": DURATION}),
           ("rendition_switch", 0, {"to": "240p", "mode": "auto", "initial": True, "bandwidth_estimate": 500000}),
           ("first_frame", 0, {"startup_ms": startup_ms, "autoplay": True, "rendition": "240p"}),
           ("play", 0, None)]
    for mode, to in switches:
        evs.append(("rendition_switch", 3, {"from": "240p", "to": to, "mode": mode, "bitrate": 2_000_000,
                                            "bandwidth_estimate": 9_000_000}))
    for ms in stalls:
        evs += [("rebuffer_start", 5, None), ("rebuffer_end", 5, {"duration_ms": ms})]
    for kind, details, fatal in errors:
        evs.append(("error", 6, {"kind": kind, "details": details, "fatal": fatal, "action": "recover"}))
    for _ in range(seeks):
        evs.append(("seek", 20, {"from": 10.0, "to": 20.0}))
    half = len(ranges) // 2
    evs.append(("heartbeat", 10, {"watched": watched / 2, "rebuffer_ms": sum(stalls),
                                  "rendition_time": {k: v / 2 for k, v in rendition_time.items()},
                                  "ranges": ranges[:half]}))
    if ended:
        evs.append(("ended", DURATION, None))
    evs.append(("session_end", 30, {"watched": watched, "rebuffer_ms": sum(stalls), "rendition_time": rendition_time,
                                    "ranges": ranges[half:], "reason": "pagehide"}))
    events = [{"seq": i, "type": t, "t": 100 * i, "pos": pos, **({"data": d} if d else {})}
              for i, (t, pos, d) in enumerate(evs)]
    return {"session_id": sid(), "video_id": video_id, "events": events}


def test_batch_is_stored_and_a_resent_batch_counts_once(server):
    base, ids = server
    body = session(ids["dupes"], startup_ms=400, watched=12, ranges=[[0, 12]], rendition_time={"240p": 12})
    r = post(base, body)
    assert r.status_code == 202, r.text
    assert r.json()["stored"] == len(body["events"])
    # the same batch again, as a beacon (text/plain) racing the earlier fetch would send it
    r = post(base, body, ctype="text/plain;charset=UTF-8")
    assert r.status_code == 202, r.text
    assert r.json() == {"accepted": len(body["events"]), "stored": 0, "duplicates": len(body["events"])}
    stats = requests.get(f"{base}/api/videos/{ids['dupes']}/stats", timeout=10).json()
    assert stats["views"] == 1 and stats["watch_time"]["total_s"] == 12


def test_the_same_batch_racing_itself_is_stored_once(server):
    """The beacon and the retried fetch of one batch arrive at the same moment at two workers:
    the upsert keeps exactly one copy of each event, and the answers add up to one store."""
    from concurrent.futures import ThreadPoolExecutor

    base, ids = server
    body = session(ids["race"], startup_ms=500, watched=20, ranges=[[0, 20]], rendition_time={"240p": 20})
    n = len(body["events"])
    start = threading.Barrier(6)

    def send(_):
        start.wait(30)
        return post(base, body)

    with ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(send, range(6)))
    assert [r.status_code for r in replies] == [202] * 6, [r.text for r in replies]
    assert sum(r.json()["stored"] for r in replies) == n
    assert all(r.json()["stored"] + r.json()["duplicates"] == n for r in replies)
    stats = requests.get(f"{base}/api/videos/{ids['race']}/stats", timeout=10).json()
    assert stats["views"] == 1 and stats["watch_time"]["total_s"] == 20


@pytest.mark.parametrize("mutate, status, words", [
    (lambda b: b["events"][0].update(type="mouse_move"), 400, "type"),
    (lambda b: b["events"][2]["data"].update(ip="203.0.113.9"), 400, "ip: Extra inputs are not permitted"),
    (lambda b: b.update(user_agent="Mozilla"), 400, "user_agent"),
    (lambda b: b.update(session_id="short"), 400, "session_id"),
    (lambda b: b["events"][2]["data"].update(startup_ms=-5), 400, "startup_ms"),
    (lambda b: b["events"][-1]["data"].update(ranges=[[10, 5]]), 400, "before its start"),
    (lambda b: b.update(events=[]), 400, "events"),
    (lambda b: b.update(events=b["events"] * 40), 400, "at most 200"),
    (lambda b: b.update(video_id="nosuchvideo"), 404, "no video"),
])
def test_invalid_batches_are_refused_with_a_precise_message(server, mutate, status, words):
    base, ids = server
    body = session(ids["plain"], startup_ms=300, watched=5, ranges=[[0, 5]], rendition_time={"240p": 5})
    mutate(body)
    r = post(base, body)
    assert r.status_code == status, r.text
    assert words in r.json()["message"]


def test_bad_bodies_get_their_own_status(server):
    base, ids = server
    r = post(base, None, raw=b"{not json")
    assert r.status_code == 400 and "not valid JSON" in r.json()["message"]
    r = post(base, None, raw=b"[]")
    assert r.status_code == 400
    r = post(base, {"session_id": sid()}, ctype="application/x-www-form-urlencoded")
    assert r.status_code == 415
    big = session(ids["plain"], startup_ms=1, watched=1, ranges=[], rendition_time={})
    big["events"][0]["data"]["pad"] = "x" * 70_000
    r = post(base, big)
    assert r.status_code == 413 and "at most 65536 bytes" in r.json()["message"]
    r = requests.get(f"{base}/api/videos/nosuchvideo/stats", timeout=10)
    assert r.status_code == 404


def test_stats_from_known_sessions(server, artifacts_dir):
    base, ids = server
    vid = ids["stats"]
    sessions = [
        # watched all of it, at 480p mostly, one automatic switch up, one 2 s stall
        session(vid, startup_ms=400, watched=60, ranges=[[0, 30], [30, 60]], ended=True,
                rendition_time={"240p": 10, "480p": 50}, switches=[("auto", "480p")], stalls=[2000]),
        # watched the first half, picked 360p by hand
        session(vid, startup_ms=800, watched=30, ranges=[[0, 30]],
                rendition_time={"240p": 5, "360p": 25}, switches=[("manual", "360p")], seeks=1),
        # jumped to the end: 10-20 s and 50-60 s; a fatal network error recovered
        session(vid, startup_ms=1200, watched=20, ranges=[[10, 20], [50, 60]],
                rendition_time={"240p": 20}, errors=[("networkError", "fragLoadError", True)]),
    ]
    # a page view that never started playing: a session, not a view
    sessions.append({"session_id": sid(), "video_id": vid,
                     "events": [{"seq": 0, "type": "session_start", "t": 0, "pos": 0}]})
    for body in sessions:
        assert post(base, body).status_code == 202

    s = requests.get(f"{base}/api/videos/{vid}/stats", timeout=10).json()
    (artifacts_dir / "analytics-stats.json").write_text(json.dumps(s, indent=2))
    assert s["views"] == 3
    assert s["unique_sessions"] == 4
    assert s["watch_time"] == {"total_s": 110.0, "average_s": pytest.approx(36.7, abs=0.05)}
    assert s["completion_rate"] == pytest.approx(2 / 3, abs=1e-3), "the first ended, the third reached the end"
    assert s["startup_ms"]["p50"] == 800
    assert s["startup_ms"]["p95"] == pytest.approx(1160, abs=1)  # interpolated between 800 and 1200
    assert s["rebuffer"]["count"] == 1
    assert s["rebuffer"]["ratio"] == pytest.approx(2 / 112, abs=1e-4)
    assert s["rendition_time_s"] == {"480p": 50.0, "360p": 25.0, "240p": 35.0}
    assert s["switches"]["auto"] == 1 and s["switches"]["manual"] == 1, "the first choice is not a switch"
    assert s["switches"]["per_minute"] == pytest.approx(2 / (110 / 60), abs=1e-3)
    assert s["seeks"] == 1
    assert s["errors"]["total"] == 1 and s["errors"]["fatal"] == 1
    assert s["errors"]["by_kind"] == {"networkError/fragLoadError": 1}
    ret = {round(p["t"]): p["share"] for p in s["retention"]}
    assert len(s["retention"]) == 60
    assert ret[5] == pytest.approx(2 / 3, abs=1e-3)  # the first two views
    assert ret[15] == 1.0  # all three
    assert ret[40] == pytest.approx(1 / 3, abs=1e-3)  # only the full view
    assert ret[55] == pytest.approx(2 / 3, abs=1e-3)  # the full view and the jumper

    page = requests.get(f"{base}/stats/{vid}", timeout=10)
    assert page.status_code == 200
    assert "<svg" in page.text and "Audience retention" in page.text and "480p" in page.text


def test_per_client_rate_limit_answers_429_with_retry_after(tmp_path, database_env):
    """A client flooding the endpoint is cut off with 429 and told when to come back; its
    other requests are unaffected once it slows down. (Own server: the limit is per client.)"""
    with catalog_at(tmp_path / "var", database_env.get("VODFLOW_DATABASE_URL")):
        vid = create_video("flood", duration=10, status="READY")
    with vodflow_web({"VODFLOW_DATA_DIR": str(tmp_path / "var"), **database_env}, tmp_path / "gunicorn.log",
                     workers=1) as base:
        # one session may not flood: a player sends a batch every ~10 s
        one = sid()
        replies = [post(base, {"session_id": one, "video_id": vid,
                               "events": [{"seq": i, "type": "play", "t": i}]}) for i in range(30)]
        assert [r.status_code for r in replies[:20]] == [202] * 20
        refused = [r for r in replies if r.status_code == 429]
        assert len(refused) >= 5
        assert "from this session" in refused[0].json()["message"]
        # nor may one client, even with a new session id each time
        codes = []
        with requests.Session() as http:
            for i in range(160):
                body = {"session_id": sid(), "video_id": vid,
                        "events": [{"seq": 0, "type": "session_start", "t": 0}]}
                r = http.post(f"{base}/api/analytics/events", json=body, timeout=10)
                codes.append(r.status_code)
                if r.status_code == 429:
                    assert int(r.headers["Retry-After"]) >= 1
                    assert "from this client" in r.json()["message"]
        assert codes[:60].count(202) == 60, "a burst under the limit passes"
        assert codes.count(429) >= 20
