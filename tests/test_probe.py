"""probe: ffprobe normalised, on real generated files."""

from __future__ import annotations

import subprocess

import pytest

from tasks.ffmpeg import PermanentMediaError
from tasks.probe import MediaInfo, field_order_from, probe_path
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


def _interlaced(path, *, tff: bool = True, codec: str = "libx264"):
    """50 pictures a second woven into 25 interlaced frames, coded as interlaced video."""
    weave = "tinterlace=interleave_top" if tff else "tinterlace=interleave_bottom,setfield=bff"
    flags = ["-flags", "+ildct+ilme"]
    flags += (["-x264-params", "tff=1" if tff else "bff=1"] if codec == "libx264" else ["-top", str(int(tff))])
    return make_clip(path, duration=1, size="320x240", rate="50", audio=False, vcodec=codec,
                     extra_video=["-vf", weave, *flags])


def test_interlaced_sources_say_their_field_order(tmp_path):
    i = probe_path(_interlaced(tmp_path / "tff.mp4"))
    assert i.field_order == "tt" and i.interlaced and i.frame_rate == 25
    # the same frames in Matroska read back as "tb": the decoded frames say top field first
    i = probe_path(_interlaced(tmp_path / "tff.mkv"))
    assert i.field_order == "tt" and i.interlaced
    i = probe_path(_interlaced(tmp_path / "bff.ts", tff=False, codec="mpeg2video"))
    assert i.field_order == "bb" and i.interlaced
    # DV says nothing at stream level; every decoded frame is bottom field first
    dv = tmp_path / "pal.dv"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=720x576:rate=25:duration=1",
                    "-c:v", "dvvideo", "-pix_fmt", "yuv420p", "-f", "dv", str(dv)], check=True)
    i = probe_path(dv)
    assert i.field_order == "bb" and i.interlaced
    # progressive, whether the stream says so (H.264) or only its frames do (MPEG-4 Part 2 in AVI)
    assert probe_path(make_clip(tmp_path / "p.mp4", duration=1, size="320x240", audio=False)).field_order \
        == "progressive"
    avi = make_clip(tmp_path / "p.avi", duration=1, size="320x240", audio=False, vcodec="mpeg4")
    i = probe_path(avi)
    assert i.field_order == "progressive" and not i.interlaced


def test_field_order_from_the_stream_and_the_first_frames():
    tff = [{"interlaced_frame": "1", "top_field_first": "1"}] * 8
    bff = [{"interlaced_frame": "1", "top_field_first": "0"}] * 8
    prog = [{"interlaced_frame": "0", "top_field_first": "0"}] * 8
    assert field_order_from("tt") == "tt" and field_order_from("progressive") == "progressive"
    assert field_order_from(None) == "unknown" and field_order_from("N/A") == "unknown"
    assert field_order_from("unknown", bff) == "bb" and field_order_from("unknown", prog) == "progressive"
    assert field_order_from("tb", tff) == "tt" and field_order_from("tb", bff) == "bb"
    # frames without the flag: the container's word stands (deinterlaced as it says)
    assert field_order_from("bt", prog) == "bt"
    # most of the first frames decide; a stray progressive frame does not
    assert field_order_from("unknown", tff[:6] + prog[:2]) == "tt"
    assert field_order_from("unknown", tff[:3] + prog[:5]) == "progressive"


def test_probes_stored_before_field_order_still_load(clip):
    i = probe_path(clip)
    d = i.to_dict()
    assert MediaInfo.from_dict(d) == i
    del d["field_order"]
    old = MediaInfo.from_dict(d)
    assert old.field_order == "unknown" and not old.interlaced
