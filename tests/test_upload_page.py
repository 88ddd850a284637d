"""The /upload page in headless Chromium: tus-js-client served by the app, progress, pause and
resume, resume after a reload, and the link to the watch page."""

from __future__ import annotations

import pytest

from tests.upload_support import Server, sha256

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


ADMIN_TOKEN = "upload-page-admin"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("page")
    with Server(d / "var", d / "gunicorn.log", VODFLOW_ADMIN_TOKEN=ADMIN_TOKEN) as s:
        yield s


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, artifacts_dir, request):
    context = browser.new_context()
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.on("dialog", lambda d: d.accept())  # "leave the page while uploading?" on reload
    yield pg
    pg.screenshot(path=str(artifacts_dir / f"{request.node.name}.png"), full_page=True)
    context.close()
    assert not errors, errors


def test_upload_page_sends_a_clip_and_links_to_its_watch_page(server, page, clip):
    page.goto(server.base + "/upload")
    assert page.locator("nav a[href='/upload']").count() == 1
    page.set_input_files("#file-input", str(clip))
    row = page.locator("#uploads .upload").first
    link = row.locator("a.watch")
    link.wait_for(state="visible", timeout=30_000)
    vid = row.get_attribute("data-video-id")
    assert link.get_attribute("href").endswith(f"/watch/{vid}")
    assert row.locator(".state").inner_text() == "Uploaded"
    assert page.locator("progress").first.evaluate("p => p.value") == 100
    page.wait_for_function("() => document.querySelector('.processing').textContent.length > 0")
    assert "queued for processing" in row.locator(".processing").inner_text()
    video = server.video(vid)
    assert video["status"] == "UPLOADED" and video["original_filename"] == "clip.mp4"
    assert sha256(server.stored_source(vid)) == sha256(clip.read_bytes())
    with page.expect_navigation():
        link.click()
    assert page.url.endswith(f"/watch/{vid}")


def test_refused_file_says_why(server, page, tmp_path):
    fake = tmp_path / "holiday.mp4"
    fake.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 200_000)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a video")
    page.goto(server.base + "/upload")
    page.set_input_files("#file-input", [str(fake), str(notes)])
    rows = page.locator("#uploads .upload[data-state='refused']")
    rows.nth(1).wait_for(timeout=30_000)
    texts = " | ".join(rows.locator(".state").all_inner_texts())
    assert "PNG" in texts and "not a video" in texts  # the server's message, from the first bytes
    assert "'.txt' files are not supported" in texts  # checked before sending anything


def test_pause_resume_and_resume_after_reload(server, page, clip):
    before = {r["id"] for r in server.uploads()}
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    # a slow uplink, so there is time to pause and to reload mid-upload
    cdp.send("Network.emulateNetworkConditions", {"offline": False, "latency": 5,
                                                  "downloadThroughput": -1, "uploadThroughput": 250_000})
    page.goto(server.base + "/upload")
    page.set_input_files("#file-input", str(clip))
    bar = page.locator("#uploads progress").first
    page.wait_for_function("() => document.querySelector('#uploads progress').value > 15", timeout=30_000)
    assert "/s" in page.locator("#uploads .speed").first.inner_text()
    assert "left" in page.locator("#uploads .eta").first.inner_text()
    page.click("#uploads button.pause")
    state = page.locator("#uploads .state").first
    assert state.inner_text().startswith("Paused at")
    paused_at = bar.evaluate("p => p.value")
    page.click("#uploads button.pause")  # now "Resume"
    page.wait_for_function(f"() => document.querySelector('#uploads progress').value > {paused_at + 10}",
                           timeout=30_000)
    page.reload()  # mid-upload: the tab is gone, the bytes on the server are not
    page.locator("#unfinished-list li").first.wait_for(timeout=15_000)
    assert "clip.mp4" in page.locator("#unfinished-list").inner_text()
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", {"offline": False, "latency": 0,
                                                  "downloadThroughput": -1, "uploadThroughput": -1})
    page.set_input_files("#file-input", str(clip))
    link = page.locator("#uploads a.watch").first
    link.wait_for(state="visible", timeout=30_000)
    vid = page.locator("#uploads .upload").first.get_attribute("data-video-id")
    assert sha256(server.stored_source(vid)) == sha256(clip.read_bytes())
    after = {r["id"] for r in server.uploads()}
    assert len(after - before) == 1, "the upload restarted instead of resuming"


def test_a_caption_attached_on_the_upload_page_is_sent_once_the_video_is_uploaded(server, page, clip, tmp_path):
    import requests

    srt = tmp_path / "talk.en.srt"
    srt.write_text("1\n00:00:01,000 --> 00:00:02,000\n<b onclick=\"x()\">Hello</b> there\n")
    page.goto(server.base + "/upload")
    page.locator("#attach-caption summary").click()
    page.set_input_files("#attach-caption input[name=caption]", str(srt))
    page.fill("#attach-caption input[name=language]", "en")
    page.fill("#attach-caption input[name=label]", "English")
    page.fill("#attach-caption input[name=token]", ADMIN_TOKEN)  # captions change a video: owner only
    page.set_input_files("#file-input", str(clip))
    row = page.locator("#uploads .upload").first
    result = row.locator(".caption-result")
    page.wait_for_function("() => document.querySelector('.caption-result') && "
                           "document.querySelector('.caption-result').textContent.startsWith('Caption added')",
                           timeout=60_000)
    assert "1 cue(s) kept" in result.inner_text() and "markup" in result.inner_text()
    vid = row.get_attribute("data-video-id")
    listed = requests.get(f"{server.base}/api/videos/{vid}/captions", timeout=10).json()["captions"]
    # stored with the video; published in the master once the first run is (nothing is yet)
    assert [(c["language"], c["label"], c["cues"], c["published"]) for c in listed] == [("en", "English", 1, False)]
    assert requests.get(server.base + listed[0]["vtt"], timeout=10).text == "WEBVTT\n\n00:00:01.000 --> 00:00:02.000\nHello there\n"
