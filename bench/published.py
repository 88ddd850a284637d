"""Published HLS videos made without the ingest flow, for the player benchmark and the tests.

One ffmpeg command encodes a lavfi clip into a small ladder (forced keyframes every 2 s, 6 s
segments, constant bit rates far enough apart that the ABR has a real choice), plus a source
mp4 for the thumbnail task. The sound is in every rung's segments, or (`audio_rendition=True`)
its own rendition in `audio/`, as the pipeline publishes it. The files go into storage where
the pipeline would put them and the catalog gets READY `Video` and `Rendition` rows pointing at them. `web_app` serves them
with the production command, `vodflow web`.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import m3u8

from catalog.db import reset_engines, session_scope
from catalog.models import Rendition, RenditionStatus, Video, VideoStatus
from catalog.state import get_video, now
from config import storage
from config.settings import reset_settings
from tasks import ffmpeg
from tasks.package import AUDIO_CODECS, AUDIO_RENDITION, PLAYLIST, SEGMENT_PATTERN, media_playlist
from tasks.thumbnails import make_thumbnails


@dataclass(frozen=True)
class TestRung:
    name: str
    width: int
    height: int
    kbps: int


# 16:9, bit rates spaced ~3x so a throttled link clearly fits only the lowest
DEFAULT_RUNGS = (
    TestRung("480p", 854, 480, 2400),
    TestRung("360p", 640, 360, 800),
    TestRung("240p", 426, 240, 250),
)


def encode_ladder(workdir: Path, *, duration: float, rungs=DEFAULT_RUNGS, fps: int = 25,
                  keyframe_s: float = 2.0, segment_s: float = 6.0, audio_rendition: bool = False) -> Path:
    """One ffmpeg run: `workdir/{rung}/index.m3u8` + `seg_NNNNN.ts` per rung and
    `workdir/source.mp4`. `audio_rendition`: the rungs carry no sound, which is encoded once
    into `workdir/audio/` (AAC in MPEG-TS, cut on the video's segment grid). Returns the
    source path."""
    workdir.mkdir(parents=True, exist_ok=True)
    n = len(rungs)
    top = max(rungs, key=lambda r: r.height)
    split = f"[0:v]split={n + 1}" + "".join(f"[v{i}]" for i in range(n + 1))
    scales = ";".join(f"[v{i}]scale={r.width}:{r.height},setsar=1[o{i}]" for i, r in enumerate(rungs))
    scales += f";[v{n}]null[o{n}]"  # the source keeps the full picture
    cmd = ["ffmpeg", "-v", "error", "-y",
           "-f", "lavfi", "-i", f"testsrc2=size={top.width}x{top.height}:rate={fps}:duration={duration}",
           "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={duration}",
           "-filter_complex", f"{split};{scales}"]
    for i, r in enumerate(rungs):
        (workdir / r.name).mkdir(exist_ok=True)
        k = r.kbps
        sound = [] if audio_rendition else ["-map", "1:a", "-c:a", "aac", "-b:a", "64k", "-ac", "2", "-ar", "48000"]
        cmd += ["-map", f"[o{i}]", *sound[:2],
                "-c:v", "libx264", "-preset", "ultrafast", "-profile:v", "high", "-pix_fmt", "yuv420p",
                "-b:v", f"{k}k", "-minrate", f"{k}k", "-maxrate", f"{k}k", "-bufsize", f"{k}k",
                "-x264-params", "nal-hrd=cbr:scenecut=0",
                "-force_key_frames", f"expr:gte(t,n_forced*{keyframe_s})",
                *sound[2:],
                "-f", "hls", "-hls_time", str(segment_s), "-hls_playlist_type", "vod",
                "-hls_flags", "independent_segments",
                "-hls_segment_filename", str(workdir / r.name / "seg_%05d.ts"),
                str(workdir / r.name / "index.m3u8")]
    audio = workdir / AUDIO_RENDITION
    if audio_rendition:
        # cut on the video's segment grid, as the pipeline's audio task does (the HLS muxer
        # would cut on AAC frames and leave the encoder's last padding frame a segment alone)
        audio.mkdir(exist_ok=True)
        cuts = [segment_s * k for k in range(1, math.ceil(duration / segment_s))]
        cmd += ["-map", "1:a", "-c:a", "aac", "-b:a", "64k", "-ac", "2", "-ar", "48000",
                "-f", "segment", "-segment_format", "mpegts",
                *(["-segment_times", ",".join(f"{t:g}" for t in cuts)] if cuts else ["-segment_time", "1e9"]),
                str(audio / SEGMENT_PATTERN)]
    cmd += ["-map", "[o%d]" % n, "-map", "1:a", "-c:v", "libx264", "-preset", "ultrafast",
            "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "64k", "-shortest", str(workdir / "source.mp4")]
    subprocess.run(cmd, check=True)
    if audio_rendition:
        # the audio playlist lists the same segment grid as the video's
        grid = [seg.duration for seg in m3u8.load(str(workdir / rungs[0].name / PLAYLIST)).segments]
        (audio / PLAYLIST).write_text(media_playlist(grid, len(grid), final=True))
    return workdir / "source.mp4"


def measure_rung(rung_dir: Path) -> dict:
    """Peak and average segment bit rates (RFC 8216 BANDWIDTH / AVERAGE-BANDWIDTH), codecs."""
    playlist = m3u8.load(str(rung_dir / "index.m3u8"))
    rates, total_bits, total_s = [], 0, 0.0
    for seg in playlist.segments:
        bits = (rung_dir / seg.uri).stat().st_size * 8
        rates.append(bits / seg.duration)
        total_bits += bits
        total_s += seg.duration
    probe = ffmpeg.probe_json(str(rung_dir / playlist.segments[0].uri), timeout=60)
    video = next((s for s in probe["streams"] if s["codec_type"] == "video"), None)
    sound = any(s["codec_type"] == "audio" for s in probe["streams"])
    codecs = [AUDIO_CODECS] if sound else []
    if video is not None:
        profile = {"High": "6400", "Main": "4d00", "Constrained Baseline": "42c0", "Baseline": "4200"}[video["profile"]]
        codecs.insert(0, f"avc1.{profile}{int(video['level']):02x}")
    return {
        "bandwidth": int(max(rates)),
        "average_bandwidth": int(total_bits / total_s),
        "codecs": ",".join(codecs),
        "segment_count": len(playlist.segments),
        "duration": total_s,
    }


@contextlib.contextmanager
def catalog_at(data_dir: Path, database_url: str | None = None):
    """Point this process's settings and catalog at `data_dir` (and at `database_url` when
    given, else the SQLite catalog in it) for a moment (module fixtures run outside the
    per-test environment)."""
    names = ("VODFLOW_DATA_DIR", "VODFLOW_STORAGE_URL", "VODFLOW_DATABASE_URL", "VODFLOW_CONFIG")
    saved = {name: os.environ.get(name) for name in names}
    os.environ["VODFLOW_DATA_DIR"] = str(data_dir)
    for name in names[1:]:
        os.environ.pop(name, None)
    if database_url:
        os.environ["VODFLOW_DATABASE_URL"] = database_url
    reset_settings()
    reset_engines()
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        reset_engines()
        reset_settings()


def create_video(title: str, *, duration: float | None = None, status: str = "PROCESSING",
                 progress: float = 0.0, stage: str | None = None) -> str:
    with session_scope() as s:
        v = Video(title=title, status=VideoStatus(status), progress=progress, stage=stage,
                  duration=duration, width=854, height=480, display_width=854, display_height=480,
                  display_aspect="16:9", frame_rate=25.0, video_codec="h264")
        s.add(v)
        s.flush()
        return v.id


def publish(video_id: str, workdir: Path, *, rungs=DEFAULT_RUNGS, run: str = "r1",
            thumbnails: bool = True, status: str = "READY", audio: bool = True) -> dict:
    """Store the encoded ladder of `workdir` as `hls/{video_id}/{run}/…` and mark it published,
    with its audio rendition when it has one (`audio=False`: published as a silent video)."""
    run_url = storage.url_for("hls", video_id, run)
    measured = {}
    for r in rungs:
        measured[r.name] = measure_rung(workdir / r.name)
        storage.publish_dir(workdir / r.name, storage.join(run_url, r.name))
    sound = None
    if audio and (workdir / AUDIO_RENDITION / PLAYLIST).exists():
        sound = measure_rung(workdir / AUDIO_RENDITION)
        storage.publish_dir(workdir / AUDIO_RENDITION, storage.join(run_url, AUDIO_RENDITION))
    thumbs = None
    if thumbnails:
        source_url = storage.url_for("sources", video_id, "source.mp4")
        storage.put_file(workdir / "source.mp4", source_url)
        thumbs = make_thumbnails(source_url, run_url)
    with session_scope() as s:
        v = get_video(s, video_id)
        for r in rungs:
            m = measured[r.name]
            # a variant's CODECS name the audio of the group it references too
            codecs = m["codecs"] + ("," + AUDIO_CODECS if sound and AUDIO_CODECS not in m["codecs"] else "")
            s.add(Rendition(video_id=video_id, run=run, name=r.name, width=r.width, height=r.height,
                            bandwidth=m["bandwidth"] + (sound["bandwidth"] if sound else 0),
                            average_bandwidth=m["average_bandwidth"] + (sound["average_bandwidth"] if sound else 0),
                            codecs=codecs, frame_rate=25.0,
                            playlist_url=storage.join(run_url, r.name, "index.m3u8"),
                            segment_count=m["segment_count"], available_seconds=m["duration"],
                            status=RenditionStatus.READY, published_at=now()))
        if sound and not any(x.run == run and x.kind == "audio" for x in v.renditions):
            s.add(Rendition(video_id=video_id, run=run, name=AUDIO_RENDITION, kind="audio", width=0, height=0,
                            bandwidth=sound["bandwidth"], average_bandwidth=sound["average_bandwidth"],
                            codecs=AUDIO_CODECS, playlist_url=storage.join(run_url, AUDIO_RENDITION, PLAYLIST),
                            segment_count=sound["segment_count"], available_seconds=sound["duration"],
                            status=RenditionStatus.READY, published_at=now()))
        v.current_run = run
        v.duration = v.duration or next(iter(measured.values()))["duration"]
        if thumbs:
            v.poster_url = thumbs["poster_url"]
            v.thumbnails_url = thumbs["thumbnails_url"]
        v.status = VideoStatus(status)
        if status == "READY":
            v.progress = 100.0
            v.ready_at = now()
    return {"video_id": video_id, "run": run, "thumbnails": thumbs, "renditions": measured, "audio": sound}


def make_published_video(title: str, *, duration: float = 30.0, rungs=DEFAULT_RUNGS,
                         thumbnails: bool = True) -> str:
    """Encode, store and catalog a READY video under the current settings; returns its id."""
    with tempfile.TemporaryDirectory(prefix="ladder-") as tmp:
        encode_ladder(Path(tmp), duration=duration, rungs=rungs)
        vid = create_video(title, duration=duration)
        publish(vid, Path(tmp), rungs=rungs, thumbnails=thumbnails)
    return vid


def server_env(data_dir: Path) -> dict:
    return {"VODFLOW_DATA_DIR": str(data_dir), "VODFLOW_WEB_WORKERS": "2"}


CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run",
                 # a test browser has no user gesture; viewers' browsers decide for themselves
                 "--autoplay-policy=no-user-gesture-required"]


def launch_chromium(playwright):
    return playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def web_app(env: dict, log_path: Path):
    """`vodflow web` (the production command) on a free loopback port with the settings `env`
    gives, until /healthz answers; stopped after. Yields the base URL."""
    port = free_port()
    cmd = [str(Path(sys.executable).with_name("vodflow")), "web"]
    full_env = {**os.environ, **env, "VODFLOW_WEB_HOST": "127.0.0.1", "VODFLOW_WEB_PORT": str(port)}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vodflow web exited with {proc.returncode}; see {log_path}")
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"vodflow web did not answer within 60 s; see {log_path}") from None
                time.sleep(0.2)
        yield base
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group, SIGKILL to what is left after 15 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
