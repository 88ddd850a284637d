"""POST /api/uploads with curl against the app under gunicorn: good files are stored and
catalogued; bad ones get a 4xx that names the problem and leave nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.media import make_clip
from tests.servers import vodflow_web


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("web") / "var"
    env = {"VODFLOW_DATA_DIR": str(data), "VODFLOW_DISPATCH": "off",
           "VODFLOW_MAX_UPLOAD_BYTES": str(3 * 1024 * 1024)}
    with vodflow_web(env, data.parent / "web.log") as url:
        yield url, data


@pytest.fixture
def app_url(server):
    return server[0]


@pytest.fixture
def data_dir(server):
    return server[1]


def curl_upload(url: str, path: Path, name: str | None = None) -> tuple[int, dict]:
    spec = f"file=@{path}" + (f";filename={name}" if name else "")
    out = subprocess.run(["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", "-F", spec, f"{url}/api/uploads"],
                         capture_output=True, text=True, check=True)
    body, _, code = out.stdout.rpartition("\n")
    return int(code), json.loads(body)


def stored_files(data_dir: Path) -> list[str]:
    roots = [data_dir / "storage", data_dir / "uploads"]
    return sorted(str(p.relative_to(data_dir)) for r in roots if r.exists() for p in r.rglob("*") if p.is_file())


def catalog_rows(app_url: str) -> list:
    import requests

    return requests.get(f"{app_url}/api/videos", timeout=10).json()["videos"]


def test_a_video_is_stored_and_catalogued(app_url, clip, data_dir):
    code, body = curl_upload(app_url, clip)
    assert code == 201, body
    assert set(body) >= {"id", "status_url", "watch_url"}
    import requests

    video = requests.get(body["status_url"], timeout=10).json()
    assert video["status"] == "UPLOADED" and video["progress"] == 0
    meta = video["metadata"]
    assert (meta["width"], meta["height"]) == (640, 360)
    assert abs(meta["duration"] - 4.0) < 0.1 and meta["frame_rate"] == 30
    assert meta["audio_codec"] == "aac" and meta["audio_channels"] == 2
    src = data_dir / "storage" / "sources" / body["id"] / "source.mp4"
    assert src.read_bytes() == clip.read_bytes()
    assert f"storage/sources/{body['id']}/source.mp4" in stored_files(data_dir)
    assert not [f for f in stored_files(data_dir) if f.startswith("uploads/")]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "notes.mp4").write_text("these are my holiday notes, not a video\n" * 20)
    (d / "empty.mp4").write_bytes(b"")
    good = make_clip(d / "whole.mp4", duration=3)
    data = good.read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (d / "big.mp4").write_bytes(data + b"\0" * (4 * 1024 * 1024))
    (d / "image.mp4").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(2000))
    (d / "playlist.mp4").write_text("#EXTM3U\n#EXTINF:1,\nfile:///etc/passwd\n")
    return d


@pytest.mark.parametrize("name,status,needle", [
    ("notes.mp4", 415, "text, not a video"),
    ("empty.mp4", 400, "empty"),
    ("truncated.mp4", 422, "cannot be read as a video"),
    ("big.mp4", 413, "limit"),
    ("image.mp4", 415, "PNG image"),
    ("playlist.mp4", 415, "HLS playlist"),
])
def test_bad_input_is_refused_and_leaves_nothing(app_url, bad_files, data_dir, name, status, needle):
    files_before, rows_before = stored_files(data_dir), catalog_rows(app_url)
    code, body = curl_upload(app_url, bad_files / name)
    assert code == status, body
    assert needle in body["message"]
    assert stored_files(data_dir) == files_before
    assert catalog_rows(app_url) == rows_before


def test_unsupported_extension_and_missing_field(app_url, clip):
    code, body = curl_upload(app_url, clip, name="clip.exe")
    assert code == 415 and "'.exe'" in body["message"]
    out = subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", "-F", "other=@" + str(clip),
                          f"{app_url}/api/uploads"], capture_output=True, text=True)
    assert out.stdout.endswith("400") and "field 'file'" in out.stdout
