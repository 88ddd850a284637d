"""Start an ingest run for a stored video: through the Prefect deployment `ingest/on-demand` when
a Prefect API is configured, else in a detached local process (a machine running only the web app).
`VODFLOW_DISPATCH=local` (a setting like any other) forces the local process, `off` only stores
and catalogs (maintenance dispatches what is left UPLOADED).

The run's id is written to `Video.flow_run_id` so maintenance can later ask Prefect what became
of it. The deployment's concurrency limit (set by the serve process) queues runs beyond
`VODFLOW_MAX_CONCURRENT_INGESTS`, so dispatching 200 videos at once is safe.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys

from sqlalchemy import update

from catalog.db import session_scope
from catalog.models import Video
from config.settings import get_settings, prefect_api_url

log = logging.getLogger(__name__)
DEPLOYMENT = "ingest/on-demand"
LOCAL_PREFIX = "local:"


_UNSET = object()


def _record_run(video_id: str, run_id: str, *, unless_changed_from=_UNSET) -> None:
    """Write the run id on the video. With `unless_changed_from`, only if the video still has
    that id: a local run may already have recorded its own Prefect id, which must stand."""
    stmt = update(Video).where(Video.id == video_id)
    if unless_changed_from is not _UNSET:
        stmt = stmt.where(Video.flow_run_id.is_(None) if unless_changed_from is None
                          else Video.flow_run_id == unless_changed_from)
    with session_scope() as s:
        s.execute(stmt.values(flow_run_id=run_id))


def _current_run(video_id: str) -> str | None:
    with session_scope() as s:
        v = s.get(Video, video_id)
        return v.flow_run_id if v is not None else None


def _attempt(video_id: str) -> int:
    with session_scope() as s:
        v = s.get(Video, video_id)
        return int(v.attempts or 0) if v is not None else 0


def local_run_id(pid: int) -> str:
    """'local:<host>:<pid>': a run outside Prefect, identified by the machine and process."""
    return f"{LOCAL_PREFIX}{socket.gethostname()}:{pid}"


def dispatch_ingest(video_id: str, *, reason: str | None = None) -> str:
    """Dispatch once; returns the flow run id (or 'local:<host>:<pid>') after recording it on the
    Video, or 'off' when dispatch is disabled."""
    mode = get_settings().dispatch
    if mode == "off":
        # store and catalog only: the video stays UPLOADED until maintenance or an operator starts it
        log.info("dispatch is off (VODFLOW_DISPATCH=%s): video %s stays UPLOADED", mode, video_id)
        return "off"
    if mode == "deployment" and prefect_api_url():
        try:
            # imported here: the web app hands uploads off through this module and never loads
            # Prefect otherwise (seconds and hundreds of modules in each worker)
            from prefect.deployments import run_deployment

            attempt = _attempt(video_id)
            run = run_deployment(
                DEPLOYMENT,
                parameters={"video_id": video_id},
                timeout=0,
                flow_run_name=f"ingest {video_id}" + (f" (attempt {attempt + 1})" if attempt else ""),
                # a retried hand-off (the last PATCH sent twice) creates no second run
                idempotency_key=f"ingest:{video_id}:{attempt}",
                # a dispatch from bulk ingest or maintenance must not tie the run to that flow
                as_subflow=False,
                tags=["vodflow", "ingest"] + ([reason] if reason else []),
            )
            run_id = str(run.id)
            _record_run(video_id, run_id)
            log.info("dispatched %s as flow run %s", video_id, run_id)
            return run_id
        except Exception as exc:  # noqa: BLE001 - no deployment served: fall back to a local run
            log.warning("deployment %s unavailable (%s); running ingest locally", DEPLOYMENT, exc)
    proc = start_local_ingest(video_id)
    return local_run_id(proc.pid)


def start_local_ingest(video_id: str, *, env: dict | None = None, **popen) -> subprocess.Popen:
    """`python -m flows.ingest VIDEO_ID` in a process of its own, its run id recorded on the video."""
    before = _current_run(video_id)
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.ingest", video_id],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
        **popen,
    )
    _record_run(video_id, local_run_id(proc.pid), unless_changed_from=before)
    log.info("dispatched %s to local process %d", video_id, proc.pid)
    return proc
