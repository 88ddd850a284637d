"""The ingest flow end to end on real Prefect + Dask + ffmpeg, checked like a person would."""

from __future__ import annotations

import pytest

from tests.transcode_support import (  # noqa: F401 - fixtures
    add_video,
    check_published,
    clip,
    dask_cluster,
    ingest_env,
    run_ingest,
    video_row,
)


def test_ingest_publishes_a_checked_ladder(ingest_env, media_dir):
    src = clip(media_dir, "ladder.mp4", duration=8, size="854x480", rate="30", gop=30, bframes=3)
    vid = add_video(src)
    result, exc = run_ingest(vid)
    assert exc is None, exc
    facts = check_published(vid, src, expect_audio=True)
    assert set(facts["renditions"]) == {"360p", "480p"}
    assert facts["renditions"]["480p"]["width"] == 854
    assert result["chunks"] >= 2
    assert result["seek_chunks"] == 0
