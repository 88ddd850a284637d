"""The three intake phases as an uploader meets them: declared (see test_tus_protocol), first
bytes, complete file. A refused upload names the problem and leaves no bytes behind."""

from __future__ import annotations

import os
import threading
import time

import pytest
import requests

from tests.media import make_clip
from tests.upload_support import Server, create, head, metadata, patch


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("validation")
    with Server(d / "var", d / "gunicorn.log") as s:
        yield s


class Fifo:
    """A named pipe standing in for a private file: opening it for reading is observable."""

    def __init__(self, path):
        self.path = path
        os.mkfifo(path)
        self.opened = threading.Event()
        self._t = threading.Thread(target=self._wait_for_reader, daemon=True)
        self._t.start()

    def _wait_for_reader(self):
        with open(self.path, "wb"):  # blocks until someone opens the pipe to read
            self.opened.set()

    def close(self):
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)  # release the writer
        self._t.join(5)
        os.close(fd)


def playlist_to(target) -> bytes:
    return (f"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\n{target}\n"
            "#EXT-X-ENDLIST\n").encode()


def test_png_named_mp4_is_refused_on_its_first_bytes(server):
    size = 5_000_000
    url = create(server, size, meta=metadata(filename="clip.mp4", filetype="video/mp4")).headers["Location"]
    first = b"\x89PNG\r\n\x1a\n" + os.urandom(64 * 1024)
    r = patch(url, 0, first)
    assert r.status_code == 415
    assert "PNG" in r.json()["message"] and "not a video" in r.json()["message"]
    # the remaining ~5 MB were never asked for: the upload is over
    assert head(url).status_code == 410
    assert patch(url, len(first), b"\0" * 1000).status_code == 410
    assert requests.get(url).json()["status"] == "FAILED"
    assert server.upload_bytes_on_disk() == []


def test_text_named_mp4_is_refused(server):
    text = b"This is my holiday video, honest.\n" * 200
    url = create(server, len(text), meta=metadata(filename="holiday.mp4")).headers["Location"]
    r = patch(url, 0, text)
    assert r.status_code == 415 and "text" in r.json()["message"]
    assert server.upload_bytes_on_disk() == []


def test_sniffing_waits_for_enough_bytes_across_small_patches(server):
    url = create(server, 100_000, meta=metadata(filename="clip.mp4")).headers["Location"]
    data = b"\x89PNG\r\n\x1a\n" + b"\0" * 99_992
    assert patch(url, 0, data[:1000]).status_code == 204  # too little to judge yet
    r = patch(url, 1000, data[1000:8000])
    assert r.status_code == 415
    assert server.upload_bytes_on_disk() == []


def test_playlist_named_mp4_pointing_at_a_local_file_is_refused_unread(server, tmp_path):
    secret = Fifo(tmp_path / "private.ts")
    try:
        body = playlist_to(secret.path)
        url = create(server, len(body), meta=metadata(filename="movie.mp4", filetype="video/mp4")).headers["Location"]
        r = patch(url, 0, body)
        assert r.status_code == 415 and "HLS playlist" in r.json()["message"]
        time.sleep(0.5)
        assert not secret.opened.is_set(), "the server opened the file the playlist points at"
        assert server.upload_bytes_on_disk() == [] and not server.videos()
    finally:
        secret.close()


def test_probe_refuses_playlists_even_past_sniffing(tmp_path, monkeypatch):
    """Defense in depth: if a playlist ever got past the first-bytes check, ffprobe still must
    not follow it (demuxer whitelist), and must not block on what it lists."""
    from config.settings import reset_settings
    from tasks.intake import UploadRejected, check_complete

    monkeypatch.setenv("VODFLOW_PROBE_TIMEOUT", "5")
    reset_settings()
    secret = Fifo(tmp_path / "private.ts")
    try:
        fake = tmp_path / "movie.mp4"
        fake.write_bytes(playlist_to(secret.path))
        with pytest.raises(UploadRejected) as err:
            check_complete(fake)
        assert err.value.status == 422
        assert not secret.opened.is_set()
    finally:
        secret.close()


def test_truncated_video_is_refused_when_complete_and_deleted(server, media_dir):
    clip = make_clip(media_dir / "moov_at_end.mp4", duration=2)
    data = clip.read_bytes()[: int(clip.stat().st_size * 0.6)]  # moov is at the end: lost
    url = create(server, len(data), meta=metadata(filename="cut.mp4")).headers["Location"]
    r = patch(url, 0, data)
    assert r.status_code == 422
    msg = r.json()["message"]
    assert "cannot be read as a video" in msg and "re-upload" in msg
    assert head(url).status_code == 410
    assert requests.get(url).json()["error"] == msg
    assert server.upload_bytes_on_disk() == [] and not server.videos()


@pytest.mark.parametrize("kwargs,needle", [
    ({"duration": 0.5}, "at least 1 s"),
    ({"size": "128x72", "duration": 1.5}, "at least 160x90"),
    ({"audio": True, "duration": 2, "extra_output": ["-vn"]}, "no video stream"),
])
def test_complete_file_limits(server, media_dir, kwargs, needle):
    name = "limits_" + "_".join(f"{k}{v}" for k, v in kwargs.items() if k != "extra_output")
    clip = make_clip(media_dir / f"{name.replace(' ', '')}.mp4", **kwargs)
    data = clip.read_bytes()
    url = create(server, len(data), meta=metadata(filename="x.mp4")).headers["Location"]
    r = patch(url, 0, data)
    assert r.status_code == 422 and needle in r.json()["message"], r.text
    assert server.upload_bytes_on_disk() == []
