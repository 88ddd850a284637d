"""Checks on an incoming source in three phases: declared (size, name, type), first bytes
(magic numbers), complete (ffprobe and limits). Shared by tus, the one-shot POST and the CLI."""

from __future__ import annotations

from pathlib import Path

from config.settings import get_settings
from tasks import ffmpeg
from tasks.ffmpeg import MediaError
from tasks.probe import parse

SUPPORTED_EXTENSIONS = {
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".mts", ".m2ts", ".mpg", ".mpeg",
    ".flv", ".wmv", ".asf", ".3gp", ".3g2", ".ogv", ".mxf",
}
SUPPORTED_MIME_PREFIXES = ("video/", "application/octet-stream", "application/mp4", "application/x-matroska",
                           "application/mxf", "application/ogg")
MIN_DURATION, MAX_DURATION = 1.0, 4 * 3600.0
MIN_SIZE, MAX_SIZE = (160, 90), (7680, 4320)
SNIFF_BYTES = 4096
# Demuxers an upload may be read with. ffprobe otherwise picks one by content, and some
# (hls, concat, image2 lists…) open other files named inside the "video": a playlist called
# clip.mp4 that lists /etc/passwd or a private segment must never be followed.
DEMUXER_WHITELIST = "mov,matroska,avi,flv,mpegts,mpeg,mpegvideo,ogg,asf,mxf"
# file extension for an upload that came without a name, by the container sniffed
KIND_EXTENSIONS = {
    "isobmff": ".mp4", "matroska": ".mkv", "avi": ".avi", "flv": ".flv", "mpeg-ps": ".mpg",
    "ogg": ".ogv", "asf": ".wmv", "mxf": ".mxf", "mpeg-ts": ".ts", "m2ts": ".m2ts",
}


class UploadRejected(ValueError):
    """The upload cannot be accepted; `status` is the HTTP status, the message says why and what to do."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def check_declared(length: int | None, filename: str | None, mime_type: str | None) -> None:
    """Phase 1, before any byte: size, file name extension, declared type."""
    limit = get_settings().max_upload_bytes
    if length is not None:
        if length < 0:
            raise UploadRejected(400, "Upload-Length must be a non-negative integer")
        if length == 0:
            raise UploadRejected(400, "the file is empty: choose a video file with content")
        if length > limit:
            raise UploadRejected(
                413, f"the file is {length} bytes, over this server's limit of {limit} bytes "
                     "(VODFLOW_MAX_UPLOAD_BYTES); compress or trim it first")
    if filename:
        ext = Path(filename).suffix.lower()
        if ext and ext not in SUPPORTED_EXTENSIONS:
            raise UploadRejected(
                415, f"'{ext}' files are not supported; upload a video such as "
                     f"{', '.join(sorted(SUPPORTED_EXTENSIONS)[:8])}…")
    if mime_type:
        mt = mime_type.split(";")[0].strip().lower()
        if mt and not mt.startswith(SUPPORTED_MIME_PREFIXES):
            raise UploadRejected(415, f"type '{mt}' is not a video; upload a video file")


def sniff_kind(head: bytes) -> str | None:
    """The container a file's first bytes announce, or None if unknown."""
    if len(head) >= 12 and head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
        return "isobmff"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"
    if head.startswith(b"RIFF") and head[8:12] in (b"AVI ", b"AVIX"):
        return "avi"
    if head.startswith(b"FLV"):
        return "flv"
    if head.startswith(b"\x00\x00\x01\xba") or head.startswith(b"\x00\x00\x01\xb3"):
        return "mpeg-ps"
    if head.startswith(b"OggS"):
        return "ogg"
    if head.startswith(b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"):
        return "asf"
    if head.startswith(b"\x06\x0e\x2b\x34"):
        return "mxf"
    if len(head) >= 189 and head[0] == 0x47 and head[188] == 0x47:
        return "mpeg-ts"
    if len(head) >= 197 and head[4] == 0x47 and head[196] == 0x47:
        return "m2ts"
    return None


_NOT_VIDEO = [
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"#EXTM3U", "an HLS playlist"),
    (b"ID3", "an MP3 audio file"),
    (b"fLaC", "a FLAC audio file"),
]


def check_head(head: bytes, filename: str | None = None) -> str:
    """Phase 2, on the first bytes: is this a video container at all? Returns its kind."""
    if not head:
        raise UploadRejected(400, "the file is empty: choose a video file with content")
    for magic, what in _NOT_VIDEO:
        if head.startswith(magic):
            raise UploadRejected(415, f"{filename or 'this file'} is {what}, not a video; upload a video file")
    kind = sniff_kind(head)
    if kind is None:
        sample = head[:512]
        printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in sample)
        if printable > 0.95 * len(sample):
            raise UploadRejected(415, f"{filename or 'this file'} is text, not a video; upload a video file")
        if len(head) < 64:
            return "unknown"
        raise UploadRejected(
            415, f"{filename or 'this file'} is not in a video format vodflow reads "
                 "(MP4, MOV, MKV, WebM, AVI, MPEG-TS, FLV…)")
    return kind


def check_complete(path: str | Path):
    """Phase 3, all bytes in: ffprobe (protocol whitelist, timeout) and the limits. Returns MediaInfo."""

    try:
        data = ffmpeg.probe_json(path, timeout=get_settings().probe_timeout,
                                 extra=["-format_whitelist", DEMUXER_WHITELIST])
        info = parse(data, size_bytes=Path(path).stat().st_size)
    except MediaError as exc:
        if exc.permanent:
            raise UploadRejected(
                422, f"this file cannot be read as a video ({exc}); it may be truncated or corrupt — "
                     "export it again and re-upload") from None
        raise UploadRejected(503, f"the file could not be checked right now ({exc}); try again") from None
    if info.duration < MIN_DURATION:
        raise UploadRejected(422, f"the video is {info.duration:.2f} s long; vodflow needs at least {MIN_DURATION:.0f} s")
    if info.duration > MAX_DURATION:
        raise UploadRejected(422, f"the video is {info.duration / 3600:.1f} h long; the limit is 4 h — split it first")
    w, h = info.display_width, info.display_height
    lo_w, lo_h = MIN_SIZE
    hi_w, hi_h = MAX_SIZE
    if min(w, h) < min(lo_w, lo_h) or max(w, h) < max(lo_w, lo_h):
        raise UploadRejected(422, f"the picture is {w}x{h}; vodflow needs at least {lo_w}x{lo_h}")
    if max(w, h) > hi_w or min(w, h) > hi_h:
        raise UploadRejected(422, f"the picture is {w}x{h}; vodflow accepts up to {hi_w}x{hi_h}")
    return info
