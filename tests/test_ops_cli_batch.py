"""`vodflow ingest` with no stack running, as a user runs it (the installed command, in a process
of its own): a folder of five clips through one temporary Prefect server and one Dask cluster,
at most VODFLOW_MAX_CONCURRENT_INGESTS at a time; exit codes a script can use; a Prefect server
that cannot start reported within a minute; a run that dies reported instead of waited on."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.media import make_clip
from tests.ops_support import of_data_dir, stack_processes

pytestmark = pytest.mark.slow
VODFLOW = shutil.which("vodflow", path=str(Path(sys.executable).parent)) or "vodflow"


def _env(data: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "VODFLOW_"))}
    env.update({"VODFLOW_DATA_DIR": str(data), "VODFLOW_DASK_WORKERS": "1", "COLUMNS": "200", **extra})
    return env


def _statuses(data: Path) -> dict[str, str]:
    with sqlite3.connect(data / "vodflow.db") as db:
        return dict(db.execute("select original_filename, status from videos"))


class Watcher(threading.Thread):
    """Samples the processes working for one data dir while a command runs."""

    def __init__(self, data: Path):
        super().__init__(daemon=True)
        self.data = str(data)
        self.stop = threading.Event()
        self.servers: set[int] = set()
        self.clusters: set[str] = set()
        self.most_ingests = 0

    def run(self) -> None:
        while not self.stop.is_set():
            ingests = 0
            for p in psutil.process_iter():
                try:
                    env = p.environ()
                    if env.get("VODFLOW_DATA_DIR") != self.data:
                        continue
                    cmd = " ".join(p.cmdline())
                    if "prefect server start" in cmd:
                        self.servers.add(p.pid)
                    if "-m flows.ingest" in cmd and p.status() != psutil.STATUS_ZOMBIE \
                            and "deployments.batch" in " ".join(p.parent().cmdline()):
                        ingests += 1
                        self.clusters.add(env.get("VODFLOW_DASK_ADDRESS", "none"))
                except psutil.Error:
                    continue
            self.most_ingests = max(self.most_ingests, ingests)
            time.sleep(0.2)


CLIPS = 5  # more than two rounds of the two-at-a-time limit


def test_a_folder_of_clips_without_a_stack(tmp_path, media_dir):
    folder = tmp_path / "clips"
    folder.mkdir()
    for i in range(CLIPS):  # distinct content: five videos, not one seen five times
        make_clip(folder / f"clip {i:02d}.mp4", duration=1.5, size="192x108", rate=str(20 + i))
    data = tmp_path / "var"
    env = _env(data, VODFLOW_MAX_CONCURRENT_INGESTS="2", VODFLOW_BULK_INGEST_SETTLE_SECONDS="0")
    watcher = Watcher(data)
    watcher.start()
    t0 = time.monotonic()
    out = subprocess.run([VODFLOW, "ingest", str(folder), "--wait"], capture_output=True, text=True,
                         timeout=900, env=env)
    took = time.monotonic() - t0
    watcher.stop.set()
    watcher.join()
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    statuses = _statuses(data)
    assert sorted(statuses) == [f"clip {i:02d}.mp4" for i in range(CLIPS)]
    assert set(statuses.values()) == {"READY"}, statuses
    # one temporary Prefect server and one Dask cluster for the whole batch, two ingests at a time
    assert len(watcher.servers) == 1, watcher.servers
    assert len(watcher.clusters) == 1 and "none" not in watcher.clusters, watcher.clusters
    assert 1 <= watcher.most_ingests <= 2
    print(f"{CLIPS} clips ingested in {took:.1f} s")
    # nothing of the batch is left running once it has put its server and cluster away
    deadline = time.monotonic() + 60
    while stack_processes(data):
        assert time.monotonic() < deadline, [p.cmdline() for p in stack_processes(data)]
        time.sleep(0.5)

    # the same batch again: every file is known, which is success
    again = subprocess.run([VODFLOW, "ingest", str(folder), "--wait"], capture_output=True, text=True,
                           timeout=120, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("known") == CLIPS and "temporary Prefect server" not in again.stderr
    # one refused file among known ones: failure, named
    (folder / "notes.mp4").write_text("not a video\n" * 100)
    bad = subprocess.run([VODFLOW, "ingest", str(folder)], capture_output=True, text=True, timeout=120, env=env)
    assert bad.returncode == 1
    assert "notes.mp4" in bad.stdout and "not a video" in bad.stdout


def test_a_prefect_server_that_cannot_start_is_reported_within_a_minute(tmp_path, clip):
    data = tmp_path / "var"
    (data / "prefect").mkdir(parents=True)
    # what another program (or a broken disk) leaves where the server keeps its database
    (data / "prefect" / "prefect.db").write_bytes(b"this is not an SQLite database\n" * 64)
    t0 = time.monotonic()
    out = subprocess.run([VODFLOW, "ingest", str(clip), "--wait"], capture_output=True, text=True,
                         timeout=300, env=_env(data))
    took = time.monotonic() - t0
    assert out.returncode == 3, out.stdout + out.stderr
    assert took < 60, took
    message = " ".join(out.stderr.split())
    assert "Prefect server exited" in message and "What to do" in message
    assert "prefect.db" in message and "vodflow up" in message
    # the video is kept for later, not lost
    assert _statuses(data) == {"clip.mp4": "UPLOADED"}


def test_wait_reports_a_run_that_died(tmp_path, media_dir):
    clip = make_clip(media_dir / "to be killed.mp4", duration=8, size="640x360")
    data = tmp_path / "var"
    proc = subprocess.Popen([VODFLOW, "ingest", str(clip), "--wait"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(data))
    try:
        deadline = time.monotonic() + 180
        victim = None
        while victim is None:
            assert proc.poll() is None and time.monotonic() < deadline, "no ingest process ran"
            for p in psutil.process_iter():
                try:
                    if "-m flows.ingest" in " ".join(p.cmdline()) and of_data_dir(p, data):
                        victim = p
                except psutil.Error:
                    continue
            time.sleep(0.2)
        os.killpg(victim.pid, signal.SIGKILL)  # the ingest process and what it started, as in a crash
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, stdout + stderr
    text = " ".join(stdout.split())
    assert "to be killed.mp4: left" in text and ("run died" in text or "gone" in text or "exited" in text)
    assert "vodflow maintain" in text
