"""Lip sync, measured on the published output: a source whose audio starts 0.5 s after the
video and ends 1 s after it, with white flashes and beeps meant to coincide. In every rung the
beep must start where the flash is shown, not merely the audio stream where the video stream
starts."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import m3u8
import pytest

from tests.transcode_support import (  # noqa: F401 - fixtures
    add_video,
    check_published,
    dask_cluster,
    ingest_env,
    local,
    run_ingest,
    video_row,
)

RATE = 25
DURATION = 20.0
AUDIO_DELAY = 0.5  # the audio stream starts this long after the video
AUDIO_OVERRUN = 1.0  # and ends this long after it
# flash/beep frames: mid-chunk, exactly on a chunk join (4.0 s), and near the end
FLASH_FRAMES = [62, 100, 287, 437]
BEEP_SECONDS = 0.12


def make_flash_and_beep(path: Path) -> Path:
    """640x480 25 fps H.264 + AAC in MP4; the audio track starts 0.5 s late (an edit list)."""
    enable = "+".join(f"eq(n\\,{n})" for n in FLASH_FRAMES)
    beeps = "+".join(f"between(t\\,{n / RATE - AUDIO_DELAY:.6f}\\,{n / RATE - AUDIO_DELAY + BEEP_SECONDS:.6f})"
                     for n in FLASH_FRAMES)
    audio_len = DURATION - AUDIO_DELAY + AUDIO_OVERRUN
    subprocess.run([
        "ffmpeg", "-v", "error", "-y",
        "-f", "lavfi", "-i", f"testsrc2=size=640x480:rate={RATE}:duration={DURATION}",
        "-itsoffset", str(AUDIO_DELAY),
        "-f", "lavfi", "-i", f"aevalsrc='0.5*sin(2*PI*1000*t)*({beeps})':s=48000:d={audio_len}",
        # dim the pattern so a flash is the only near-white frame
        "-vf", f"colorlevels=romax=0.4:gomax=0.4:bomax=0.4,"
               f"drawbox=x=0:y=0:w=iw:h=ih:color=white:t=fill:enable='{enable}'",
        "-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-pix_fmt", "yuv420p",
        "-c:a", "aac", "-b:a", "128k", str(path)], check=True)
    return path


def flash_times(concat: str) -> list[float]:
    """Presentation times of the white frames (mean luma near white), on the stream's clock."""
    out = subprocess.run(["ffmpeg", "-hide_banner", "-nostdin", "-copyts", "-protocol_whitelist", "concat,file,pipe",
                          "-i", concat, "-map", "0:v:0", "-vf", "showinfo", "-f", "null", "-"],
                         capture_output=True, text=True, check=True).stderr
    times = []
    for line in out.splitlines():
        m = re.search(r"pts_time:(\S+).*?mean:\[(\d+)", line)
        if m and int(m.group(2)) > 200:
            times.append(float(m.group(1)))
    return times


def video_start(concat: str) -> float:
    out = subprocess.run(["ffprobe", "-v", "error", "-protocol_whitelist", "concat,file,pipe", "-select_streams",
                          "v:0", "-show_entries", "frame=pts_time", "-read_intervals", "%+#1", "-of", "csv=p=0",
                          concat], capture_output=True, text=True, check=True).stdout
    return float(out.split()[0].strip(","))


def beep_onsets(concat: str) -> list[float]:
    """Where each beep starts (the end of the silence before it) on the stream's clock."""
    out = subprocess.run(["ffmpeg", "-hide_banner", "-nostdin", "-copyts", "-protocol_whitelist", "concat,file,pipe",
                          "-i", concat, "-map", "0:a:0", "-af", "silencedetect=noise=-30dB:duration=0.05",
                          "-f", "null", "-"], capture_output=True, text=True, check=True).stderr
    return [float(x) for x in re.findall(r"silence_end: (\S+)", out)]


def audio_end(segment: str) -> float:
    """End of the last audio packet of a segment, on the stream's clock."""
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries",
                          "packet=pts_time,duration_time", "-of", "csv=p=0", segment],
                         capture_output=True, text=True, check=True).stdout
    rows = [r.split(",")[:2] for r in out.split() if r]
    return max(float(p) + float(d) for p, d in rows if p not in ("", "N/A") and d not in ("", "N/A"))


def test_late_audio_keeps_lip_sync_in_every_rung(ingest_env, media_dir):
    src = media_dir / "flash-beep.mp4"
    if not src.exists():
        make_flash_and_beep(src)
    probed = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_type,start_time", "-of", "json",
                             str(src)], capture_output=True, text=True, check=True).stdout
    streams = {s["codec_type"]: s for s in json.loads(probed)["streams"]}
    # the source really is what the test is about: audio 0.5 s late, ending 1 s after the video
    assert float(streams["audio"]["start_time"]) - float(streams["video"]["start_time"]) == pytest.approx(0.5, abs=0.03)
    vid = add_video(src, title="lipsync")
    result, exc = run_ingest(vid)
    assert exc is None, f"{exc} / {video_row(vid)}"
    assert result["chunks"] >= 4  # the flash at 4.0 s sits on a chunk join
    facts = check_published(vid, src, expect_audio=True)
    assert len(facts["renditions"]) >= 2
    row = video_row(vid)
    frame = 1 / RATE

    def concat_of(rend) -> tuple[str, list[str]]:
        playlist = local(rend["playlist_url"])
        segs = [str(playlist.parent / s.uri) for s in m3u8.loads(playlist.read_text()).segments]
        return "concat:" + "|".join(segs), segs

    # the audio is one rendition every rung plays with, on the same clock as the video segments
    audio = next(r for r in row["renditions"] if r["name"] == "audio")
    audio_concat, audio_segs = concat_of(audio)
    for rend in row["renditions"]:
        if rend["name"] == "audio":
            continue
        concat, segs = concat_of(rend)
        v0 = video_start(concat)
        flashes = [t - v0 for t in flash_times(concat)]
        assert flashes == pytest.approx([n / RATE for n in FLASH_FRAMES], abs=frame / 4), (rend["name"], flashes)
        # (silencedetect also ends a silence where the stream ends: not a beep)
        onsets = [t - v0 for t in beep_onsets(audio_concat) if t - v0 < DURATION - 0.5]
        # the audio's first half second is the silence the late start leaves; the beeps follow
        assert len(onsets) == len(FLASH_FRAMES), (rend["name"], onsets)
        offsets_ms = [1000 * (a - f) for a, f in zip(onsets, flashes)]
        assert all(abs(o) <= 5.0 for o in offsets_ms), f"{rend['name']}: beep - flash = {offsets_ms} ms"
        # the audio stops with the video, not a second later
        end = audio_end(audio_segs[-1]) - v0
        assert end == pytest.approx(DURATION, abs=2 * frame), (rend["name"], end)
