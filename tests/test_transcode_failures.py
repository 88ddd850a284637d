"""Failures a real cluster meets: a worker killed mid-encode, an ffmpeg killed mid-encode, a
run that crashed and is dispatched again, a video processed twice."""

from __future__ import annotations

import os
import signal
import threading
import time

import psutil
import pytest

from tests.media import make_clip
from tests.transcode_support import (  # noqa: F401 - fixtures
    add_video,
    check_published,
    dask_cluster,
    ingest_env,
    run_ingest,
    video_row,
)


@pytest.fixture(scope="module")
def busy_clip(media_dir):
    """Long enough that every chunk's encode takes a moment (720p, three rungs)."""
    path = media_dir / "busy.mp4"
    if not path.exists():
        make_clip(path, duration=8, size="1280x720", gop=30, bframes=2)
    return path


def _worker_pids(cluster) -> set[int]:
    from distributed import Client

    with Client(cluster, set_as_default=False) as c:
        return set(c.run(os.getpid).values())


def _encoding_ffmpeg(worker_pids: set[int], timeout: float = 60, *, lane: bool = False) -> psutil.Process:
    """The first libx264 ffmpeg started by a worker for a chunk encode, or with `lane` for the
    fast lane (the one that keeps a segment list: it publishes segments as they close)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in worker_pids:
            try:
                for child in psutil.Process(pid).children(recursive=True):
                    cmd = child.cmdline()
                    if "libx264" in cmd and ("-segment_list" in cmd) == lane:
                        return child
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.05)
    raise AssertionError("no encode started")


def _run_in_thread(vid):
    box = {}
    t = threading.Thread(target=lambda: box.update(zip(("result", "exc"), run_ingest(vid))), daemon=True)
    t.start()
    return t, box


def _task_runs(video_id: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from catalog.db import session_scope
    from catalog.state import get_video

    with session_scope() as s:
        fr = get_video(s, video_id).flow_run_id
    with get_client(sync_client=True) as client:
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[fr])))


def test_worker_killed_mid_encode_does_not_lose_the_video(ingest_env, busy_clip):
    cluster = ingest_env
    vid = add_video(busy_clip)
    pids = _worker_pids(cluster)
    t, box = _run_in_thread(vid)
    ff = _encoding_ffmpeg(pids)
    worker = next(p for p in ff.parents() if p.pid in pids)
    time.sleep(0.3)  # well into the encode
    os.kill(worker.pid, signal.SIGKILL)
    t.join(240)
    assert not t.is_alive()
    assert box.get("exc") is None, box.get("exc")
    check_published(vid, busy_clip, expect_audio=True)
    assert not psutil.pid_exists(worker.pid) or psutil.Process(worker.pid).status() == psutil.STATUS_ZOMBIE
    # the orphaned encode died with its worker instead of running on
    assert not ff.is_running() or ff.status() == psutil.STATUS_ZOMBIE
    # the cluster healed: the nanny started a replacement worker
    deadline = time.monotonic() + 60
    while len(_worker_pids(cluster)) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(_worker_pids(cluster)) == 2


def test_killed_ffmpeg_is_retried_with_backoff(ingest_env, busy_clip):
    vid = add_video(busy_clip)
    pids = _worker_pids(ingest_env)
    t, box = _run_in_thread(vid)
    ff = _encoding_ffmpeg(pids)
    time.sleep(0.2)
    ff.kill()
    t.join(240)
    assert box.get("exc") is None, box.get("exc")
    check_published(vid, busy_clip, expect_audio=True)
    encodes = [r for r in _task_runs(vid) if r.name.startswith("encode chunk")]
    assert any(r.run_count >= 2 for r in encodes), [(r.name, r.run_count) for r in encodes]
    assert all(r.state.is_completed() for r in encodes)


def test_a_killed_fast_lane_is_retried_and_stores_each_chunk_once(ingest_env, busy_clip):
    """The lowest rung's one-pass encode killed mid-way: Prefect retries the task, the retry
    keeps the chunks the first try stored (segments are immutable once published) and the
    ladder is published whole."""
    vid = add_video(busy_clip)
    pids = _worker_pids(ingest_env)
    t, box = _run_in_thread(vid)
    ff = _encoding_ffmpeg(pids, lane=True)
    time.sleep(0.2)
    ff.kill()
    t.join(240)
    assert box.get("exc") is None, box.get("exc")
    result = box["result"]
    assert result["lane"]["rung"] == "360p" and result["lane"]["fallback"] is None, result["lane"]
    check_published(vid, busy_clip, expect_audio=True)
    lanes = [r for r in _task_runs(vid) if r.name.startswith("fast lane")]
    assert len(lanes) == 1 and lanes[0].run_count >= 2 and lanes[0].state.is_completed(), lanes


def test_redispatch_after_a_crash_starts_clean(ingest_env, media_dir):
    """A run that died half way (status PROCESSING, files of an unfinished run) is dispatched
    again: the new run publishes and the leftovers are gone."""
    from catalog.db import session_scope
    from catalog.models import Rendition, RenditionStatus, VideoStatus
    from catalog.state import get_video, transition
    from config import storage

    src = make_clip(media_dir / "crash.mp4", duration=3, size="320x240", gop=30)
    vid = add_video(src)
    stale_seg = storage.url_for("hls", vid, "rcrashed", "240p", "seg_00000.ts")
    stale_chunk = storage.url_for("scratch", vid, "rcrashed", "chunks", "chunk_00000.mkv")
    storage.write_bytes(stale_seg, b"half")
    storage.write_bytes(stale_chunk, b"half")
    with session_scope() as s:
        v = get_video(s, vid)
        transition(s, v, VideoStatus.PROCESSING)
        v.progress = 40.0
        s.add(Rendition(video_id=vid, run="rcrashed", name="240p", width=320, height=240,
                        status=RenditionStatus.PENDING))
    result, exc = run_ingest(vid)
    assert exc is None, exc
    facts = check_published(vid, src, expect_audio=True)
    assert not storage.exists(stale_seg) and not storage.exists(stale_chunk)
    assert {r["run"] for r in facts["row"]["renditions"]} == {result["run"]}
    # intermediate chunks are gone after publishing
    assert storage.list_files(storage.url_for("scratch", vid)) == []


def test_reprocessing_keeps_the_video_playable_and_switches_runs(ingest_env, media_dir):
    from config import storage

    src = make_clip(media_dir / "again.mp4", duration=3, size="320x240", gop=30)
    vid = add_video(src)
    first, exc = run_ingest(vid)
    assert exc is None, exc
    second, exc = run_ingest(vid)
    assert exc is None, exc
    assert first["run"] != second["run"]
    facts = check_published(vid, src, expect_audio=True)
    assert facts["row"]["current_run"] == second["run"]
    assert {r["run"] for r in facts["row"]["renditions"]} == {second["run"]}
    assert not storage.exists(storage.url_for("hls", vid, first["run"]))


def test_failed_reprocessing_keeps_the_published_version(ingest_env, media_dir):
    from config import storage

    src = make_clip(media_dir / "keep.mp4", duration=2, size="320x240", gop=30)
    vid = add_video(src)
    first, exc = run_ingest(vid)
    assert exc is None, exc
    row = video_row(vid)
    storage.delete(storage.url_for("sources", vid))  # the source is gone: reprocessing must fail
    _, exc = run_ingest(vid)
    assert exc is not None
    row = video_row(vid)
    assert row["status"] == "READY" and row["current_run"] == first["run"]
    assert "previous version is still published" in row["error"]
    check_published(vid, src, expect_audio=True)


def test_a_second_run_of_a_video_takes_over_from_the_first(ingest_env, busy_clip):
    """Two runs of one video at once (a re-dispatch while the first was still alive): the
    newer one publishes; the older one stops without failing the video or touching its files."""
    from config import storage
    from flows.ingest import Superseded

    vid = add_video(busy_clip)
    seen: list[str] = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            seen.append(video_row(vid)["status"])
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    t, first = _run_in_thread(vid)
    _encoding_ffmpeg(_worker_pids(ingest_env))  # the first run is encoding
    second, exc = run_ingest(vid)
    t.join(120)
    stop.set()
    watcher.join()
    assert exc is None, exc
    assert isinstance(first["exc"], Superseded), first
    assert "FAILED" not in seen
    facts = check_published(vid, busy_clip, expect_audio=True)
    assert facts["row"]["current_run"] == second["run"] and facts["row"]["error"] is None
    assert {r["run"] for r in facts["row"]["renditions"]} == {second["run"]}
    assert [e["name"] for e in storage.list_dir(storage.url_for("hls", vid))] == [second["run"]]
    assert storage.list_files(storage.url_for("scratch", vid)) == []
