"""Audio only on the watch page, in headless Chromium against the real app (gunicorn).

Media: a 30 s three-rung ladder whose segments carry no sound and an audio rendition of its
own (`audio/`), as the pipeline publishes them, made by one ffmpeg command at test time. What
the player fetches is read from the page's own requests: after "Audio only" is chosen no video
segment may be asked for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.player_support import (
    catalog_at,
    create_video,
    encode_ladder,
    grow,
    launch_chromium,
    publish,
    server_env,
    wait_for_events,
)
from tests.servers import vodflow_web

pytestmark = pytest.mark.browser
DURATION = 30.0
SEGMENT = re.compile(r"/v/(?P<vid>[^/]+)/[^/]+/(?P<rendition>[^/]+)/seg_\d+\.ts$")


@dataclass
class Site:
    base: str
    data: Path
    ladder: Path
    main: str
    silent: str


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio-only")
    data, ladder = root / "var", root / "ladder"
    encode_ladder(ladder, duration=DURATION, audio_rendition=True)
    with catalog_at(data):
        main = create_video("With sound", duration=DURATION)
        publish(main, ladder)
        # the same pictures published without the audio rendition: a source with no sound
        silent = create_video("Silent", duration=DURATION)
        publish(silent, ladder, audio=False, thumbnails=False)
    with vodflow_web(server_env(data), root / "gunicorn.log") as base:
        yield Site(base=base, data=data, ladder=ladder, main=main, silent=silent)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch_chromium(p)
        yield b
        b.close()


class Requests:
    """Every URL the page asks for, in order; `since(mark)` the ones after a mark."""

    def __init__(self, page):
        self.urls: list[str] = []
        page.on("request", lambda r: self.urls.append(r.url))

    def mark(self) -> int:
        return len(self.urls)

    def segments(self, video_id: str, since: int = 0) -> list[str]:
        """Names of the renditions of each segment of `video_id` asked for ("480p", "audio")."""
        out = []
        for url in self.urls[since:]:
            m = SEGMENT.search(url.split("?")[0])
            if m and m["vid"] == video_id:
                out.append(m["rendition"])
        return out

    def video_segments(self, video_id: str, since: int = 0) -> list[str]:
        return [r for r in self.segments(video_id, since) if r != "audio"]


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.requests = Requests(pg)
    yield pg
    context.close()
    assert not errors, f"script errors on the page: {errors}"


def open_watch(page, site, video_id, timeout=20_000):
    page.goto(f"{site.base}/watch/{video_id}")
    page.wait_for_selector("#player[data-startup-ms]", state="attached", timeout=timeout)


def now(page) -> float:
    return page.evaluate("() => video.currentTime")


def watch_resumes(page) -> None:
    """Record where playback resumes (each `playing`, and each `loadeddata` while paused)."""
    page.evaluate("""() => { window.__resumed = [];
        video.addEventListener('playing', () => __resumed.push(video.currentTime));
        video.addEventListener('loadeddata', () => { if (video.paused) __resumed.push(video.currentTime); }); }""")


def menu_items(page) -> list[tuple[str, str, str]]:
    return page.eval_on_selector_all(
        "#quality-menu [role=menuitemradio]",
        "els => els.map(e => [e.dataset.value, e.innerText.replace(/\\s+/g, ' ').trim(), e.getAttribute('aria-checked')])")


def choose_quality(page, value: str) -> None:
    """Open the quality menu with the keyboard and pick the item `value` (arrow keys, Enter)."""
    page.focus("[data-role=quality-button]")
    page.keyboard.press("Enter")
    page.wait_for_selector("#quality-menu:not([hidden])")
    page.keyboard.press("Home")
    for _ in range(10):
        if page.evaluate("() => document.activeElement.dataset.value") == value:
            break
        page.keyboard.press("ArrowDown")
    else:
        pytest.fail(f"no quality menu item {value!r}: {menu_items(page)}")
    page.keyboard.press("Enter")
    expect(page.locator("#quality-menu")).to_be_hidden()


def expect_poster_shown(page, image: bool = True) -> None:
    """The poster panel covers the player; with `image`, the poster picture is loaded in it."""
    panel = page.locator("[data-role=audio-poster]")
    expect(panel).to_be_visible()
    box, player = panel.bounding_box(), page.locator("#player").bounding_box()
    assert box["width"] == pytest.approx(player["width"], abs=1) and box["height"] == pytest.approx(player["height"], abs=1)
    img = page.locator("[data-role=audio-poster-image]")
    if image:
        expect(img).to_be_visible()
        expect(img).to_have_attribute("src", re.compile(r"/poster\.jpg$"))
        page.wait_for_function("() => { const i = document.querySelector('[data-role=audio-poster-image]');"
                               " return i.complete && i.naturalWidth > 0; }", timeout=10_000)
    else:
        expect(img).to_be_hidden()


def test_audio_only_loads_no_video_keeps_the_place_and_is_remembered(page, site, artifacts_dir):
    reqs = page.requests
    open_watch(page, site, site.main)
    page.wait_for_function("() => video.currentTime > 2 && video.videoHeight > 0", timeout=30_000)
    assert reqs.video_segments(site.main), "the video plays from its video renditions"
    expect(page.locator("[data-role=audio-poster]")).to_be_hidden()

    page.click("[data-role=quality-button]")
    page.wait_for_selector("#quality-menu:not([hidden])")
    items = menu_items(page)
    assert [i[1].split(" ")[0] for i in items] == ["Auto", "480p", "360p", "240p", "Audio"], items
    assert items[-1][0] == "audio" and items[-1][2] == "false"
    assert items[-1][1].startswith("Audio only") and items[-1][1].endswith("kb/s"), "with its bit rate"
    page.keyboard.press("Escape")

    # playing: the switch keeps the place and goes on playing, with audio segments alone
    watch_resumes(page)
    mark = reqs.mark()
    before = now(page)
    choose_quality(page, "audio")
    page.wait_for_function(f"() => vodflowPlayer.audioOnly && !video.paused && video.currentTime > {before + 2}",
                           timeout=30_000)
    resumed = page.evaluate("() => __resumed[0]")
    assert abs(resumed - before) < 1.0, f"was at {before:.2f} s, resumed at {resumed:.2f} s"
    assert reqs.video_segments(site.main, mark) == [], "no video segment after choosing audio only"
    assert "audio" in reqs.segments(site.main, mark)
    assert any(u.endswith("/audio/index.m3u8") for u in reqs.urls[mark:])
    # the picture is not decoded any more, and the poster stands in for it
    decoded = page.evaluate("() => video.getVideoPlaybackQuality().totalVideoFrames")
    at = now(page)
    page.wait_for_function(f"() => video.currentTime > {at + 1}", timeout=20_000)
    assert page.evaluate("() => video.getVideoPlaybackQuality().totalVideoFrames") == decoded
    assert page.evaluate("() => video.videoHeight") == 0
    expect_poster_shown(page)
    expect(page.locator("[data-role=quality-button]")).to_have_text("Audio only")
    expect(page.locator("[data-role=quality-button]")).to_have_attribute("aria-label", "Quality: audio only")
    assert page.get_attribute("#quality-menu [data-value=audio]", "aria-checked") == "true"
    assert page.evaluate("() => document.activeElement.dataset.role") == "quality-button", "focus returns to the button"
    assert page.evaluate("() => localStorage.getItem('vodflow.audioOnly')") == "1"
    page.mouse.move(640, 300)  # the controls come back
    page.wait_for_function("() => getComputedStyle(document.querySelector('.player-controls')).opacity === '1'")
    page.screenshot(path=str(artifacts_dir / "watch-audio-only.png"))

    # the next visit starts in audio only: neither the master nor any video segment is loaded
    mark = reqs.mark()
    page.reload()
    page.wait_for_selector("#player[data-startup-ms]", state="attached", timeout=20_000)
    page.wait_for_function("() => video.currentTime > 3 && !video.paused", timeout=30_000)
    assert reqs.video_segments(site.main, mark) == []
    assert "audio" in reqs.segments(site.main, mark)
    assert not [u for u in reqs.urls[mark:] if u.endswith("/master.m3u8")]
    expect_poster_shown(page)
    expect(page.locator("[data-role=quality-button]")).to_have_text("Audio only")
    session_id = page.evaluate("() => vodflowPlayer.analytics.sessionId")

    # paused, back to Auto: video segments again, the same place, still paused
    page.click("[data-role=play]")
    page.wait_for_function("() => video.paused")
    watch_resumes(page)
    before = now(page)
    mark = reqs.mark()
    choose_quality(page, "-1")
    page.wait_for_function("() => !vodflowPlayer.audioOnly && video.readyState >= 2 && __resumed.length > 0",
                           timeout=30_000)
    assert reqs.video_segments(site.main, mark), "video segments are loaded again"
    assert page.evaluate("() => video.paused"), "a paused video stays paused"
    assert abs(now(page) - before) < 0.5, (before, now(page))
    expect(page.locator("[data-role=audio-poster]")).to_be_hidden()
    assert page.evaluate("() => localStorage.getItem('vodflow.audioOnly')") == "0"
    page.click("[data-role=play]")
    page.wait_for_function(f"() => video.videoHeight > 0 && video.currentTime > {before + 1}", timeout=30_000)
    expect(page.locator("[data-role=quality-button]")).to_have_text(re.compile(r"^Auto \((240|360|480)p\)$"))

    # the analytics saw audio as a rendition of its own, and nothing went wrong
    page.close(run_before_unload=True)
    events = wait_for_events(site.data, session_id, lambda evs: any(e["type"] == "session_end" for e in evs),
                             "the session's last beacon")
    first = next(e["data"] for e in events if e["type"] == "first_frame")
    assert first["rendition"] == "audio"
    switches = [(s["data"].get("from"), s["data"]["to"], s["data"]["mode"]) for s in events
                if s["type"] == "rendition_switch"]
    assert switches[0] == (None, "audio", "manual"), switches
    back = [s for s in switches if s[0] == "audio"]
    assert back and back[0][1] in ("240p", "360p", "480p") and back[0][2] == "auto", switches
    # hls.js 1.7 warns (non-fatal bufferAppendNoProgress) when the first video fragment of a
    # master with an audio group is appended before the audio SourceBuffer exists: on every
    # start of such a master, audio only or not; anything else is an error of this mode
    errors = [e["data"] for e in events if e["type"] == "error"
              and (e["data"]["fatal"] or e["data"]["details"] != "bufferAppendNoProgress")]
    assert errors == []
    assert not [e for e in events if e["type"] == "seek"], "the switch is not a seek"
    end = next(e["data"] for e in events if e["type"] == "session_end")
    assert end["rendition_time"].get("audio", 0) > 1.0, end


def test_a_video_without_sound_offers_no_audio_only(page, site):
    # even with audio only saved from an earlier visit
    page.add_init_script("localStorage.setItem('vodflow.audioOnly', '1')")
    open_watch(page, site, site.silent)
    page.wait_for_function("() => video.videoHeight > 0 && video.currentTime > 0.5", timeout=30_000)
    assert page.evaluate("() => vodflowPlayer.audioOnly") is False
    expect(page.locator("[data-role=audio-poster]")).to_be_hidden()
    page.click("[data-role=quality-button]")
    page.wait_for_selector("#quality-menu:not([hidden])")
    values = [i[0] for i in menu_items(page)]
    assert "audio" not in values and values[0] == "-1" and len(values) == 4, values
    assert "Audio only" not in page.inner_text("#quality-menu")


def test_audio_only_while_the_video_is_still_published(page, site):
    """A video published chunk by chunk: the audio playlist grows with the video's, the player
    plays on past what was published when audio only was chosen, and to the end once READY."""
    with catalog_at(site.data):
        vid = create_video("Growing", duration=DURATION, progress=30, stage="encoding")
        publish(vid, site.ladder, status="PROCESSING", thumbnails=False)
    grow(site.data, vid, site.ladder, 2)  # 12 s of 30
    reqs = page.requests
    open_watch(page, site, vid)
    page.wait_for_function("() => video.currentTime > 1 && video.videoHeight > 0", timeout=30_000)
    assert page.evaluate("() => vodflowPlayer.availableSeconds") == pytest.approx(12.0, abs=0.2)

    mark = reqs.mark()
    choose_quality(page, "audio")
    page.wait_for_function("() => vodflowPlayer.audioOnly && !video.paused && video.readyState >= 3", timeout=30_000)
    expect_poster_shown(page, image=False)  # no poster is made before the last chunk
    page.evaluate("() => { video.playbackRate = 2; }")

    grow(site.data, vid, site.ladder, 4)  # 24 s: the audio playlist is reloaded as it grows
    page.wait_for_function("() => video.currentTime > 14", timeout=60_000)
    grow(site.data, vid, site.ladder, None)  # finished: READY
    page.wait_for_function("() => vodflowPlayer.status === 'READY' && vodflowPlayer.availableSeconds === null",
                           timeout=30_000)
    page.wait_for_function("() => video.ended || video.currentTime > 25", timeout=60_000)
    got = reqs.segments(vid, mark)
    assert [r for r in got if r != "audio"] == [], "no video segment while audio only"
    assert got.count("audio") >= 4, got
    expect(page.locator("[data-role=audio-poster]")).to_be_visible()
