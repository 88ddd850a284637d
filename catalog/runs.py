"""The catalog side of an ingest run: every change an ingest makes to a video and its renditions.

A run holds the video through `Video.flow_run_id`: every step here checks it still does (`owner`,
the run's flow run id) and raises `Superseded` otherwise, so a re-dispatch while an older run is
alive hands the video over cleanly instead of two runs overwriting each other. Run folders are
named by start time (`new_run_id`), so a run never removes a newer one's files.

Every step is one transaction and waits through a short database outage (`through_outages`: a
PostgreSQL restart mid-ingest does not fail the video). A step tried again after a commit whose
answer was lost finds its own work done: rendition rows are replaced, not added twice, and
`finish` leaves a video this run already finished as it is.
"""

from __future__ import annotations

import re
import secrets
from datetime import datetime, timezone

from sqlalchemy import delete as sql_delete
from sqlalchemy import select, update

from catalog.db import session_scope, through_outages
from catalog.models import Rendition, RenditionStatus, Video, VideoStatus
from catalog.state import get_video, set_progress, transition
from config import storage

REPROCESSABLE = {VideoStatus.UPLOADED, VideoStatus.PROCESSING, VideoStatus.READY, VideoStatus.PARTIAL,
                 VideoStatus.FAILED}


class IngestFailed(RuntimeError):
    """The video could not be transcoded; the message says why and what to do."""


class Superseded(RuntimeError):
    """A newer run of the same video took it over (a re-dispatch while this one was still
    alive): this run stops without touching the video, whose state is the newer run's."""


def _owned(s, video_id: str, owner: str | None):
    """The video row, locked, if run `owner` (a flow run id) still holds it; else Superseded.
    A run holds the video from `begin` until another dispatch or run records its own id."""
    if owner is not None:
        # take the write lock before reading: SQLite starts a transaction only at the first
        # write, and the check must hold until this session commits (a row lock on PostgreSQL)
        s.execute(update(Video).where(Video.id == video_id).values(flow_run_id=Video.flow_run_id))
    v = get_video(s, video_id, lock=True)
    if owner is not None and v.flow_run_id is not None and v.flow_run_id != owner:
        raise Superseded(f"video {video_id} was handed to flow run {v.flow_run_id}; this run "
                         f"({owner}) stops and leaves the video to it")
    return v


def new_run_id() -> str:
    return "r" + datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S") + secrets.token_hex(2)


@through_outages
def begin(video_id: str, run: str, flow_run_id: str | None) -> tuple[str, str | None, bool]:
    """Move the video to PROCESSING for this run. Returns (source_url, published_run,
    recovering): `recovering` when the video was already PROCESSING, i.e. an earlier run of it
    never finished (a crash, a stopped process) and this is its re-dispatch."""
    with session_scope() as s:
        v = get_video(s, video_id, lock=True)
        status = VideoStatus(v.status)
        if status not in REPROCESSABLE:
            raise IngestFailed(f"video {video_id} is {status.value}; it cannot be processed")
        if not v.source_url:
            transition(s, v, VideoStatus.FAILED, error="the source file is missing; upload the video again")
            raise IngestFailed("the source file is missing; upload the video again")
        published = v.current_run if status in (VideoStatus.READY, VideoStatus.PARTIAL) else None
        if status == VideoStatus.PROCESSING:
            # a re-dispatch after a crash: the earlier run never finished
            published = v.current_run if any(
                r.run == v.current_run and r.status == RenditionStatus.READY for r in v.renditions) else None
        transition(s, v, VideoStatus.PROCESSING)
        v.progress = 0.0
        v.error = None
        v.stage = "probe"
        v.flow_run_id = flow_run_id
        source_url = v.source_url
    return source_url, published, status == VideoStatus.PROCESSING


_RUN_ID = re.compile(r"r\d{14}[0-9a-f]{4}")


def _earlier(name: str, run: str) -> bool:
    """Whether run folder `name` belongs to a run started before `run` (ids sort by start
    time); a folder that is not a run id at all is leftover and counts as earlier."""
    return name < run if _RUN_ID.fullmatch(name) else True


@through_outages
def remove_stale_runs(video_id: str, run: str, keep: set[str], *, owner: str | None = None) -> list[str]:
    """Delete run folders and rendition rows of earlier runs that are neither published nor
    ours. Run ids sort by start time, so a run never removes a newer one's files; and only
    while it still holds the video."""
    with session_scope() as s:
        _owned(s, video_id, owner)
    removed = []
    for entry in storage.list_dir(storage.url_for("hls", video_id)):
        if entry["type"] == "directory" and entry["name"] not in keep and _earlier(entry["name"], run):
            storage.delete(entry["url"])
            removed.append(entry["name"])
    for entry in storage.list_dir(storage.url_for("scratch", video_id)):
        if entry["name"] not in keep and _earlier(entry["name"], run):
            storage.delete(entry["url"])
    with session_scope() as s:
        _owned(s, video_id, owner)
        runs = set(s.scalars(select(Rendition.run).where(Rendition.video_id == video_id)))
        stale = [r for r in runs if r not in keep and _earlier(r, run)]
        if stale:
            s.execute(sql_delete(Rendition).where(Rendition.video_id == video_id, Rendition.run.in_(stale)))
    return removed


@through_outages
def save_probe(video_id: str, fields: dict, *, owner: str | None = None) -> None:
    """The source's probed metadata (column name -> value) on the video row."""
    with session_scope() as s:
        v = _owned(s, video_id, owner)
        for k, val in fields.items():
            setattr(v, k, val)


@through_outages
def progress(video_id: str, pct: float, stage: str | None = None, *, owner: str | None = None) -> None:
    with session_scope() as s:
        if owner is not None:
            _owned(s, video_id, owner)
        set_progress(s, video_id, pct, stage)


@through_outages
def save_renditions(video_id: str, run: str, rows: list[dict], *, make_current: bool = False,
                    owner: str | None = None) -> None:
    """Create or update this run's rendition rows (matched by name) in one transaction: a rung
    published chunk by chunk (GROWING, with `available_seconds`), finished (READY) or failed
    (FAILED, with `error`). `make_current`: point the video at this run, so the master lists
    what is published of it while it still encodes (a first transcode, not a reprocess)."""
    now = datetime.now(timezone.utc)
    with session_scope() as s:
        v = _owned(s, video_id, owner)
        existing = {r.name: r for r in s.scalars(select(Rendition).where(
            Rendition.video_id == video_id, Rendition.run == run))}
        for row in rows:
            r = existing.get(row["name"])
            if r is None:
                r = Rendition(video_id=video_id, run=run, name=row["name"], width=row.get("width", 0),
                              height=row.get("height", 0))
                s.add(r)
            for key, value in row.items():
                setattr(r, key, value)
            if row.get("status") in (RenditionStatus.GROWING, RenditionStatus.READY) and r.published_at is None:
                r.published_at = now
        if make_current and VideoStatus(v.status) != VideoStatus.DELETED:
            v.current_run = run


@through_outages
def withdraw_run(video_id: str, run: str, *, owner: str | None = None) -> None:
    """Remove every rendition row of `run` (its files go with it): what it published is no
    longer valid (the run planned its chunks again)."""
    with session_scope() as s:
        _owned(s, video_id, owner)
        s.execute(sql_delete(Rendition).where(Rendition.video_id == video_id, Rendition.run == run))


def record_failed_rendition(video_id: str, run: str, rung: dict, reason: str, *, owner: str | None = None) -> None:
    save_renditions(video_id, run, [{"name": rung["name"], "width": rung["width"], "height": rung["height"],
                                     "status": RenditionStatus.FAILED, "error": reason[:2000]}], owner=owner)


@through_outages
def save_thumbnails(video_id: str, thumbs: dict, *, owner: str | None = None) -> None:
    with session_scope() as s:
        v = _owned(s, video_id, owner)
        v.poster_url = thumbs.get("poster_url")
        v.thumbnails_url = thumbs.get("thumbnails_url")


@through_outages
def finish(video_id: str, run: str, status: VideoStatus, error: str | None, *, switch_from: str | None,
           owner: str | None = None) -> None:
    with session_scope() as s:
        v = _owned(s, video_id, owner)
        if VideoStatus(v.status) == VideoStatus.DELETED:
            return
        if VideoStatus(v.status) == status and v.current_run == run and status != VideoStatus.PROCESSING:
            return  # already finished by this step, before an outage hid the commit
        if status in (VideoStatus.READY, VideoStatus.PARTIAL):
            v.current_run = run
            if switch_from and switch_from != run:
                s.execute(sql_delete(Rendition).where(Rendition.video_id == video_id, Rendition.run == switch_from))
        v.stage = status.value.lower()
        transition(s, v, status, error=error)


@through_outages
def fail(video_id: str, message: str, *, published: str | None = None, owner: str | None = None) -> None:
    """End the run as failed. A video that still has an earlier published run keeps playing
    it: it goes back to READY/PARTIAL with the reason of this failure in `error`."""
    with session_scope() as s:
        v = _owned(s, video_id, owner)
        if VideoStatus(v.status) != VideoStatus.PROCESSING:
            return
        v.stage = "failed"
        if published and v.current_run == published:
            kept = [r for r in v.renditions if r.run == published]
            ok = all(r.status == RenditionStatus.READY for r in kept)
            transition(s, v, VideoStatus.READY if ok else VideoStatus.PARTIAL,
                       error=f"reprocessing failed, the previous version is still published: {message}")
            v.progress = 100.0
            return
        transition(s, v, VideoStatus.FAILED, error=message)




@through_outages
def has_published(video_id: str, run: str) -> bool:
    """Whether a rendition of `run` is READY or GROWING (players may be using its files)."""
    with session_scope() as s:
        return s.scalars(select(Rendition.id).where(
            Rendition.video_id == video_id, Rendition.run == run,
            Rendition.status.in_((RenditionStatus.READY, RenditionStatus.GROWING)))).first() is not None
