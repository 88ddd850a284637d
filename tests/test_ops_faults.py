"""Faults of the stack's own parts, mid-ingest, as an operator meets them under `vodflow up`.

One stack serves the module, its catalog on PostgreSQL: the Prefect server killed while a video
is being encoded (`up` restarts it), the Dask scheduler killed while a chunk encode runs (`up`
restarts it and asks maintenance to dispatch the cut-off video again), PostgreSQL stopped while
an ingest runs and started again, and the web app's gunicorn master killed in the middle of a tus
upload. Each time the video ends READY, and `/healthz`, `vodflow status` and the logs name what
happened. First, without a stack, `up`'s supervision of a part that keeps exiting: restarted with
a growing pause, every exit recorded. Last, `kill -9` of `up` itself: no process and no port of
the stack may outlive it.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import psutil
import pytest
import requests

from tests.media import make_clip
from tests.ops_support import alive, descendants, prefect_get, prefect_post, stack_processes
from tests.servers import free_port, vodflow_command
from tests.upload_support import OFFSET_TYPE, TUS, metadata

pytestmark = pytest.mark.slow
TERMINAL = ("READY", "PARTIAL", "FAILED", "DELETED")


class Stack:
    def __init__(self, proc: subprocess.Popen, env: dict, base: Path, api: str, web: str):
        self.proc, self.env, self.base, self.api, self.web = proc, env, base, api, web
        self.data = Path(env["VODFLOW_DATA_DIR"])
        self.log = base / "up.log"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def part(self, name: str) -> dict:
        """What `vodflow up` recorded about one of its processes."""
        return json.loads((self.data / "stack.json").read_text())["components"][name]

    def video(self, vid: str) -> dict:
        r = requests.get(f"{self.web}/api/videos/{vid}", timeout=10)
        r.raise_for_status()
        return r.json()

    def wait(self, what: str, probe, timeout: float = 180, every: float = 0.2):
        """Poll `probe` until it returns something truthy; fail with `what` after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            got = probe()
            if got:
                return got
            assert self.proc.poll() is None, "the stack stopped:\n" + self.output()[-3000:]
            assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s\n" + self.output()[-3000:]
            time.sleep(every)

    def wait_video(self, vid: str, until=lambda v: v["status"] in TERMINAL, timeout: float = 240) -> dict:
        def probe():
            try:
                v = self.video(vid)
            except requests.RequestException:
                return None  # the web app or its catalog is down for a moment
            return v if until(v) else None
        return self.wait(f"video {vid}", probe, timeout)

    def health(self) -> tuple[int, dict]:
        r = requests.get(f"{self.web}/healthz", timeout=30)
        return r.status_code, r.json()

    def upload(self, path: Path) -> str:
        with open(path, "rb") as fh:
            r = requests.post(f"{self.web}/api/uploads", files={"file": (path.name, fh, "video/mp4")}, timeout=60)
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def status(self) -> tuple[dict, str]:
        """`vodflow status --json` and the table, from another shell with the operator's config."""
        env = {**{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "VODFLOW_"))},
               "VODFLOW_DATA_DIR": str(self.data), "VODFLOW_DATABASE_URL": self.env["VODFLOW_DATABASE_URL"],
               "VODFLOW_WEB_PORT": self.env["VODFLOW_WEB_PORT"], "COLUMNS": "400"}
        as_json = subprocess.run([*vodflow_command(), "status", "--json"], capture_output=True, text=True,
                                 timeout=120, env=env, cwd=self.base)
        table = subprocess.run([*vodflow_command(), "status"], capture_output=True, text=True, timeout=120,
                               env=env, cwd=self.base)
        return json.loads(as_json.stdout), table.stdout

    def log_of(self, part: str) -> str:
        return (self.data / "logs" / f"{part}.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def stack(tmp_path_factory, postgres):
    base = tmp_path_factory.mktemp("faults")
    ports = {"VODFLOW_PREFECT_PORT": free_port(), "VODFLOW_DASK_SCHEDULER_PORT": free_port(),
             "VODFLOW_WEB_PORT": free_port(), "VODFLOW_DASK_DASHBOARD_PORT": free_port()}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "VODFLOW_"))}
    env.update({k: str(v) for k, v in ports.items()})
    env.update({
        "VODFLOW_DATA_DIR": str(base / "var"),
        "VODFLOW_DATABASE_URL": postgres.new_database(),
        "VODFLOW_WEB_HOST": "127.0.0.1",
        "VODFLOW_WEB_WORKERS": "1",
        "VODFLOW_DASK_WORKERS": "1",
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "1",
        "PREFECT_UI_ENABLED": "false",
    })
    with open(base / "up.log", "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "deployments.cli", "up"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, cwd=base)
    s = Stack(proc, env, base, f"http://127.0.0.1:{ports['VODFLOW_PREFECT_PORT']}/api",
              f"http://127.0.0.1:{ports['VODFLOW_WEB_PORT']}")
    s.postgres = postgres
    deadline = time.monotonic() + 240
    while "vodflow is up" not in s.output():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("vodflow up did not come up:\n" + s.output()[-4000:])
        time.sleep(0.5)
    yield s
    tree = descendants(proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            proc.kill()
    for p in alive(tree):
        p.kill()


def test_a_part_that_keeps_exiting_is_restarted_with_backoff_and_recorded(vodflow_env, monkeypatch):
    """`up`'s supervision on a real process that exits at once, every time: restarted at once the
    first time, then after a growing pause; every exit recorded for `vodflow status`."""
    from config.settings import get_settings
    from deployments import up

    vodflow_env.mkdir(parents=True, exist_ok=True)
    out = io.StringIO()
    stack = up.Stack(get_settings(), out=out)
    monkeypatch.setattr(stack, "reap_orphans", lambda kill_all=False: None)  # the test's own children
    part = up.Component("web", [sys.executable, "-c", "import sys; sys.exit(3)"], dict(os.environ),
                        lambda c: True)
    stack.components = [part]
    starts: list[float] = []
    real_start = stack.start

    def start(c):
        real_start(c)
        starts.append(time.monotonic())

    monkeypatch.setattr(stack, "start", start)
    stack.start(part)
    thread = threading.Thread(target=stack.supervise, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while len(starts) < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    stack.stopping.set()
    thread.join(10)
    assert len(starts) >= 4, out.getvalue()
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    # the supervisor looks once a second: at once, then 1 s, then 2 s of backoff on top
    assert gaps[0] < 1.9 and gaps[1] >= 2.0 and gaps[2] >= 3.0, (gaps, out.getvalue())
    log = out.getvalue()
    assert "web exited (web app, exit code 3); restarting it\n" in log
    assert "restarting it in 1 s" in log and "restarting it in 2 s" in log
    record = json.loads((vodflow_env / "stack.json").read_text())["components"]["web"]
    assert record["restarts"] >= 3 and record["title"] == "web app"
    assert record["exits"][-1]["how"] == "exit code 3" and record["exits"][-1]["code"] == 3


def _clip(media_dir: Path, name: str, rate: str) -> Path:
    # distinct frame rates: distinct bytes, so every upload is a new video
    return make_clip(media_dir / f"{name}.mp4", duration=12, size="320x180", rate=rate)


def _encoding(v: dict) -> bool:
    return v["status"] == "PROCESSING" and v["progress"] > 0


def _final_run(stack: Stack, run_id: str) -> dict:
    def ended():
        run = prefect_get(stack.api, f"/flow_runs/{run_id}")
        return run if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None
    return stack.wait(f"flow run {run_id} ends", ended, timeout=120, every=0.5)


def _playable(stack: Stack, vid: str) -> None:
    master = requests.get(f"{stack.web}/v/{vid}/master.m3u8", timeout=10)
    assert master.status_code == 200 and "#EXT-X-STREAM-INF" in master.text, master.text


def _restarted(stack: Stack, name: str, title: str) -> None:
    """`vodflow status` says the part was killed and is running again."""
    status, table = stack.status()
    (row,) = [r for r in status["stack"] if r["name"] == name]
    assert row["restarts"] >= 1 and row["state"] == "running", row
    assert row["last_exit"].startswith("killed by SIGKILL at "), row
    assert f"{title} restarted 1× by `vodflow up`, last: killed by SIGKILL" in table, table


def test_prefect_server_restarted_mid_ingest(stack, media_dir):
    vid = stack.upload(_clip(media_dir, "prefect restart", "25"))
    run_id = stack.wait_video(vid, _encoding)["flow_run_id"]
    os.kill(stack.part("prefect")["pid"], signal.SIGKILL)
    # while it is down the site still serves: degraded, naming the part
    def prefect_down():
        code, health = stack.health()
        return (code, health) if not health["checks"]["prefect"]["ok"] else None
    code, health = stack.wait("healthz notices", prefect_down, timeout=30)
    assert code == 200 and health["status"] == "degraded"
    assert "unreachable" in health["checks"]["prefect"]["error"]

    video = stack.wait_video(vid)
    assert video["status"] == "READY", video
    # the run lived through it (its API calls waited for the server): no second attempt was needed
    assert video["flow_run_id"] == run_id and video["attempts"] == 1
    stack.wait("prefect healthy again", lambda: "prefect is healthy again" in stack.output(), timeout=240)
    assert _final_run(stack, run_id)["state"]["type"] == "COMPLETED"
    _playable(stack, vid)
    assert "prefect exited (Prefect server, killed by SIGKILL); restarting it" in stack.output()
    _restarted(stack, "prefect", "Prefect server")


def _encode_ffmpeg(stack: Stack) -> psutil.Process | None:
    """A chunk encode (libx264) running under the stack's Dask workers, if one is."""
    for p in descendants(stack.part("workers")["pid"]):
        try:
            if p.name() == "ffmpeg" and "libx264" in p.cmdline():
                return p
        except psutil.Error:
            continue
    return None


def test_dask_scheduler_restarted_mid_ingest(stack, media_dir):
    vid = stack.upload(_clip(media_dir, "scheduler restart", "24"))
    stack.wait("a chunk encode runs", lambda: _encode_ffmpeg(stack), timeout=180, every=0.05)
    first_run = stack.video(vid)["flow_run_id"]
    os.kill(stack.part("scheduler")["pid"], signal.SIGKILL)

    # the run's tasks went with the scheduler: the run stops as interrupted, the video is not
    # failed for it, and maintenance (asked by `up` once the scheduler is back) runs it again
    video = stack.wait_video(vid, timeout=300)
    assert video["status"] == "READY", video
    assert video["flow_run_id"] != first_run and video["attempts"] == 2, video
    crashed = _final_run(stack, first_run)["state"]
    assert crashed["type"] == "CRASHED", crashed
    assert "connection to the Dask scheduler was lost" in crashed["message"], crashed
    _playable(stack, vid)

    out = stack.output()
    assert "scheduler exited (Dask scheduler, killed by SIGKILL); restarting it" in out
    assert "asked maintenance to check the videos in flight after the scheduler restart" in out
    recovery = prefect_post(stack.api, "/flow_runs/filter",
                            {"flow_runs": {"name": {"like_": "recovery after scheduler restart"}}})
    assert recovery, "no maintenance run was asked for after the restart"
    _restarted(stack, "scheduler", "Dask scheduler")


def test_postgresql_restarted_mid_ingest(stack, media_dir):
    vid = stack.upload(_clip(media_dir, "postgres restart", "23"))
    run_id = stack.wait_video(vid, _encoding)["flow_run_id"]
    serve_log_before = len(stack.log_of("serve"))
    stack.postgres.stop()
    stopped_at = time.time()
    try:
        # the operator sees it: the instance cannot serve (503), the database is named
        def unavailable():
            code, health = stack.health()
            return (code, health) if code == 503 else None
        code, health = stack.wait("healthz notices", unavailable, timeout=60)
        assert not health["checks"]["database"]["ok"] and health["status"] != "ok", health
        # the ingest meets the outage at its next catalog step, and waits instead of failing
        stack.wait("the ingest meets the outage",
                   lambda: "catalog unreachable" in stack.log_of("serve")[serve_log_before:], timeout=120)
    finally:
        stack.postgres.start()
    video = stack.wait_video(vid)
    assert video["status"] == "READY", video
    assert video["flow_run_id"] == run_id and video["attempts"] == 1, video
    assert _final_run(stack, run_id)["state"]["type"] == "COMPLETED"
    _playable(stack, vid)
    assert "catalog reachable again" in stack.log_of("serve")[serve_log_before:]
    code, health = stack.health()
    assert code == 200 and health["checks"]["database"]["ok"]
    status, table = stack.status()
    started = datetime.fromisoformat(status["checks"]["database"]["server_started_at"]).timestamp()
    assert started >= stopped_at - 1, "the database's start time does not show the restart"
    assert "postgresql, server up since" in table


def test_web_app_killed_under_up_is_restarted(stack, media_dir):
    data = _clip(media_dir, "web restart", "22").read_bytes()
    half = len(data) // 2
    created = requests.post(f"{stack.web}/files/", timeout=30, headers={
        **TUS, "Upload-Length": str(len(data)), "Upload-Metadata": metadata(filename="web restart.mp4")})
    assert created.status_code == 201, created.text
    url = created.headers["Location"]
    if url.startswith("/"):
        url = stack.web + url
    first = requests.patch(url, data=data[:half], timeout=60,
                           headers={**TUS, "Upload-Offset": "0", "Content-Type": OFFSET_TYPE})
    assert first.status_code == 204, first.text

    old = stack.part("web")
    old_tree = [psutil.Process(old["pid"]), *descendants(old["pid"])]
    os.kill(old["pid"], signal.SIGKILL)
    def restarted():
        web = stack.part("web")
        return web if web["pid"] != old["pid"] and web["state"] == "running" else None
    new = stack.wait("up restarts the web app", restarted, timeout=120, every=0.5)
    # the old master's workers go too (they notice their parent is gone); the site answers
    stack.wait("the old gunicorn workers end", lambda: not alive(old_tree), timeout=60)
    code, health = stack.health()
    assert code == 200, health
    assert "web exited (web app, killed by SIGKILL); restarting it" in stack.output()
    assert "web is healthy again" in stack.output()

    # the upload resumes where it stopped, on the new process, and the video is not lost
    head = requests.head(url, headers=TUS, timeout=30)
    assert head.status_code == 200 and int(head.headers["Upload-Offset"]) == half
    rest = requests.patch(url, data=data[half:], timeout=60,
                          headers={**TUS, "Upload-Offset": str(half), "Content-Type": OFFSET_TYPE})
    assert rest.status_code == 204, rest.text
    vid = requests.head(url, headers=TUS, timeout=30).headers["Vodflow-Video-Id"]
    video = stack.wait_video(vid)
    assert video["status"] == "READY", video
    _playable(stack, vid)
    _restarted(stack, "web", "web app")
    assert new["pid"] == stack.part("web")["pid"]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_zz_kill_9_of_up_leaves_no_process_and_no_port(stack):
    """Last: it ends the stack. `kill -9` of the `up` process must take every process it
    started with it and free every port it opened, so the next `make run` can start; and its
    record of the stack no longer counts."""
    tree = descendants(stack.proc.pid)
    assert len(tree) >= 5, [p.cmdline() for p in tree]
    ports = {name: int(stack.env[name]) for name in
             ("VODFLOW_PREFECT_PORT", "VODFLOW_DASK_SCHEDULER_PORT", "VODFLOW_WEB_PORT", "VODFLOW_DASK_DASHBOARD_PORT")}
    assert all(_listening(p) for name, p in ports.items() if name != "VODFLOW_DASK_DASHBOARD_PORT")
    os.kill(stack.proc.pid, signal.SIGKILL)
    stack.proc.wait(10)
    deadline = time.monotonic() + 60
    while True:
        left = alive(tree) + stack_processes(stack.data)
        busy = [name for name, p in ports.items() if _listening(p)]
        if not left and not busy:
            break
        assert time.monotonic() < deadline, (busy, [p.cmdline() for p in left])
        time.sleep(0.5)
    # the record of the dead stack is not believed: a new shell starts on its own
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "VODFLOW_"))},
           "VODFLOW_DATA_DIR": str(stack.data), "VODFLOW_DATABASE_URL": stack.env["VODFLOW_DATABASE_URL"],
           "COLUMNS": "200"}
    status = subprocess.run([*vodflow_command(), "status", "--json"], capture_output=True, text=True, timeout=120,
                            env=env, cwd=stack.base)
    checks = json.loads(status.stdout)["checks"]
    assert not checks["prefect"]["configured"], checks["prefect"]
