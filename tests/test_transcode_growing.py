"""Watch while it transcodes: chunks are published as they land, the playlists grow as a
contiguous prefix, delivery caches them accordingly, and a chunk that fails for good closes the
video at what was published.

Later chunks are held back for real: the cluster has one worker, which runs tasks one at a time
in priority order (split, audio, chunk 1, chunk 2, ...), and the test pauses it (as Dask's own
memory monitor does) the moment the first chunk is published. Nothing is slept on.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import m3u8
import pytest
import requests
from playwright.sync_api import sync_playwright

from tests.player_support import launch_chromium
from tests.servers import vodflow_web
from tests.transcode_support import add_video, check_published, clip, local, run_ingest, video_row

DURATION = 26  # segments at 0, 6, 12, 18, 24 s: several chunks on one worker slot


def _plan(src) -> dict:
    """The chunks the flow will plan for this source on one worker slot (the same function)."""
    from tasks.split import plan_split, read_packets

    plan, _ = plan_split(read_packets(src), workers=1, keyframe_seconds=2, segment_seconds=6,
                         avg_frame_rate="30/1")
    return plan.to_dict()


@pytest.fixture(scope="module")
def one_worker(prefect_api, tmp_path_factory):
    from distributed import Client, LocalCluster

    data = tmp_path_factory.mktemp("dask-one")
    cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0",
                           memory_limit=0, env={"VODFLOW_DATA_DIR": str(data), "PREFECT_API_URL": prefect_api})
    client = Client(cluster)
    yield cluster, client
    client.close()
    cluster.close()


@pytest.fixture
def env(one_worker, monkeypatch):
    from config.settings import reset_settings

    cluster, client = one_worker
    monkeypatch.setenv("VODFLOW_DASK_ADDRESS", cluster.scheduler_address)
    reset_settings()
    _set_paused(client, False)
    yield client
    _set_paused(client, False)


def _set_paused(client, paused: bool) -> None:
    """Pause the workers: they finish the task at hand and start no other until resumed."""
    from distributed.core import Status

    def flip(dask_worker, paused=paused):
        dask_worker.status = Status.paused if paused else Status.running

    client.run(flip)


def _wait(what: str, predicate, timeout: float = 180.0, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def _growing(vid: str):
    """The video's row once a video rung is published as a growing playlist (the audio
    rendition grows from its first segments on, ahead of any chunk)."""
    row = video_row(vid)
    # (the row and its renditions are two reads: wait for both to show the publication)
    return row if row["current_run"] and any(
        r["status"] == "GROWING" and not r["name"].startswith("audio") for r in row["renditions"]) else None


def _encoded_chunks(client) -> int:
    """Chunk encodes finished on the cluster (their results held by the scheduler)."""
    return client.run_on_scheduler(lambda dask_scheduler: sum(
        1 for ts in dask_scheduler.tasks.values()
        if str(ts.key).startswith("encode_chunk") and ts.state == "memory"))


def _idle(client) -> bool:
    """No task executing on any worker (a paused worker keeps its queued tasks, unstarted)."""
    return not any(client.run(lambda dask_worker: len(dask_worker.state.executing)).values())


class IngestThread(threading.Thread):
    """`run_ingest(vid)` in a thread of its own, as a dispatch runs it; `outcome()` waits for it
    and gives its (result, exception)."""

    def __init__(self, vid: str):
        super().__init__(daemon=True)
        self.vid, self.value = vid, None

    def run(self):
        self.value = run_ingest(self.vid)

    def outcome(self, timeout: float = 300):
        self.join(timeout)
        return self.value


class PlaylistWatcher:
    """Reads every playlist of the run many times a second while it grows and checks, every
    time, what a player relies on: the listed segments are seg_00000 .. seg_k-1 with no gap,
    every listed file exists, and a playlist only ever appends."""

    def __init__(self, vid: str):
        self.vid, self.stop, self.seen, self.errors = vid, threading.Event(), {}, []
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            row = video_row(self.vid)
            for r in row["renditions"]:
                if r["playlist_url"] and r["status"] in ("GROWING", "READY"):
                    self.check(r["name"], local(r["playlist_url"]))
            time.sleep(0.02)

    def check(self, name: str, path: Path):
        try:
            text = path.read_text()
        except FileNotFoundError:
            return
        pl = m3u8.loads(text)
        uris = [s.uri for s in pl.segments]
        if uris != [f"seg_{i:05d}.ts" for i in range(len(uris))]:
            self.errors.append(f"{name}: not a prefix: {uris}")
        for u in uris:
            if not (path.parent / u).exists():
                self.errors.append(f"{name}: lists {u}, which is not stored")
        before = self.seen.get(name, [])
        if uris[:len(before)] != before:
            self.errors.append(f"{name}: went from {before} to {uris}")
        self.seen[name] = uris

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def test_a_video_is_playable_while_later_chunks_encode(env, media_dir, tmp_path):
    """Held back after its first chunk, the video is published as growing playlists (a prefix
    at every read), served with short cache lifetimes, listed with what is playable, and played
    in Chromium before READY; released, it finishes and the same page plays on to the end."""
    client = env
    src = clip(media_dir, "growing.mp4", duration=DURATION, size="320x180", rate="30", gop=30)
    chunks = _plan(src)["chunks"]
    assert len(chunks) >= 3
    vid = add_video(src)
    runner = IngestThread(vid)
    with PlaylistWatcher(vid) as watcher:
        runner.start()
        _wait("the first chunk to be published", lambda: _growing(vid))
        _set_paused(client, True)
        _wait("the worker to finish the task at hand", lambda: _idle(client))
        # the flow lists the segments of every finished chunk (they finish in order on one slot)
        done = _encoded_chunks(client)
        assert 1 <= done < len(chunks)
        want = sum(len(c["segment_frames"]) for c in chunks[:done])
        _wait(f"{done} finished chunks to be listed", lambda: len(m3u8.loads(local(next(
            r["playlist_url"] for r in video_row(vid)["renditions"] if r["name"] == "180p")).read_text()).segments)
            == want)
        # the later chunks cannot start: what holds below holds at every moment while paused
        row = video_row(vid)
        assert row["status"] == "PROCESSING", row
        grow = [r for r in row["renditions"] if r["status"] == "GROWING"]
        assert {r["name"] for r in grow} == {"180p", "audio"}, row
        video_pl = local(next(r["playlist_url"] for r in grow if r["name"] == "180p"))
        text = video_pl.read_text()
        pl = m3u8.loads(text)
        assert "#EXT-X-PLAYLIST-TYPE:EVENT" in text and not pl.is_endlist
        listed = len(pl.segments)
        assert listed == want < 5, text  # a prefix, while the later chunks are held back
        assert pl.target_duration == 6
        # through the production web server: the master lists the rung and the audio group, the
        # growing playlist may be cached at most one second (under half the target duration)
        with vodflow_web({"VODFLOW_DATA_DIR": os.environ["VODFLOW_DATA_DIR"]}, tmp_path / "web.log",
                         workers=1) as base:
            master = requests.get(f"{base}/v/{vid}/master.m3u8", timeout=10)
            assert master.status_code == 200, master.text
            assert 'TYPE=AUDIO' in master.text and 'AUDIO="aud"' in master.text
            assert _max_age(master) <= 3
            variant = m3u8.loads(master.text).playlists[0].uri
            growing = requests.get(f"{base}/v/{vid}/{variant}", timeout=10)
            assert growing.status_code == 200 and growing.text == text
            assert _max_age(growing) <= 3 and "immutable" not in growing.headers["Cache-Control"]
            seg = requests.get(f"{base}/v/{vid}/{variant.rsplit('/', 1)[0]}/seg_00000.ts", timeout=10)
            assert seg.status_code == 200 and "immutable" in seg.headers["Cache-Control"]
            api = requests.get(f"{base}/api/videos/{vid}", timeout=10).json()
            rung = api["renditions"][0]
            assert rung["status"] == "GROWING"
            assert rung["available_seconds"] == pytest.approx(sum(s.duration for s in pl.segments), abs=1e-3)
            assert rung["available_seconds"] < DURATION
            etag_growing = master.headers["ETag"]
            # a viewer: headless Chromium starts playing before READY, on the same page to the end
            with sync_playwright() as pw:  # stopped even when a check fails: a driver left running
                # makes every later sync_playwright() in this process refuse to start
                browser = launch_chromium(pw)
                page = browser.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                # the library says how much of each rung can be watched already
                page.goto(f"{base}/")
                page.wait_for_function(f"""() => {{ const c = document.querySelector('.card[data-id="{vid}"]');
                    return c && /playable: 180p [1-9][0-9]* s of 26 s/.test(c.textContent); }}""", timeout=30_000)
                page.goto(f"{base}/watch/{vid}")
                page.wait_for_function("() => document.getElementById('video').currentTime > 0.5", timeout=60_000)
                page.evaluate("() => { window.__samePage = true; }")
                assert video_row(vid)["status"] == "PROCESSING"  # playing before READY
                avail = page.evaluate("() => window.vodflowPlayer.availableSeconds")
                assert avail == pytest.approx(rung["available_seconds"], abs=1e-3)
                width = page.evaluate("""() => { const a = document.querySelector('[data-role=available]');
                    return a.hidden ? -1 : parseFloat(a.style.width); }""")
                assert 0 < width < 100, width
                # a seek past the published part waits at its edge instead of failing
                page.evaluate(f"() => window.vodflowPlayer.seek({DURATION - 2})")
                at = page.evaluate("() => document.getElementById('video').currentTime")
                assert at <= avail, (at, avail)
                _set_paused(client, False)
                page.evaluate("() => { document.getElementById('video').playbackRate = 2; }")
                result, exc = runner.outcome()
                assert exc is None, exc
                finished = requests.get(f"{base}/v/{vid}/{variant}", timeout=10)
                assert "#EXT-X-ENDLIST" in finished.text and "#EXT-X-PLAYLIST-TYPE:VOD" in finished.text
                # the finished playlist continues the growing one: same segments, same durations
                done = m3u8.loads(finished.text).segments
                assert [(s.uri, s.duration) for s in done[:listed]] == [(s.uri, s.duration) for s in pl.segments]
                assert "immutable" in finished.headers["Cache-Control"]
                master_done = _wait("the master to show the finished ladder", lambda: (
                    lambda r: r if r.headers["ETag"] != etag_growing else None)(
                    requests.get(f"{base}/v/{vid}/master.m3u8", timeout=10)))
                assert _max_age(master_done) == 5
                page.wait_for_function("() => document.getElementById('video').ended", timeout=180_000)
                state = page.evaluate("""() => ({same: window.__samePage === true,
                    t: document.getElementById('video').currentTime,
                    hidden: document.querySelector('[data-role=available]').hidden})""")
                browser.close()
    assert state["same"], "the page was reloaded"
    assert state["t"] == pytest.approx(DURATION, abs=0.5)
    assert state["hidden"], "the seek bar still shows a published part once the video is READY"
    assert not errors, errors
    assert not watcher.errors, watcher.errors[:5]
    assert len(watcher.seen["180p"]) == 5
    check_published(vid, src, expect_audio=True)
    assert result["chunks"] == len(chunks)


def _max_age(resp) -> int:
    for part in resp.headers["Cache-Control"].split(","):
        part = part.strip()
        if part.startswith("max-age="):
            return int(part.split("=", 1)[1])
    raise AssertionError(resp.headers["Cache-Control"])


def test_a_chunk_that_fails_for_good_closes_the_video_at_what_was_published(env, media_dir):
    """A damaged intermediate file (the stream-copy slice of the last chunk on the worker's disk, garbled
    while the worker is paused) makes that chunk fail permanently: the viewer keeps the
    published prefix, every playlist is closed there (VOD + ENDLIST), and the video is PARTIAL
    with a message naming the chunk and its time range."""
    from config import storage

    client = env
    src = clip(media_dir, "growing.mp4", duration=DURATION, size="320x180", rate="30", gop=30)
    chunks = _plan(src)["chunks"]
    last = chunks[-1]
    assert len(chunks) >= 3 and last["mode"] == "copy"
    vid = add_video(src)
    runner = IngestThread(vid)
    runner.start()
    row = _wait("the first chunk to be published", lambda: _growing(vid))
    _set_paused(client, True)
    _wait("the worker to finish the task at hand", lambda: _idle(client))
    slice_path = local(storage.url_for("scratch", vid, row["current_run"], "chunks",
                                       f"chunk_{last['index']:05d}.mkv"))
    assert slice_path.exists(), ("the last chunk is a stream-copy slice that has not run yet", row)
    slice_path.write_bytes(os.urandom(slice_path.stat().st_size))
    _set_paused(client, False)
    result, exc = runner.outcome()
    assert exc is None, exc
    row = video_row(vid)
    assert row["status"] == "PARTIAL", row
    n = len(chunks)
    label = f"chunk {n}/{n} ({last['start']:.3f}-{last['end']:.3f} s)"
    assert label in row["error"] and f"published the first {last['start']:.1f} s" in row["error"], row
    ready = {r["name"]: r for r in row["renditions"] if r["status"] == "READY"}
    assert set(ready) == {"180p", "audio"}, row
    for r in ready.values():
        text = local(r["playlist_url"]).read_text()
        pl = m3u8.loads(text)
        assert pl.is_endlist and "#EXT-X-PLAYLIST-TYPE:VOD" in text
        assert [s.uri for s in pl.segments] == [f"seg_{i:05d}.ts" for i in range(last["first_segment"])], text
        for s in pl.segments:
            assert (local(r["playlist_url"]).parent / s.uri).exists()


@contextlib.contextmanager
def _killed_ingest(client, vid: str, log_path: Path):
    """`python -m flows.ingest VID` in a process of its own, killed with SIGKILL when the block
    ends; then the cluster drops the dead client's tasks and the worker may run again."""
    with open(log_path, "wb") as log:
        first = subprocess.Popen([sys.executable, "-m", "flows.ingest", vid], stdout=log, stderr=subprocess.STDOUT,
                                 cwd=Path(__file__).resolve().parents[1], env=dict(os.environ))
    try:
        yield first
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    _wait("the scheduler to drop the killed run's tasks",
          lambda: client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)) == 0)
    _set_paused(client, False)


def test_a_killed_ingest_resumes_and_encodes_only_the_missing_chunks(env, media_dir, tmp_path):
    """kill -9 of the process running the flow, mid-ingest: the re-dispatch carries the same run
    on, publishes again the chunks the first attempt stored, and encodes only the others."""
    client = env
    src = clip(media_dir, "growing.mp4", duration=DURATION, size="320x180", rate="30", gop=30)
    chunks = _plan(src)["chunks"]
    vid = add_video(src)
    with _killed_ingest(client, vid, tmp_path / "first.log"):
        row = _wait("the first chunk to be published", lambda: _growing(vid))
        _set_paused(client, True)
        _wait("the worker to finish the task at hand", lambda: _idle(client))
        done = _encoded_chunks(client)
        assert 1 <= done < len(chunks)
        _wait("the finished chunks to be stored", lambda: len(list(
            local(row["renditions"][0]["playlist_url"]).parent.parent.glob("chunks/*.json"))) == done)
    assert video_row(vid)["status"] == "PROCESSING"  # left as a crash leaves it: maintenance re-dispatches

    result, exc = run_ingest(vid)
    assert exc is None, exc
    assert result["run"] == row["current_run"]  # the same run, carried on
    assert result["resumed_chunks"] == done
    assert result["encoded_chunks"] == len(chunks) - done
    check_published(vid, src, expect_audio=True)
    # nothing of the resume machinery is left in the finished run
    run_dir = local(row["renditions"][0]["playlist_url"]).parent.parent
    assert not (run_dir / "plan.json").exists() and not (run_dir / "chunks").exists()



def _lane_source(media_dir):
    # 480p: a two-rung ladder (360p, 480p), so the lowest rung has a fast lane of its own
    return clip(media_dir, "lane.mp4", duration=DURATION, size="854x480", rate="30", gop=30)


def test_the_lowest_rung_runs_ahead_of_the_chunk_encodes(env, media_dir, tmp_path):
    """The fast lane: on one worker slot (audio first, then the lane, then the chunks), the
    lowest rung is published as a growing playlist before any chunk encode has run, to its last
    segment while the chunks are held back. Once the first chunk of the other rung is out too,
    a Chromium viewer plays the rung that reaches past the playhead (Auto capped to it), and
    moves past the other rung's published edge without a stall; the finished ladder passes every
    check, the same segment grid in both rungs."""
    client = env
    src = _lane_source(media_dir)
    chunks = _plan(src)["chunks"]
    assert len(chunks) >= 3
    vid = add_video(src)
    runner = IngestThread(vid)
    with PlaylistWatcher(vid) as watcher:
        runner.start()
        row = _wait("the lowest rung to be published", lambda: _growing(vid))
        assert _encoded_chunks(client) == 0  # no chunk encode has finished: the lane came first
        _set_paused(client, True)
        _wait("the worker to finish the task at hand", lambda: _idle(client))
        assert _encoded_chunks(client) == 0
        lowest = local(next(r["playlist_url"] for r in row["renditions"] if r["name"] == "360p"))
        total = sum(len(c["segment_frames"]) for c in chunks)
        # whole, the lane's rung is finished at once, and the audio with it: a viewer at its end
        # sees the video end while the other rungs are still to come
        _wait("the lane's rung to be finished", lambda: "#EXT-X-ENDLIST" in lowest.read_text())
        text = lowest.read_text()
        assert "#EXT-X-PLAYLIST-TYPE:VOD" in text and len(m3u8.loads(text).segments) == total
        row = _wait("the rows to say so", lambda: (lambda v: v if {
            r["name"]: r["status"] for r in v["renditions"]} == {"360p": "READY", "audio": "READY"} else None)(
            video_row(vid)))
        assert row["status"] == "PROCESSING"
        # let the first chunk encode (480p, one segment) through, then hold the rest back again
        _set_paused(client, False)
        _wait("the first chunk of 480p", lambda: _encoded_chunks(client) >= 1)
        _set_paused(client, True)
        _wait("the worker to finish the task at hand", lambda: _idle(client))
        held = _encoded_chunks(client)
        edge = sum(sum(c["segment_frames"]) for c in chunks[:held]) / 30
        assert held < len(chunks) and edge < DURATION - 8
        _wait("480p to be listed", lambda: any(r["name"] == "480p" and r["status"] == "GROWING"
                                                 for r in video_row(vid)["renditions"]))
        with vodflow_web({"VODFLOW_DATA_DIR": os.environ["VODFLOW_DATA_DIR"]}, tmp_path / "web.log",
                         workers=1) as base:
            with sync_playwright() as pw:  # stopped even when a check fails: a driver left running
                # makes every later sync_playwright() in this process refuse to start
                browser = launch_chromium(pw)
                page = browser.new_page()
                page.goto(f"{base}/watch/{vid}")
                page.wait_for_function("() => window.vodflowPlayer && window.vodflowPlayer.hls"
                                       " && window.vodflowPlayer.levels.length === 2", timeout=60_000)
                page.wait_for_function("() => document.getElementById('video').currentTime > 0.5", timeout=60_000)
                page.evaluate("""() => { const v = document.getElementById('video'); window.__waits = 0;
                    v.addEventListener('waiting', () => { window.__waits++; }); v.playbackRate = 2; }""")
                # past 480p's published edge: still playing, on 360p, never waiting
                page.wait_for_function(f"() => document.getElementById('video').currentTime > {edge + 2}",
                                       timeout=90_000)
                seen = page.evaluate("""() => { const p = window.vodflowPlayer, v = document.getElementById('video');
                    return {cap: p.hls.autoLevelCapping, height: v.videoHeight, waits: window.__waits,
                            available: p.availableSeconds}; }""")
                assert seen["cap"] == 0 and seen["height"] == 360 and seen["waits"] == 0, seen
                assert seen["available"] == pytest.approx(DURATION, abs=0.5), seen  # the lane's edge
                _set_paused(client, False)
                result, exc = runner.outcome()
                page.wait_for_function("() => window.vodflowPlayer.hls.autoLevelCapping === -1", timeout=30_000)
                browser.close()
    assert exc is None, exc
    assert result["lane"] == {"rung": "360p", "resumed_chunks": 0, "fallback": None}
    assert result["encoded_chunks"] == len(chunks)
    assert not watcher.errors, watcher.errors[:5]
    assert set(watcher.seen) >= {"360p", "480p", "audio"}
    assert [len(watcher.seen[n]) for n in ("360p", "480p", "audio")] == [total] * 3
    check_published(vid, src, expect_audio=True)


def test_a_killed_ingest_keeps_what_the_fast_lane_stored(env, media_dir, tmp_path):
    """kill -9 of the flow's process after the lane stored its rung: the re-dispatch publishes
    the lowest rung again from the lane's results and runs no lane; only the chunk encodes of
    the other rungs are left to do."""
    client = env
    src = _lane_source(media_dir)
    chunks = _plan(src)["chunks"]
    vid = add_video(src)
    with _killed_ingest(client, vid, tmp_path / "first.log"):
        row = _wait("the lowest rung to be published", lambda: _growing(vid))
        _set_paused(client, True)
        _wait("the worker to finish the task at hand", lambda: _idle(client))
        run_dir = local(row["renditions"][0]["playlist_url"]).parent.parent
        _wait("the lane's results to be stored",
              lambda: len(list(run_dir.glob("chunks/*.lane.json"))) == len(chunks))
        # killed once the lane's rung is finished (READY) while the others have not started:
        # the run is still the one to carry on, not a published one to replace
        _wait("the lane's rung to be finished", lambda: any(
            r["name"] == "360p" and r["status"] == "READY" for r in video_row(vid)["renditions"]))
        assert _encoded_chunks(client) == 0

    result, exc = run_ingest(vid)
    assert exc is None, exc
    assert result["run"] == row["current_run"]
    assert result["lane"]["resumed_chunks"] == len(chunks)
    assert result["encoded_chunks"] == len(chunks)
    check_published(vid, src, expect_audio=True)
