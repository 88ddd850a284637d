"""Test media, generated at test time with ffmpeg's lavfi sources (never committed)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def make_clip(
    path: str | Path,
    *,
    duration: float = 4.0,
    size: str = "640x360",
    rate: str = "30",
    audio: bool = True,
    channels: int = 2,
    vcodec: str = "libx264",
    gop: int | None = None,
    bframes: int | None = None,
    extra_video: list[str] | None = None,
    extra_output: list[str] | None = None,
    source: str = "testsrc2",
) -> Path:
    """A clip with a moving test pattern (and a tone): real frames ffprobe and players accept."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["ffmpeg", "-v", "error", "-y",
           "-f", "lavfi", "-i", f"{source}=size={size}:rate={rate}:duration={duration}"]
    if audio:
        layout = {1: "mono", 2: "stereo", 6: "5.1"}[channels]
        cmd += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={duration}",
                "-filter:a", f"aformat=channel_layouts={layout}"]
    cmd += ["-c:v", vcodec, "-pix_fmt", "yuv420p"]
    if vcodec == "libx264":
        cmd += ["-preset", "ultrafast"]
    if gop:
        cmd += ["-g", str(gop)]
    if bframes is not None:
        cmd += ["-bf", str(bframes)]
    cmd += extra_video or []
    if audio:
        cmd += ["-c:a", "aac", "-b:a", "96k", "-shortest"]
    cmd += extra_output or []
    cmd.append(str(path))
    subprocess.run(cmd, check=True)
    return path


def ffprobe_json(target: str, *args: str) -> dict:
    import json

    out = subprocess.run(["ffprobe", "-v", "error", "-print_format", "json", *args, target],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


# ---------------------------------------------------------------------------------------------
# a corpus of the files old archives hold: every container/codec pair a legacy library meets.
# Each is at least 20 s with 1-2 s GOPs (so it spans several chunks) and as small as the codec
# allows; kind -> (file name, output options after the two lavfi inputs, picture size, rate)

_TONE = "sine=frequency=440:sample_rate={sr}:duration={d}"

LEGACY_KINDS: dict[str, tuple[str, list[str], str, str, int]] = {
    # DivX/Xvid: MPEG-4 Part 2 with B-frames, FourCC XVID, MP3
    "avi-xvid": ("xvid.avi", ["-c:v", "mpeg4", "-bf", "2", "-g", "25", "-q:v", "5", "-vtag", "XVID",
                              "-c:a", "libmp3lame", "-b:a", "96k"], "320x240", "25", 44100),
    "avi-h264": ("h264.avi", ["-c:v", "libx264", "-preset", "ultrafast", "-bf", "2", "-g", "50",
                              "-pix_fmt", "yuv420p", "-c:a", "libmp3lame", "-b:a", "96k"], "320x240", "25", 44100),
    "avi-mjpeg": ("mjpeg.avi", ["-c:v", "mjpeg", "-q:v", "6", "-pix_fmt", "yuvj420p", "-c:a", "pcm_s16le"],
                  "320x240", "30000/1001", 48000),
    # DV is fixed at 720x576 (PAL); short GOPs are implied (every frame is a keyframe)
    "dv": ("pal.dv", ["-c:v", "dvvideo", "-pix_fmt", "yuv420p", "-c:a", "pcm_s16le", "-ac", "2", "-f", "dv"],
           "720x576", "25", 48000),
    "wmv": ("clip.wmv", ["-c:v", "wmv2", "-g", "30", "-b:v", "600k", "-c:a", "wmav2", "-b:a", "96k"],
            "320x240", "30000/1001", 44100),
    "flv": ("clip.flv", ["-c:v", "flv", "-g", "30", "-b:v", "500k", "-c:a", "libmp3lame", "-b:a", "96k"],
            "320x240", "30000/1001", 44100),
    "vob": ("clip.vob", ["-c:v", "mpeg2video", "-bf", "2", "-g", "12", "-b:v", "1500k", "-c:a", "mp2",
                         "-b:a", "192k", "-f", "vob"], "352x288", "25", 48000),
    "3gp-h263": ("clip.3gp", ["-c:v", "h263", "-g", "30", "-b:v", "200k", "-c:a", "aac", "-ac", "1",
                              "-b:a", "32k", "-ar", "22050"], "176x144", "30000/1001", 22050),
    "m2ts-ac3": ("clip.m2ts", ["-c:v", "libx264", "-preset", "ultrafast", "-bf", "2", "-g", "30",
                               "-pix_fmt", "yuv420p", "-c:a", "ac3", "-b:a", "192k", "-f", "mpegts",
                               "-mpegts_m2ts_mode", "1"], "320x240", "30000/1001", 48000),
    "webm-vp8": ("clip.webm", ["-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "400k",
                               "-g", "30", "-c:a", "libvorbis", "-q:a", "3"], "320x240", "30", 48000),
    "ogg-theora": ("clip.ogv", ["-c:v", "libtheora", "-q:v", "5", "-g", "30", "-c:a", "libvorbis", "-q:a", "3"],
                   "320x240", "30", 48000),
    # MPEG-2 4:2:2 in MXF OP1a: broadcast files are SD, but the muxer takes any MPEG-2 size, and
    # CIF keeps the ladder to one rung (at 720x576 it was three)
    "mxf-mpeg2": ("clip.mxf", ["-c:v", "mpeg2video", "-bf", "2", "-g", "12", "-b:v", "4000k",
                               "-pix_fmt", "yuv422p", "-c:a", "pcm_s16le", "-f", "mxf"], "352x288", "25", 48000),
    "mov-prores": ("clip.mov", ["-c:v", "prores", "-profile:v", "0", "-pix_fmt", "yuv422p10le",
                                "-c:a", "pcm_s16le"], "320x240", "25", 48000),
}


def make_legacy(directory: str | Path, kind: str, *, duration: float = 20.0) -> Path:
    """One file of the legacy corpus (see LEGACY_KINDS), made once per directory."""
    name, options, size, rate, sample_rate = LEGACY_KINDS[kind]
    path = Path(directory) / f"legacy-{name}"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("part-" + path.name)
    cmd = ["ffmpeg", "-v", "error", "-y",
           "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}:duration={duration}",
           "-f", "lavfi", "-i", _TONE.format(sr=sample_rate, d=duration),
           *options, "-shortest", str(tmp)]
    subprocess.run(cmd, check=True)
    tmp.rename(path)
    return path
