"""Captions and chapters of a video: stored, catalogued and aligned to the published run.

Captions belong to the video, not to a transcode run. Each one is stored under
`captions/{video_id}/{caption_id}/`: `captions.vtt` (the cleaned cues, the caption's own
truth) and `t{pts}/index.m3u8` + `seg_NNNNN.vtt`, the segmented HLS rendition whose
X-TIMESTAMP-MAP ties cue time 0 to `pts`, the 90 kHz presentation time of the first video
frame of the published MPEG-TS segments. That PTS is measured (ffprobe) on the run the catalog
points at, never assumed: it is the TS muxer's 1.4 s start plus the encoder's B-frame delay,
which depends on the frame rate and the x264 preset. Files are never rewritten: a caption
replaced gets a new id, a caption aligned to another PTS gets a new `t{pts}` folder.

Not under `hls/{video_id}/`, whose folders other than the current run are removed as stale
runs by ingest and maintenance. Delivery serves both at `/v/{video_id}/captions/...`.

Entry points: `add_caption` (the API's upload), `delete_caption`, `set_chapters`, and
`import_source_captions`, which the ingest flow calls once a run is published: it extracts the
source's text subtitle streams and chapters (once per video) and aligns every caption to the
run now published.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from sqlalchemy import select

from catalog.db import session_scope
from catalog.models import Caption, CaptionSource, Rendition, RenditionStatus, Video, VideoStatus, new_id
from catalog.state import VideoNotFound, get_video
from config import storage
from config.settings import get_settings
from tasks import ffmpeg
from tasks.captions import (
    IMAGE_SUBTITLE_CODECS,
    MAX_LABEL,
    TEXT_SUBTITLE_CODECS,
    CaptionError,
    Chapter,
    CleanedCaptions,
    Cue,
    chapters_vtt,
    check_chapters,
    clean_title,
    extract_stream_vtt,
    normalize_language,
    parse_captions,
    probe_text_tracks,
    read_caption_file,
    segment_name,
    segment_vtt,
    shift_cues,
    whole_vtt,
)
from tasks.probe import MediaInfo

log = logging.getLogger(__name__)

PREFIX = "captions"  # storage: captions/{video_id}/{caption_id}/...
CUES_FILE = "captions.vtt"
CHAPTERS_FILE = "chapters.vtt"
MAX_CAPTIONS = 50


class CaptionRefused(ValueError):
    """A caption request that cannot be done; `status` is the HTTP status that says why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def caption_dict(c: Caption) -> dict:
    ready = c.playlist_url is not None
    return {"id": c.id, "language": c.language, "label": c.label,
            "source": c.source.value if hasattr(c.source, "value") else c.source,
            "default": bool(c.is_default), "cues": c.cue_count, "published": ready,
            "created_at": c.created_at.isoformat() if c.created_at else None,
            "vtt": f"{PREFIX}/{c.id}/{CUES_FILE}",
            "playlist": f"{PREFIX}/{c.id}/t{c.timing_pts}/index.m3u8" if ready else None,
            "report": c.report or {}}


def caption_path_parts(stored_url: str) -> list[str] | None:
    """`captions/{video_id}/...` of a stored URL, as path parts; None for anything else."""
    try:
        parts = storage.key_of(stored_url).split("/")
    except ValueError:
        return None
    return parts if len(parts) >= 3 and parts[0] == PREFIX else None


# ---------------------------------------------------------------- timing

def first_video_pts(segment_url: str) -> int:
    """The 90 kHz PTS of the first video frame of a published MPEG-TS segment (ffprobe)."""
    timeout = get_settings().probe_timeout
    with storage.local_copy(segment_url, get_settings().work_dir) as path:
        packets = ffmpeg.probe_packets(path, timeout=timeout, entries="packet=pts")
    pts = [int(p["pts"]) for p in packets if str(p.get("pts", "")).lstrip("-").isdigit()]
    if not pts:
        raise ffmpeg.PermanentMediaError(f"no video frame with a timestamp in {segment_url}")
    return min(pts)


def run_timing(video_id: str) -> int | None:
    """The first video PTS of the run the catalog points at (None while nothing is published).
    Renditions of one run share it: every chunk writes its segments on the run's one timeline
    (the audio rendition's first packet is the AAC priming, before it)."""
    with session_scope() as s:
        v = s.get(Video, video_id)
        if v is None or not v.current_run:
            return None
        rend = s.scalars(select(Rendition).where(
            Rendition.video_id == video_id, Rendition.run == v.current_run,
            Rendition.status == RenditionStatus.READY, Rendition.kind == "video").order_by(Rendition.height)).first()
        playlist = rend.playlist_url if rend else None
    if not playlist:
        return None
    first = next((line.strip() for line in storage.read_text(playlist).splitlines()
                  if line.strip() and not line.startswith("#")), None)
    if first is None:
        return None
    return first_video_pts(storage.join(playlist.rsplit("/", 1)[0], first))


def _publish_rendition(video_id: str, caption_id: str, cues: list[Cue], duration: float, pts: int) -> str:
    segments, playlist = segment_vtt(cues, duration=duration, segment_seconds=get_settings().segment_seconds,
                                     mpegts=pts)
    base = storage.url_for(PREFIX, video_id, caption_id, f"t{pts}")
    for i, text in enumerate(segments):
        storage.write_text(storage.join(base, segment_name(i)), text)
    url = storage.join(base, "index.m3u8")
    storage.write_text(url, playlist)  # the playlist last: never one before its segments
    return url


def align_captions(video_id: str, pts: int | None = None) -> int:
    """Give every caption of the video a segmented rendition timed for the published run.
    Returns how many were (re)published."""
    pts = run_timing(video_id) if pts is None else pts
    if pts is None:
        return 0
    with session_scope() as s:
        v = s.get(Video, video_id)
        duration = float(v.duration or 0) if v else 0.0
        todo = [(c.id, c.vtt_url) for c in s.scalars(select(Caption).where(Caption.video_id == video_id))
                if c.timing_pts != pts or c.playlist_url is None]
    done = 0
    for caption_id, vtt_url in todo:
        cues = parse_captions(storage.read_text(vtt_url)).cues
        url = _publish_rendition(video_id, caption_id, cues, duration, pts)
        with session_scope() as s:
            c = s.get(Caption, caption_id)
            if c is None:  # deleted meanwhile
                storage.delete(storage.url_for(PREFIX, video_id, caption_id))
                continue
            old = storage.url_for(PREFIX, video_id, caption_id, f"t{c.timing_pts}") if c.timing_pts is not None else None
            c.playlist_url, c.timing_pts = url, pts
        done += 1
        # the old timing is not removed here: a player that loaded it may still be reading it;
        # maintenance has no business with it either, so it stays until the caption goes
        log.info("caption %s of video %s aligned to PTS %d (was %s)", caption_id, video_id, pts, old)
    return done


# ---------------------------------------------------------------- captions

def _store_caption(video_id: str, cleaned: CleanedCaptions, *, language: str, label: str, source: CaptionSource,
                   default: bool, source_stream: int | None = None, pts: int | None = None) -> dict:
    caption_id = new_id()
    with session_scope() as s:
        v = s.get(Video, video_id)
        duration = float(v.duration or 0) if v else 0.0
    vtt_url = storage.url_for(PREFIX, video_id, caption_id, CUES_FILE)
    storage.write_text(vtt_url, whole_vtt(cleaned.cues))
    playlist_url = _publish_rendition(video_id, caption_id, cleaned.cues, duration, pts) if pts is not None else None
    with session_scope() as s:
        v = get_video(s, video_id, lock=True)
        if v.status == VideoStatus.DELETED:
            storage.delete(storage.url_for(PREFIX, video_id, caption_id))
            raise CaptionRefused(410, f"video '{video_id}' was deleted")
        if default:
            for other in s.scalars(select(Caption).where(Caption.video_id == video_id, Caption.is_default)):
                other.is_default = False
        c = Caption(id=caption_id, video_id=video_id, language=language, label=label, source=source,
                    source_stream=source_stream, is_default=default, cue_count=len(cleaned.cues), vtt_url=vtt_url,
                    playlist_url=playlist_url, timing_pts=pts if playlist_url else None, report=cleaned.report())
        s.add(c)
        s.flush()
        return caption_dict(c)


def clean_label(label: str | None, language: str) -> str:
    text = " ".join((label or "").split()).replace('"', "'")
    if text:
        text = clean_title(text, "label")
    return (text or language)[:MAX_LABEL]


def _live_video(s, video_id: str):
    """The video row, or CaptionRefused: 404 unknown, 410 deleted."""
    try:
        v = get_video(s, video_id)
    except VideoNotFound:
        raise CaptionRefused(404, f"no video with id '{video_id}'") from None
    if v.status == VideoStatus.DELETED:
        raise CaptionRefused(410, f"video '{video_id}' was deleted")
    return v


def add_caption(video_id: str, data: bytes, *, language: str, label: str | None = None, default: bool = False,
                filename: str = "") -> dict:
    """Clean an uploaded SRT/WebVTT file and publish it as a caption of the video. Raises
    CaptionRefused (404/410/409) or CaptionError (the file or fields: 400/413/422)."""
    with session_scope() as s:
        duration = _live_video(s, video_id).duration
        count = len(s.scalars(select(Caption.id).where(Caption.video_id == video_id)).all())
    if count >= MAX_CAPTIONS:
        raise CaptionRefused(409, f"the video already has {count} captions, the most it may have; delete one first")
    language = normalize_language(language)
    cleaned = read_caption_file(data, duration=duration, filename=filename)
    return _store_caption(video_id, cleaned, language=language, label=clean_label(label, language),
                          source=CaptionSource.UPLOAD, default=default, pts=run_timing(video_id))


def list_captions(video_id: str) -> list[dict]:
    with session_scope() as s:
        rows = s.scalars(select(Caption).where(Caption.video_id == video_id).order_by(Caption.created_at)).all()
        return [caption_dict(c) for c in rows]


def published_captions(session, video_id: str) -> list[Caption]:
    """The captions a master playlist lists: those with an aligned rendition, oldest first."""
    return list(session.scalars(select(Caption).where(Caption.video_id == video_id,
                                                      Caption.playlist_url.is_not(None))
                                .order_by(Caption.created_at, Caption.id)))


def delete_caption(video_id: str, caption_id: str) -> None:
    with session_scope() as s:
        c = s.get(Caption, caption_id)
        if c is None or c.video_id != video_id:
            raise CaptionRefused(404, f"video '{video_id}' has no caption '{caption_id}'")
        s.delete(c)
    storage.delete(storage.url_for(PREFIX, video_id, caption_id))


# ---------------------------------------------------------------- chapters

def _publish_chapters(video_id: str, chapters: list[Chapter]) -> dict:
    url = None
    if chapters:
        url = storage.url_for(PREFIX, video_id, new_id(), CHAPTERS_FILE)
        storage.write_text(url, chapters_vtt(chapters))
    with session_scope() as s:
        v = get_video(s, video_id, lock=True)
        old = v.chapters_url
        v.chapters = [c.to_dict() for c in chapters] or None
        v.chapters_url = url
    if old:
        # a page that loaded the old list keeps its markers; the file goes with the next change
        storage.delete(old.rsplit("/", 1)[0])
    return {"chapters": [c.to_dict() for c in chapters], "url": chapters_file_path(url)}


def chapters_file_path(stored_url: str | None) -> str | None:
    parts = caption_path_parts(stored_url) if stored_url else None
    return "/".join(parts[2:]) if parts else None


def set_chapters(video_id: str, items: object) -> dict:
    """Replace the video's chapters with a checked list (CaptionError says what is wrong); an
    empty list removes them."""
    with session_scope() as s:
        duration = _live_video(s, video_id).duration
    return _publish_chapters(video_id, check_chapters(items, duration))


# ---------------------------------------------------------------- from the source

def import_source_captions(video_id: str, source_url: str, info: MediaInfo | dict | None = None) -> dict:
    """What the ingest flow calls once a run is published. Extracts the text subtitle streams
    of the source (mov_text, SubRip, ASS/SSA, WebVTT) as captions, with language and title
    from the stream's tags, and the container's chapters (unless chapters were set through the
    API); lists image subtitles (PGS, DVB, VobSub) as skipped with the reason. Streams already
    imported for this video are not imported again (a reprocess keeps the same captions).
    Then aligns every caption of the video to the published run.

    Returns {"captions": [...], "skipped": [{stream, codec, reason}], "chapters": n,
    "aligned": n}. A stream that cannot be read is skipped with the reason, not fatal."""
    settings = get_settings()
    if isinstance(info, dict):
        info = MediaInfo.from_dict(info)
    with session_scope() as s:
        v = get_video(s, video_id)
        duration = (info.duration if info else None) or v.duration
        has_chapters = v.chapters_url is not None
        done = {c.source_stream for c in s.scalars(select(Caption).where(
            Caption.video_id == video_id, Caption.source == CaptionSource.SOURCE))}
    pts = run_timing(video_id)
    added, skipped = [], []
    chapters_count = 0
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    with storage.local_copy(source_url, settings.work_dir) as path, \
            tempfile.TemporaryDirectory(dir=settings.work_dir, prefix=f"captions-{video_id}-") as tmp:
        tracks = probe_text_tracks(str(path), timeout=settings.probe_timeout)
        for st in tracks["streams"]:
            where = {"stream": st["index"], "codec": st["codec"], "language": st["language"], "title": st["title"]}
            if st["codec"] in IMAGE_SUBTITLE_CODECS:
                skipped.append({**where, "reason": IMAGE_SUBTITLE_CODECS[st["codec"]] + "; only text subtitles "
                                "are published"})
                continue
            if st["codec"] not in TEXT_SUBTITLE_CODECS:
                skipped.append({**where, "reason": f"subtitle codec '{st['codec']}' is not supported"})
                continue
            if st["index"] in done:
                continue
            out = Path(tmp) / f"s{st['n']}.vtt"
            try:
                extract_stream_vtt(str(path), st["n"], str(out), timeout=settings.ffmpeg_timeout)
                cleaned = parse_captions(out.read_text(encoding="utf-8", errors="replace"))
                cleaned.cues = shift_cues(cleaned.cues, tracks["video_start"])
                if duration:
                    cleaned.cues = [Cue(c.start, min(c.end, duration), c.text) for c in cleaned.cues if c.start < duration]
                if not cleaned.cues:
                    raise CaptionError("no cue inside the video")
            except (ffmpeg.MediaError, CaptionError) as exc:
                skipped.append({**where, "reason": f"could not be read: {exc}"})
                continue
            try:
                language = normalize_language(st["language"]) if st["language"] else "und"
            except CaptionError:
                language = "und"
            label = clean_label(st["title"], language) if st["title"] else _language_label(language, st["n"])
            added.append(_store_caption(video_id, cleaned, language=language, label=label,
                                        source=CaptionSource.SOURCE, default=st["default"] and not st["forced"],
                                        source_stream=st["index"], pts=pts))
        if not has_chapters and tracks["chapters"]:
            items = [{"start": max(0.0, round(c["start"] - tracks["video_start"], 3)),
                      "title": c["title"] or f"Chapter {i + 1}"} for i, c in enumerate(tracks["chapters"])]
            try:
                chapters_count = len(_publish_chapters(video_id, check_chapters(items, duration))["chapters"])
            except CaptionError as exc:
                skipped.append({"stream": None, "codec": "chapters", "reason": f"chapters not imported: {exc}"})
    aligned = align_captions(video_id, pts) if pts is not None else 0
    return {"captions": added, "skipped": skipped, "chapters": chapters_count, "aligned": aligned}


def _language_label(language: str, n: int) -> str:
    return language if language != "und" else f"Subtitles {n + 1}"
