"""Bulk ingest: a watch folder or bucket prefix, ingested once per content, never half-written;
the claims that make concurrent scans agree are tested on SQLite and on PostgreSQL."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from catalog.db import session_scope
from catalog.models import IngestedSource, Video, VideoStatus
from config import storage
from flows.bulk_ingest import bulk_ingest, run_bulk_ingest, summary_markdown
from tests.media import make_clip
from tests.ops_support import artifacts_of, moto_s3


@pytest.fixture(autouse=True)
def no_dispatch(monkeypatch):
    # these tests check intake and dedupe; transcoding is covered by the stack tests
    monkeypatch.setenv("VODFLOW_DISPATCH", "off")


@pytest.fixture(scope="module")
def clip_b(media_dir) -> Path:
    return make_clip(media_dir / "clip_b.mp4", duration=2, size="320x180", source="testsrc")


def _videos() -> list[Video]:
    with session_scope() as s:
        return list(s.scalars(select(Video).order_by(Video.created_at)))


def test_same_content_under_two_names_is_ingested_once(catalog_db, tmp_path, clip, clip_b):
    watch = tmp_path / "incoming"
    (watch / "sub").mkdir(parents=True)
    shutil.copy(clip, watch / "holiday.mp4")
    shutil.copy(clip, watch / "sub" / "holiday (copy).MP4")  # same bytes, another name and folder
    shutil.copy(clip_b, watch / "other.mov")
    (watch / "notes.mp4").write_text("this is a text file with a video name\n" * 20)
    shutil.copy(clip_b, watch / "big.mp4.part")  # a copy tool's partial file
    shutil.copy(clip_b, watch / ".hidden.mp4")
    (watch / "readme.txt").write_text("not a video")

    report = run_bulk_ingest(str(watch), settle_seconds=0)
    by_name = {o.name: o for o in report.outcomes}
    assert set(by_name) == {"holiday.mp4", "sub/holiday (copy).MP4", "other.mov", "notes.mp4"}
    results = sorted(o.result for o in report.outcomes)
    assert results == ["duplicate", "failed", "ingested", "ingested"]
    assert "not a video" in by_name["notes.mp4"].note
    dup = next(o for o in report.outcomes if o.result == "duplicate")
    first = next(o for o in report.outcomes if o.name in ("holiday.mp4", "sub/holiday (copy).MP4")
                 and o.result == "ingested")
    assert dup.video_id == first.video_id

    videos = _videos()
    assert len(videos) == 2 and all(v.status == VideoStatus.UPLOADED for v in videos)
    for v in videos:  # the stored source is byte-identical to the file dropped in
        expected = clip if v.original_filename.lower().startswith("holiday") else clip_b
        assert storage.read_bytes(v.source_url) == expected.read_bytes()
        assert v.content_hash and len(v.content_hash) == 64

    # a later scan finds nothing new; a fresh copy under a third name is still a duplicate
    again = run_bulk_ingest(str(watch), settle_seconds=0)
    assert {o.name: o.result for o in again.outcomes}["holiday.mp4"] in ("known", "duplicate")
    assert {o.result for o in again.outcomes} <= {"known", "duplicate"}
    shutil.copy(clip, watch / "holiday-final.mp4")
    third = run_bulk_ingest(str(watch), settle_seconds=0)
    assert {o.name: o.result for o in third.outcomes}["holiday-final.mp4"] == "duplicate"
    assert len(_videos()) == 2
    # the refused file is remembered by content and not read again
    with session_scope() as s:
        failed = s.scalars(select(IngestedSource).where(IngestedSource.status == "FAILED")).all()
        assert len(failed) == 1 and "not a video" in failed[0].error


def test_a_claim_left_by_a_dead_scan_is_taken_over_after_the_grace(catalog_db, tmp_path, clip, monkeypatch):
    """A scan killed between claiming a file and recording what became of it must not block
    that content for good: later scans wait out the grace, then ingest it."""
    from datetime import datetime, timedelta, timezone

    from flows import intake

    watch = tmp_path / "incoming"
    watch.mkdir()
    shutil.copy(clip, watch / "interrupted.mp4")

    def die(*_a, **_k):
        raise SystemExit("killed mid-ingest")  # not an Exception: nothing in the scan catches it

    with monkeypatch.context() as m:
        m.setattr(intake, "check_file", die)
        with pytest.raises(SystemExit):
            run_bulk_ingest(str(watch), settle_seconds=0)
    with session_scope() as s:
        assert [r.status for r in s.scalars(select(IngestedSource))] == ["CLAIMED"]

    # moments later the claim may belong to a scan still working on it: left alone
    soon = run_bulk_ingest(str(watch), settle_seconds=0)
    assert [o.result for o in soon.outcomes] in (["known"], ["duplicate"])
    assert _videos() == []

    # an hour on, the claim is abandoned: the next scan takes it over and ingests once
    with session_scope() as s:
        row = s.scalars(select(IngestedSource)).one()
        row.first_seen_at = datetime.now(timezone.utc) - timedelta(hours=1, minutes=1)
    later = run_bulk_ingest(str(watch), settle_seconds=0)
    assert [o.result for o in later.outcomes] == ["ingested"], later.outcomes
    [video] = _videos()
    assert video.id == later.outcomes[0].video_id
    assert storage.read_bytes(video.source_url) == clip.read_bytes()
    with session_scope() as s:
        row = s.scalars(select(IngestedSource)).one()
        assert (row.status, row.video_id) == ("INGESTED", video.id)
    assert [o.result for o in run_bulk_ingest(str(watch), settle_seconds=0).outcomes] == ["known"]


def test_a_file_still_being_copied_is_not_taken_half_written(catalog_db, tmp_path, clip):
    watch = tmp_path / "incoming"
    watch.mkdir()
    data = clip.read_bytes()
    target = watch / "slow.mp4"
    started, scanned = threading.Event(), threading.Event()

    def slow_copy():
        with open(target, "wb") as fh:
            step = max(1, len(data) // 2000)
            i = 0
            while i < len(data) and not scanned.is_set():
                fh.write(data[i:i + step])
                fh.flush()
                started.set()
                i += step
                time.sleep(0.02)
            fh.write(data[i:])  # the rest once the scan is over

    writer = threading.Thread(target=slow_copy)
    writer.start()
    try:
        assert started.wait(60)
        # the copy goes on until this scan is over, so it changes between the scan's two looks
        report = run_bulk_ingest(str(watch), settle_seconds=0.5)
    finally:
        scanned.set()
        writer.join(60)
    assert [o.result for o in report.outcomes] == ["writing"]
    assert _videos() == []
    report = run_bulk_ingest(str(watch), settle_seconds=0.5)  # the copy is complete now
    assert [o.result for o in report.outcomes] == ["ingested"]
    (video,) = _videos()
    assert storage.read_bytes(video.source_url) == data


def _scan_when_told(watch: str, go: str) -> list[tuple[str, str, str | None]]:
    """One scan of `watch` as a separate process or thread would run it, started when `go` exists."""
    deadline = time.monotonic() + 120
    while not Path(go).exists():
        assert time.monotonic() < deadline, "never told to start"
        time.sleep(0.01)
    report = run_bulk_ingest(watch, settle_seconds=0, dispatch=False)
    return [(o.name, o.result, o.video_id) for o in report.outcomes]


def test_concurrent_scans_give_each_file_to_exactly_one(catalog_db, tmp_path, clip, clip_b):
    """Three processes and three threads scan the same folder at once: every content is
    claimed and ingested by exactly one of them; the others see a duplicate."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

    watch = tmp_path / "incoming"
    watch.mkdir()
    for name, src in (("a.mp4", clip), ("a-copy.mp4", clip), ("b.mov", clip_b), ("b-copy.mp4", clip_b)):
        shutil.copy(src, watch / name)
    go = tmp_path / "go"
    with ProcessPoolExecutor(3, mp_context=multiprocessing.get_context("spawn")) as procs, \
            ThreadPoolExecutor(3) as threads:
        futures = [pool.submit(_scan_when_told, str(watch), str(go)) for pool in (procs, threads) for _ in range(3)]
        go.touch()
        results = [f.result(timeout=300) for f in futures]
    ingested = [(name, vid) for outcomes in results for name, result, vid in outcomes if result == "ingested"]
    others = {result for outcomes in results for _, result, _ in outcomes if result != "ingested"}
    assert len(ingested) == 2, results  # one per distinct content, whatever the name
    assert others <= {"duplicate", "known"}, results
    videos = _videos()
    assert sorted(v.id for v in videos) == sorted(vid for _, vid in ingested)
    assert sorted(v.source_size for v in videos) == sorted([clip.stat().st_size, clip_b.stat().st_size])
    with session_scope() as s:
        rows = s.scalars(select(IngestedSource)).all()
    assert sorted(r.status for r in rows) == ["INGESTED", "INGESTED"]


def test_bucket_prefix_on_s3(monkeypatch, clip, clip_b):
    with moto_s3("drop") as (endpoint, s3):
        monkeypatch.setenv("VODFLOW_S3_ENDPOINT_URL", endpoint)
        from config.settings import reset_settings

        reset_settings()
        s3.put_object(Bucket="drop", Key="incoming/a.mp4", Body=clip.read_bytes())
        s3.put_object(Bucket="drop", Key="incoming/2024/a-again.mp4", Body=clip.read_bytes())
        s3.put_object(Bucket="drop", Key="incoming/b.mp4", Body=clip_b.read_bytes())
        s3.put_object(Bucket="drop", Key="elsewhere/c.mp4", Body=clip_b.read_bytes())
        report = run_bulk_ingest("s3://drop/incoming/", settle_seconds=0)
        got = sorted((o.name, o.result) for o in report.outcomes)
        assert [r for _, r in got].count("ingested") == 2
        assert [r for _, r in got].count("duplicate") == 1
        assert all(not n.startswith("elsewhere") for n, _ in got)
        assert sorted(v.source_size for v in _videos()) == sorted([clip.stat().st_size, clip_b.stat().st_size])


def test_flow_leaves_a_markdown_summary(prefect_api, tmp_path, clip):
    watch = tmp_path / "incoming"
    watch.mkdir()
    shutil.copy(clip, watch / "one.mp4")
    shutil.copy(clip, watch / "two.mp4")
    (watch / "bad.mkv").write_bytes(b"\x1a\x45\xdf\xa3" + b"\0" * 5000)  # Matroska magic, no content

    state = bulk_ingest(str(watch), settle_seconds=0, return_state=True)
    assert state.is_completed()
    summary = state.result()
    assert summary["counts"]["ingested"] == 1 and summary["counts"]["duplicate"] == 1
    assert summary["counts"]["failed"] == 1
    run_id = str(state.state_details.flow_run_id)
    arts = artifacts_of(prefect_api, run_id)
    (art,) = [a for a in arts if a["key"] == "bulk-ingest-summary"]
    md = art["data"]
    assert "`one.mp4`" in md and "`two.mp4`" in md and "`bad.mkv`" in md
    assert "duplicate" in md and "failed" in md and "/watch/" in md


def test_cli_ingests_a_folder(tmp_path, clip, clip_b):
    from typer.testing import CliRunner

    from deployments.cli import app

    watch = tmp_path / "drop"
    watch.mkdir()
    shutil.copy(clip, watch / "x.mp4")
    shutil.copy(clip, watch / "x-copy.mp4")
    shutil.copy(clip_b, watch / "y.mp4")
    result = CliRunner().invoke(app, ["ingest", str(watch), "--settle", "0"])
    assert result.exit_code == 0, result.output
    ids = [v.id for v in _videos()]
    assert len(ids) == 2
    assert all(f"/watch/{i}" in result.output for i in ids)
    assert "duplicate" in result.output
    # nothing new the second time: every file already known is success (exit 0), said per file
    result = CliRunner().invoke(app, ["ingest", str(watch), "--settle", "0"])
    assert result.exit_code == 0 and "known" in result.output
    assert len(_videos()) == 2


def test_summary_lists_every_file(tmp_path, clip):
    watch = tmp_path / "w"
    watch.mkdir()
    shutil.copy(clip, watch / "a|b.mp4")
    report = run_bulk_ingest(str(watch), settle_seconds=0)
    md = summary_markdown(report)
    assert "1 ingested" in md and "a\\|b.mp4" in md
