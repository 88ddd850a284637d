"""The one-shot POST /api/uploads with curl: same three phases and hand-off as tus."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import requests

from tests.upload_support import Server, sha256


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("simple")
    with Server(d / "var", d / "gunicorn.log") as s:
        yield s


def curl_upload(server: Server, path, *extra: str) -> tuple[int, dict]:
    out = subprocess.run(["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", "-F", f"file=@{path}", *extra,
                          server.base + "/api/uploads"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    body, _, code = out.stdout.rpartition("\n")
    return int(code), json.loads(body)


def test_curl_upload_creates_the_video(server, clip):
    code, body = curl_upload(server, clip, "-F", "title=Ünïcode title")
    assert code == 201, body
    assert body["status"] == "UPLOADED"
    row = server.video(body["id"])
    assert row["title"] == "Ünïcode title" and row["original_filename"] == "clip.mp4"
    assert sha256(server.stored_source(body["id"])) == sha256(clip.read_bytes())
    assert requests.get(body["status_url"]).json()["id"] == body["id"]
    assert body["watch_url"].endswith(f"/watch/{body['id']}")


def test_png_is_refused_from_its_first_bytes_and_nothing_stays(server, tmp_path):
    fake = tmp_path / "holiday.mp4"
    with open(fake, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n")
        fh.write(os.urandom(20 * 1024 * 1024))
    code, body = curl_upload(server, fake)
    assert code == 415 and "PNG" in body["message"]
    assert server.upload_bytes_on_disk() == []


def test_wrong_extension_is_refused_before_any_byte(server, tmp_path):
    doc = tmp_path / "notes.txt"
    doc.write_text("hello\n" * 1000)
    code, body = curl_upload(server, doc)
    assert code == 415 and ".txt" in body["message"]
    assert server.upload_bytes_on_disk() == []
