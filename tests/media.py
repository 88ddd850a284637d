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
