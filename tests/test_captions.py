"""Captions and chapters with real parts: bad files cleaned or refused; a generated MKV with two
SubRip streams and chapters through `import_source_captions`; the API over the production web
server; the master's SUBTITLES group read by ffprobe over HTTP; the watch page in Chromium (CC
menu, cue shown at its time, choice remembered, chapters, markup shown as text)."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from playwright.sync_api import expect

from tests.media import ffprobe_json
from tests.player_support import TestRung as Rung, catalog_at, create_video, encode_ladder, launch_chromium, publish
from tests.servers import vodflow_web

TOKEN = "captions-admin-token"
DURATION = 12.0
RUNGS = (Rung("240p", 426, 240, 250),)

SRT_EN = """1
00:00:01,000 --> 00:00:02,000
One second

2
00:00:05,000 --> 00:00:06,500
Five seconds

3
00:00:09,000 --> 00:00:10,000
Nine seconds
"""

# cp1252, markup, a script, an inverted and a negative cue, cues out of order
SRT_MESSY = ("1\r\n00:00:05,000 --> 00:00:07,000\r\n<b onclick=\"window.pwned=1\">Caf\u00e9</b> "
             "<script>window.pwned=1</script>&lt;tag&gt;\r\n\r\n"
             "2\r\n00:00:04,000 --> 00:00:03,000\r\ninverted\r\n\r\n"
             "3\r\n-00:00:01,000 --> 00:00:02,000\r\nnegative\r\n\r\n"
             "4\r\n00:00:01,000 --> 00:00:02,000\r\n<i>first</i>\r\n").encode("cp1252")


def ladder_pts(segment: Path) -> int:
    """The first video frame's 90 kHz PTS in a published TS segment, as ffprobe reads it."""
    data = ffprobe_json(str(segment), "-select_streams", "v:0", "-show_entries", "packet=pts", "-show_packets")
    return min(int(p["pts"]) for p in data["packets"])


# ---------------------------------------------------------------- cleaning, no server

def test_a_messy_srt_is_cleaned_and_the_report_says_what_changed():
    from tasks.captions import read_caption_file, whole_vtt

    r = read_caption_file(SRT_MESSY, duration=DURATION)
    assert [(c.start, c.end, c.text) for c in r.cues] == [(1.0, 2.0, "first"), (5.0, 7.0, "Café <tag>")]
    assert r.encoding == "cp1252"
    assert [d["reason"] for d in r.dropped] == ["ends (3.000 s) before it starts (4.000 s)", "negative time"]
    assert [d["line"] for d in r.dropped] == [6, 10]  # the timing lines
    changes = " | ".join(r.changes)
    assert "Windows-1252" in changes and "put in time order" in changes and "markup" in changes
    assert "Café &lt;tag&gt;" in whole_vtt(r.cues) and "<b" not in whole_vtt(r.cues)


@pytest.mark.parametrize("data, says", [
    (b"\x00W\x00E\x00B", "UTF-16 without a byte order mark"),
    (b"just some words\n", "neither SRT nor WebVTT"),
    ("WEBVTT\n\n00:01.000 --> 00:02.000\nCaf\u00e9\n".encode("latin-1"), "WebVTT files must be UTF-8"),
    (b"1\n00:00:03,000 --> 00:00:01,000\nx\n", "no usable cue in the file (line 2: ends"),
])
def test_unusable_files_are_refused_with_the_reason(data, says):
    from tasks.captions import CaptionError, read_caption_file

    with pytest.raises(CaptionError) as err:
        read_caption_file(data)
    assert says in str(err.value)


def test_utf16_with_bom_and_overlaps_are_accepted():
    from tasks.captions import read_caption_file

    text = "WEBVTT\n\n00:01.000 --> 00:04.000\nA\n\n00:02.000 --> 00:03.000\n<v Bob>B</v>\n"
    r = read_caption_file(text.encode("utf-16"))  # Python writes the byte order mark first
    assert [c.text for c in r.cues] == ["A", "B"] and r.encoding == "utf-16"
    assert any("overlap" in c for c in r.changes)


def test_segments_repeat_a_cue_that_spans_a_boundary_and_carry_the_timestamp_map():
    from tasks.captions import Cue, segment_vtt

    segments, playlist = segment_vtt([Cue(5.0, 7.0, "across")], duration=12.0, segment_seconds=6.0, mpegts=132000)
    assert len(segments) == 2 and all("across" in s for s in segments)
    assert all(s.startswith("WEBVTT\nX-TIMESTAMP-MAP=MPEGTS:132000,LOCAL:00:00:00.000\n") for s in segments)
    assert playlist.count("#EXTINF:6.000000,") == 2 and playlist.rstrip().endswith("#EXT-X-ENDLIST")


# ---------------------------------------------------------------- from a source file

def make_source(workdir: Path, video: Path) -> Path:
    """An MKV of the ladder's source with two SubRip streams (English, French; tagged) and three
    chapters in its container."""
    (workdir / "en.srt").write_text(SRT_EN)
    (workdir / "fr.srt").write_text("1\n00:00:02,000 --> 00:00:03,000\n<i>Deux</i> secondes\n")
    (workdir / "chapters.txt").write_text(
        ";FFMETADATA1\n" + "".join(f"[CHAPTER]\nTIMEBASE=1/1000\nSTART={s}\nEND={e}\ntitle={t}\n"
                                   for s, e, t in ((0, 4000, "Opening"), (4000, 8000, "Middle & more"),
                                                   (8000, 12000, "End"))))
    out = workdir / "source.mkv"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(video), "-i", str(workdir / "en.srt"),
                    "-i", str(workdir / "fr.srt"), "-f", "ffmetadata", "-i", str(workdir / "chapters.txt"),
                    "-map", "0", "-map", "1", "-map", "2", "-map_chapters", "3", "-c", "copy", "-c:s", "srt",
                    "-metadata:s:s:0", "language=eng", "-metadata:s:s:0", "title=English",
                    "-metadata:s:s:1", "language=fre", "-disposition:s:0", "0", "-disposition:s:1", "0",
                    str(out)], check=True)
    return out


def test_import_source_captions_extracts_text_streams_and_chapters(tmp_path):
    from catalog.db import session_scope
    from catalog.models import Video
    from config import storage
    from flows.captions import import_source_captions, list_captions

    ladder = tmp_path / "ladder"
    encode_ladder(ladder, duration=DURATION, rungs=RUNGS)
    source = make_source(tmp_path, ladder / "source.mp4")
    vid = create_video("with subtitles", duration=DURATION)
    publish(vid, ladder, rungs=RUNGS, thumbnails=False)
    source_url = storage.url_for("sources", vid, "source.mkv")
    storage.put_file(source, source_url)

    result = import_source_captions(vid, source_url, None)
    got = {(c["language"], c["label"], c["cues"], c["source"]) for c in result["captions"]}
    assert got == {("en", "English", 3, "source"), ("fr", "fr", 1, "source")}
    assert result["chapters"] == 3 and result["skipped"] == []
    with session_scope() as s:
        v = s.get(Video, vid)
        # times count from the first video frame (here 21 ms after the container's zero: the remux
        # shifted the streams by the AAC priming, not the chapters)
        assert [(round(c["start"], 1), c["title"]) for c in v.chapters] == [
            (0.0, "Opening"), (4.0, "Middle & more"), (8.0, "End")]
        chapters_text = storage.read_text(v.chapters_url)
    assert "\nMiddle &amp; more\n" in chapters_text and chapters_text.count(" --> ") == 3
    # the segments are timed to the first video frame of the published segments, measured
    pts = ladder_pts(ladder / "240p" / "seg_00000.ts")
    english = next(c for c in list_captions(vid) if c["language"] == "en")
    assert english["playlist"] == f"captions/{english['id']}/t{pts}/index.m3u8"
    seg0 = storage.read_text(storage.url_for("captions", vid, english["id"], f"t{pts}", "seg_00000.vtt"))
    assert seg0.startswith(f"WEBVTT\nX-TIMESTAMP-MAP=MPEGTS:{pts},LOCAL:00:00:00.000\n")
    assert "00:00:05.000 --> 00:00:06.500\nFive seconds" in seg0
    # a reprocess calls it again: nothing is imported twice
    again = import_source_captions(vid, source_url, None)
    assert again["captions"] == [] and len(list_captions(vid)) == 2


def test_a_mov_text_stream_of_an_mp4_is_imported_with_its_language(tmp_path):
    """MP4 carries its subtitles as mov_text (3GPP timed text), not SubRip."""
    from config import storage
    from flows.captions import import_source_captions, list_captions

    ladder = tmp_path / "ladder"
    encode_ladder(ladder, duration=DURATION, rungs=RUNGS)
    (tmp_path / "en.srt").write_text(SRT_EN)
    source = tmp_path / "source.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(ladder / "source.mp4"), "-i", str(tmp_path / "en.srt"),
                    "-map", "0", "-map", "1", "-c", "copy", "-c:s", "mov_text", "-metadata:s:s:0", "language=spa",
                    str(source)], check=True)
    assert [s["codec_name"] for s in ffprobe_json(str(source), "-show_streams")["streams"]
            if s["codec_type"] == "subtitle"] == ["mov_text"]
    vid = create_video("mov_text", duration=DURATION)
    publish(vid, ladder, rungs=RUNGS, thumbnails=False)
    source_url = storage.url_for("sources", vid, "source.mp4")
    storage.put_file(source, source_url)
    result = import_source_captions(vid, source_url, None)
    assert [(c["language"], c["cues"], c["source"]) for c in result["captions"]] == [("es", 3, "source")]
    (caption,) = list_captions(vid)
    seg = storage.read_text(storage.url_for("captions", vid, caption["id"], caption["playlist"].split("/", 2)[2]
                                            .replace("index.m3u8", "seg_00000.vtt")))
    assert "00:00:05.000 --> 00:00:06.500\nFive seconds" in seg


# ---------------------------------------------------------------- API, master, browser

@dataclass
class Site:
    base: str
    vid: str
    bare: str
    pts: int


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("captions")
    data, ladder = root / "var", root / "ladder"
    encode_ladder(ladder, duration=DURATION, rungs=RUNGS)
    with catalog_at(data):
        vid = create_video("Captioned", duration=DURATION)
        publish(vid, ladder, rungs=RUNGS)
        bare = create_video("No captions", duration=DURATION)
        publish(bare, ladder, rungs=RUNGS, thumbnails=False)
    with vodflow_web({"VODFLOW_DATA_DIR": str(data), "VODFLOW_ADMIN_TOKEN": TOKEN},
                      root / "gunicorn.log", workers=1) as base:
        yield Site(base, vid, bare, ladder_pts(ladder / "240p" / "seg_00000.ts"))


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def post(site, data: bytes, name="c.srt", auth=True, **form):
    return requests.post(f"{site.base}/api/videos/{site.vid}/captions", files={"file": (name, data)},
                         data=form, headers=AUTH if auth else {}, timeout=30)


@pytest.fixture(scope="module")
def uploaded(site):
    en = post(site, SRT_EN.encode(), language="en", label="English")
    assert en.status_code == 201, en.text
    messy = post(site, SRT_MESSY, language="de", label="Markup test")
    assert messy.status_code == 201, messy.text
    chapters = requests.put(f"{site.base}/api/videos/{site.vid}/chapters", headers=AUTH, timeout=10,
                            json=[{"start": 0, "title": "Intro"}, {"start": 4, "title": "<b>Second</b> part"},
                                  {"start": 8, "title": "Last"}])
    assert chapters.status_code == 200, chapters.text
    return {"en": en.json(), "messy": messy.json(), "chapters": chapters.json()}


def test_the_api_adds_lists_and_deletes_captions(site, uploaded):
    messy = uploaded["messy"]
    assert messy["cues"] == 2 and len(messy["report"]["dropped"]) == 2
    assert messy["message"].startswith("2 cue(s) kept; 2 dropped; the file is not UTF-8")
    assert messy["playlist"] == f"/v/{site.vid}/captions/{messy['id']}/t{site.pts}/index.m3u8"
    listed = requests.get(f"{site.base}/api/videos/{site.vid}/captions", timeout=10).json()["captions"]
    assert [(c["language"], c["label"]) for c in listed] == [("en", "English"), ("de", "Markup test")]
    seg = requests.get(site.base + messy["playlist"].replace("index.m3u8", "seg_00000.vtt"), timeout=10)
    assert seg.status_code == 200 and seg.headers["Content-Type"].startswith("text/vtt")
    assert "Café &lt;tag&gt;" in seg.text and "<b" not in seg.text and "script" not in seg.text
    # one more, then delete it: gone from the list, the master and storage
    extra = post(site, b"WEBVTT\n\n00:01.000 --> 00:02.000\nbye\n", name="x.vtt", language="es")
    assert extra.status_code == 201
    cid = extra.json()["id"]
    assert requests.delete(f"{site.base}/api/videos/{site.vid}/captions/{cid}", timeout=10).status_code == 401
    assert requests.delete(f"{site.base}/api/videos/{site.vid}/captions/{cid}", headers=AUTH, timeout=10).status_code == 204
    assert requests.delete(f"{site.base}/api/videos/{site.vid}/captions/{cid}", headers=AUTH, timeout=10).status_code == 404
    assert requests.get(site.base + extra.json()["vtt"], timeout=10).status_code == 404
    assert cid not in {c["id"] for c in requests.get(f"{site.base}/api/videos/{site.vid}/captions", timeout=10).json()["captions"]}


@pytest.mark.parametrize("kwargs, status, says", [
    (dict(data=SRT_EN.encode(), language="en", auth=False), 401, "admin token"),
    (dict(data=SRT_EN.encode(), language="english please"), 400, "BCP 47"),
    (dict(data=b"x" * (2 * 1024 * 1024 + 10), language="en"), 413, "bytes"),
    (dict(data=b"not a caption at all", language="en"), 422, "neither SRT nor WebVTT"),
])
def test_bad_caption_requests_get_a_precise_status(site, kwargs, status, says):
    r = post(site, **kwargs)
    assert r.status_code == status and says in r.json()["message"]


@pytest.mark.parametrize("body, says", [
    ([{"start": 5, "title": "a"}, {"start": 2, "title": "b"}], "not after chapter 1"),
    ([{"start": 30, "title": "a"}], "after the end of the video"),
    ([{"start": 0, "title": "<i></i>"}], "title is empty"),
    ({"start": 0}, "JSON list"),
])
def test_bad_chapter_lists_are_refused(site, body, says):
    r = requests.put(f"{site.base}/api/videos/{site.vid}/chapters", json=body, headers=AUTH, timeout=10)
    assert r.status_code == 422 and says in r.json()["message"]


def test_the_master_lists_a_subtitles_group_that_ffprobe_reads(site, uploaded):
    master = requests.get(f"{site.base}/v/{site.vid}/master.m3u8", timeout=10).text
    en = uploaded["en"]
    assert (f'#EXT-X-MEDIA:TYPE=SUBTITLES,GROUP-ID="subs",NAME="English",LANGUAGE="en",DEFAULT=NO,'
            f'AUTOSELECT=YES,FORCED=NO,URI="captions/{en["id"]}/t{site.pts}/index.m3u8"') in master
    assert all('SUBTITLES="subs"' in line for line in master.splitlines() if line.startswith("#EXT-X-STREAM-INF"))
    bare = requests.get(f"{site.base}/v/{site.bare}/master.m3u8", timeout=10).text
    assert "CLOSED-CAPTIONS=NONE" in bare and "SUBTITLES" not in bare
    # ffprobe (ffmpeg 5.1) reads the master over HTTP: the variant's streams, and it names both
    # caption renditions (its HLS demuxer lists subtitle groups but does not demux them)...
    out = subprocess.run(["ffprobe", "-v", "verbose", "-show_streams", "-of", "json",
                          f"{site.base}/v/{site.vid}/master.m3u8"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert {s["codec_type"] for s in json.loads(out.stdout)["streams"]} == {"video", "audio"}
    for c in (en, uploaded["messy"]):
        assert f"subtitle(uri: captions/{c['id']}/t{site.pts}/index.m3u8)" in out.stderr
    # ...and reads a caption segment as WebVTT
    seg = ffprobe_json(site.base + en["playlist"].replace("index.m3u8", "seg_00000.vtt"), "-show_streams")
    assert [s["codec_name"] for s in seg["streams"]] == ["webvtt"]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch_chromium(p)
        yield b
        b.close()


def test_the_player_shows_chosen_captions_at_their_time_and_remembers(site, uploaded, browser):
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{site.base}/watch/{site.vid}")
    cc = page.locator("[data-role=cc-button]")
    expect(cc).to_be_enabled(timeout=30_000)
    expect(cc).to_have_attribute("aria-label", "Subtitles: off")  # off until the viewer chooses
    cc.click()
    items = page.locator("#cc-menu [role=menuitemradio] .player-menu-label")
    expect(items).to_have_text(["Off", "English", "Markup test"])
    page.locator("#cc-menu [role=menuitemradio]", has_text="English").click()
    expect(cc).to_have_attribute("aria-label", "Subtitles: English")
    captions = page.locator("[data-role=captions]")
    # the cue at 5.0 s starts with the frame at 5.0 s: its media time minus the first frame's
    # the first frame is the one a seek to 0 presents (paused: no later frame can come first)
    first = page.evaluate("""() => new Promise((done, fail) => {
        const v = document.getElementById('video');
        v.pause();
        v.requestVideoFrameCallback((now, meta) => done(meta.mediaTime));
        v.currentTime = 0;
        setTimeout(() => fail(new Error('no frame presented 20 s after a seek to 0')), 20000); })""")
    page.evaluate("() => document.getElementById('video').play()")
    page.wait_for_function("""() => { const t = [...document.getElementById('video').textTracks]
        .find(t => t.mode === 'hidden' && t.cues && t.cues.length >= 3); return !!t; }""", timeout=30_000)
    start = page.evaluate("""() => [...[...document.getElementById('video').textTracks]
        .find(t => t.mode === 'hidden').cues].find(c => c.text.includes('Five')).startTime""")
    assert abs((start - first) - 5.0) < 0.045, (start, first)  # within a frame at 25 fps
    expect(captions).to_have_text("Five seconds", timeout=20_000)
    at = page.evaluate("document.getElementById('video').currentTime")
    # shown once its cue has started (to within a frame: the browser's clock moves between its
    # cue update and this read), and promptly. The cue's own start is the reference: `first` is
    # only known to within the frame the callback caught.
    assert start - 0.045 <= at < start + 1.5, (at, start)
    # remembered after a reload
    page.reload()
    expect(cc).to_have_attribute("aria-label", "Subtitles: English", timeout=30_000)
    page.evaluate("() => { const v = document.getElementById('video'); v.currentTime = 8.8; v.play(); }")
    expect(captions).to_have_text("Nine seconds", timeout=20_000)
    # the markup file: text on screen, never elements, never run
    cc.click()
    page.locator("#cc-menu [role=menuitemradio]", has_text="Markup test").click()
    page.evaluate("() => { const v = document.getElementById('video'); v.currentTime = 5.2; v.play(); }")
    expect(captions).to_have_text("Café <tag>", timeout=20_000)
    assert page.evaluate("document.querySelector('[data-role=captions]').children.length") == 0
    assert page.evaluate("window.pwned === undefined && !document.querySelector('b[onclick]')")
    assert errors == []
    context.close()


def test_the_player_lists_chapters_marks_them_and_names_them_in_the_tooltip(site, uploaded, browser):
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.goto(f"{site.base}/watch/{site.vid}")
    buttons = page.locator("[data-role=chapter-list] button")
    expect(buttons).to_have_text(["0:00 Intro", "0:04 Second part", "0:08 Last"], timeout=30_000)
    expect(page.locator(".player-chapter-mark")).to_have_count(2, timeout=30_000)
    buttons.nth(2).click()
    page.wait_for_function("document.getElementById('video').currentTime >= 8", timeout=20_000)
    bar = page.locator("[data-role=seek]").bounding_box()
    page.mouse.move(bar["x"] + bar["width"] * 5.0 / DURATION, bar["y"] + bar["height"] / 2)
    expect(page.locator("[data-role=preview-chapter]")).to_have_text("Second part")
    context.close()
