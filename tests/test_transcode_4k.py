"""A 4K source, end to end with real parts: the ingest flow on the Dask cluster splits it into
chunks and encodes the H.264 ladder up to 1080p and, above it, 1440p and 2160p as HEVC in
fragmented MP4; the finished ladder passes the frame-exact checks of every other rung (frames,
keyframe grid, the same segment cuts, the audio on the same timeline); the master served by the
production `vodflow web` carries `hvc1` CODECS that ffprobe reads over HTTP; Chromium, which
decides with `MediaSource.isTypeSupported`, never offers or fetches a rung it cannot decode."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import m3u8
import requests
from playwright.sync_api import expect

from tests.player_support import launch_chromium, server_env
from tests.servers import vodflow_web
from tests.transcode_support import (  # noqa: F401 - fixtures
    add_video,
    check_published,
    dask_cluster,
    ingest_env,
    local,
    run_ingest,
    video_row,
)

# a few seconds of 4K, at a low frame rate so that x265 fits the suite's time on two cores; 12 s
# is two chunks (the first chunk is one 6 s segment)
DURATION = 12.0
FPS = 5
SEGMENT = re.compile(r"/v/(?P<vid>[^/]+)/[^/]+/(?P<rendition>[^/]+)/(seg_\d+\.(ts|m4s)|init\.mp4)$")


def make_4k(out: Path) -> Path:
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc2=size=3840x2160:rate={FPS}:duration={DURATION}",
                    "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={DURATION}",
                    "-c:v", "libx264", "-preset", "ultrafast", "-g", str(2 * FPS), "-pix_fmt", "yuv420p",
                    "-c:a", "aac", "-b:a", "96k", str(out)], check=True)
    return out


def test_a_4k_source_gets_hevc_fmp4_rungs_beside_the_h264_ladder(ingest_env, tmp_path):
    source = make_4k(tmp_path / "uhd.mp4")
    vid = add_video(source, title="uhd")
    result, exc = run_ingest(vid)
    assert exc is None, f"{exc} / {video_row(vid)}"
    assert result["chunks"] >= 2, result
    # every check the H.264 rungs pass, on every rung: frames, keyframes, cuts, audio skew
    facts = check_published(vid, source, expect_audio=True)
    rungs = facts["renditions"]
    assert sorted(rungs, key=lambda n: int(n[:-1])) == ["360p", "480p", "720p", "1080p", "1440p", "2160p"]
    assert (rungs["2160p"]["width"], rungs["2160p"]["height"]) == (3840, 2160)
    assert (rungs["1440p"]["width"], rungs["1440p"]["height"]) == (2560, 1440)
    for name, r in rungs.items():
        assert r["fmp4"] == (name in ("1440p", "2160p")), name
        # HEVC Main, level 5.0 (the level the ladder asked for), Main tier, progressive frames
        assert r["codecs"].startswith("hvc1.1.6.L150.90," if r["fmp4"] else "avc1.64"), r
    # one timeline: a frame has the same time in the fMP4 rungs as in the MPEG-TS rungs
    assert len({round(r["first_pts"], 6) for r in rungs.values()}) == 1, rungs
    # one init segment per rung, and the CODECS the master gives are the ones it declares
    from tasks.ffmpeg import hevc_codecs

    row = video_row(vid)
    by_name = {r["name"]: r for r in row["renditions"] if r["run"] == row["current_run"]}
    for name in ("1440p", "2160p"):
        folder = local(by_name[name]["playlist_url"]).parent
        assert sorted(p.name for p in folder.glob("*.mp4")) == ["init.mp4"]
        assert rungs[name]["codecs"].split(",")[0] == hevc_codecs((folder / "init.mp4").read_bytes())

    with vodflow_web(server_env(Path(os.environ["VODFLOW_DATA_DIR"])), tmp_path / "web.log", workers=1) as base:
        master = requests.get(f"{base}/v/{vid}/master.m3u8", timeout=10).text
        variants = m3u8.loads(master).playlists
        hevc = [v for v in variants if v.stream_info.codecs.startswith("hvc1.")]
        assert [tuple(v.stream_info.resolution) for v in hevc] == [(2560, 1440), (3840, 2160)], master
        run = row["current_run"]
        init = requests.get(f"{base}/v/{vid}/{run}/2160p/init.mp4", timeout=10)
        assert init.status_code == 200 and init.headers["Content-Type"] == "video/mp4"
        assert "immutable" in init.headers["Cache-Control"]
        seg = requests.get(f"{base}/v/{vid}/{run}/2160p/seg_00001.m4s", timeout=10)
        assert seg.status_code == 200 and seg.headers["Content-Type"] == "video/iso.segment"
        # ffprobe reads the whole master over HTTP: the HEVC rungs through their EXT-X-MAP
        probe = subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-of", "json", f"{base}/v/{vid}/master.m3u8"],
                               capture_output=True, text=True, timeout=120, check=True)
        video = sorted((s["codec_name"], s["width"], s["height"]) for s in json.loads(probe.stdout)["streams"]
                       if s["codec_type"] == "video")
        assert ("hevc", 3840, 2160) in video and ("hevc", 2560, 1440) in video and ("h264", 1920, 1080) in video
        check_the_player(base, vid, hevc[-1].stream_info.codecs.split(",")[0])


def check_the_player(base: str, vid: str, hevc_codecs: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch_chromium(p)
        context = browser.new_context(viewport={"width": 1280, "height": 860})
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        fetched: list[str] = []
        page.on("request", lambda r: fetched.append(r.url.split("?")[0]))
        page.goto(f"{base}/watch/{vid}")
        page.evaluate("() => { video.muted = true; video.play(); }")
        page.wait_for_function("() => video.currentTime > 1", timeout=60_000)
        can_hevc = page.evaluate(f"() => MediaSource.isTypeSupported('video/mp4; codecs=\"{hevc_codecs}\"')")
        page.locator("[data-role=quality-button]").click()
        labels = page.locator("#quality-menu [role=menuitemradio] .player-menu-label")
        expected = ((["2160p", "1440p"] if can_hevc else []) + ["1080p", "720p", "480p", "360p"])
        expect(labels).to_have_text([re.compile(r"^Auto"), *expected, "Audio only"])
        # ask for the top quality the menu offers, and play on: what is fetched stays decodable
        page.locator("#quality-menu [role=menuitemradio]", has_text=expected[0]).click()
        page.wait_for_function("() => video.currentTime > 3", timeout=60_000)
        got = {m["rendition"] for u in fetched if (m := SEGMENT.search(u)) and m["vid"] == vid}
        assert expected[0] in got, got
        if not can_hevc:
            assert not got & {"1440p", "2160p"}, got
        # audio only: the menu now comes from the API's renditions, filtered the same way
        page.locator("[data-role=quality-button]").click()
        page.locator("#quality-menu [role=menuitemradio][data-value=audio]").click()
        page.wait_for_function("() => document.getElementById('player').classList.contains('audio-only')")
        page.locator("[data-role=quality-button]").click()
        expect(labels).to_have_text([re.compile(r"^Auto"), *expected, "Audio only"])
        assert errors == []
        context.close()
        browser.close()


def test_a_chunk_with_other_stream_headers_fails_its_hevc_rung_and_keeps_what_was_published():
    """One EXT-X-MAP serves a rung only while every chunk's init segment is the first's: the
    flow fails the rung at the first chunk whose digest differs (the encode task reports it)."""
    from catalog.db import session_scope
    from catalog.models import Rendition, RenditionStatus
    from config import storage
    from flows.publish import Publisher
    from sqlalchemy import select
    from tests.player_support import create_video

    vid = create_video("headers", duration=12.0)
    hls = storage.url_for("hls", vid, "r1")
    rung = {"name": "2160p", "width": 3840, "height": 2160, "maxrate": 16_250_000, "bufsize": 25_000_000,
            "crf": 28, "profile": "main", "level": "5.0", "preset": "veryfast", "codec": "hevc"}
    plan = {"segment_times": [0.0, 6.0], "duration": 12.0, "frames": 60, "segment_starts": [0, 30],
            "chunks": [{"index": 0, "start": 0.0, "end": 6.0, "first_segment": 0, "segment_frames": [30]},
                       {"index": 1, "start": 6.0, "end": 12.0, "first_segment": 1, "segment_frames": [30]}]}
    pub = Publisher(vid, "r1", hls, [rung], plan, [], 5.0, make_current=True)

    def result(index: int, digest: str) -> dict:
        return {"index": index, "rungs": {"2160p": {"ok": True, "reasons": [], "frames": [30], "sizes": [90_000],
                                                     "level": 150, "init": digest, "codecs": "hvc1.1.6.L150.90"}}}

    pub.chunk_done(0, result(0, "a" * 64))
    text = storage.read_text(storage.join(hls, "2160p", "index.m3u8"))
    assert '#EXT-X-MAP:URI="init.mp4"' in text and "#EXT-X-VERSION:6" in text and "seg_00000.m4s" in text
    with session_scope() as s:
        row = s.scalars(select(Rendition).where(Rendition.video_id == vid, Rendition.name == "2160p")).one()
        assert row.status == RenditionStatus.GROWING and row.codecs == "hvc1.1.6.L150.90"
    pub.chunk_done(1, result(1, "b" * 64))
    failed = pub.state["2160p"].failed
    assert failed and failed.startswith("chunk 2/2 (6.000-12.000 s)") and "init segment" in failed, failed
    # the viewer keeps the first chunk: nothing of the second was listed
    assert "seg_00001.m4s" not in storage.read_text(storage.join(hls, "2160p", "index.m3u8"))


def test_split_fmp4_refuses_a_file_that_is_not_a_whole_fragmented_mp4(tmp_path):
    from tasks.ffmpeg import split_fmp4

    seg = tmp_path / "seg_00000.m4s"
    seg.write_bytes(b"\x00\x00\x00\x10moof" + b"\x00" * 8)
    try:
        split_fmp4([seg], tmp_path / "init.mp4")
    except ValueError as exc:
        assert "does not open with ftyp and moov" in str(exc)
    else:
        raise AssertionError("a segment without its init was accepted")
    assert not (tmp_path / "init.mp4").exists()


def test_a_deep_colour_source_keeps_ten_bits_in_its_hevc_rung(tmp_path):
    """Main10 for a source of more than 8 bits: the chunk encode writes 10-bit HEVC segments
    that pass the chunk check (profile, pixel format, frames per segment) and declare
    `hvc1.2.4` (Main10) in their init segment. Small pictures: only the encoder's profile and
    depth are under test; the ladder sends 4K sources here (test_ladder)."""
    from tasks import ffmpeg
    from tasks.encode import _check_rung_dir, build_encode_command
    from tasks.package import segment_pattern

    src = tmp_path / "deep.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=10:duration=4",
                    "-pix_fmt", "yuv420p10le", "-c:v", "libx265", "-x265-params", "log-level=error", str(src)],
                   check=True)
    rung = {"name": "360p", "width": 640, "height": 360, "maxrate": 1_000_000, "bufsize": 2_000_000, "crf": 28,
            "profile": "main10", "level": "3.1", "preset": "veryfast", "codec": "hevc"}
    chunk = {"index": 0, "half_frame": 0.05, "source_start": 0.0, "source_end": 4.0, "key_pts": 0.0, "start": 0.0,
             "end": 4.0, "segment_frames": [20, 20], "first_segment": 0, "frames": 40}
    out = tmp_path / "360p"
    out.mkdir()
    ffmpeg.run(build_encode_command(chunk, str(src), [rung], [str(out / segment_pattern(rung))], rotation=0,
                                    cfr=True, frame_rate="10/1", keyframe_seconds=2.0, threads=1, offset=0.0,
                                    seek=True), timeout=120, what="encode")
    check = _check_rung_dir(out, rung, chunk, 60)
    assert check["ok"], check
    assert check["frames"] == [20, 20] and check["codecs"].startswith("hvc1.2.4.L93"), check
    assert sorted(p.name for p in out.iterdir()) == ["init.mp4", "seg_00000.m4s", "seg_00001.m4s"]
