"""The watch page in headless Chromium against the real app (gunicorn) and real HLS output.

One browser and one server for the module; each test gets its own browser context (fresh
storage and cache). Media: a 48 s, three-rung ladder (240p/360p/480p at constant, well
separated bit rates) made by one ffmpeg command, with poster and timeline previews from the
thumbnails task.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from playwright.sync_api import expect

from tests.player_support import (
    DEFAULT_RUNGS,
    catalog_at,
    create_video,
    encode_ladder,
    launch_chromium,
    publish,
    server_env,
    set_progress,
    wait_for_events,
)
from tests.servers import vodflow_web

pytestmark = pytest.mark.browser
DURATION = 48.0


@dataclass
class Site:
    base: str
    data: Path
    ladder: Path
    main: str
    stats: str
    throttle: str
    encoding: str


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("player")
    data, ladder = root / "var", root / "ladder"
    encode_ladder(ladder, duration=DURATION)
    with catalog_at(data):
        ids = {}
        for key, title in (("throttle", "Throttled run"), ("stats", "Analytics run"), ("main", "Test pattern")):
            ids[key] = create_video(title, duration=DURATION)
            publish(ids[key], ladder, thumbnails=key != "throttle")
        ids["encoding"] = create_video("Still encoding", duration=DURATION, progress=40, stage="encoding")
    with vodflow_web(server_env(data), root / "gunicorn.log") as base:
        yield Site(base=base, data=data, ladder=ladder, **ids)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch_chromium(p)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.page_errors = errors
    yield pg
    context.close()
    assert not errors, f"script errors on the page: {errors}"


def open_watch(page, site, video_id, timeout=15_000):
    page.goto(f"{site.base}/watch/{video_id}")
    page.wait_for_selector("#player[data-startup-ms]", state="attached", timeout=timeout)


def frames(page) -> int:
    return page.evaluate("() => document.getElementById('video').getVideoPlaybackQuality().totalVideoFrames")


def wait_for_frames(page, at_least: int, also: str = "true", timeout: float = 30_000) -> None:
    """Wait until the video has shown `at_least` frames (and `also` holds), with a generous ceiling."""
    page.wait_for_function(
        f"() => document.getElementById('video').getVideoPlaybackQuality().totalVideoFrames >= {at_least} && ({also})",
        timeout=timeout)


def video_state(page) -> dict:
    return page.evaluate("""() => { const v = document.getElementById('video');
        return {t: v.currentTime, paused: v.paused, w: v.videoWidth, h: v.videoHeight, volume: v.volume,
                muted: v.muted, seeking: v.seeking}; }""")


def quality_text(page) -> str:
    return page.inner_text("[data-role=quality-button]").strip()


def test_plays_frames_advance_and_seek_bar_previews(page, site, artifacts_dir):
    open_watch(page, site, site.main)
    startup = int(page.get_attribute("#player", "data-startup-ms"))
    assert 0 < startup < 15_000
    f0, s0 = frames(page), video_state(page)
    # frames must advance while playing: a second of video, however long it takes to show
    wait_for_frames(page, f0 + 15, also=f"video.currentTime >= {s0['t'] + 1.0}")
    s1 = video_state(page)
    assert not s1["paused"]
    assert s1["w"] > 0 and s1["h"] in (240, 360, 480)
    expect(page.locator("[data-role=quality-button]")).to_have_text(re.compile(r"^Auto \((240|360|480)p\)$"))

    # the seek bar shows played and buffered ranges
    widths = page.evaluate("""() => { const w = r => parseFloat(document.querySelector('[data-role=' + r + ']').style.width);
        return {played: w('played'), buffered: w('buffered'), t: video.currentTime, d: video.duration}; }""")
    assert widths["played"] == pytest.approx(100 * widths["t"] / widths["d"], abs=2)
    assert widths["buffered"] > widths["played"]

    # hovering the seek bar shows the preview picture for that moment, from the sprite sheet
    box = page.locator("[data-role=seek]").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.25, box["y"] + box["height"] / 2)
    page.wait_for_selector("[data-role=preview]:not([hidden])")
    preview = page.evaluate("""() => { const i = document.querySelector('[data-role=preview-image]');
        return {bg: i.style.backgroundImage, pos: i.style.backgroundPosition, w: i.style.width,
                time: document.querySelector('[data-role=preview-time]').textContent}; }""")
    assert "/thumbs/sprite_000.jpg" in preview["bg"]
    assert preview["w"] == "160px"
    assert preview["time"] == "0:12"
    assert preview["pos"] == "-320px -90px", preview  # one preview a second, 10 a row: 12 s is row 1, column 2
    page.wait_for_timeout(400)  # let the controls finish fading in
    page.screenshot(path=str(artifacts_dir / "watch.png"))

    # every control has a name a screen reader can announce
    unnamed = page.evaluate("""() => [...document.querySelectorAll('#player button, #player [role=slider], #player input')]
        .filter(e => !(e.getAttribute('aria-label') || e.textContent.trim())).map(e => e.outerHTML.slice(0, 80))""")
    assert unnamed == []
    assert "of" in page.get_attribute("[data-role=seek]", "aria-valuetext")


def test_quality_menu_by_keyboard_manual_choice_sticks_until_auto(page, site, artifacts_dir):
    open_watch(page, site, site.main)
    # reach the quality button with Tab alone
    for _ in range(25):
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.dataset.role") == "quality-button":
            break
    else:
        pytest.fail("the quality button cannot be reached with Tab")
    page.keyboard.press("Enter")
    page.wait_for_selector("#quality-menu:not([hidden])")
    assert page.get_attribute("[data-role=quality-button]", "aria-expanded") == "true"
    items = page.eval_on_selector_all("#quality-menu [role=menuitemradio]",
                                      "els => els.map(e => [e.innerText.replace(/\\s+/g, ' ').trim(), e.getAttribute('aria-checked')])")
    assert items[0][0].startswith("Auto") and items[0][1] == "true"
    labels = [i[0].split(" ")[0] for i in items[1:]]
    assert labels == ["480p", "360p", "240p"], items
    assert all(("Mb/s" in i[0] or "kb/s" in i[0]) for i in items[1:]), "each rendition shows its bit rate"
    page.screenshot(path=str(artifacts_dir / "watch-quality-menu.png"))
    assert page.evaluate("() => document.activeElement.getAttribute('role')") == "menuitemradio"

    page.keyboard.press("ArrowDown")  # 480p
    page.keyboard.press("ArrowDown")  # 360p
    page.keyboard.press("Enter")
    page.wait_for_function("() => video.videoHeight === 360 && video.videoWidth === 640", timeout=15_000)
    assert quality_text(page) == "360p"
    assert page.is_hidden("#quality-menu")
    assert page.evaluate("() => document.activeElement.dataset.role") == "quality-button", "focus returns to the button"
    # loopback bandwidth would let Auto climb to 480p; a manual choice must hold while the
    # player goes on loading and playing (two more 2 s keyframe intervals)
    chosen_at = video_state(page)["t"]
    page.wait_for_function(f"() => video.currentTime > {chosen_at + 4}", timeout=30_000)
    assert video_state(page)["h"] == 360 and quality_text(page) == "360p"

    page.keyboard.press("Enter")
    page.wait_for_selector("#quality-menu:not([hidden])")
    page.keyboard.press("Home")
    page.keyboard.press("Enter")
    page.wait_for_function("() => document.querySelector('[data-role=quality-button]').textContent === 'Auto (480p)'"
                           " && video.videoHeight === 480", timeout=20_000)
    checked = page.eval_on_selector("#quality-menu [aria-checked=true]", "e => e.dataset.value")
    assert checked == "-1"


def test_seek_lands_within_half_a_second(page, site):
    open_watch(page, site, site.main)
    page.evaluate("() => { window.__seeked = []; video.addEventListener('seeked', () => __seeked.push(video.currentTime)); }")
    box = page.locator("[data-role=seek]").bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.6, box["y"] + box["height"] / 2)
    target = 0.6 * DURATION
    page.wait_for_function("() => __seeked.length > 0", timeout=10_000)
    landed = page.evaluate("() => __seeked[0]")
    assert abs(landed - target) < 0.5, f"asked for {target:.2f} s, landed at {landed:.2f} s"
    page.wait_for_function(f"() => video.currentTime > {target + 0.5} && !video.paused", timeout=10_000)
    wait_for_frames(page, frames(page) + 5)  # playback goes on after the seek
    assert page.inner_text("[data-role=current]").startswith("0:2")

    # keyboard: → and ← move 5 s
    for key, delta in (("ArrowRight", 5), ("ArrowLeft", -5)):
        before = page.evaluate("() => { __seeked = []; return video.currentTime; }")
        page.keyboard.press(key)
        page.wait_for_function("() => __seeked.length > 0", timeout=10_000)
        landed = page.evaluate("() => __seeked[0]")
        assert abs(landed - (before + delta)) < 0.5, (key, before, landed)


def test_keyboard_shortcuts_and_volume_remembered_across_visits(page, site):
    open_watch(page, site, site.main)
    page.locator("h1").click()  # focus off the player: shortcuts work page-wide
    page.keyboard.press("Space")
    page.wait_for_function("() => video.paused")
    page.keyboard.press("Space")
    page.wait_for_function("() => !video.paused")
    page.keyboard.press("k")
    page.wait_for_function("() => video.paused")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    assert video_state(page)["volume"] == pytest.approx(0.8)
    page.keyboard.press("ArrowUp")
    assert video_state(page)["volume"] == pytest.approx(0.9)
    page.keyboard.press("m")
    assert video_state(page)["muted"] is True
    expect(page.locator("[data-role=mute]")).to_have_attribute("aria-label", "Unmute (m)")
    page.keyboard.press("f")
    page.wait_for_function("() => document.fullscreenElement && document.fullscreenElement.id === 'player'")
    expect(page.locator("[data-role=fullscreen]")).to_have_attribute("aria-label", "Exit full screen (f)")
    page.keyboard.press("f")
    page.wait_for_function("() => !document.fullscreenElement")

    page.reload()
    page.wait_for_selector("#player[data-startup-ms]", state="attached", timeout=15_000)
    state = video_state(page)
    assert state["volume"] == pytest.approx(0.9) and state["muted"] is True, "volume and mute are remembered"
    page.get_by_role("button", name="Unmute (m)").click()
    assert video_state(page)["muted"] is False
    page.reload()
    page.wait_for_function("() => window.vodflowPlayer")
    assert video_state(page)["muted"] is False


def test_throttled_network_forces_an_automatic_down_switch(page, site):
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")

    def throttle(kbps: int, latency_ms: int):
        cdp.send("Network.emulateNetworkConditions", {"offline": False, "latency": latency_ms,
                                                      "downloadThroughput": kbps * 1000 / 8,
                                                      "uploadThroughput": kbps * 1000 / 8})

    throttle(5000, 20)  # room for 480p, but slow enough that the buffer does not run far ahead
    open_watch(page, site, site.throttle, timeout=30_000)
    page.wait_for_function("() => video.videoHeight === 480", timeout=30_000)
    expect(page.locator("[data-role=quality-button]")).to_have_text("Auto (480p)")
    # the link degrades, and the viewer jumps ahead to a part not yet buffered: the 480p
    # fragment would take far longer than the (empty) buffer lasts, so hls.js abandons it
    throttle(450, 60)
    page.evaluate(f"() => vodflowPlayer.seek({DURATION - 9})")
    page.wait_for_function("() => video.videoHeight === 240 && !video.seeking", timeout=40_000)
    expect(page.locator("[data-role=quality-button]")).to_have_text("Auto (240p)")
    session_id = page.evaluate("() => vodflowPlayer.analytics.sessionId")
    page.close(run_before_unload=True)

    events = wait_for_events(site.data, session_id, lambda evs: any(e["type"] == "session_end" for e in evs),
                             "the session's last beacon")
    switches = [e["data"] for e in events if e["type"] == "rendition_switch"]
    down = [s for s in switches if s["to"] == "240p" and not s.get("initial")]
    assert down, switches
    assert down[-1]["mode"] == "auto"
    assert down[-1]["from"] == "480p"
    assert down[-1]["bandwidth_estimate"] < 1_500_000, "the estimate reflects the slow link"


def test_closing_the_tab_delivers_the_session_to_the_stats(browser, site, artifacts_dir):
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    open_watch(page, site, site.stats)
    startup = int(page.get_attribute("#player", "data-startup-ms"))
    page.wait_for_function("() => video.currentTime > 2.5")
    box = page.locator("[data-role=seek]").bounding_box()
    page.mouse.click(box["x"] + box["width"] * (30 / DURATION), box["y"] + box["height"] / 2)
    page.wait_for_function("() => video.currentTime > 32 && !video.seeking")
    page.mouse.move(0, 0)
    page.keyboard.press("k")  # pause: time paused is not watch time
    page.wait_for_function("() => video.paused")
    page.wait_for_timeout(1200)  # the pause itself, at least this long
    page.keyboard.press("k")
    page.wait_for_function("() => video.currentTime > 33.5")
    client_watched = page.evaluate("() => { vodflowPlayer._sample(); return vodflowPlayer.analytics.watched; }")
    since_first_frame = (page.evaluate("() => performance.now()") - startup) / 1000
    page.close(run_before_unload=True)  # the beacon on pagehide is all that is left to send

    stats_url = f"{site.base}/api/videos/{site.stats}/stats"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        s = requests.get(stats_url, timeout=5).json()
        if s["watch_time"]["total_s"] >= client_watched - 0.5:
            break
        time.sleep(0.3)
    assert s["views"] == 1 and s["unique_sessions"] == 1
    assert s["watch_time"]["total_s"] == pytest.approx(client_watched, abs=0.6)
    assert 3.0 < s["watch_time"]["total_s"] <= since_first_frame - 1.0, "the 1.2 s pause is not watch time"
    assert s["startup_ms"]["samples"] == 1 and s["startup_ms"]["p50"] == pytest.approx(startup, abs=1)
    assert s["seeks"] == 1
    assert s["completion_rate"] == 0
    assert s["errors"]["total"] == 0
    assert sum(s["rendition_time_s"].values()) == pytest.approx(s["watch_time"]["total_s"], abs=0.6)
    share = {round(p["t"]): p["share"] for p in s["retention"]}
    assert share[1] == 1.0 and share[31] == 1.0, "both played stretches are in the retention curve"
    assert share[15] == 0.0 and share[45] == 0.0, "skipped parts are not"

    page = context.new_page()
    page.goto(f"{site.base}/stats/{site.stats}")
    assert page.inner_text("[data-stat=views]") == "1"
    page.screenshot(path=str(artifacts_dir / "stats.png"), full_page=True)
    page.goto(f"{site.base}/")
    cards = page.locator(".card")
    assert cards.count() >= 4
    processing = page.locator(".card[data-status=PROCESSING]", has_text="Still encoding")
    assert "40%" in processing.inner_text()
    # the library follows progress without a reload
    still = site.encoding
    set_progress(site.data, still, 55.0, "packaging")
    page.wait_for_function(f"""() => document.querySelector('.card[data-id="{still}"] [data-role=progress-text]')
                                         .textContent.startsWith('55% · packaging')""", timeout=10_000)
    assert page.get_attribute(f'.card[data-id="{still}"] progress', "value") == "55"
    assert page.locator(".card img[src$='poster.jpg']").count() >= 2, "ready videos show their poster"
    assert page.get_by_role("link", name="Upload video").count() == 1
    page.screenshot(path=str(artifacts_dir / "library.png"), full_page=True)
    context.close()


def test_processing_video_shows_progress_then_starts_on_first_rendition(page, site, artifacts_dir):
    with catalog_at(site.data):
        vid = create_video("Arriving", duration=DURATION, progress=35, stage="encoding")
    page.goto(f"{site.base}/watch/{vid}")
    page.wait_for_selector("[data-role=processing]:not([hidden])")
    assert "35%" in page.inner_text("[data-role=processing-text]")
    set_progress(site.data, vid, 62.0, "encoding")
    page.wait_for_function("() => document.querySelector('[data-role=processing-text]').textContent.includes('62%')",
                           timeout=10_000)
    page.screenshot(path=str(artifacts_dir / "watch-processing.png"))

    lowest = [r for r in DEFAULT_RUNGS if r.name == "240p"]
    with catalog_at(site.data):
        publish(vid, site.ladder, rungs=lowest, status="PROCESSING", thumbnails=False)
    page.wait_for_selector("#player[data-startup-ms]", state="attached", timeout=15_000)
    assert page.is_hidden("[data-role=processing]")
    wait_for_frames(page, frames(page) + 5)
    assert page.eval_on_selector_all("#quality-menu [role=menuitemradio]", "els => els.length") == 2  # Auto + 240p

    position = video_state(page)["t"]
    with catalog_at(site.data):
        publish(vid, site.ladder, rungs=[r for r in DEFAULT_RUNGS if r.name != "240p"], status="READY")
    # the player picks up the new renditions without starting over
    page.wait_for_function("() => document.querySelectorAll('#quality-menu [role=menuitemradio]').length === 4",
                           timeout=15_000)
    page.wait_for_function(f"() => video.currentTime > {position} && !video.paused", timeout=10_000)


def test_network_failure_is_retried_then_shown_and_recoverable(page, site):
    # short retry policies, so the test does not wait out the production back-off
    page.add_init_script("""window.vodflowPlayerOptions = {
        networkRetryDelays: [200, 200],
        hlsConfig: {fragLoadPolicy: {default: {maxTimeToFirstByteMs: 3000, maxLoadTimeMs: 8000, timeoutRetry: null,
                    errorRetry: {maxNumRetry: 1, retryDelayMs: 100, maxRetryDelayMs: 100}}}}};""")
    page.route("**/*.ts", lambda route: route.abort("connectionrefused"))
    page.goto(f"{site.base}/watch/{site.main}")
    page.wait_for_selector("[data-role=error]:not([hidden])", timeout=30_000)
    assert page.get_attribute("[data-role=error]", "role") == "alert"
    assert "connection to the server failed" in page.inner_text("[data-role=error-text]")
    session_id = page.evaluate("() => vodflowPlayer.analytics.sessionId")

    page.unroute("**/*.ts")
    page.get_by_role("button", name="Try again").click()
    page.wait_for_selector("#player[data-startup-ms]", state="attached", timeout=15_000)
    assert page.is_hidden("[data-role=error]")
    wait_for_frames(page, frames(page) + 5)  # playing again after the retry

    # A fatal media error cannot be caused on demand with valid media, so hand the player the
    # event hls.js would emit: the first is recovered (recoverMediaError), a second within
    # 5 s is not retried again but shown.
    page.evaluate("() => vodflowPlayer._onHlsError({fatal: true, type: Hls.ErrorTypes.MEDIA_ERROR, details: 'bufferAppendError'})")
    page.wait_for_function("() => !video.paused && video.readyState >= 3", timeout=10_000)
    assert page.is_hidden("[data-role=error]")
    page.evaluate("() => vodflowPlayer._onHlsError({fatal: true, type: Hls.ErrorTypes.MEDIA_ERROR, details: 'bufferAppendError'})")
    page.wait_for_selector("[data-role=error]:not([hidden])")
    assert "could not be decoded" in page.inner_text("[data-role=error-text]")

    page.close(run_before_unload=True)
    events = wait_for_events(site.data, session_id, lambda evs: any(e["type"] == "session_end" for e in evs),
                             "the session's last beacon")
    actions = [(e["data"]["details"], e["data"]["action"]) for e in events
               if e["type"] == "error" and e["data"].get("fatal")]
    assert ("fragLoadError", "retry") in actions and ("fragLoadError", "shown") in actions, actions
    assert actions[-2:] == [("bufferAppendError", "recover"), ("bufferAppendError", "shown")]


def test_destroy_releases_listeners_timers_and_hls(page, site):
    open_watch(page, site, site.main)
    assert page.evaluate("() => vodflowPlayer.resources().hls") is True
    session_id = page.evaluate("() => vodflowPlayer.analytics.sessionId")
    page.evaluate("() => vodflowPlayer.destroy()")
    assert page.evaluate("() => vodflowPlayer.resources()") == {
        "timers": 0, "hls": False, "listening": False,
        "analytics": {"timer": False, "listening": False, "queued": 0}}
    requests_after: list[str] = []
    page.on("request", lambda r: requests_after.append(r.url))
    page.locator("h1").click()
    page.keyboard.press("Space")  # no listener left to act on it
    page.wait_for_timeout(1500)
    assert video_state(page)["paused"] is True
    assert [u for u in requests_after if "/v/" in u] == [], "no media loaded after destroy"
    events = wait_for_events(site.data, session_id, lambda evs: any(e["type"] == "session_end" for e in evs),
                             "the beacon sent by destroy()")
    ends = [e for e in events if e["type"] == "session_end"]
    assert ends and ends[0]["data"]["reason"] == "destroy"
