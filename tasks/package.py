"""HLS packaging by the chunk: segment layout, the timeline, media playlists and bit rates.

There is no packaging pass over a whole rung. Chunks start on segment boundaries, so each chunk
encode writes the final MPEG-TS segments of every rung itself (`tasks/encode.py`), the audio
task writes the audio rendition's segments on the same grid (`tasks/audio.py`), and the flow
publishes them by rewriting small playlists: a growing `EVENT` playlist that lists the segments
available so far (always a contiguous prefix from the start), then a finished `VOD` playlist
with `EXT-X-ENDLIST`. Segment N covers the same frames in every rung, and every `EXTINF` comes
from the source timeline (the split's plan), identical across rungs and known before any encode.

Every segment carries its place on one timeline: a frame at time t of the video (0 = its first
frame) has the presentation time `TS_OFFSET + t` when muxed (plus the MPEG-TS muxer's own fixed
delay), in every rung and in the audio rendition, whichever process wrote the segment. The
offset keeps every decode timestamp positive, so the muxer never shifts one chunk differently
from another.

HEVC rungs are fragmented MP4 (`EXT-X-MAP`), as Apple's rules ask: one init segment per rung,
written by the first chunk, and media segments carrying their decode time (`tfdt`) on the same
timeline as the MPEG-TS ones (`TS_MUX_DELAY` added). Every chunk's init must be byte for byte the
first chunk's (the flow checks the digest), so one `EXT-X-MAP` serves the whole rung.
"""

from __future__ import annotations

import math

from tasks.ladder import AUDIO_BITRATE, HEVC, codec_string

PLAYLIST = "index.m3u8"
SEGMENT_PATTERN = "seg_%05d.ts"
FMP4_SEGMENT_PATTERN = "seg_%05d.m4s"
INIT_SEGMENT = "init.mp4"
# ffmpeg's MPEG-TS muxer presents the first frame 1.4 s after the timestamp it was given (its
# default mux delay; measured with ffprobe, and the 4K transcode test holds the fMP4 rungs'
# frames to the MPEG-TS rungs' times)
TS_MUX_DELAY = 1.4
AUDIO_RENDITION = "audio"  # folder of the audio rendition in a run, beside the video rungs
TS_OFFSET = 10.0
AUDIO_CODECS = "mp4a.40.2"  # AAC-LC


# per chunk whose segments are stored and checked, its result (never served): what a re-run
# after a crash needs to skip it
MARKERS = "chunks"


def marker_url(hls_url: str, index: int, kind: str = "") -> str:
    """The result file of a chunk: `kind` "" for the chunk encode of the ladder, "lane" for the
    lowest rung's part of it when the fast lane (`tasks.lane`) encodes that rung."""
    return f"{hls_url.rstrip('/')}/{MARKERS}/{index:05d}{'.' + kind if kind else ''}.json"


def is_fmp4(rung) -> bool:
    """An HEVC rung (a dict or a `Rung`), packaged as fragmented MP4."""
    return (rung.get("codec") if isinstance(rung, dict) else getattr(rung, "codec", None)) == HEVC


def segment_pattern(rung: dict | None = None) -> str:
    return FMP4_SEGMENT_PATTERN if rung is not None and is_fmp4(rung) else SEGMENT_PATTERN


def segment_name(index: int) -> str:
    return SEGMENT_PATTERN % index


def segment_durations(segment_times: list[float], duration: float) -> list[float]:
    ends = list(segment_times[1:]) + [duration]
    return [e - s for s, e in zip(segment_times, ends)]


def target_duration(durations: list[float]) -> int:
    """EXT-X-TARGETDURATION: every EXTINF rounded to the nearest integer is at most this (RFC 8216
    §4.3.3.1). Computed from the whole plan, so a growing playlist never changes it."""
    return max(1, max(int(round(d)) for d in durations)) if durations else 1


def media_playlist(durations: list[float], available: int, *, final: bool, target: int | None = None,
                   fmp4: bool = False) -> str:
    """A media playlist (RFC 8216, version 3: decimal EXTINF) listing the first `available`
    segments. `final`: the rung is complete (`VOD`, `EXT-X-ENDLIST`); otherwise a growing
    `EVENT` playlist, which only ever appends. `fmp4`: fragmented MP4 segments behind an
    `EXT-X-MAP` (version 6, §4.3.2.5)."""
    target = target or target_duration(durations)
    lines = ["#EXTM3U", f"#EXT-X-VERSION:{6 if fmp4 else 3}", f"#EXT-X-TARGETDURATION:{target}",
             "#EXT-X-MEDIA-SEQUENCE:0", f"#EXT-X-PLAYLIST-TYPE:{'VOD' if final else 'EVENT'}",
             "#EXT-X-INDEPENDENT-SEGMENTS"]
    if fmp4:
        lines.append(f'#EXT-X-MAP:URI="{INIT_SEGMENT}"')
    pattern = FMP4_SEGMENT_PATTERN if fmp4 else SEGMENT_PATTERN
    for i, d in enumerate(durations[:available]):
        lines += [f"#EXTINF:{d:.6f},", pattern % i]
    if final:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def bit_rates(sizes: list[int], durations: list[float]) -> tuple[int, int]:
    """(peak, average) bits per second over the segments given (RFC 8216 §4.3.4.2: BANDWIDTH is
    the largest segment bit rate, AVERAGE-BANDWIDTH the whole rendition's)."""
    rates = [8 * s / d for s, d in zip(sizes, durations) if d > 0]
    peak = int(math.ceil(max(rates))) if rates else 0
    average = int(math.ceil(8 * sum(sizes) / max(sum(durations), 1e-6))) if sizes else 0
    return peak, average


def rung_codecs(rung: dict, with_audio: bool, video: str | None = None) -> str:
    """CODECS of a variant: its video (`video`, read from an HEVC rung's init segment, else
    H.264 High at the rung's level), and the audio of the group it references (RFC 8216
    §4.3.4.2: every format in the variant, renditions included)."""
    return (video or codec_string(rung["level"])) + (f",{AUDIO_CODECS}" if with_audio else "")


def audio_peak(sizes: list[int], durations: list[float]) -> int:
    """The audio rendition's peak bit rate, or the encoder's nominal rate before any segment."""
    peak, _ = bit_rates(sizes, durations)
    return peak or AUDIO_BITRATE


def chunk_ranges(chunks: list[dict]) -> list[tuple[int, int]]:
    """(first segment, segment count) of each chunk, in chunk order."""
    return [(int(c["first_segment"]), len(c["segment_frames"])) for c in chunks]


def check_rung_totals(name: str, segment_frames: list[int], frames: int, segment_count: int,
                      durations: list[float], duration: float) -> list[str]:
    """The whole-rung checks that need no media read: what each chunk measured adds up."""
    reasons = []
    if len(segment_frames) != segment_count:
        reasons.append(f"{name}: {len(segment_frames)} segments, expected {segment_count}")
    if sum(segment_frames) != frames:
        reasons.append(f"{name}: {sum(segment_frames)} frames, the source has {frames}")
    if not math.isclose(sum(durations), duration, abs_tol=1e-3):
        reasons.append(f"{name}: segments last {sum(durations):.3f} s, the video {duration:.3f} s")
    return reasons
