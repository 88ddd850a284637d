"""Free-space reserve for uploads: refuse at the door (507) rather than fail mid-way.

An upload lands in the data dir's uploads folder, becomes the source in storage, and its ingest
fills scratch; a disk that fills up half-way leaves a client that sent gigabytes for nothing
and a server that can no longer write its catalog. So an upload is refused before its first
byte when accepting it would leave less than VODFLOW_DISK_RESERVE_BYTES free on any of those
filesystems (each counted once, whatever number of them share a disk).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from config import storage
from config.settings import Settings


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _places(settings: Settings) -> list[tuple[str, Path]]:
    places = [("data dir", settings.uploads_dir), ("scratch", settings.work_dir)]
    if storage.is_local(settings.storage_url):
        places.append(("storage", storage.local_path_of(settings.storage_url)))
    return places


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def space_problem(settings: Settings, incoming: int) -> str | None:
    """Why an upload of `incoming` bytes must be refused for lack of space, or None."""
    reserve = settings.disk_reserve_bytes
    seen: set[int] = set()
    for what, path in _places(settings):
        where = _existing(path)
        try:
            dev = os.stat(where).st_dev
            free = shutil.disk_usage(where).free
        except OSError:
            continue
        if dev in seen:
            continue
        seen.add(dev)
        if free - incoming < reserve:
            return (f"not enough free space on the server: taking {_gb(incoming)} would leave "
                    f"{_gb(max(free - incoming, 0))} free in the {what}, under its reserve of "
                    f"{_gb(reserve)} (VODFLOW_DISK_RESERVE_BYTES); retry later or ask the operator "
                    "to free space")
    return None
