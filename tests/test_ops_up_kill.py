"""`vodflow up` as a second shell sees it, then killed with SIGKILL.

While it runs, commands in another shell with the same data dir join it: `vodflow ingest --wait`
goes through the stack's `ingest/on-demand` deployment (so it shows in the stack's Prefect UI and
uses its Dask workers), and `vodflow status` reports the stack's servers. Then `kill -9` of the
`up` process must take every process it started with it and free every port it opened, so the
next `make run` can start; and its record of the stack no longer counts.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.media import make_clip
from tests.ops_support import alive, descendants, prefect_get, prefect_post
from tests.servers import free_port

pytestmark = pytest.mark.slow
VODFLOW = shutil.which("vodflow", path=str(Path(sys.executable).parent)) or "vodflow"


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _of_stack(data: Path) -> list[psutil.Process]:
    """Every live process on the machine started by a stack with this data dir."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("VODFLOW_DATA_DIR") == str(data) and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.Error:
            continue
    return found


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    base = tmp_path_factory.mktemp("upkill")
    data = base / "var"
    ports = {"VODFLOW_PREFECT_PORT": free_port(), "VODFLOW_DASK_SCHEDULER_PORT": free_port(),
             "VODFLOW_WEB_PORT": free_port(), "VODFLOW_DASK_DASHBOARD_PORT": free_port()}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "VODFLOW_"))}
    env.update({k: str(v) for k, v in ports.items()})
    env.update({"VODFLOW_DATA_DIR": str(data), "VODFLOW_WEB_HOST": "127.0.0.1", "VODFLOW_WEB_WORKERS": "1",
                "VODFLOW_DASK_WORKERS": "1", "PREFECT_RUNNER_POLL_FREQUENCY": "1", "PREFECT_UI_ENABLED": "false"})
    log = base / "up.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([VODFLOW, "up"], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=base)
    deadline = time.monotonic() + 240
    while "vodflow is up" not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("vodflow up did not come up:\n" + log.read_text(errors="replace")[-4000:])
        time.sleep(0.5)
    yield proc, env, ports, data, log
    if proc.poll() is None:  # a failed test left it running
        tree = descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        for p in alive(tree):
            p.kill()


def _second_shell(env: dict) -> dict:
    """What a user's other shell has: the same data dir, no Prefect or Dask address."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "VODFLOW_"))},
            "VODFLOW_DATA_DIR": env["VODFLOW_DATA_DIR"], "VODFLOW_WEB_PORT": env["VODFLOW_WEB_PORT"],
            "COLUMNS": "200"}


def test_cli_in_another_shell_joins_the_running_stack(up, media_dir):
    proc, env, ports, data, log = up
    api = f"http://127.0.0.1:{ports['VODFLOW_PREFECT_PORT']}/api"
    record = json.loads((data / "stack.json").read_text())
    assert record["pid"] == proc.pid and record["prefect_api"] == api
    assert record["dask_address"] == f"tcp://127.0.0.1:{ports['VODFLOW_DASK_SCHEDULER_PORT']}"

    clip = make_clip(media_dir / "second shell.mp4", duration=2, size="320x180")
    out = subprocess.run([VODFLOW, "ingest", str(clip), "--wait"], capture_output=True, text=True,
                         timeout=300, env=_second_shell(env))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"using the Prefect API at {api}" in out.stderr
    assert "temporary Prefect server" not in out.stdout + out.stderr
    vid = out.stdout.strip().splitlines()[-1].split()[0]
    # the run is the stack's deployment run: it shows in the stack's Prefect UI
    dep = prefect_get(api, "/deployments/name/ingest/on-demand")
    runs = prefect_post(api, "/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [dep["id"]]}}})
    mine = [r for r in runs if r["parameters"].get("video_id") == vid]
    assert len(mine) == 1 and mine[0]["state"]["type"] in ("RUNNING", "COMPLETED")

    status = subprocess.run([VODFLOW, "status", "--json"], capture_output=True, text=True, timeout=120,
                            env=_second_shell(env))
    checks = json.loads(status.stdout)["checks"]
    assert checks["prefect"]["url"] == api and checks["dask"]["address"] == record["dask_address"]
    assert checks["dask"]["ok"] and checks["prefect"]["ok"]


def test_zz_kill_9_of_up_leaves_no_process_and_no_port(up):
    """Last: it ends the stack."""
    proc, env, ports, data, log = up
    tree = descendants(proc.pid)
    assert len(tree) >= 5, [p.cmdline() for p in tree]
    assert all(_listening(p) for name, p in ports.items() if name != "VODFLOW_DASK_DASHBOARD_PORT")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    deadline = time.monotonic() + 60
    while True:
        left = alive(tree) + _of_stack(data)
        busy = [name for name, p in ports.items() if _listening(p)]
        if not left and not busy:
            break
        assert time.monotonic() < deadline, (busy, [p.cmdline() for p in left])
        time.sleep(0.5)
    # the record of the dead stack is not believed: a new shell starts on its own
    status = subprocess.run([VODFLOW, "status", "--json"], capture_output=True, text=True, timeout=120,
                            env=_second_shell(env))
    checks = json.loads(status.stdout)["checks"]
    assert not checks["prefect"]["configured"], checks["prefect"]
