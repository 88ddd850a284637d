"""Start an ingest run for a stored video: through the Prefect deployment when one is served,
else in a detached local process (a machine running only the web app).

`VODFLOW_DISPATCH` chooses how: `deployment` (default: the Prefect deployment when
PREFECT_API_URL is set, else a local process), `local` (always a local process), or `off`
(record only: the video stays UPLOADED until something else starts it, e.g. a test of the
upload side, or a web host that must never transcode)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

log = logging.getLogger(__name__)
DEPLOYMENT = "ingest/on-demand"


def dispatch_ingest(video_id: str) -> str:
    """Dispatch once; returns the flow run id, 'local:<pid>', or 'off' when dispatch is disabled."""
    mode = os.environ.get("VODFLOW_DISPATCH", "deployment").strip().lower()
    if mode in ("off", "none", "0", "false"):
        log.info("dispatch is off (VODFLOW_DISPATCH=%s): video %s stays UPLOADED", mode, video_id)
        return "off"
    if os.environ.get("PREFECT_API_URL") and mode == "deployment":
        try:
            from prefect.deployments import run_deployment

            run = run_deployment(DEPLOYMENT, parameters={"video_id": video_id}, timeout=0,
                                 flow_run_name=f"ingest {video_id}")
            log.info("dispatched %s as flow run %s", video_id, run.id)
            return str(run.id)
        except Exception as exc:  # noqa: BLE001 - no deployment served: fall back to a local run
            log.warning("deployment %s unavailable (%s); running ingest locally", DEPLOYMENT, exc)
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.ingest", video_id],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.info("dispatched %s to local process %d", video_id, proc.pid)
    return f"local:{proc.pid}"
