"""probe: ffprobe normalised, on real generated files."""

from __future__ import annotations

import subprocess

import pytest

from tasks.ffmpeg import PermanentMediaError
from tasks.probe import probe_path
from tests.media import make_clip


def test_probe_reads_what_the_pipeline_needs(clip):
    i = probe_path(clip)
    assert (i.width, i.height, i.display_width, i.display_height) == (640, 360, 640, 360)
    assert i.display_aspect == "16:9" and i.sample_aspect == "1:1" and i.rotation == 0
    assert i.frame_rate == 30 and i.frame_rate_fraction == "30/1" and not i.variable_frame_rate
    assert i.video_codec == "h264" and i.pix_fmt == "yuv420p"
    assert i.audio_codec == "aac" and i.audio_channels == 2 and i.audio_sample_rate == 48000
    assert 3.9 < i.duration < 4.2 and i.has_audio


def test_rotation_and_non_square_pixels(tmp_path):
    base = make_clip(tmp_path / "b.mp4", duration=1, size="480x270", audio=False)
    rot = tmp_path / "rot.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(base), "-c", "copy", "-metadata:s:v:0", "rotate=90",
                    str(rot)], check=True)
    i = probe_path(rot)
    assert i.rotation in (90, 270) and (i.display_width, i.display_height) == (270, 480)
    ana = make_clip(tmp_path / "ana.mp4", duration=1, size="480x360", audio=False, extra_video=["-vf", "setsar=4/3"])
    i = probe_path(ana)
    assert (i.display_width, i.display_height, i.display_aspect) == (640, 360, "16:9")
    assert not i.has_audio


def test_5_1_and_60fps(tmp_path):
    i = probe_path(make_clip(tmp_path / "s.mp4", duration=1, size="320x240", rate="60", channels=6))
    assert i.audio_channels == 6 and i.frame_rate == 60


def test_audio_only_and_garbage_are_permanent_errors(tmp_path):
    song = tmp_path / "song.m4a"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=duration=1", str(song)], check=True)
    with pytest.raises(PermanentMediaError, match="no video"):
        probe_path(song)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00\x01garbage" * 1000)
    with pytest.raises(PermanentMediaError):
        probe_path(junk)
