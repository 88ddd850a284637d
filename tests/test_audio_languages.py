"""Every audio language of a source, end to end with real parts: a generated MKV with three audio
streams (English, French with a title, an English commentary; each its own tone), a SubRip
stream and chapters goes through the ingest flow on the Dask cluster; the master lists one AUDIO
group with NAME, LANGUAGE, DEFAULT, AUTOSELECT; each rendition carries its own stream's sound
(the tone is measured); Chromium's audio menu switches language, the segments it fetches
change rendition, and the choice is remembered, in audio-only mode too."""

from __future__ import annotations

import array
import json
import os
import re
import subprocess
from pathlib import Path

import m3u8
import pytest
import requests
from playwright.sync_api import expect

from tests.player_support import launch_chromium, server_env
from tests.servers import vodflow_web
from tests.transcode_support import (  # noqa: F401 - fixtures
    add_video,
    dask_cluster,
    ingest_env,
    local,
    run_ingest,
    video_row,
)

DURATION = 12.0
# stream order in the source, with the tone each one carries
TRACKS = [
    {"tone": 440, "lang": "eng", "title": None, "disposition": "default"},
    {"tone": 880, "lang": "fre", "title": "Français", "disposition": "0"},
    {"tone": 1760, "lang": "eng", "title": None, "disposition": "comment"},
]
SEGMENT = re.compile(r"/v/(?P<vid>[^/]+)/[^/]+/(?P<rendition>[^/]+)/seg_\d+\.ts$")


def make_source(workdir: Path) -> Path:
    (workdir / "en.srt").write_text("1\n00:00:01,000 --> 00:00:03,000\nHello\n")
    (workdir / "chapters.txt").write_text(
        ";FFMETADATA1\n[CHAPTER]\nTIMEBASE=1/1000\nSTART=0\nEND=6000\ntitle=One\n"
        "[CHAPTER]\nTIMEBASE=1/1000\nSTART=6000\nEND=12000\ntitle=Two\n")
    out = workdir / "languages.mkv"
    cmd = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size=640x360:rate=25:duration={DURATION}"]
    for t in TRACKS:
        cmd += ["-f", "lavfi", "-i", f"sine=frequency={t['tone']}:sample_rate=48000:duration={DURATION}"]
    n = len(TRACKS)
    cmd += ["-i", str(workdir / "en.srt"), "-f", "ffmetadata", "-i", str(workdir / "chapters.txt")]
    cmd += ["-map", "0:v"] + [x for i in range(n) for x in ("-map", f"{i + 1}:a")] + ["-map", f"{n + 1}:s"]
    cmd += ["-map_chapters", str(n + 2), "-c:v", "libx264", "-preset", "ultrafast", "-g", "50",
            "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "96k", "-c:s", "srt", "-metadata:s:s:0", "language=eng"]
    for i, t in enumerate(TRACKS):
        cmd += [f"-metadata:s:a:{i}", f"language={t['lang']}", f"-disposition:a:{i}", t["disposition"]]
        if t["title"]:
            cmd += [f"-metadata:s:a:{i}", f"title={t['title']}"]
    subprocess.run(cmd + [str(out)], check=True)
    return out


def tone_of(segment: Path) -> float:
    """The frequency of a pure tone in an audio segment: zero crossings of its decoded samples."""
    pcm = subprocess.run(["ffmpeg", "-v", "error", "-i", str(segment), "-map", "0:a:0", "-ac", "1", "-ar", "48000",
                          "-f", "s16le", "-"], capture_output=True, check=True).stdout
    samples = array.array("h", pcm)
    crossings = sum(1 for a, b in zip(samples, samples[1:]) if (a < 0) != (b < 0))
    return crossings / 2 / (len(samples) / 48000)


def test_the_probe_lists_each_audio_stream_main_first_and_what_it_leaves_out():
    from tasks.audio import audio_renditions, skipped_note
    from tasks.probe import audio_tracks_of

    streams = [
        {"index": 0, "codec_type": "video"},
        {"index": 1, "codec_type": "audio", "codec_name": "ac3", "sample_rate": "48000", "channels": 6,
         "tags": {"language": "fre"}, "disposition": {"default": 0}},
        {"index": 2, "codec_type": "audio", "codec_name": "aac", "sample_rate": "44100", "channels": 2,
         "tags": {"LANGUAGE": "eng", "title": "Director"}, "disposition": {"default": 1, "comment": 1}},
        {"index": 3, "codec_type": "audio", "codec_name": "opus", "sample_rate": "48000", "channels": 2,
         "tags": {"language": "spa"}, "disposition": {"default": 1}},
        {"index": 4, "codec_type": "audio", "codec_name": "aac", "sample_rate": "48000", "channels": 2,
         "tags": {"language": "eng"}, "disposition": {"visual_impaired": 1}},
        # what ffprobe says of a stream whose codec ffmpeg does not know (a stream it cannot decode)
        {"index": 5, "codec_type": "audio", "tags": {"language": "deu"}},
    ]
    tracks, skipped = audio_tracks_of(streams)
    # the main track: flagged default and not a commentary; then the source's order
    assert [t["index"] for t in tracks] == [3, 1, 2, 4]
    assert [t["role"] for t in tracks] == ["main", "main", "commentary", "description"]
    rends = audio_renditions(tracks)
    # labels: the title, else the language named in itself, with the role; unique in the group
    assert [(r["name"], r["language"], r["label"], r["default"]) for r in rends] == [
        ("audio", "es", "Español", True), ("audio-2", "fr", "Français", False),
        ("audio-3", "en", "Director", False), ("audio-4", "en", "English (description)", False)]
    assert rends[3]["characteristics"] == "public.accessibility.describes-video"
    assert rends[1]["channels"] == 6  # downmixed by the encode
    assert [s["index"] for s in skipped] == [5]
    assert skipped_note(skipped[0]) == "audio stream #5 (unknown, deu) left out: ffmpeg has no decoder for this audio codec"
    # two untitled tracks of one language still get names a viewer (and a saved choice) tells apart
    twins = audio_renditions([{"index": 1, "language": "eng", "role": "main"}, {"index": 2, "language": "eng"}])
    assert [r["label"] for r in twins] == ["English", "English (2)"]


def test_the_master_follows_rfc_8216_for_the_audio_group():
    """DEFAULT=YES implies AUTOSELECT=YES; a commentary, or a track a client could not tell from
    an earlier one (same LANGUAGE and CHARACTERISTICS), is not AUTOSELECT; NAME is unique."""
    from types import SimpleNamespace

    from streaming_app.delivery.master import audio_media

    def row(name, label, language, role="main", characteristics=None):
        return SimpleNamespace(run="r1", name=name, label=label, language=language, role=role,
                               characteristics=characteristics)

    lines = audio_media([row("audio", "English (commentary)", "en", "commentary"), row("audio-2", "English", "en"),
                         row("audio-3", "English", "en"), row("audio-4", "English (description)", "en", "description",
                                                              "public.accessibility.describes-video"),
                         row("audio-5", "", "und")])
    attrs = [dict(a.split("=", 1) for a in re.findall(r'[A-Z-]+=(?:"[^"]*"|[^,]*)', line)) for line in lines]
    assert [(a["NAME"], a.get("LANGUAGE"), a["DEFAULT"], a["AUTOSELECT"]) for a in attrs] == [
        ('"English (commentary)"', '"en"', "YES", "YES"), ('"English"', '"en"', "NO", "NO"),
        ('"English (2)"', '"en"', "NO", "NO"), ('"English (description)"', '"en"', "NO", "YES"),
        ('"Audio 5"', None, "NO", "YES")]
    assert attrs[3]["CHARACTERISTICS"] == '"public.accessibility.describes-video"'


def test_every_audio_language_is_a_rendition_the_player_switches_and_remembers(ingest_env, tmp_path):
    source = make_source(tmp_path)
    vid = add_video(source, title="languages")
    result, exc = run_ingest(vid)
    assert exc is None, f"{exc} / {video_row(vid)}"
    row = video_row(vid)
    assert row["status"] == "READY", row
    audio = {r["name"]: r for r in row["renditions"] if r["name"].startswith("audio")}
    assert sorted(audio) == ["audio", "audio-2", "audio-3"] and all(r["status"] == "READY" for r in audio.values())

    # each rendition carries its own stream's sound, all on the video's segment grid
    video = next(r for r in row["renditions"] if not r["name"].startswith("audio"))
    v_count = len(m3u8.loads(local(video["playlist_url"]).read_text()).segments)
    for name, t in zip(("audio", "audio-2", "audio-3"), TRACKS):
        playlist = local(audio[name]["playlist_url"])
        segments = m3u8.loads(playlist.read_text()).segments
        assert len(segments) == v_count, name
        assert tone_of(playlist.parent / segments[1].uri) == pytest.approx(t["tone"], rel=0.02), name

    with vodflow_web(server_env(Path(os.environ["VODFLOW_DATA_DIR"])), tmp_path / "web.log", workers=1) as base:
        master = requests.get(f"{base}/v/{vid}/master.m3u8", timeout=10).text
        run = row["current_run"]
        assert [line for line in master.splitlines() if line.startswith("#EXT-X-MEDIA:TYPE=AUDIO")] == [
            f'#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="aud",NAME="English",LANGUAGE="en",DEFAULT=YES,AUTOSELECT=YES,'
            f'CHANNELS="2",URI="{run}/audio/index.m3u8"',
            f'#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="aud",NAME="Français",LANGUAGE="fr",DEFAULT=NO,AUTOSELECT=YES,'
            f'CHANNELS="2",URI="{run}/audio-2/index.m3u8"',
            f'#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="aud",NAME="English (commentary)",LANGUAGE="en",DEFAULT=NO,'
            f'AUTOSELECT=NO,CHANNELS="2",URI="{run}/audio-3/index.m3u8"']
        assert all('AUDIO="aud"' in line for line in master.splitlines() if line.startswith("#EXT-X-STREAM-INF"))
        # the source's subtitle stream and chapters came along
        assert 'TYPE=SUBTITLES' in master and 'LANGUAGE="en"' in master
        api = requests.get(f"{base}/api/videos/{vid}", timeout=10).json()
        assert [(t["language"], t["label"], t["default"], t["role"]) for t in api["audio_tracks"]] == [
            ("en", "English", True, "main"), ("fr", "Français", False, "main"),
            ("en", "English (commentary)", False, "commentary")]
        assert api["audio"]["name"] == "audio" and len(api["chapters"]) == 2
        # ffprobe reads the master over HTTP and finds the three audio renditions
        probe = subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-of", "json", f"{base}/v/{vid}/master.m3u8"],
                               capture_output=True, text=True, timeout=60, check=True)
        langs = [s.get("tags", {}).get("language") for s in json.loads(probe.stdout)["streams"]
                 if s["codec_type"] == "audio"]
        assert sorted(langs) == ["en", "en", "fr"], langs
        check_the_player(base, vid)


def check_the_player(base: str, vid: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch_chromium(p)
        context = browser.new_context(viewport={"width": 1280, "height": 860}, locale="en-US")
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        fetched: list[str] = []
        page.on("request", lambda r: fetched.append(r.url.split("?")[0]))

        def renditions(since: int) -> list[str]:
            return [m["rendition"] for u in fetched[since:] if (m := SEGMENT.search(u)) and m["vid"] == vid]

        page.goto(f"{base}/watch/{vid}")
        button = page.locator("[data-role=audio-button]")
        expect(button).to_be_enabled(timeout=30_000)
        expect(button).to_have_attribute("aria-label", "Audio: English")
        page.evaluate("() => { video.muted = true; video.play(); }")
        page.wait_for_function("() => video.currentTime > 0.5", timeout=30_000)
        assert "audio" in renditions(0) and "audio-2" not in renditions(0)
        button.click()
        items = page.locator("#audio-menu [role=menuitemradio] .player-menu-label")
        expect(items).to_have_text(["English", "Français", "English (commentary)"])
        mark = len(fetched)
        page.locator("#audio-menu [role=menuitemradio]", has_text="Français").click()
        expect(button).to_have_attribute("aria-label", "Audio: Français")
        page.wait_for_function(f"() => performance.getEntriesByType('resource').some("
                               f"e => e.name.includes('/{vid}/') && e.name.includes('/audio-2/seg_'))", timeout=30_000)
        assert "audio-2" in renditions(mark)
        # remembered: a new visit plays French from the start, and audio only plays French alone
        mark = len(fetched)
        page.reload()
        expect(button).to_have_attribute("aria-label", "Audio: Français", timeout=30_000)
        page.evaluate("() => { video.muted = true; video.play(); }")
        page.wait_for_function("() => video.currentTime > 0.5", timeout=30_000)
        got = renditions(mark)
        assert "audio-2" in got and "audio" not in got, got
        page.locator("[data-role=quality-button]").click()
        mark = len(fetched)
        page.locator("#quality-menu [role=menuitemradio][data-value=audio]").click()
        page.wait_for_function("() => document.getElementById('player').classList.contains('audio-only')")
        page.evaluate("() => { video.currentTime = 6; video.play(); }")
        page.wait_for_function("() => video.currentTime > 6.5", timeout=30_000)
        got = renditions(mark)
        assert got and set(got) == {"audio-2"}, got
        assert errors == []
        context.close()
        browser.close()


def test_a_track_the_audio_task_left_out_is_withdrawn_and_the_rest_plays(tmp_path):
    """What the flow does with an audio result that dropped a track (the task encodes the main
    track alone when the input refuses the set). The refusal itself could not be caused with
    generated media; the result is the task's, the catalog and storage are real."""
    from catalog.db import session_scope
    from catalog.models import Rendition, RenditionStatus
    from config import storage
    from flows.publish import Publisher
    from sqlalchemy import select
    from tasks.audio import audio_renditions
    from tests.player_support import create_video

    vid = create_video("dropped", duration=12.0)
    hls = storage.url_for("hls", vid, "r1")
    audio = audio_renditions([{"index": 1, "language": "eng"}, {"index": 2, "language": "fre"}])
    plan = {"segment_times": [0.0, 6.0], "duration": 12.0, "chunks": [], "frames": 300, "segment_starts": [0, 150]}
    pub = Publisher(vid, "r1", hls, [], plan, audio, 25.0, make_current=True)
    for a in audio:  # both tracks had published their first segment
        storage.write_bytes(storage.join(hls, a["name"], "seg_00000.ts"), b"\x47" * 188)
    pub.audio_progress(1)
    pub.audio_done({"tracks": {"audio": [1000, 1000]}, "segment_sizes": [1000, 1000],
                    "dropped": {"audio-2": "the input refused the set of tracks"}})
    with session_scope() as s:
        rows = {r.name: r for r in s.scalars(select(Rendition).where(Rendition.video_id == vid))}
        assert rows["audio-2"].status == RenditionStatus.FAILED
        assert rows["audio-2"].error == "the input refused the set of tracks"
        assert rows["audio"].status == RenditionStatus.GROWING
    assert not storage.exists(storage.join(hls, "audio-2", "seg_00000.ts"))
    assert [a["name"] for a in pub.audio] == ["audio"] and pub.audio_segments == 2
    assert pub.audio_dropped == {"Français": "the input refused the set of tracks"}
