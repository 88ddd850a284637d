"""The master playlist, built from the renditions the catalog says are published, and the
catalog view delivery needs per request, cached briefly in the process.

Every player asks for the master playlist first, so it is the one delivery response that needs
the catalog. The rendered playlist (and the video's state, which segment requests check too) is
kept for `VIEW_TTL` seconds per video in each worker: the catalog is read at most once a second
per video and worker however many players arrive. When it expires, one thread re-reads it while
the others answer from the view they have, for STALE_GRACE at most, so a change (a rendition
published, the video deleted) shows within VIEW_TTL + STALE_GRACE, usually within VIEW_TTL and
one catalog read. The master's own `max-age` already allows clients and CDNs a few seconds of
staleness on top.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass

from catalog.db import session_scope
from sqlalchemy import select

from catalog.models import Caption, Rendition, RenditionStatus, VideoStatus
from catalog.state import PLAYABLE_RENDITIONS, VideoNotFound, get_video, published_renditions
from config import storage
from flows.captions import PREFIX as TEXT_TRACKS, caption_path_parts, published_captions
from streaming_app.delivery.conditional import Representation, epoch_seconds

VIEW_TTL = 1.0
# How long past VIEW_TTL a view may still answer while one thread reloads it. Reloads take
# milliseconds; the grace bounds what a slow catalog can cost in staleness: a change shows
# within VIEW_TTL + STALE_GRACE at the latest.
STALE_GRACE = 1.0
# After a failed reload, the next try waits this long (the stale view answers meanwhile, within
# the grace): a catalog that is down is not asked again at request rate.
RETRY_SECONDS = 0.5
SIDE_FILES = frozenset({"poster.jpg", "thumbs"})  # beside the rungs, written by the thumbnails task
MASTER_MAX_AGE = 5
_MAX_ENTRIES = 10_000

log = logging.getLogger(__name__)


def _quoted(text: str) -> str:
    """An RFC 8216 quoted-string value: no double quote, CR or LF."""
    return " ".join(text.replace('"', "'").split())


def subtitle_media(captions: list[Caption]) -> list[str]:
    """One EXT-X-MEDIA:TYPE=SUBTITLES per caption in group "subs"; NAME is unique in the group
    (RFC 8216 §4.3.4.1.1), DEFAULT=YES on at most one."""
    lines, names = [], set()
    default_seen = False
    for c in captions:
        name, n = _quoted(c.label) or c.language, 2
        while name in names:
            name, n = f"{_quoted(c.label) or c.language} ({n})", n + 1
        names.add(name)
        default = bool(c.is_default) and not default_seen
        default_seen = default_seen or default
        uri = storage.key_of(c.playlist_url).split("/", 2)[2]  # {caption_id}/t{pts}/index.m3u8
        lines.append(f'#EXT-X-MEDIA:TYPE=SUBTITLES,GROUP-ID="subs",NAME="{name}",LANGUAGE="{_quoted(c.language)}",'
                     f'DEFAULT={"YES" if default else "NO"},AUTOSELECT=YES,FORCED=NO,'
                     f'URI="{TEXT_TRACKS}/{uri}"')
    return lines


AUDIO_GROUP = "aud"


def audio_media(audio: list[Rendition]) -> list[str]:
    """The audio renditions as one EXT-X-MEDIA:TYPE=AUDIO group every video variant references:
    each encoded once, stored once, whatever the rung. RFC 8216 section 4.3.4.1: NAME unique in
    the group; DEFAULT=YES on the first (the main track), which is then AUTOSELECT=YES. A client
    may pick an AUTOSELECT rendition for a viewer who did not ask, so a commentary is not one,
    nor a track that repeats the LANGUAGE and CHARACTERISTICS of one before it (which a client
    could not tell apart); an audio description says so in CHARACTERISTICS."""
    lines, names, auto = [], set(), set()
    for n, a in enumerate(audio):
        base = _quoted(a.label or "") or ("Main" if n == 0 else f"Audio {n + 1}")
        name, k = base, 2
        while name in names:
            name, k = f"{base} ({k})", k + 1
        names.add(name)
        language = a.language if a.language and a.language != "und" else None
        kind = (language, a.characteristics)
        autoselect = n == 0 or (a.role != "commentary" and kind not in auto)
        if autoselect:
            auto.add(kind)
        attrs = [f'TYPE=AUDIO,GROUP-ID="{AUDIO_GROUP}",NAME="{name}"']
        if language:
            attrs.append(f'LANGUAGE="{_quoted(language)}"')
        attrs.append(f'DEFAULT={"YES" if n == 0 else "NO"},AUTOSELECT={"YES" if autoselect else "NO"}')
        if a.characteristics:
            attrs.append(f'CHARACTERISTICS="{_quoted(a.characteristics)}"')
        attrs.append(f'CHANNELS="2",URI="{a.run}/{a.name}/index.m3u8"')
        lines.append("#EXT-X-MEDIA:" + ",".join(attrs))
    return lines


def render_master(renditions: list[Rendition], captions: list[Caption] = (), audio: list[Rendition] = ()) -> str:
    """RFC 8216 master playlist: one EXT-X-STREAM-INF per rendition, lowest bandwidth first
    (players start with the first variant listed), the audio renditions as an AUDIO group and
    the captions as a SUBTITLES group that every variant references; without captions,
    `CLOSED-CAPTIONS=NONE` (Apple's authoring rule: say there are no CEA-608 captions in the
    video)."""
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-INDEPENDENT-SEGMENTS"]
    audio = list(audio)
    lines += audio_media(audio)
    subs = subtitle_media(list(captions))
    lines += subs
    for r in sorted(renditions, key=lambda r: (r.bandwidth or r.average_bandwidth or 0, r.height, r.name)):
        attrs = [f"BANDWIDTH={int(r.bandwidth or r.average_bandwidth or 0)}"]
        if r.average_bandwidth:
            attrs.append(f"AVERAGE-BANDWIDTH={int(r.average_bandwidth)}")
        if r.codecs:
            attrs.append(f'CODECS="{r.codecs}"')
        attrs.append(f"RESOLUTION={r.width}x{r.height}")
        if r.frame_rate:
            attrs.append(f"FRAME-RATE={r.frame_rate:.3f}")
        if audio:
            attrs.append(f'AUDIO="{AUDIO_GROUP}"')
        attrs.append('SUBTITLES="subs"' if subs else "CLOSED-CAPTIONS=NONE")
        # not in RFC 8216's list for STREAM-INF, but players (hls.js level.name) show it
        attrs.append(f'NAME="{r.name}"')
        lines.append("#EXT-X-STREAM-INF:" + ",".join(attrs))
        lines.append(f"{r.run}/{r.name}/index.m3u8")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class VideoView:
    """What delivery needs to know about one video, as of `loaded_at`."""

    video_id: str
    exists: bool
    status: VideoStatus | None = None
    progress: float = 0.0
    error: str | None = None
    master: bytes | None = None  # None while no rendition is published
    master_rep: Representation | None = None
    loaded_at: float = 0.0
    # (run, rung) pairs that passed validation and were published, in any run still on record,
    # so a player that loaded a playlist before a re-transcode can finish it
    published: frozenset = frozenset()
    # (run, rendition) pairs still growing: their playlists change, so they are cached briefly
    growing: frozenset = frozenset()
    current_run: str | None = None
    # folders under captions/{video_id}/ the catalog lists: caption ids and the chapters folder
    text_tracks: frozenset = frozenset()

    def may_serve(self, run: str, parts: list[str]) -> bool:
        """Output becomes visible only once the catalog points at it: the files of a published
        rung, and the side files (poster, timeline previews) of a run with a published rung.
        A run still being encoded, a rung that failed validation: not found. `captions/…` is not
        a run: the files of a caption or chapter list the catalog lists."""
        if run == TEXT_TRACKS:
            return len(parts) >= 2 and parts[0] in self.text_tracks
        rungs = {rung for r, rung in self.published if r == run}
        if not rungs:
            return False
        if len(parts) >= 2 and parts[0] in rungs:
            return True
        return parts[0] in SIDE_FILES

    def growing_run(self, run: str | None) -> bool:
        """Whether a rendition of `run` is still being published chunk by chunk."""
        return run is not None and any(r == run for r, _ in self.growing)

    @property
    def deleted(self) -> bool:
        return self.status == VideoStatus.DELETED


_views: dict[str, VideoView] = {}
_refreshing: set[str] = set()  # videos whose view one thread is reloading
_retry_at: dict[str, float] = {}  # videos whose last reload failed: not before this time
_lock = threading.Lock()


def _load(video_id: str) -> VideoView:
    now = time.monotonic()
    with session_scope() as s:
        try:
            video = get_video(s, video_id)
        except VideoNotFound:
            return VideoView(video_id, exists=False, loaded_at=now)
        status = VideoStatus(video.status)
        rows = s.execute(select(Rendition.run, Rendition.name, Rendition.status).where(
            Rendition.video_id == video_id, Rendition.status.in_(PLAYABLE_RENDITIONS))).all()
        published = frozenset((r, n) for r, n, _ in rows)
        growing = frozenset((r, n) for r, n, st in rows if RenditionStatus(st) == RenditionStatus.GROWING)
        captions = published_captions(s, video_id) if status != VideoStatus.DELETED else []
        texts = {c.id for c in s.scalars(select(Caption).where(Caption.video_id == video_id))}
        chapters = caption_path_parts(video.chapters_url) if video.chapters_url else None
        if chapters:
            texts.add(chapters[2])
        base = dict(video_id=video_id, exists=True, status=status, progress=float(video.progress or 0),
                    error=video.error, loaded_at=now, published=published, growing=growing,
                    current_run=video.current_run, text_tracks=frozenset(texts))
        if status == VideoStatus.DELETED:
            return VideoView(**base)
        rends = published_renditions(s, video)
        if not rends:
            return VideoView(**base)
        audio = published_renditions(s, video, kind="audio")
        body = render_master(rends, captions, audio).encode("utf-8")
        # the latest change to the video row or to a listed rendition, so Last-Modified only
        # moves forward when the list changes (a new run, a rendition published)
        changed = max([epoch_seconds(video.updated_at)]
                      + [epoch_seconds(r.published_at or r.created_at) for r in rends]
                      + [epoch_seconds(r.published_at or r.created_at) for r in audio]
                      + [epoch_seconds(c.created_at) for c in captions])
    rep = Representation(size=len(body), etag=hashlib.sha1(body).hexdigest()[:32], last_modified=changed)
    return VideoView(**base, master=body, master_rep=rep)


def stored_url(video_id: str, run: str, parts: list[str]) -> str:
    """Storage URL of a delivery path /v/{video_id}/{run}/{parts}: run files under
    `hls/{video_id}/{run}/`, captions and chapters under `captions/{video_id}/`."""
    if run == TEXT_TRACKS:
        return storage.url_for(TEXT_TRACKS, video_id, *parts)
    return storage.url_for("hls", video_id, run, *parts)


def _store(video_id: str, view: VideoView) -> None:
    """Keep `view` unless a view read later is already stored (a slow refresh must not put back
    what a fresher read, say the deletion a missing file made us re-read, replaced)."""
    with _lock:
        old = _views.get(video_id)
        if old is not None and old.loaded_at > view.loaded_at:
            return
        if len(_views) >= _MAX_ENTRIES:
            cutoff = time.monotonic() - VIEW_TTL - STALE_GRACE
            for key in [k for k, v in _views.items() if v.loaded_at < cutoff]:
                del _views[key]
            if len(_views) >= _MAX_ENTRIES:
                _views.clear()
        _views[video_id] = view


def _claim(video_id: str) -> bool:
    """Become the one refresher of a video's view; False when another thread already is, or a
    reload failed less than RETRY_SECONDS ago."""
    with _lock:
        if video_id in _refreshing or time.monotonic() < _retry_at.get(video_id, 0.0):
            return False
        _refreshing.add(video_id)
        return True


def _refresh(video_id: str) -> VideoView:
    """Read the catalog for a claimed video, store the view and release the claim."""
    try:
        view = _load(video_id)
    except BaseException:
        with _lock:
            _retry_at[video_id] = time.monotonic() + RETRY_SECONDS
        raise
    else:
        _store(video_id, view)
        with _lock:
            _retry_at.pop(video_id, None)
        return view
    finally:
        with _lock:
            _refreshing.discard(video_id)


def video_view(video_id: str, *, fresh: bool = False) -> VideoView:
    """The cached view of a video, reloaded from the catalog when older than VIEW_TTL. While
    one thread reloads it, the others keep answering from the stale view (for STALE_GRACE at
    most) instead of all reading the catalog at once."""
    if not fresh:
        view = _views.get(video_id)
        if view is not None:
            age = time.monotonic() - view.loaded_at
            if age < VIEW_TTL:
                return view
            if age < VIEW_TTL + STALE_GRACE:
                # one thread re-reads; the others keep the view while it does
                if not _claim(video_id):
                    return view
                try:
                    return _refresh(video_id)
                except Exception as exc:  # noqa: BLE001 - retried after RETRY_SECONDS; the view ages out
                    log.warning("re-reading video %s from the catalog failed: %s", video_id, exc)
                    return view
    view = _load(video_id)
    _store(video_id, view)
    return view


def forget(video_id: str | None = None) -> None:
    """Drop cached views (one video, or all): the next request reads the catalog."""
    with _lock:
        if video_id is None:
            _views.clear()
            _retry_at.clear()
        else:
            _views.pop(video_id, None)
            _retry_at.pop(video_id, None)
