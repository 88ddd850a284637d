"""Safe by default: security headers on every answer, a CSP the pages pass in Chromium, deleting
refused without an admin token, and uploads refused with 507 when the disk would fill up."""

from __future__ import annotations

import json
import subprocess

import pytest
import requests

from tests.player_support import catalog_at, create_video, encode_ladder, launch_chromium, publish, server_env
from tests.servers import vodflow_web

SECURITY = ("X-Content-Type-Options", "Content-Security-Policy", "Referrer-Policy")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A real web app (gunicorn, the command `vodflow web` runs) with one published video; no
    admin token, pages embeddable by one named site."""
    root = tmp_path_factory.mktemp("safety")
    data, ladder = root / "var", root / "ladder"
    encode_ladder(ladder, duration=8.0)
    with catalog_at(data):
        vid = create_video("Safe by default", duration=8.0)
        publish(vid, ladder, thumbnails=False)
    env = {**server_env(data), "VODFLOW_FRAME_ANCESTORS": "'self' https://blog.example"}
    env.pop("VODFLOW_ADMIN_TOKEN", None)
    with vodflow_web(env, root / "gunicorn.log") as base:
        yield base, vid


def _directives(csp: str) -> dict[str, str]:
    out = {}
    for part in csp.split(";"):
        name, _, value = part.strip().partition(" ")
        out[name] = value
    return out


def test_every_kind_of_answer_carries_the_security_headers(site):
    base, vid = site
    answers = {
        "page": requests.get(f"{base}/", timeout=10),
        "watch page": requests.get(f"{base}/watch/{vid}", timeout=10),
        "API": requests.get(f"{base}/api/videos/{vid}", timeout=10),
        "master playlist": requests.get(f"{base}/v/{vid}/master.m3u8", timeout=10),
        "media playlist": requests.get(f"{base}/v/{vid}/r1/360p/index.m3u8", timeout=10),
        "segment": requests.get(f"{base}/v/{vid}/r1/360p/seg_00000.ts", timeout=10),
        "error": requests.get(f"{base}/api/videos/nosuchvideo", timeout=10),
        "tus": requests.options(f"{base}/files/", timeout=10),
    }
    assert answers["error"].status_code == 404
    for what, r in answers.items():
        assert r.status_code < 500, what
        missing = [h for h in SECURITY if h not in r.headers]
        assert not missing, f"{what} ({r.url}) lacks {missing}"
        assert r.headers["X-Content-Type-Options"] == "nosniff", what
        assert r.headers["Referrer-Policy"] == "strict-origin-when-cross-origin", what
        csp = _directives(r.headers["Content-Security-Policy"])
        assert csp["frame-ancestors"] == "'self' https://blog.example", what
        assert csp["script-src"] == "'self'" and "'unsafe-inline'" not in r.headers["Content-Security-Policy"]
        assert csp["object-src"] == "'none'"
    assert answers["master playlist"].text.startswith("#EXTM3U")


def test_deleting_without_an_admin_token_configured_is_refused(site):
    base, vid = site
    r = subprocess.run(["curl", "-sS", "-X", "DELETE", "-w", "\n%{http_code}", f"{base}/api/videos/{vid}"],
                       capture_output=True, text=True, check=True)
    body, code = r.stdout.rsplit("\n", 1)
    assert code == "403"
    assert "VODFLOW_ADMIN_TOKEN" in json.loads(body)["message"]
    # a guessed token changes nothing either
    r = requests.delete(f"{base}/api/videos/{vid}", headers={"Authorization": "Bearer guess"}, timeout=10)
    assert r.status_code == 403
    assert requests.get(f"{base}/api/videos/{vid}", timeout=10).json()["status"] == "READY"
    assert requests.get(f"{base}/v/{vid}/master.m3u8", timeout=10).status_code == 200


CSP_WATCH = """
window.__csp = [];
document.addEventListener('securitypolicyviolation', e =>
    window.__csp.push(e.violatedDirective + ' ' + e.blockedURI + ' ' + (e.sourceFile || '')));
"""


def test_pages_work_under_the_policy_with_no_violation(site, clip):
    from playwright.sync_api import sync_playwright

    base, vid = site
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            context = browser.new_context()
            context.add_init_script(CSP_WATCH)
            page = context.new_page()
            console: list[str] = []
            page.on("console", lambda m: console.append(m.text))
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))

            page.goto(f"{base}/")
            page.wait_for_selector(f"a[href$='/watch/{vid}']", timeout=15_000)
            assert page.evaluate("window.__csp") == []

            page.goto(f"{base}/watch/{vid}")
            page.wait_for_selector("#player[data-startup-ms]", state="attached", timeout=20_000)
            page.wait_for_function(
                "() => document.getElementById('video').getVideoPlaybackQuality().totalVideoFrames > 25",
                timeout=20_000)
            assert page.evaluate("window.__csp") == []

            page.goto(f"{base}/upload")
            page.set_input_files("#file-input", str(clip))
            row = page.locator("#uploads .upload").first
            row.locator("a.watch").wait_for(state="visible", timeout=30_000)  # tus-js-client sent it
            assert page.evaluate("window.__csp") == []
            assert not [m for m in console if "Content Security Policy" in m], console
            assert not errors, errors
        finally:
            browser.close()


@pytest.fixture
def crowded(tmp_path):
    """A web app whose disk reserve is larger than any free space there is."""
    data = tmp_path / "crowded"
    with vodflow_web({"VODFLOW_DATA_DIR": str(data), "VODFLOW_DISK_RESERVE_BYTES": str(10**18)},
                      tmp_path / "gunicorn.log") as base:
        yield base, data


def test_uploads_are_refused_with_507_when_space_would_run_short(crowded, clip):
    from tusclient.client import TusClient
    from tusclient.exceptions import TusCommunicationError

    base, data = crowded
    uploader = TusClient(f"{base}/files/").uploader(str(clip), chunk_size=256 * 1024,
                                                    metadata={"filename": "clip.mp4"})
    with pytest.raises(TusCommunicationError) as refused:
        uploader.upload()
    assert refused.value.status_code == 507
    r = requests.post(f"{base}/files/", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "1000000"},
                      timeout=10)
    assert r.status_code == 507
    assert "VODFLOW_DISK_RESERVE_BYTES" in r.json()["message"] and "free" in r.json()["message"]

    out = subprocess.run(["curl", "-sS", "-F", f"file=@{clip}", "-w", "\n%{http_code}", f"{base}/api/uploads"],
                         capture_output=True, text=True, check=True)
    body, code = out.stdout.rsplit("\n", 1)
    assert code == "507"
    assert "VODFLOW_DISK_RESERVE_BYTES" in json.loads(body)["message"]
    # nothing was kept: no upload in progress, no video
    leftovers = [p for p in (data / "uploads").rglob("*") if p.is_file()]
    assert leftovers == []
    assert requests.get(f"{base}/api/videos", timeout=10).json()["videos"] == []
