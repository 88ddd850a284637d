"""Retry policy shared by the media tasks, and progress reports from inside a task.

Transient failures (a killed ffmpeg, a timeout, a storage hiccup) are retried with exponential
backoff and jitter; permanent ones (the input itself is bad) fail at once, because retrying an
undecodable file only delays the message the uploader needs.
"""

from __future__ import annotations

import logging

from distributed import get_worker
from prefect.tasks import exponential_backoff

from config import storage

log = logging.getLogger(__name__)

PROGRESS_TOPIC = "vodflow-progress"


def is_permanent(exc: BaseException | None) -> bool:
    return bool(getattr(exc, "permanent", False))


def transient_only(task, task_run, state) -> bool:
    """Prefect `retry_condition_fn`: retry unless the failure is a permanent media error."""
    exc = state.data if isinstance(getattr(state, "data", None), BaseException) else None
    if exc is None:
        try:
            exc = state.result(raise_on_failure=False)
        except BaseException as e:  # noqa: BLE001 - the result itself may be the failure
            exc = e
    return not is_permanent(exc if isinstance(exc, BaseException) else None)


RETRY_OPTIONS = dict(
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_jitter_factor=0.5,
    retry_condition_fn=transient_only,
)


class RunStopped(RuntimeError):
    """The run a task belongs to has ended (failed, stopped, or taken over by a newer run of
    the video) while the task was still working: its output would only be an orphan."""

    permanent = True


def check_lease(lease_url: str | None) -> None:
    """Before a task stores its output: is its run still alive? The flow keeps a lease file in
    the run's scratch space and removes that space when the run ends, so a task a cancelled
    run could not interrupt drops its output instead of leaving it behind."""
    if not lease_url:
        return
    if not storage.exists(lease_url):
        raise RunStopped("the run this task belonged to has ended; its output was dropped")


def report_progress(key: str, fraction: float, **extra) -> None:
    """Tell the flow how far a task is (per chunk). Goes through the Dask scheduler's event log,
    so it needs no catalog access and works from a worker on another machine; outside Dask it
    is a no-op."""
    try:
        worker = get_worker()
    except ValueError:
        return
    try:
        worker.log_event(PROGRESS_TOPIC, {"key": key, "fraction": round(float(fraction), 4), **extra})
    except Exception:  # noqa: BLE001 - progress is best effort, never fail a task for it
        log.debug("progress report failed", exc_info=True)
