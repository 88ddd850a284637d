"""Schedules proven to fire, and health that notices when they stop.

A real Prefect server (its scheduler service looping every second instead of every minute) and
the real `vodflow serve-flows` process, with the bulk-ingest and maintenance schedules shortened
to intervals through settings. Nobody calls a flow here: every run is created by the server's
scheduler and executed by the serve process. Then the schedule is paused, and the serve process
stopped, and `vodflow status` and /healthz must name the deployment that no longer runs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.media import make_clip
from tests.ops_support import prefect_get, prefect_post
from tests.servers import prefect_server, stop

pytestmark = pytest.mark.slow

INTERVAL = 15  # seconds between scheduled runs of each deployment
GRACE = 45  # a scheduled run this late counts as missed
SCHEDULED = ("bulk-ingest/scheduled", "maintenance/hourly")
VODFLOW = shutil.which("vodflow", path=str(Path(sys.executable).parent)) or "vodflow"


class Served:
    def __init__(self, api: str, env: dict, data: Path, watch: Path, proc: subprocess.Popen, log: Path):
        self.api, self.env, self.data, self.watch, self.proc, self.log = api, env, data, watch, proc, log

    def status(self) -> tuple[int, dict]:
        out = subprocess.run([VODFLOW, "status", "--json"], capture_output=True, text=True, timeout=120,
                             env={**os.environ, **self.env, "COLUMNS": "200"})
        return out.returncode, json.loads(out.stdout)

    def deployment(self, name: str) -> dict:
        return prefect_get(self.api, f"/deployments/name/{name}")

    def runs(self, name: str) -> list[dict]:
        dep = self.deployment(name)
        return prefect_post(self.api, "/flow_runs/filter",
                            {"flow_runs": {"deployment_id": {"any_": [dep["id"]]}}, "limit": 200})


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("schedules")
    home, data, watch = base / "prefect", base / "var", base / "watch"
    home.mkdir()
    watch.mkdir()
    # Prefect's scheduler service creates scheduled runs every 60 s by default
    server_env = {"PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "1"}
    with prefect_server(home, base / "prefect.log", env=server_env) as api:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "VODFLOW_"))}
        env.update({
            "PREFECT_API_URL": api,
            "PREFECT_HOME": str(home),
            "PREFECT_RUNNER_POLL_FREQUENCY": "1",
            "VODFLOW_DATA_DIR": str(data),
            "VODFLOW_BULK_INGEST_URL": str(watch),
            "VODFLOW_BULK_INGEST_SETTLE_SECONDS": "1",
            "VODFLOW_BULK_INGEST_INTERVAL_SECONDS": str(INTERVAL),
            "VODFLOW_MAINTENANCE_INTERVAL_SECONDS": str(INTERVAL),
            "VODFLOW_SCHEDULE_GRACE_SECONDS": str(GRACE),
            "VODFLOW_DASK_WORKERS": "1",
        })
        log = base / "serve.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([VODFLOW, "serve-flows"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, cwd=base)
        try:
            yield Served(api, {k: v for k, v in env.items() if k.startswith(("PREFECT_", "VODFLOW_"))},
                         data, watch, proc, log)
        finally:
            stop(proc, timeout=30)


def _when(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def test_scheduled_runs_are_created_by_the_scheduler_and_complete(served, media_dir):
    clip = make_clip(media_dir / "watched.mp4", duration=2, size="320x180")
    shutil.copy(clip, served.watch / "dropped in.mp4")
    deadline = time.monotonic() + 300
    while True:
        assert served.proc.poll() is None, "serve-flows exited:\n" + served.log.read_text()[-3000:]
        done = {}
        for name in SCHEDULED:
            try:
                runs = served.runs(name)
            except Exception:  # noqa: BLE001 - not registered yet
                runs = []
            done[name] = [r for r in runs if r["state"]["type"] == "COMPLETED"]
        video = None
        try:
            with sqlite3.connect(served.data / "vodflow.db") as db:
                video = db.execute("select id, status from videos where original_filename = ?",
                                   ("dropped in.mp4",)).fetchone()
        except sqlite3.OperationalError:  # the catalog is not made yet
            pass
        if all(len(d) >= 2 for d in done.values()) and video and video[1] == "READY":
            break
        assert time.monotonic() < deadline, (
            f"after 300 s: completed runs {({k: len(v) for k, v in done.items()})}, video {video}; "
            "serve log:\n" + served.log.read_text()[-3000:])
        time.sleep(1)
    for name, completed in done.items():
        for run in completed:
            # made by the server's scheduler from the deployment's schedule, not by a call
            assert run["auto_scheduled"] is True, (name, run["name"])
            assert run["created_by"] is None or run["created_by"].get("type") != "USER"
        starts = sorted(_when(r["expected_start_time"]) for r in completed)
        gaps = [b - a for a, b in zip(starts, starts[1:])]
        assert all(abs(g % INTERVAL) < 1 or abs(g % INTERVAL - INTERVAL) < 1 for g in gaps), gaps
    # the file dropped in the watched folder was published by a scheduled scan
    vid = video[0]
    with sqlite3.connect(served.data / "vodflow.db") as db:
        (run_id,) = db.execute("select flow_run_id from videos where id = ?", (vid,)).fetchone()
        renditions = db.execute("select count(*) from renditions where video_id = ? and status = 'READY'",
                                (vid,)).fetchone()[0]
    assert renditions >= 1
    deadline = time.monotonic() + 60
    while True:  # the video is READY just before its run ends
        ingest_run = prefect_get(served.api, f"/flow_runs/{run_id}")
        if ingest_run["state"]["type"] not in ("PENDING", "RUNNING") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert prefect_get(served.api, f"/deployments/{ingest_run['deployment_id']}")["name"] == "on-demand"
    assert ingest_run["state"]["type"] == "COMPLETED"
    code, status = served.status()
    assert code == 0 and status["checks"]["schedules"]["ok"], status["checks"]["schedules"]
    for name in SCHEDULED:
        assert status["checks"]["schedules"]["deployments"][name]["next_run"]


def test_a_paused_schedule_is_unhealthy_and_named(served):
    dep = served.deployment("maintenance/hourly")
    prefect_post(served.api, f"/deployments/{dep['id']}/pause_deployment", {})
    try:
        code, status = served.status()
        assert code == 1
        schedules = status["checks"]["schedules"]
        assert not schedules["ok"] and "maintenance/hourly" in schedules["error"]
        assert "paused" in schedules["error"] and "bulk-ingest/scheduled" not in schedules["error"]
    finally:
        prefect_post(served.api, f"/deployments/{dep['id']}/resume_deployment", {})
    deadline = time.monotonic() + 60
    while True:  # the scheduler makes its runs again within a loop or two
        code, status = served.status()
        if code == 0:
            break
        assert time.monotonic() < deadline, status["checks"]["schedules"]
        time.sleep(1)


def test_zz_missed_runs_after_the_serve_process_stops_are_named(served, monkeypatch):
    """Last: it stops the serve process. Scheduled runs keep coming due with nobody to run them."""
    from config.settings import reset_settings
    from streaming_app.app import create_app

    served.proc.send_signal(signal.SIGTERM)
    served.proc.wait(60)
    stopped = time.time()
    deadline = time.monotonic() + GRACE + 3 * INTERVAL + 60
    while True:
        code, status = served.status()
        schedules = status["checks"]["schedules"]
        if code == 1 and all(name in schedules.get("error", "") for name in SCHEDULED):
            break
        assert time.monotonic() < deadline, schedules
        time.sleep(2)
    for name in SCHEDULED:  # named only once a run was more than the grace period late
        overdue = _when(schedules["deployments"][name]["overdue_since"])
        assert time.time() - overdue >= GRACE
    print(f"missed schedules named {time.time() - stopped:.0f} s after the serve process stopped")
    assert "has not started" in schedules["error"] and "serve-flows" in schedules["error"]
    for name in SCHEDULED:
        assert not schedules["deployments"][name]["ok"]
    # the web app's health says the same, without taking the instance out of the load balancer
    for k, v in served.env.items():
        monkeypatch.setenv(k, v)
    reset_settings()
    r = create_app().test_client().get("/healthz")
    assert r.status_code == 200
    body = r.get_json()
    assert body["status"] == "degraded"
    assert "maintenance/hourly" in body["checks"]["schedules"]["error"]
