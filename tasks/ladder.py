"""Choose the quality ladder for a source: never upscale, even sizes, square pixels.

Rungs are named by the short side of the displayed picture ("720p" is 1280x720 for landscape
and 720x1280 for portrait). Caps follow Apple's HLS authoring ladder; rate control is capped
quality (CRF with maxrate/bufsize), so easy content costs fewer bits than the cap. A rung is
H.264 High at the lowest level that holds it, never above 4.2 (the media rules: what every HLS
player decodes in hardware). A picture too big for 4.2 at its frame rate (1440p and 2160p) is
HEVC instead, Main (Main10 for a source of more than 8 bits), at most level 5.0, in fragmented
MP4 (Apple's HLS authoring rules: HEVC must be fMP4, at most level 5.0), next to the unchanged
H.264 rungs that every player can play; a picture even HEVC 5.0 cannot hold is left out.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

from tasks.ffmpeg import PermanentMediaError
from tasks.probe import MediaInfo

# short side -> maxrate kb/s at 30 fps (Apple's authoring ladder, capped-CRF peaks)
STANDARD_RUNGS: list[tuple[int, int]] = [
    (360, 1100),
    (480, 2000),
    (720, 4500),
    (1080, 7800),
    (1440, 14000),
    (2160, 25000),
]
AUDIO_BITRATE = 128_000
CRF = 23
PRESET = "veryfast"
MAX_LEVEL = "4.2"
HIGH_FPS = 31.0  # above this, maxrate is scaled up (more frames to pay for)
OWN_RUNG_MARGIN = 1.05  # a source this much above a standard rung keeps its own size as top rung

# H.264 Table A-1: level -> (MaxMBPS, MaxFS, MaxBR kb/s, MaxCPB kbit), Main/Baseline figures;
# High profile allows 1.25x the bit rate and buffer (Table A-2, cpbBrVclFactor 1250).
H264_LEVELS: list[tuple[str, int, int, int, int]] = [
    ("3.0", 40500, 1620, 10000, 10000),
    ("3.1", 108000, 3600, 14000, 14000),
    ("3.2", 216000, 5120, 20000, 20000),
    ("4.0", 245760, 8192, 20000, 25000),
    ("4.1", 245760, 8192, 50000, 62500),
    ("4.2", 522240, 8704, 50000, 62500),
    ("5.0", 589824, 22080, 135000, 135000),
    ("5.1", 983040, 36864, 240000, 240000),
    ("5.2", 2073600, 36864, 240000, 240000),
]
HIGH_FACTOR = 1.25

# H.265 Table A.8: level -> (MaxLumaPs, MaxLumaSr, MaxBR kb/s, MaxCPB kbit), Main tier; Main and
# Main10 use these figures as they are (CpbVclFactor 1000, Table A.9)
HEVC_LEVELS: list[tuple[str, int, int, int, int]] = [
    ("3.1", 983040, 33177600, 10000, 10000),
    ("4.0", 2228224, 66846720, 12000, 12000),
    ("4.1", 2228224, 133693440, 20000, 20000),
    ("5.0", 8912896, 267386880, 25000, 25000),
    ("5.1", 8912896, 534773760, 40000, 40000),
]
HEVC_MAX_LEVEL = "5.0"
# HEVC reaches H.264's picture at roughly two thirds of its bit rate; its caps are H.264's
# scaled by this, and its CRF is x265's default 28, which FFmpeg's H.265 guide gives as the
# visual match of x264's 23 at about half the size.
HEVC_RATE = 0.65
HEVC_CRF = 28
H264, HEVC = "h264", "hevc"


class LadderError(PermanentMediaError):
    """No rung can be made from this source (retrying cannot help)."""


@dataclass(frozen=True)
class Rung:
    name: str
    width: int
    height: int
    maxrate: int  # bits/s
    bufsize: int  # bits
    crf: int
    profile: str
    level: str
    preset: str = PRESET
    codec: str = H264  # "hevc": fragmented MP4 segments, see tasks.package

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Rung":
        return cls(**d)

    @property
    def short_side(self) -> int:
        return min(self.width, self.height)


def _even(x: float) -> int:
    return max(2, int(round(x / 2.0)) * 2)


def macroblocks(width: int, height: int) -> int:
    return math.ceil(width / 16) * math.ceil(height / 16)


def h264_level(width: int, height: int, fps: float, maxrate: int, bufsize: int) -> str | None:
    """The lowest H.264 level (High profile) that holds this picture size, frame rate and VBV;
    None when even 5.2 cannot."""
    mbs = macroblocks(width, height)
    # frame size limit also bounds each dimension: sqrt(8 * MaxFS) macroblocks
    for name, max_mbps, max_fs, max_br, max_cpb in H264_LEVELS:
        side_limit = math.sqrt(8 * max_fs)
        if (mbs <= max_fs and mbs * fps <= max_mbps
                and math.ceil(width / 16) <= side_limit and math.ceil(height / 16) <= side_limit
                and maxrate <= max_br * 1000 * HIGH_FACTOR and bufsize <= max_cpb * 1000 * HIGH_FACTOR):
            return name
    return None


def hevc_level(width: int, height: int, fps: float, maxrate: int, bufsize: int) -> str | None:
    """The lowest HEVC level (Main tier) that holds this picture size, frame rate and VBV;
    None when even 5.1 cannot."""
    ps = width * height
    for name, max_ps, max_sr, max_br, max_cpb in HEVC_LEVELS:
        side_limit = math.sqrt(8 * max_ps)
        if (ps <= max_ps and ps * fps <= max_sr and width <= side_limit and height <= side_limit
                and maxrate <= max_br * 1000 and bufsize <= max_cpb * 1000):
            return name
    return None


def is_high_bit_depth(pix_fmt: str | None) -> bool:
    """More than 8 bits per sample (yuv420p10le, p010le, yuv422p12le...): HEVC Main10 keeps it."""
    return bool(re.search(r"p1[0-6]|p0[1-9]0", pix_fmt or ""))


def _level_value(level: str) -> float:
    return float(level)


def codec_string(level: str, profile_idc: int = 100) -> str:
    """RFC 6381 codec string for H.264 High at a level: avc1.64001f for 3.1."""
    level_idc = int(round(float(level) * 10))
    return f"avc1.{profile_idc:02x}00{level_idc:02x}"


def _display_aspect(info: MediaInfo) -> float:
    """Width/height as displayed, exactly (display_width is rounded: 720x480 at SAR 32:27 is
    853.33 wide, and 16:9 must come out 854x480, not 852x480)."""
    try:
        num, den = (int(x) for x in (info.sample_aspect or "1:1").replace("/", ":").split(":"))
        sar = num / den if num > 0 and den > 0 else 1.0
    except ValueError:
        sar = 1.0
    if info.width and info.height:
        aspect = info.width * sar / info.height
        return 1 / aspect if info.rotation in (90, 270) else aspect
    return info.display_width / info.display_height


def choose_ladder(info: MediaInfo) -> list[Rung]:
    """The rungs for this source, lowest first."""
    dw, dh = info.display_width, info.display_height
    if dw <= 0 or dh <= 0:
        raise LadderError("the source has no picture size")
    landscape = dw >= dh
    short = min(dw, dh)
    aspect = _display_aspect(info)
    fps = info.frame_rate or 30.0
    fps_factor = 1.5 if fps > HIGH_FPS else 1.0
    sides: list[tuple[int, int]] = [(s, r) for s, r in STANDARD_RUNGS if s <= short]
    if not sides:
        # smaller than the lowest rung: one rung at the source's size, cap scaled by area
        base_side, base_rate = STANDARD_RUNGS[0]
        own = _even(short)
        sides = [(own, max(200, int(base_rate * (own / base_side) ** 2)))]
    elif short >= sides[-1][0] * OWN_RUNG_MARGIN and len(sides) < len(STANDARD_RUNGS):
        # the source's own size sits between two rungs: keep it as the top rung
        lo_side, lo_rate = sides[-1]
        hi_side, hi_rate = STANDARD_RUNGS[len(sides)]
        own = _even(short) if _even(short) <= short else _even(short) - 2
        frac = (own - lo_side) / (hi_side - lo_side)
        sides.append((own, int(lo_rate + frac * (hi_rate - lo_rate))))
    rungs: list[Rung] = []
    for side, maxrate_k in sides:
        long_side = _even(side * (aspect if landscape else 1 / aspect))
        width, height = (long_side, side) if landscape else (side, long_side)
        maxrate = int(maxrate_k * 1000 * fps_factor)
        bufsize = 2 * maxrate
        level = h264_level(width, height, fps, maxrate, bufsize)
        if level is not None and _level_value(level) <= _level_value(MAX_LEVEL):
            rungs.append(Rung(name=f"{side}p", width=width, height=height, maxrate=maxrate,
                              bufsize=bufsize, crf=CRF, profile="high", level=level))
            continue
        # too big for every H.264 player: HEVC, for the players that have it
        maxrate = int(maxrate * HEVC_RATE)
        # the buffer is two seconds of the cap where the level's CPB allows, else the CPB
        level = hevc_level(width, height, fps, maxrate, maxrate)
        if level is None or _level_value(level) > _level_value(HEVC_MAX_LEVEL):
            continue
        bufsize = min(2 * maxrate, next(cpb for n, *_, cpb in HEVC_LEVELS if n == level) * 1000)
        rungs.append(Rung(name=f"{side}p", width=width, height=height, maxrate=maxrate, bufsize=bufsize,
                          crf=HEVC_CRF, profile="main10" if is_high_bit_depth(info.pix_fmt) else "main",
                          level=level, codec=HEVC))
    if not any(r.codec == H264 for r in rungs):
        raise LadderError(
            f"no H.264 level up to {MAX_LEVEL} holds {dw}x{dh} at {fps:g} fps; "
            "re-export the video at 60 fps or less")
    return rungs
