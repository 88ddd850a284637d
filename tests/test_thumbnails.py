"""tasks/thumbnails.py: the poster avoids black and blurred frames; the sprite sheets and their
WebVTT index show the right picture for each moment; the task runs on a Dask worker against
S3 with nothing but URLs and settings."""

from __future__ import annotations

import math
import re
import subprocess
from fractions import Fraction
from pathlib import Path

import pytest

from config import storage
from tasks.ffmpeg import PermanentMediaError
from tasks.thumbnails import make_thumbnails
from tests.media import ffprobe_json, make_clip


def picture_stats(path: str | Path, crop: str | None = None) -> dict:
    """Mean luma and blur of an image (or a crop of it), measured by ffmpeg."""
    vf = (f"crop={crop}," if crop else "") + "signalstats,blurdetect,metadata=print"
    out = subprocess.run(["ffmpeg", "-hide_banner", "-nostdin", "-i", str(path), "-vf", vf, "-f", "null", "-"],
                         capture_output=True, text=True, check=True).stderr
    luma = float(re.search(r"lavfi\.signalstats\.YAVG=([\d.]+)", out).group(1))
    blur = re.search(r"lavfi\.blur=([-\w.]+)", out).group(1)
    return {"luma": luma, "blur": float(blur) if blur not in ("-nan", "nan") else float("inf")}


def parse_vtt(text: str) -> list[dict]:
    cues = []
    for m in re.finditer(r"([\d:.]+) --> ([\d:.]+)\n(\S+?)#xywh=(\d+),(\d+),(\d+),(\d+)", text):
        def secs(t):
            h, mi, s = t.split(":")
            return int(h) * 3600 + int(mi) * 60 + float(s)
        cues.append({"start": secs(m[1]), "end": secs(m[2]), "sheet": m[3],
                     "x": int(m[4]), "y": int(m[5]), "w": int(m[6]), "h": int(m[7])})
    return cues


@pytest.fixture(scope="module")
def black_blurred_sharp(tmp_path_factory) -> Path:
    """3 s black, 3 s heavily blurred pattern, 3 s sharp pattern."""
    path = tmp_path_factory.mktemp("thumbs") / "mixed.mp4"
    subprocess.run([
        "ffmpeg", "-v", "error", "-y",
        "-f", "lavfi", "-i", "color=black:size=640x360:rate=25:duration=3",
        "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25:duration=3,boxblur=12:4",
        "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25:duration=3",
        "-filter_complex", "[0][1][2]concat=n=3:v=1:a=0", "-c:v", "libx264", "-preset", "ultrafast",
        "-pix_fmt", "yuv420p", str(path)], check=True)
    return path


def test_poster_is_sharp_and_lit_and_previews_map_to_their_moments(black_blurred_sharp, tmp_path):
    source = storage.url_for("sources", "vid1", "source.mp4")
    storage.put_file(black_blurred_sharp, source)
    run = storage.url_for("hls", "vid1", "r1")

    out = make_thumbnails(source, run)

    assert out["poster_url"] == storage.join(run, "poster.jpg")
    assert out["thumbnails_url"] == storage.join(run, "thumbs", "thumbs.vtt")
    assert out["poster_time"] >= 6.0, "the poster must come from the sharp, lit part"
    poster = storage.local_path_of(out["poster_url"])
    info = ffprobe_json(str(poster), "-show_streams")["streams"][0]
    assert (info["width"], info["height"]) == (640, 360), "poster keeps the source size (never upscaled)"
    pstats = picture_stats(poster)
    assert pstats["luma"] > 60, f"poster is too dark: {pstats}"
    assert pstats["blur"] < 10, f"poster is blurred: {pstats}"

    vtt = storage.read_text(out["thumbnails_url"])
    assert vtt.startswith("WEBVTT")
    cues = parse_vtt(vtt)
    assert len(cues) == out["count"] == 9
    assert cues[0]["start"] == 0 and abs(cues[-1]["end"] - 9.0) < 0.05
    for a, b in zip(cues, cues[1:]):
        assert a["end"] == pytest.approx(b["start"]), "cues must tile the timeline without gaps"
    sheet = storage.local_path_of(storage.join(run, "thumbs", cues[0]["sheet"]))
    sheet_info = ffprobe_json(str(sheet), "-show_streams")["streams"][0]
    for c in cues:
        assert (c["w"], c["h"]) == (160, 90)
        assert c["x"] + c["w"] <= sheet_info["width"] and c["y"] + c["h"] <= sheet_info["height"]

    def region(c):
        return picture_stats(sheet, crop=f"{c['w']}:{c['h']}:{c['x']}:{c['y']}")

    # the index points at the right picture: black at 1 s, blurred at 4 s, sharp at 7 s
    at1, at4, at7 = (next(c for c in cues if c["start"] <= t < c["end"]) for t in (1.5, 4.5, 7.5))
    assert region(at1)["luma"] < 25
    assert region(at4)["luma"] > 60 and region(at7)["luma"] > 60
    assert region(at7)["blur"] < region(at4)["blur"], "the sharp moment's preview is sharper than the blurred one's"
    # the returned sheet URLs are exactly the sheets the index points at
    assert set(out["sprite_urls"]) == {storage.join(run, "thumbs", c["sheet"]) for c in cues}


def test_portrait_source_gets_portrait_previews(tmp_path):
    clip = make_clip(tmp_path / "portrait.mp4", duration=2, size="360x640", audio=False)
    source = storage.url_for("sources", "vid2", "source.mp4")
    storage.put_file(clip, source)
    out = make_thumbnails(source, storage.url_for("hls", "vid2", "r1"))
    assert (out["width"], out["height"]) == (90, 160)
    poster = ffprobe_json(str(storage.local_path_of(out["poster_url"])), "-show_streams")["streams"][0]
    assert (poster["width"], poster["height"]) == (360, 640)


def test_unreadable_source_is_a_permanent_error(tmp_path):
    bad = tmp_path / "notes.mp4"
    bad.write_text("this is not a video\n" * 50)
    source = storage.url_for("sources", "vid3", "source.mp4")
    storage.put_file(bad, source)
    with pytest.raises(PermanentMediaError):
        make_thumbnails(source, storage.url_for("hls", "vid3", "r1"))
    assert storage.list_files(storage.url_for("hls", "vid3")) == [], "nothing half-made is published"


def test_runs_on_a_dask_worker_against_s3(tmp_path, monkeypatch):
    """A separate worker process with only the URLs and the settings (env) reads the source
    from S3 and publishes the images and index to S3."""
    import boto3
    from dask.distributed import Client, LocalCluster
    from moto.server import ThreadedMotoServer

    from config.settings import reset_settings

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                     "VODFLOW_S3_ENDPOINT_URL": endpoint, "VODFLOW_STORAGE_URL": "s3://media/vod"}.items():
            monkeypatch.setenv(k, v)
        reset_settings()
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="media")
        clip = make_clip(tmp_path / "clip.mp4", duration=3, audio=False)
        s3.upload_file(str(clip), "media", "vod/sources/vid4/source.mp4")
        source = storage.url_for("sources", "vid4", "source.mp4")
        run = storage.url_for("hls", "vid4", "r1")
        assert source.startswith("s3://")

        with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
                Client(cluster) as client:
            out = client.submit(make_thumbnails, source, run, pure=False).result(timeout=120)

        assert out["poster_url"] == "s3://media/vod/hls/vid4/r1/poster.jpg"
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket="media", Prefix="vod/hls/vid4/r1/")["Contents"]}
        assert {"vod/hls/vid4/r1/poster.jpg", "vod/hls/vid4/r1/thumbs/thumbs.vtt",
                "vod/hls/vid4/r1/thumbs/sprite_000.jpg"} <= keys
        vtt = s3.get_object(Bucket="media", Key="vod/hls/vid4/r1/thumbs/thumbs.vtt")["Body"].read().decode()
        assert len(parse_vtt(vtt)) == out["count"] == 3
        poster = s3.get_object(Bucket="media", Key="vod/hls/vid4/r1/poster.jpg")["Body"].read()
        assert poster[:2] == b"\xff\xd8", "a JPEG"
    finally:
        server.stop()
        reset_settings()


@pytest.mark.parametrize("rate", [Fraction(30000, 1001), Fraction(25), Fraction(60000, 1001)])
def test_every_preview_belongs_to_exactly_one_chunk(rate):
    """Chunks cut at arbitrary frames (NTSC rates put joins a hair off every whole second):
    each preview is taken by exactly one chunk, and that chunk holds its frame."""
    from tasks.thumbnails import preview_plan, preview_targets

    frames = int(rate * 95)
    duration = float(frames / rate)
    half = float(1 / rate / 2)
    plan = preview_plan(duration, 1920, 1080)
    cuts = [0, 1, 300, 301, 600, 899, 1200, 1201, 1500, 2000, frames]
    cuts = sorted({c for c in cuts if c <= frames})
    seen = []
    for a, b in zip(cuts, cuts[1:]):
        start, end = float(a / rate), float(b / rate)
        for k, rel in preview_targets(plan, start, end, half):
            # the first frame at or after the target, on the chunk's own frame grid
            n = max(0, math.ceil((rel - 1e-9) * rate))
            assert a + n < b, (k, a, b, n)
            assert abs(float((a + n) / rate) - k * plan["interval"]) <= half + 1e-9
            seen.append(k)
    assert sorted(seen) == list(range(len(seen))) == list(range(plan["count"]))
