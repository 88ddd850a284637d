"""Probe a source with ffprobe and normalise what the pipeline needs into `MediaInfo`."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

from config import storage
from config.settings import get_settings
from tasks import ffmpeg
from tasks.ffmpeg import MediaError, PermanentMediaError

# ffprobe's field orders of an interlaced stream. "tt" and "bb" are unambiguous; "tb" and "bt"
# are not: ffmpeg documents "tb" as top stored first, bottom shown first (QuickTime's meaning),
# yet top-field-first H.264 that ffmpeg writes to Matroska reads back as "tb". For those the
# decoded frames decide; without them the first letter is taken as the field shown first.
INTERLACED_FIELD_ORDERS = ("tt", "bb", "tb", "bt")
# decoded frames read when the stream does not say how it is scanned (DV, AVI, MPEG-4 Part 2…)
FIELD_PROBE_PACKETS = 8


@dataclass
class MediaInfo:
    duration: float
    width: int  # coded (storage) size
    height: int
    display_width: int  # after non-square pixels and rotation
    display_height: int
    display_aspect: str  # "16:9"
    sample_aspect: str  # "1:1"
    rotation: int  # degrees clockwise the player must rotate: 0, 90, 180, 270
    frame_rate: float
    frame_rate_fraction: str  # "30000/1001"
    variable_frame_rate: bool
    video_codec: str
    pix_fmt: str
    bitrate: int | None
    format_name: str
    audio_codec: str | None = None
    audio_channels: int = 0
    audio_sample_rate: int | None = None
    audio_layout: str | None = None
    video_stream_index: int = 0
    audio_stream_index: int | None = None
    size_bytes: int | None = None
    extra: dict = field(default_factory=dict)
    # as ffprobe names it: progressive, tt, bb, tb, bt or unknown; resolved from the first decoded
    # frames where the stream says unknown, tb or bt (see `field_order_from`). Probes stored
    # before it was read load as "unknown": encoded as progressive, as they were.
    field_order: str = "unknown"
    # every audio stream the pipeline encodes, the main one first (`audio_tracks_of`); probes
    # stored before they were read load with none and use the one `audio_stream_index` names
    audio_tracks: list = field(default_factory=list)
    # audio streams it cannot use, with the reason (listed in the ingest report)
    audio_skipped: list = field(default_factory=list)

    def __post_init__(self):
        if not self.audio_tracks and self.audio_stream_index is not None:
            self.audio_tracks = [{"index": self.audio_stream_index, "codec": self.audio_codec or "unknown",
                                  "language": None, "title": None, "channels": self.audio_channels,
                                  "default": True, "role": MAIN}]

    @property
    def has_audio(self) -> bool:
        return self.audio_codec is not None

    @property
    def interlaced(self) -> bool:
        return self.field_order in INTERLACED_FIELD_ORDERS

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "MediaInfo":
        return cls(**d)


def _fraction(text: str | None) -> Fraction | None:
    if not text or text in ("0/0", "N/A"):
        return None
    try:
        f = Fraction(text.replace(":", "/"))
    except (ValueError, ZeroDivisionError):
        return None
    return f if f > 0 else None


def _rotation(stream: dict) -> int:
    rot = None
    for sd in stream.get("side_data_list") or []:
        if "rotation" in sd:
            rot = float(sd["rotation"])
    if rot is None and "rotate" in (stream.get("tags") or {}):
        rot = -float(stream["tags"]["rotate"])
    if rot is None:
        return 0
    # display matrix rotation is counter-clockwise; players rotate clockwise by -rot
    return int(round(-rot)) % 360


def field_order_from(stream_order: str | None, frames: list[dict] | None = None) -> str:
    """The scan of a video from its stream's `field_order` and, where given, its first decoded
    frames (`interlaced_frame`, `top_field_first`). Frames overrule an unknown, "tb" or "bt"
    stream: DV says nothing at stream level yet every frame is bottom field first, and "tb"/"bt"
    are read differently by different muxers; the decoder's flags are what a player acts on."""
    order = stream_order if stream_order in (*INTERLACED_FIELD_ORDERS, "progressive") else "unknown"
    if not frames:
        return order
    flagged = [f for f in frames if str(f.get("interlaced_frame")) == "1"]
    if 2 * len(flagged) > len(frames):
        top_first = sum(str(f.get("top_field_first")) == "1" for f in flagged)
        return "tt" if 2 * top_first >= len(flagged) else "bb"
    # frames not flagged: a stream flagged interlaced only by its container stays so
    return "progressive" if order == "unknown" else order


def _ratio_text(w: int, h: int) -> str:
    g = math.gcd(w, h) or 1
    return f"{w // g}:{h // g}"


def parse(data: dict, size_bytes: int | None = None) -> MediaInfo:
    """Normalise ffprobe JSON; raise PermanentMediaError if there is no usable video."""
    streams = data.get("streams") or []
    fmt = data.get("format") or {}
    video = next(
        (s for s in streams if s.get("codec_type") == "video"
         and not (s.get("disposition") or {}).get("attached_pic")),
        None,
    )
    if video is None:
        if any(s.get("codec_type") == "audio" for s in streams):
            raise PermanentMediaError("this file has audio but no video stream; vodflow needs a video")
        raise PermanentMediaError("no video stream found: this is not a video file")
    width, height = int(video.get("width") or 0), int(video.get("height") or 0)
    if width <= 0 or height <= 0:
        raise PermanentMediaError("the video stream has no picture size; the file may be corrupt")
    duration = None
    for candidate in (fmt.get("duration"), video.get("duration")):
        try:
            if candidate not in (None, "N/A") and float(candidate) > 0:
                duration = float(candidate)
                break
        except ValueError:
            continue
    if duration is None:
        raise PermanentMediaError("the video has no duration; the file may be truncated")
    sar = _fraction(video.get("sample_aspect_ratio")) or Fraction(1)
    rotation = _rotation(video)
    disp_w = int(round(width * sar))
    disp_h = height
    if rotation in (90, 270):
        disp_w, disp_h = disp_h, disp_w
    avg = _fraction(video.get("avg_frame_rate"))
    real = _fraction(video.get("r_frame_rate"))
    rate = avg or real
    if rate is None or rate > 1000:
        raise PermanentMediaError("the video has no usable frame rate")
    vfr = bool(avg and real and abs(float(avg) - float(real)) > 0.01 * float(real))
    tracks, skipped = audio_tracks_of(streams)
    audio = next((s for s in streams if tracks and s.get("index") == tracks[0]["index"]), None)
    bitrate = fmt.get("bit_rate") or video.get("bit_rate")
    return MediaInfo(
        duration=duration,
        width=width,
        height=height,
        display_width=disp_w,
        display_height=disp_h,
        display_aspect=_ratio_text(disp_w, disp_h),
        sample_aspect=f"{sar.numerator}:{sar.denominator}",
        rotation=rotation,
        frame_rate=round(float(rate), 3),
        frame_rate_fraction=f"{rate.numerator}/{rate.denominator}",
        variable_frame_rate=vfr,
        video_codec=video.get("codec_name", "unknown"),
        pix_fmt=video.get("pix_fmt", "unknown"),
        bitrate=int(bitrate) if bitrate and str(bitrate).isdigit() else None,
        format_name=fmt.get("format_name", ""),
        audio_codec=audio.get("codec_name") if audio else None,
        audio_channels=int(audio.get("channels") or 0) if audio else 0,
        audio_sample_rate=int(audio["sample_rate"]) if audio and audio.get("sample_rate") else None,
        audio_layout=audio.get("channel_layout") if audio else None,
        video_stream_index=int(video.get("index", 0)),
        audio_stream_index=int(audio["index"]) if audio else None,
        size_bytes=size_bytes or (int(fmt["size"]) if str(fmt.get("size", "")).isdigit() else None),
        field_order=field_order_from(video.get("field_order")),
        audio_tracks=tracks,
        audio_skipped=skipped,
    )


# An audio stream's role, from its disposition: a commentary or an audio description for blind
# and partially sighted viewers is offered, never picked for a viewer who did not ask for it.
COMMENTARY, DESCRIPTION, MAIN = "commentary", "description", "main"


def _audio_role(disposition: dict) -> str:
    if disposition.get("comment"):
        return COMMENTARY
    if disposition.get("visual_impaired") or disposition.get("descriptions"):
        return DESCRIPTION
    return MAIN


def audio_tracks_of(streams: list[dict]) -> tuple[list[dict], list[dict]]:
    """(tracks, skipped): each audio stream of the source the encoder can use, as
    {index, codec, channels, language, title, default, role}, the main track first (the first
    stream flagged default that is not a commentary or a description, else the first main one,
    else the first), the others in stream order; and the streams it cannot use, with why."""
    tracks, skipped = [], []
    for st in streams:
        if st.get("codec_type") != "audio":
            continue
        tags = {k.lower(): v for k, v in (st.get("tags") or {}).items()}
        disposition = st.get("disposition") or {}
        codec = st.get("codec_name")
        language = tags.get("language")
        desc = {"index": int(st["index"]), "codec": codec or "unknown",
                "language": language if language and language.lower() not in ("und", "unk", "xx") else None,
                "title": (tags.get("title") or "").strip() or None}
        if not codec or codec == "none":
            skipped.append({**desc, "reason": "ffmpeg has no decoder for this audio codec"})
            continue
        if not str(st.get("sample_rate") or "").isdigit() or int(st["sample_rate"]) <= 0:
            skipped.append({**desc, "reason": "the stream has no sample rate; it may be empty or damaged"})
            continue
        tracks.append({**desc, "channels": int(st.get("channels") or 0),
                       "default": bool(disposition.get("default")), "role": _audio_role(disposition)})
    main = (next((t for t in tracks if t["default"] and t["role"] == MAIN), None)
            or next((t for t in tracks if t["role"] == MAIN), None) or (tracks[0] if tracks else None))
    if main is not None:
        tracks = [main] + [t for t in tracks if t is not main]
    return tracks, skipped


def first_frames(path: str | Path, stream_index: int, packets: int = FIELD_PROBE_PACKETS) -> list[dict]:
    """How the first decoded frames of a stream are scanned: a decode of a few packets only."""
    rows = ffmpeg.iter_probe_rows(path, timeout=get_settings().probe_timeout, section="frame",
                                  entries="interlaced_frame,top_field_first", stream=str(stream_index),
                                  extra=["-read_intervals", f"%+#{packets}"])
    return [dict(zip(("interlaced_frame", "top_field_first"), row)) for row in rows]


def probe_path(path: str | Path) -> MediaInfo:
    data = ffmpeg.probe_json(path, timeout=get_settings().probe_timeout)
    info = parse(data, size_bytes=Path(path).stat().st_size)
    if info.field_order not in ("progressive", "tt", "bb"):
        # the stream does not say (or says ambiguously) how it is scanned: ask the decoder
        try:
            info.field_order = field_order_from(info.field_order, first_frames(path, info.video_stream_index))
        except MediaError:
            pass  # frames that cannot be decoded are for the split and the encodes to report
    return info


def probe(source_url: str) -> MediaInfo:
    """Probe a stored source by URL."""
    with storage.local_copy(source_url, get_settings().work_dir) as path:
        return probe_path(path)
