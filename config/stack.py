"""Where the running stack is: `vodflow up` records it in DATA_DIR/stack.json, and commands run
in another shell join it (their ingests then show in its Prefect UI and use its Dask workers)
instead of starting a temporary Prefect server and cluster of their own.

The record is removed when the stack stops cleanly and ignored when the process that wrote it is
gone (killed, machine rebooted): a pid is checked together with its start time, so a recycled
pid does not pass for the stack. Explicit settings win: PREFECT_API_URL or VODFLOW_DASK_ADDRESS
set in the environment or vodflow.toml are left as they are.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import psutil

from config.settings import get_settings, reset_settings

FILE = "stack.json"


def stack_file(data_dir: Path) -> Path:
    return data_dir / FILE


def _started_at(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def write_record(data_dir: Path, **fields) -> Path:
    """Record this process as the running stack (atomically)."""
    pid = os.getpid()
    record = {"pid": pid, "pid_started_at": _started_at(pid), **fields}
    path = stack_file(data_dir)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def remove_record(data_dir: Path) -> None:
    """Forget the record, if it is this process's."""
    path = stack_file(data_dir)
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def running_stack(data_dir: Path) -> dict | None:
    """The record of a stack that is running with this data dir, else None."""
    try:
        record = json.loads(stack_file(data_dir).read_text())
        pid = int(record["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    started = _started_at(pid)
    if started is None or abs(started - float(record.get("pid_started_at") or 0)) > 1:
        return None  # the stack that wrote it is gone
    return record


def join_running_stack() -> dict | None:
    """Point this process at the running stack's Prefect API and Dask scheduler, unless
    settings name others; returns the stack's record (None: no stack running)."""
    settings = get_settings()
    record = running_stack(settings.data_dir)
    if record is None:
        return None
    changed = False
    if not (os.environ.get("PREFECT_API_URL") or settings.prefect_api_url) and record.get("prefect_api"):
        os.environ["PREFECT_API_URL"] = record["prefect_api"]
        changed = True
    if not settings.dask_address and record.get("dask_address"):
        os.environ["VODFLOW_DASK_ADDRESS"] = record["dask_address"]
        changed = True
    if changed:
        reset_settings()
        prefect_context = sys.modules.get("prefect.context")
        if prefect_context is not None and hasattr(prefect_context, "refresh_global_settings_context"):
            prefect_context.refresh_global_settings_context()
    return record
