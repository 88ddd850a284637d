"""The ingest flow end to end on real Prefect + Dask + ffmpeg, checked like a person would."""

from __future__ import annotations

import threading
import time

from tests.transcode_support import (  # noqa: F401 - fixtures
    add_video,
    check_published,
    clip,
    dask_cluster,
    ingest_env,
    run_ingest,
    video_row,
)


def _decoded(path) -> bytes:
    """The pixels of an image, as ffmpeg decodes them."""
    import subprocess

    return subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                          check=True, capture_output=True).stdout


def test_ingest_publishes_a_checked_ladder_with_progress_and_artifacts(ingest_env, media_dir):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId

    src = clip(media_dir, "ladder.mp4", duration=14, size="854x480", rate="30", gop=30, bframes=3)
    vid = add_video(src)
    seen: list[tuple[str, float]] = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            row = video_row(vid)
            seen.append((row["status"], row["progress"]))
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    result, exc = run_ingest(vid)
    stop.set()
    watcher.join()
    assert exc is None, exc
    facts = check_published(vid, src, expect_audio=True)
    assert set(facts["renditions"]) == {"360p", "480p"}
    assert facts["renditions"]["480p"]["width"] == 854
    assert result["chunks"] >= 2 and result["seek_chunks"] == 0
    # progress only moves forward, through intermediate values, to 100
    values = [p for s, p in seen if s == "PROCESSING"]
    assert values == sorted(values)
    assert any(0 < p < 100 for p in values)
    assert video_row(vid)["progress"] == 100.0
    # the poster and timeline previews ran on the cluster beside the encodes, in the run folder
    from catalog.db import session_scope
    from catalog.state import get_video
    from config import storage

    with session_scope() as s:
        v = get_video(s, vid)
        poster, vtt, run = v.poster_url, v.thumbnails_url, v.current_run
    assert poster == storage.url_for("hls", vid, run, "poster.jpg")
    assert storage.read_bytes(poster)[:3] == b"\xff\xd8\xff"  # a JPEG
    cues = storage.read_text(vtt)
    assert cues.startswith("WEBVTT") and "#xywh=" in cues
    assert "thumbnails" in {t.name.split(" ")[0] for t in _task_runs(vid)}
    # the chunks took the previews from their own decodes, across chunk joins: the same frames
    # (so the same pixels) as one pass over the whole source, one per second of the 14 s clip
    from tasks.thumbnails import make_thumbnails

    alone = make_thumbnails(str(src), storage.url_for("compare", vid))
    assert cues == storage.read_text(alone["thumbnails_url"]) and cues.count("#xywh=") == 14
    sheets = sorted(u for u in storage.list_files(storage.url_for("hls", vid, run, "thumbs")) if u.endswith(".jpg"))
    assert len(sheets) == len(alone["sprite_urls"]) == 1
    assert _decoded(storage.local_path_of(sheets[0])) == _decoded(storage.local_path_of(alone["sprite_urls"][0]))
    assert _decoded(storage.local_path_of(poster)) == _decoded(storage.local_path_of(alone["poster_url"]))
    # and the scratch space with the per-chunk previews is gone
    assert not storage.exists(storage.url_for("scratch", vid, run))

    with get_client(sync_client=True) as client:
        row_flow = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[__import__("uuid").UUID(_flow_run_id(vid))])))[0]
        assert row_flow.name == f"ingest {vid}"
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[row_flow.id])))
        names = {t.name for t in tasks}
        n = result["chunks"]
        assert {f"encode chunk {i}/{n}" for i in range(1, n + 1)} <= names
        # chunks are published as they land: no packaging or validation pass over a whole rung
        assert not {name for name in names if name.startswith(("package", "validate"))}, names
        progress = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"transcode-{vid}"])))
        assert progress and progress[0].type == "progress" and float(progress[0].data) == 100.0
        ladder = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"ladder-{vid}"])))
        assert ladder and "| 480p | 854x480 |" in ladder[0].data and f"/watch/{vid}" in ladder[0].data


def _task_runs(video_id: str):
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        return client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[UUID(_flow_run_id(video_id))])))


def _flow_run_id(video_id: str) -> str:
    from catalog.db import session_scope
    from catalog.state import get_video

    with session_scope() as s:
        return get_video(s, video_id).flow_run_id


def test_python_m_flows_ingest_runs_one_video(ingest_env, media_dir):
    """What dispatch spawns when no deployment is served: exit 0 and the video READY; an
    unknown id exits 1 with a message."""
    import os
    import subprocess
    import sys

    src = clip(media_dir, "cli.mp4", duration=2, size="320x240", gop=30)
    vid = add_video(src)
    env = {**os.environ}
    out = subprocess.run([sys.executable, "-m", "flows.ingest", vid], env=env, capture_output=True, text=True,
                         timeout=240, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr[-3000:]
    check_published(vid, src, expect_audio=True)
    bad = subprocess.run([sys.executable, "-m", "flows.ingest", "nosuchvideo"], env=env, capture_output=True,
                         text=True, timeout=240)
    assert bad.returncode == 1 and "nosuchvideo" in bad.stderr
