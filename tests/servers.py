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


def vodflow_command() -> list[str]:
    """The `vodflow` command of this environment, as an operator runs it."""
    script = Path(sys.executable).with_name("vodflow")
    return [str(script)] if script.exists() else [sys.executable, "-m", "deployments.cli"]


@contextmanager
def vodflow_web(env: dict, log_path: Path, workers: int = 2, front: bool = False):
    """The production web server on a free loopback port, with the settings `env` gives.

    front=False: `vodflow web` alone (gunicorn's gthread worker on the port, the minimal
    install). front=True: as `vodflow up` runs it, nginx on the port with the configuration
    `vodflow up` writes into the data dir, in front of `vodflow web` on its unix socket (nginx's
    output goes to a log beside `log_path`, named with "-nginx"). Yields the base URL."""
    port = free_port()
    env = {**os.environ, **env, "VODFLOW_WEB_HOST": "127.0.0.1", "VODFLOW_WEB_PORT": str(port),
           "VODFLOW_WEB_WORKERS": str(workers)}
    env.pop("VODFLOW_WEB_SOCKET", None)
    if not front:
        with web_process([*vodflow_command(), "web"], env, log_path, port) as base:
            yield base
        return
    from deployments.up import _unix_http_ok
    from deployments.web import Front, nginx_binary, web_environment

    settings = web_settings(env)
    fr = Front.of(settings)
    fr.write_config(settings)
    fr.clear_sockets()
    env.update(web_environment(settings))
    with open(log_path, "ab") as log:
        app = subprocess.Popen([*vodflow_command(), "web"], env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not _unix_http_ok(fr.app_socket, "/healthz"):
            if app.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"`vodflow web` on {fr.app_socket} did not come up; see {log_path}")
            time.sleep(0.2)
        nginx_log = log_path.with_name(f"{log_path.stem}-nginx{log_path.suffix}")
        with web_process(fr.command(nginx_binary() or "nginx"), env, nginx_log, port) as base:
            yield base
    finally:
        stop(app)


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
