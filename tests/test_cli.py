"""The `vodflow` command as a user runs it (a real subprocess, the installed console script)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

VODFLOW = shutil.which("vodflow", path=str(Path(sys.executable).parent)) or "vodflow"


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([VODFLOW, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})


def test_ingest_without_wait_prints_id_and_watch_url(clip, vodflow_env):
    out = run("ingest", str(clip), env={"VODFLOW_DISPATCH": "off"})
    assert out.returncode == 0, out.stderr
    m = re.search(r"^([0-9a-f]{12})\s+clip\.mp4\s+(http://\S+/watch/\1)$", out.stdout, re.M)
    assert m, out.stdout
    assert (vodflow_env / "storage" / "sources" / m.group(1) / "source.mp4").read_bytes() == clip.read_bytes()
    listing = run("videos")
    assert listing.returncode == 0
    assert m.group(1) in listing.stdout and "UPLOADED" in listing.stdout


def test_ingest_refuses_a_text_file_with_exit_code_1(tmp_path, vodflow_env):
    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video at all\n" * 10)
    out = run("ingest", str(bad), env={"VODFLOW_DISPATCH": "off"})
    assert out.returncode == 1
    assert "text, not a video" in out.stdout + out.stderr
    assert not (vodflow_env / "storage" / "sources").exists()


def test_ingest_of_a_missing_file(tmp_path):
    out = run("ingest", str(tmp_path / "nope.mp4"), env={"VODFLOW_DISPATCH": "off"})
    assert out.returncode == 1 and "no such file" in out.stdout + out.stderr


def test_bad_setting_stops_with_the_variable_named():
    out = run("videos", env={"VODFLOW_WEB_PORT": "eighty"})
    assert out.returncode == 2
    assert "VODFLOW_WEB_PORT" in out.stderr


def test_unknown_benchmark_is_named():
    out = run("bench", "nonsense")
    assert out.returncode == 2 and "no benchmark 'nonsense'" in out.stderr
    assert "delivery, firstplay, player, transcode, upload" in out.stderr


def test_dispatch_is_a_setting_the_file_can_hold(clip, vodflow_env, tmp_path):
    """Every VODFLOW_ variable can go in vodflow.toml, VODFLOW_DISPATCH included."""
    import sqlite3

    (tmp_path / "vodflow.toml").write_text('dispatch = "off"\n')  # the working directory's file
    env = {k: v for k, v in os.environ.items() if k != "VODFLOW_DISPATCH"}
    out = subprocess.run([VODFLOW, "ingest", str(clip)], capture_output=True, text=True, timeout=120,
                         env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    vid = out.stdout.split()[0]
    with sqlite3.connect(vodflow_env / "vodflow.db") as db:
        status, run_id = db.execute("SELECT status, flow_run_id FROM videos WHERE id = ?", (vid,)).fetchone()
    assert (status, run_id) == ("UPLOADED", None)  # stored, nothing started
    typo = run("videos", env={"VODFLOW_DISPATCH": "sometimes"})
    assert typo.returncode == 2 and "VODFLOW_DISPATCH" in typo.stderr
