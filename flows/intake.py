"""Hand a complete, validated upload to the pipeline: store it, catalog it, dispatch ingest."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from catalog.db import session_scope
from catalog.models import Video, VideoStatus, new_id
from config import storage
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
    from sqlalchemy import update

    from flows.dispatch import dispatch_ingest

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


class SourceRejected(RuntimeError):
    pass


def check_file(path: str | os.PathLike, filename: str | None = None) -> MediaInfo:
    """All three intake phases on a local file; raises UploadRejected."""
    from tasks.intake import SNIFF_BYTES, check_complete, check_declared, check_head

    path = Path(path)
    check_declared(path.stat().st_size, filename or path.name, None)
    with open(path, "rb") as fh:
        check_head(fh.read(SNIFF_BYTES), filename or path.name)
    return check_complete(path)


def _ingest_local_file(path: Path, title: str | None) -> str:
    import shutil
    import tempfile

    from config.settings import get_settings

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


def _ingest_remote_file(url: str, title: str | None) -> str:
    """One file named by URL (s3://…/clip.mp4, https://…): fetched, checked, stored."""
    import posixpath
    import tempfile

    from config.settings import get_settings

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


def _is_location(src: str) -> bool:
    """A folder or a bucket prefix (scanned like bulk ingest) rather than one file."""
    if "://" not in src:
        return Path(src).is_dir()
    if src.startswith(("http://", "https://")):
        return False
    fs, path = storage.filesystem(src)
    try:
        return not fs.isfile(path)
    except Exception:  # noqa: BLE001 - unreachable: let the scan report it
        return True


def ingest_sources(sources: list[str], *, title: str | None = None, console=None,
                   settle_seconds: float | None = None,
                   failures: list[str] | None = None) -> list[tuple[str, str]]:
    """CLI intake. Each source is a local file, a file URL (s3://…/a.mp4, https://…), or a
    location (a folder, s3://bucket/incoming/) scanned like bulk ingest: new content only,
    files still being written left alone. Returns [(name, video_id)] of what was ingested;
    a refused or failing source is reported (and added to `failures`) and skipped, the others
    go on. Content already known is neither."""
    from tasks.intake import UploadRejected

    failures = failures if failures is not None else []

    def say(msg: str) -> None:
        failures.append(msg)
        if console:
            console.print(msg)
        else:
            log.info(msg)

    accepted: list[tuple[str, str]] = []
    single_title = title if len(sources) == 1 else None
    for src in sources:
        try:
            if _is_location(src):
                accepted += _ingest_location(src, console, settle_seconds, failures)
                continue
            if "://" in src and not src.startswith("file://"):
                vid = _ingest_remote_file(src, single_title)
                accepted.append((src.rsplit("/", 1)[-1], vid))
                continue
            path = storage.local_path_of(src) if src.startswith("file://") else Path(src)
            if not path.is_file():
                say(f"[red]{src}: no such file[/red]")
                continue
            accepted.append((path.name, _ingest_local_file(path, single_title)))
        except UploadRejected as exc:
            say(f"[red]{src}: {exc.message}[/red]")
        except FileNotFoundError:
            say(f"[red]{src}: no such file or location[/red]")
        except Exception as exc:  # noqa: BLE001 - report and go on with the next source
            say(f"[red]{src}: {exc}[/red]")
    return accepted


def _ingest_location(src: str, console, settle_seconds: float | None,
                     failures: list[str]) -> list[tuple[str, str]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from flows.bulk_ingest import run_bulk_ingest

    if console is None:
        report = run_bulk_ingest(src, settle_seconds=settle_seconds)
    else:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[current]}"), TimeElapsedColumn(),
                      console=console, transient=False) as progress:
            bar = progress.add_task(f"scanning {src}", total=None, current="")

            def on_start(n: int) -> None:
                progress.update(bar, total=n, description=f"ingesting {src}")

            def on_file(o, i: int, n: int) -> None:
                progress.update(bar, completed=i, current=o.name)
                if o.result == "failed":
                    progress.console.print(f"[red]{o.name}: {o.note}[/red]")
                elif o.result in ("duplicate", "known"):
                    progress.console.print(f"[yellow]{o.name}: {o.result}"
                                           + (f" (video {o.video_id})" if o.video_id else "")
                                           + (f": {o.note}" if o.note else "") + "[/yellow]")

            report = run_bulk_ingest(src, settle_seconds=settle_seconds, on_start=on_start, on_file=on_file)
        for o in report.outcomes:
            if o.result == "writing":
                console.print(f"[yellow]{o.name}: still being written; run again later[/yellow]")
    failures += [f"{o.name}: {o.note}" for o in report.outcomes if o.result == "failed"]
    return [(o.name, o.video_id) for o in report.outcomes if o.result == "ingested" and o.video_id]
