"""Hand a complete, validated upload to the pipeline: store it, catalog it, dispatch ingest."""

from __future__ import annotations

import logging
import os
import posixpath
import shutil
import tempfile
from pathlib import Path

from sqlalchemy import update

from catalog.db import session_scope
from catalog.models import Video, VideoStatus, new_id
from config import storage
from config.settings import get_settings
from flows.dispatch import dispatch_ingest
from tasks.intake import SNIFF_BYTES, check_complete, check_declared, check_head
from tasks.probe import MediaInfo

log = logging.getLogger(__name__)


def source_url_for(video_id: str, filename: str | None) -> str:
    ext = (Path(filename).suffix.lower() if filename else "") or ".bin"
    return storage.url_for("sources", video_id, f"source{ext}")


def video_fields(info: MediaInfo) -> dict:
    return dict(
        duration=info.duration,
        width=info.width,
        height=info.height,
        display_width=info.display_width,
        display_height=info.display_height,
        display_aspect=info.display_aspect,
        rotation=info.rotation,
        frame_rate=info.frame_rate,
        video_codec=info.video_codec,
        pix_fmt=info.pix_fmt,
        bitrate=info.bitrate,
        audio_codec=info.audio_codec,
        audio_channels=info.audio_channels,
        audio_sample_rate=info.audio_sample_rate,
        probe=info.to_dict(),
    )


def accept(temp_path: str | os.PathLike, *, filename: str | None, title: str | None,
           info: MediaInfo, video_id: str | None = None, dispatch: bool = True) -> str:
    """Move the temp file into storage, create the Video (UPLOADED) and dispatch ingest.

    Safe to call again with the same `video_id` after a crash: an existing Video is kept and
    only the missing steps run. If the catalog row cannot be written, the bytes go back to
    `temp_path` (local storage) or stay there (remote storage), so nothing uploaded is lost."""
    video_id = video_id or new_id()
    with session_scope() as s:
        existing = s.get(Video, video_id)
    if existing is not None:
        if Path(temp_path).exists():
            os.unlink(temp_path)
        if dispatch:
            dispatch_once(video_id)
        return video_id
    url = source_url_for(video_id, filename)
    size = Path(temp_path).stat().st_size
    local = storage.is_local(url)
    if local:
        storage.move_local_file(temp_path, url)
    else:
        storage.put_file(temp_path, url)
    try:
        with session_scope() as s:
            s.add(Video(
                id=video_id,
                title=(title or Path(filename or "untitled").stem)[:300],
                original_filename=filename,
                source_url=url,
                source_size=size,
                status=VideoStatus.UPLOADED,
                **video_fields(info),
            ))
    except Exception:
        if local:
            os.replace(storage.local_path_of(url), temp_path)
        storage.delete(storage.url_for("sources", video_id))
        raise
    if not local:
        os.unlink(temp_path)
    log.info("video %s stored at %s (%d bytes)", video_id, url, size)
    if dispatch:
        dispatch_once(video_id)
    return video_id


def dispatch_once(video_id: str) -> str | None:
    """Dispatch ingest for an UPLOADED video that has no run recorded yet; record the run."""
    with session_scope() as s:
        v = s.get(Video, video_id)
        if v is None or v.flow_run_id or v.status != VideoStatus.UPLOADED:
            return v.flow_run_id if v is not None else None
    run_id = dispatch_ingest(video_id)
    if run_id and run_id != "off":
        with session_scope() as s:
            s.execute(update(Video).where(Video.id == video_id, Video.flow_run_id.is_(None))
                      .values(flow_run_id=run_id))
    return run_id


def check_file(path: str | os.PathLike, filename: str | None = None) -> MediaInfo:
    """All three intake phases on a local file; raises UploadRejected."""
    path = Path(path)
    check_declared(path.stat().st_size, filename or path.name, None)
    with open(path, "rb") as fh:
        check_head(fh.read(SNIFF_BYTES), filename or path.name)
    return check_complete(path)


def ingest_local_file(path: Path, title: str | None) -> str:
    """One local file (the CLI's): checked, copied into the uploads folder, accepted."""
    info = check_file(path)
    tmpdir = get_settings().uploads_dir
    tmpdir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=tmpdir, prefix="cli-", suffix=path.suffix)
    os.close(fd)
    try:
        shutil.copyfile(path, tmp)
        return accept(tmp, filename=path.name, title=title, info=info)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def ingest_remote_file(url: str, title: str | None) -> str:
    """One file named by URL (s3://…/clip.mp4, https://…): fetched, checked, stored."""
    name = posixpath.basename(url.split("?", 1)[0]) or "remote"
    tmpdir = get_settings().uploads_dir
    tmpdir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=tmpdir, prefix="cli-", suffix=Path(name).suffix.lower())
    os.close(fd)
    try:
        storage.get_file(url, tmp)
        info = check_file(tmp, name)
        return accept(tmp, filename=name, title=title, info=info)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
