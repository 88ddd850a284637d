"""The catalog view delivery keeps per process (streaming_app/delivery/master.py): one reader
per expiry however many requests arrive, and a failing catalog asked at a bounded pace."""

from __future__ import annotations

import time

import pytest

from tests.hls_support import publish_video


def test_a_crowd_on_a_stale_view_reads_the_catalog_once(hls_ladder, monkeypatch):
    """When a video's cached view expires under load, one thread reads the catalog; the others
    answer from the view they have meanwhile, and the answers stay those of the catalog."""
    import dataclasses
    import threading

    from streaming_app.delivery import master

    video = publish_video(hls_ladder)
    master.forget()
    loads = []
    real_load = master._load

    def counted_load(video_id):
        loads.append(video_id)
        time.sleep(0.2)  # a slow catalog: the window in which a crowd piles up
        return real_load(video_id)

    monkeypatch.setattr(master, "_load", counted_load)
    first = master.video_view(video.video_id)
    assert first.master is not None and loads == [video.video_id]

    # age the view past its lifetime, then let 16 requests arrive at once
    master._views[video.video_id] = dataclasses.replace(first, loaded_at=time.monotonic() - master.VIEW_TTL - 0.1)
    views, barrier = [], threading.Barrier(16)

    def request():
        barrier.wait()
        views.append(master.video_view(video.video_id))

    threads = [threading.Thread(target=request) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(loads) == 2, loads  # one more read, not sixteen
    assert all(v.master == first.master for v in views)


def test_a_catalog_that_fails_is_not_asked_at_request_rate(hls_ladder, monkeypatch):
    """A re-read that fails leaves the stale view answering for the grace period, tries again
    only after RETRY_SECONDS, and once the view is too old nothing is answered from memory."""
    import dataclasses

    from sqlalchemy.exc import OperationalError

    from streaming_app.delivery import master

    video = publish_video(hls_ladder)
    master.forget()
    first = master.video_view(video.video_id)
    tries = []

    def failing_load(video_id):
        tries.append(time.monotonic())
        raise OperationalError("SELECT", {}, Exception("database is locked"))

    monkeypatch.setattr(master, "_load", failing_load)
    master._views[video.video_id] = dataclasses.replace(first, loaded_at=time.monotonic() - master.VIEW_TTL)
    stale_until = master._views[video.video_id].loaded_at + master.VIEW_TTL + master.STALE_GRACE
    answered = 0
    while time.monotonic() < stale_until - 0.05:
        assert master.video_view(video.video_id).master == first.master
        answered += 1
        time.sleep(0.01)
    assert answered > 20
    # one try at first, then one per RETRY_SECONDS, not one per request
    assert 1 <= len(tries) <= 1 + master.STALE_GRACE / master.RETRY_SECONDS + 1, tries
    time.sleep(0.1)
    with pytest.raises(OperationalError):
        master.video_view(video.video_id)  # the request waits for the catalog, and gets its error
