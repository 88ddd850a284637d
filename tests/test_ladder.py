"""The ladder: never upscale, even sizes, display aspect kept, H.264 level right and <= 4.2,
HEVC (Main, Main10 for deep colour, level <= 5.0) only above what H.264 4.2 holds."""

from __future__ import annotations

import pytest

from tasks.ladder import HEVC, choose_ladder, codec_string, h264_level, hevc_level, macroblocks
from tasks.probe import MediaInfo


def info(w, h, *, sar="1:1", rotation=0, fps=30.0, pix_fmt="yuv420p") -> MediaInfo:
    num, den = (int(x) for x in sar.split(":"))
    dw, dh = round(w * num / den), h
    if rotation in (90, 270):
        dw, dh = dh, dw
    return MediaInfo(duration=10, width=w, height=h, display_width=dw, display_height=dh, display_aspect="",
                     sample_aspect=sar, rotation=rotation, frame_rate=fps, frame_rate_fraction=f"{int(fps)}/1",
                     variable_frame_rate=False, video_codec="h264", pix_fmt=pix_fmt, bitrate=None,
                     format_name="mp4")


def sizes(rungs):
    return [(r.name, r.width, r.height) for r in rungs]


def test_1080p_source_gets_the_standard_ladder():
    assert sizes(choose_ladder(info(1920, 1080))) == [
        ("360p", 640, 360), ("480p", 854, 480), ("720p", 1280, 720), ("1080p", 1920, 1080)]


def test_never_upscales_and_keeps_a_between_rungs_source_as_top():
    assert sizes(choose_ladder(info(1280, 800)))[-1] == ("800p", 1280, 800)
    assert [r.name for r in choose_ladder(info(1280, 720))] == ["360p", "480p", "720p"]
    # within 5 % of a rung: no near-duplicate top rung
    assert [r.name for r in choose_ladder(info(1296, 730))] == ["360p", "480p", "720p"]


def test_small_and_odd_sources_get_one_even_rung():
    assert sizes(choose_ladder(info(321, 241))) == [("240p", 320, 240)]


def test_portrait_rotated_and_non_square_pixels():
    assert sizes(choose_ladder(info(720, 1280)))[-1] == ("720p", 720, 1280)
    assert sizes(choose_ladder(info(1280, 720, rotation=90)))[-1] == ("720p", 720, 1280)
    # anamorphic DV: 720x480 at SAR 32:27 is shown 853x480
    assert sizes(choose_ladder(info(720, 480, sar="32:27"))) == [("360p", 640, 360), ("480p", 854, 480)]


def test_levels_fit_and_never_exceed_4_2():
    for src in (info(3840, 2160), info(3840, 2160, fps=60), info(1920, 1080, fps=60), info(2560, 1440)):
        rungs = choose_ladder(src)
        h264 = [r for r in rungs if r.codec == "h264"]
        assert h264[-1].height == 1080  # above 1080p H.264 needs level 5.x
        for r in h264:
            assert float(r.level) <= 4.2
            assert h264_level(r.width, r.height, src.frame_rate, r.maxrate, r.bufsize) == r.level
    by = {r.name: r.level for r in choose_ladder(info(1920, 1080))}
    assert by == {"360p": "3.0", "480p": "3.1", "720p": "3.1", "1080p": "4.0"}
    by60 = {r.name: r.level for r in choose_ladder(info(1920, 1080, fps=60))}
    assert by60 == {"360p": "3.1", "480p": "3.1", "720p": "3.2", "1080p": "4.2"}


@pytest.mark.parametrize("w,h,fps,level", [(640, 360, 30, "3.0"), (1280, 720, 30, "3.1"),
                                           (1280, 720, 60, "3.2"), (1920, 1080, 30, "4.0"),
                                           (1920, 1080, 60, "4.2"), (3840, 2160, 30, "5.1")])
def test_h264_level_table(w, h, fps, level):
    assert h264_level(w, h, fps, 1_000_000, 2_000_000) == level


def test_above_1080p_the_ladder_adds_hevc_rungs_up_to_level_5():
    uhd = choose_ladder(info(3840, 2160))
    assert [(r.name, r.codec, r.profile, r.level) for r in uhd] == [
        ("360p", "h264", "high", "3.0"), ("480p", "h264", "high", "3.1"), ("720p", "h264", "high", "3.1"),
        ("1080p", "h264", "high", "4.0"), ("1440p", HEVC, "main", "5.0"), ("2160p", HEVC, "main", "5.0")]
    for r in uhd[4:]:
        assert hevc_level(r.width, r.height, 30, r.maxrate, r.bufsize) == r.level
        assert r.maxrate < 25_000_000 and r.crf == 28
    # a 10-bit source keeps its depth in the HEVC rungs (Main10); the H.264 rungs stay 8-bit High
    deep = choose_ladder(info(3840, 2160, pix_fmt="yuv420p10le"))
    assert [r.profile for r in deep] == ["high"] * 4 + ["main10"] * 2
    # 2160p60 needs HEVC 5.1, above Apple's 5.0: left out; 1440p60 fits 5.0
    assert [(r.name, r.codec) for r in choose_ladder(info(3840, 2160, fps=60))][-2:] == [
        ("1080p", "h264"), ("1440p", HEVC)]
    # up to 1080p nothing changes
    assert {r.codec for r in choose_ladder(info(1920, 1080, fps=60))} == {"h264"}


def test_codec_strings_and_macroblocks():
    assert codec_string("3.1") == "avc1.64001f"
    assert codec_string("4.0") == "avc1.640028"
    assert macroblocks(1920, 1080) == 120 * 68


def test_60fps_raises_the_caps():
    r30 = choose_ladder(info(1280, 720))[-1]
    r60 = choose_ladder(info(1280, 720, fps=60))[-1]
    assert r60.maxrate == int(r30.maxrate * 1.5) and r60.bufsize == 2 * r60.maxrate
