"""`vodflow ingest`: files, file URLs and locations handed to the pipeline, with progress bars.

The work itself is the flows' (`flows.intake` for one file, `flows.bulk_ingest` for a folder or
a bucket prefix); this module only chooses which, and shows it on the terminal.
"""

from __future__ import annotations

import logging
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from config import storage
from flows import intake
from flows.bulk_ingest import run_bulk_ingest
from tasks.intake import UploadRejected

log = logging.getLogger(__name__)


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
                vid = intake.ingest_remote_file(src, single_title)
                accepted.append((src.rsplit("/", 1)[-1], vid))
                continue
            path = storage.local_path_of(src) if src.startswith("file://") else Path(src)
            if not path.is_file():
                say(f"[red]{src}: no such file[/red]")
                continue
            accepted.append((path.name, intake.ingest_local_file(path, single_title)))
        except UploadRejected as exc:
            say(f"[red]{src}: {exc.message}[/red]")
        except FileNotFoundError:
            say(f"[red]{src}: no such file or location[/red]")
        except Exception as exc:  # noqa: BLE001 - report and go on with the next source
            say(f"[red]{src}: {exc}[/red]")
    return accepted


def _ingest_location(src: str, console, settle_seconds: float | None,
                     failures: list[str]) -> list[tuple[str, str]]:
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
