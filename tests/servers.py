"""Start real servers for tests on free loopback ports, and wait until they answer."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            r = requests.get(url, timeout=2)
            if r.status_code < 500:
                return
            last = r.status_code
        except requests.RequestException as exc:
            last = exc
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout}s (last: {last})")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def web_settings(env: dict, **overrides):
    """vodflow's settings as a process started with `env` (on top of ours) would read them."""
    from unittest import mock

    from config.settings import load_settings

    with mock.patch.dict(os.environ, env):
        return load_settings(**overrides)


def share_settings(env: dict, monkeypatch) -> None:
    """Make this test process use the settings (data dir, storage, catalog) of a server started
    with `env`, for the rest of the test."""
    from catalog.db import reset_engines
    from config.settings import reset_settings

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    reset_settings()
    reset_engines()


@contextmanager
def gunicorn_app(env: dict, log_path: Path, workers: int = 2):
    """The web app under gunicorn, with the very command `vodflow web` runs (worker class,
    threads, timeouts, forwarded-header policy) and the settings `env` gives, on a free loopback
    port. Yields base URL."""
    from deployments.cli import gunicorn_command

    port = free_port()
    cmd = gunicorn_command(web_settings(env, web_host="127.0.0.1", web_port=port, web_workers=workers))
    with web_process(cmd, {**os.environ, **env}, log_path, port) as base:
        yield base


@contextmanager
def web_process(cmd: list[str], env: dict, log_path: Path, port: int):
    """Run a web server command in its own process group until /healthz answers; stop it after."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/healthz", 60, proc)
        yield base
    finally:
        stop(proc)


@contextmanager
def prefect_server(home: Path, log_path: Path, env: dict | None = None):
    """A real Prefect server with its own home and SQLite (and `env` on top). Yields its API URL."""
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_ENABLED": "false", "PREFECT_SERVER_API_HOST": "127.0.0.1", **(env or {})}
    env.pop("PREFECT_API_URL", None)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                 "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"
    try:
        wait_http(api + "/health", 120, proc)
        yield api
    finally:
        stop(proc)
