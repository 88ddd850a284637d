"""Published HLS output for tests that need something to play, without the transcode pipeline.

One ffmpeg command turns a lavfi clip into a small ladder (`-f hls`, one folder per rung, the
layout the pipeline publishes: `{rung}/index.m3u8`, `{rung}/seg_NNNNN.ts`). `publish_video()`
copies it into the configured storage (local or S3) under `hls/{video_id}/{run}/` and adds the
Video and READY Rendition rows, measured from the segments as the pipeline does (BANDWIDTH the
peak segment bit rate, AVERAGE-BANDWIDTH the mean, CODECS from the stream).

Use the session fixture `hls_ladder` (import it into your test module) and `publish_video()`.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import m3u8
import pytest

# (name, width, height, video kb/s)
DEFAULT_RUNGS = (("360p", 640, 360, 900), ("180p", 320, 180, 250))


@dataclass(frozen=True)
class Rung:
    name: str
    width: int
    height: int
    bandwidth: int
    average_bandwidth: int
    codecs: str
    frame_rate: float
    segments: tuple[str, ...]


@dataclass(frozen=True)
class Ladder:
    """A generated ladder in a local folder: `{dir}/{rung}/index.m3u8` and its segments."""

    dir: Path
    rungs: tuple[Rung, ...]

    def rung(self, name: str) -> Rung:
        return next(r for r in self.rungs if r.name == name)


@dataclass
class PublishedVideo:
    video_id: str
    run: str
    ladder: Ladder
    renditions: list[str] = field(default_factory=list)

    def path(self, *parts: str) -> str:
        """URL path of a file of this video: path('360p', 'seg_00000.ts')."""
        return "/".join(["", "v", self.video_id, self.run, *parts])

    @property
    def master_path(self) -> str:
        return f"/v/{self.video_id}/master.m3u8"

    def local_file(self, *parts: str) -> Path:
        """The generated file behind a URL, to compare bytes with."""
        return self.ladder.dir.joinpath(*parts)


def make_ladder(out_dir: Path, *, duration: float = 4.0, rungs=DEFAULT_RUNGS, segment_seconds: int = 2,
                rate: int = 30) -> Ladder:
    """A real HLS ladder (H.264 + AAC-LC stereo in MPEG-TS) from a lavfi test pattern and tone,
    with one ffmpeg run and keyframes aligned across rungs."""
    out_dir = Path(out_dir)
    n = len(rungs)
    gop = segment_seconds * rate
    graph = f"[0:v]split={n}" + "".join(f"[s{i}]" for i in range(n)) + ";" + ";".join(
        f"[s{i}]scale={w}:{h},setsar=1[v{i}]" for i, (_, w, h, _) in enumerate(rungs))
    cmd = ["ffmpeg", "-v", "error", "-y",
           "-f", "lavfi", "-i", f"testsrc2=size={rungs[0][1]}x{rungs[0][2]}:rate={rate}:duration={duration}",
           "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={duration}",
           "-filter_complex", graph]
    for i, (name, _, _, kbps) in enumerate(rungs):
        (out_dir / name).mkdir(parents=True, exist_ok=True)
        cmd += ["-map", f"[v{i}]", "-map", "1:a",
                "-c:v", "libx264", "-preset", "veryfast", "-profile:v", "high", "-pix_fmt", "yuv420p",
                "-b:v", f"{kbps}k", "-maxrate", f"{kbps}k", "-bufsize", f"{2 * kbps}k",
                "-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0",
                "-c:a", "aac", "-b:a", "64k", "-ac", "2", "-ar", "48000",
                "-f", "hls", "-hls_time", str(segment_seconds), "-hls_playlist_type", "vod",
                "-hls_flags", "independent_segments",
                "-hls_segment_filename", str(out_dir / name / "seg_%05d.ts"),
                str(out_dir / name / "index.m3u8")]
    subprocess.run(cmd, check=True)
    return Ladder(out_dir, tuple(_measure(out_dir / name, name, w, h) for name, w, h, _ in rungs))


def _measure(rung_dir: Path, name: str, width: int, height: int) -> Rung:
    playlist = m3u8.load(str(rung_dir / "index.m3u8"))
    rates, bits, seconds = [], 0, 0.0
    for seg in playlist.segments:
        size = (rung_dir / seg.uri).stat().st_size
        rates.append(size * 8 / seg.duration)
        bits += size * 8
        seconds += seg.duration
    probe = json.loads(subprocess.run(
        ["ffprobe", "-v", "error", "-print_format", "json", "-show_streams",
         str(rung_dir / playlist.segments[0].uri)], check=True, capture_output=True, text=True).stdout)
    video = next(s for s in probe["streams"] if s["codec_type"] == "video")
    profile_idc = {"Baseline": 66, "Constrained Baseline": 66, "Main": 77, "High": 100}[video["profile"]]
    constraints = 0x40 if video["profile"] == "Constrained Baseline" else 0
    codecs = f"avc1.{profile_idc:02x}{constraints:02x}{int(video['level']):02x},mp4a.40.2"
    num, den = video["avg_frame_rate"].split("/")
    return Rung(name, width, height, int(max(rates)), int(bits / seconds), codecs,
                round(int(num) / int(den), 3), tuple(s.uri for s in playlist.segments))


def publish_video(ladder: Ladder, *, video_id: str | None = None, run: str | None = None,
                  rungs: list[str] | None = None, status: str = "READY",
                  title: str = "test pattern") -> PublishedVideo:
    """Copy the ladder into storage as run `run` of a new video and add its catalog rows.
    `rungs` limits which renditions are READY (the others are PENDING): a video mid-transcode."""
    from catalog.db import session_scope
    from catalog.models import RenditionStatus, Video, VideoStatus
    from config import storage

    video_id = video_id or secrets.token_hex(6)
    run = run or "r" + secrets.token_hex(4)
    ready = set(rungs) if rungs is not None else {r.name for r in ladder.rungs}
    storage.publish_dir(ladder.dir, storage.url_for("hls", video_id, run))
    with session_scope() as s:
        s.add(Video(id=video_id, title=title, status=VideoStatus(status), current_run=run,
                    progress=100.0 if status == "READY" else 50.0, duration=4.0,
                    width=ladder.rungs[0].width, height=ladder.rungs[0].height))
        s.flush()
        for r in ladder.rungs:
            s.add(_rendition(video_id, run, r, RenditionStatus.READY if r.name in ready else RenditionStatus.PENDING))
    return PublishedVideo(video_id, run, ladder, sorted(ready))


def _rendition(video_id: str, run: str, r: Rung, status):
    from catalog.models import Rendition, RenditionStatus
    from catalog.state import now
    from config import storage

    return Rendition(video_id=video_id, run=run, name=r.name, width=r.width, height=r.height,
                     bandwidth=r.bandwidth, average_bandwidth=r.average_bandwidth, codecs=r.codecs,
                     frame_rate=r.frame_rate, segment_count=len(r.segments), status=status,
                     playlist_url=storage.url_for("hls", video_id, run, r.name, "index.m3u8"),
                     published_at=now() if status == RenditionStatus.READY else None)


def mark_ready(video: PublishedVideo, rung: str) -> None:
    """Publish one more rendition of `video` (as the pipeline does when a rung finishes)."""
    from sqlalchemy import select

    from catalog.db import session_scope
    from catalog.models import Rendition, RenditionStatus
    from catalog.state import now

    with session_scope() as s:
        rend = s.scalars(select(Rendition).where(Rendition.video_id == video.video_id,
                                                 Rendition.run == video.run, Rendition.name == rung)).one()
        rend.status = RenditionStatus.READY
        rend.published_at = now()
    video.renditions = sorted({*video.renditions, rung})


@pytest.fixture(scope="session")
def hls_ladder(tmp_path_factory) -> Ladder:
    """A 4 s, two-rung ladder (360p, 180p; 2 s segments), generated once per session."""
    return make_ladder(tmp_path_factory.mktemp("hls-ladder"))


S3_BUCKET = "vodflow-test"


@pytest.fixture(scope="session")
def moto_s3():
    """A real S3 API (moto's server) on a free port for the session; yields its endpoint URL."""
    import os

    import boto3
    from moto.server import ThreadedMotoServer

    keys = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=S3_BUCKET)
    try:
        yield endpoint
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3_storage(moto_s3, monkeypatch) -> str:
    """Point vodflow's storage at a fresh prefix of the moto bucket for one test; yields the URL."""
    from config.settings import reset_settings

    url = f"s3://{S3_BUCKET}/t-{secrets.token_hex(4)}"
    monkeypatch.setenv("VODFLOW_STORAGE_URL", url)
    monkeypatch.setenv("VODFLOW_S3_ENDPOINT_URL", moto_s3)
    reset_settings()
    return url
