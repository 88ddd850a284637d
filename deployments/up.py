"""`vodflow up`: the whole stack on this machine, supervised.

Starts, in order, each one healthy before the next:
1. a Prefect server (UI and API on VODFLOW_PREFECT_PORT, 4200; its SQLite in DATA_DIR/prefect),
   unless PREFECT_API_URL already names a shared one;
2. a Dask scheduler and workers sized to the machine (one single-threaded worker process per
   core, memory split evenly), unless VODFLOW_DASK_ADDRESS names an existing cluster;
3. the Prefect serve process with every deployment (`vodflow serve-flows`);
4. the web app, `vodflow web` (gunicorn), on a unix socket in DATA_DIR/front;
5. nginx in front of it on VODFLOW_WEB_PORT, configured from deployments/nginx.conf into
   DATA_DIR/front (VODFLOW_FRONT=none: no nginx, the app itself listens on the port).
Every process gets the same PREFECT_API_URL and VODFLOW_DASK_ADDRESS. Their output is streamed
with a name prefix (and kept in DATA_DIR/logs/NAME.log). A process that dies is restarted: at
once the first time, then after 1, 2, 4… s (at most 5 restarts in 5 minutes, then the whole stack
stops with exit code 1). Each exit, restart and return to health is logged, and recorded in
DATA_DIR/stack.json, where `vodflow status` shows it. When the Prefect server or the Dask
scheduler is healthy again after a restart, a maintenance run (recovery only) is asked for, due
10 s later, so an ingest cut short by that restart is dispatched again within the minute, not at
the next hourly run.

Where the stack's Prefect API, Dask scheduler and web app are is recorded in DATA_DIR/stack.json
while it runs, for commands run in another shell to join (config/stack.py).

Killed outright (SIGKILL), it cannot stop anything itself: a watchdog process it starts first
ends every process of the stack when it is gone (deployments/watchdog.py), so the ports are free
for the next start.

Ctrl-C or SIGTERM stops them in reverse order, each by its process group (SIGTERM, then SIGKILL
after a grace period). ffmpeg runs in its own session (so a worker's cancellation can kill it as
a group) and would outlive a killed worker; this process is therefore a child subreaper: such
orphans are re-parented here, an orphaned ffmpeg is killed at once (its worker is gone and the
task is re-run elsewhere), and nothing started by the stack is left behind on exit.
"""

from __future__ import annotations

import ctypes
import http.client
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO

import psutil
import requests
from distributed import Client

from catalog.db import get_engine
from config import stack as stack_record
from config.settings import Settings, available_cores, prefect_api_url
from deployments.web import Front, nginx_binary, web_environment
from deployments.watchdog import TOKEN_VAR
from flows.health import _host_port

PR_SET_CHILD_SUBREAPER = 36
MAX_RESTARTS, RESTART_WINDOW = 5, 300.0
BACKOFF_MAX = 30.0
# parts whose restart cuts ingests short (a lost scheduler takes every task of the runs on it;
# a run may end while the Prefect server is away): once they are back, maintenance checks the
# videos in flight. Dead workers need none (the scheduler gives their tasks to others), nor a
# killed serve process (its silent runs are found by VODFLOW_STALE_RUN_SECONDS).
RECOVERY_AFTER = ("prefect", "scheduler")
# the recovery run starts this long after the part is back: time for the runs the restart cut
# short to record their end, which is what maintenance goes by
RECOVERY_DELAY = 10.0
# how long `up` keeps asking a Prefect server that refuses (503 while it recovers) for that run
RECOVERY_ASK_SECONDS = 120.0
# what the operator reads for each part (logs, `vodflow status`)
TITLES = {"prefect": "Prefect server", "scheduler": "Dask scheduler", "workers": "Dask workers",
          "serve": "serve process", "web": "web app", "front": "nginx"}
STOP_GRACE = {"front": 10.0, "web": 12.0, "serve": 20.0, "workers": 20.0, "scheduler": 10.0, "prefect": 15.0}
READY_TIMEOUT = {"prefect": 180.0, "scheduler": 60.0, "workers": 120.0, "serve": 120.0, "web": 90.0, "front": 30.0}
COLORS = {"prefect": "35", "scheduler": "36", "workers": "34", "serve": "33", "web": "32", "front": "92",
          "up": "1"}
ORPHAN_KILL_NAMES = {"ffmpeg", "ffprobe"}


@dataclass
class Component:
    name: str
    cmd: list[str]
    env: dict[str, str]
    ready: Callable[["Component"], bool]
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    restarts: deque = field(default_factory=lambda: deque(maxlen=MAX_RESTARTS + 1))
    tail: deque = field(default_factory=lambda: deque(maxlen=40))
    reader: threading.Thread | None = None
    before_start: Callable[[], None] | None = None  # run before each (re)start
    restart_at: float | None = None  # monotonic time of a restart waiting out its backoff
    recovering: bool = False  # restarted, not healthy yet
    exits: list = field(default_factory=list)  # [{at, code, how}] of every exit while supervised
    state: str = "starting"  # starting | running | restarting | recovering
    wall_started_at: float = 0.0


def backoff(restarts_in_window: int) -> float:
    """Seconds before the nth restart within the window: at once, then 1, 2, 4… s, at most 30."""
    return 0.0 if restarts_in_window <= 1 else min(BACKOFF_MAX, 2.0 ** (restarts_in_window - 2))


def describe_exit(code: int | None) -> str:
    """How a process ended: 'killed by SIGKILL' or 'exit code 1'."""
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def worker_sizing(settings: Settings) -> tuple[int, int, str]:
    """(worker processes, threads each, memory limit each) for this machine.

    One single-threaded worker per core: each chunk encode is one ffmpeg whose thread count the
    encode task sizes to its worker, and separate processes keep a crash to one chunk."""
    cores = available_cores()
    n = settings.dask_workers or cores
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        memory = f"{int(total * 0.9 / n / 2**20)}MiB"
    except (ValueError, OSError):
        memory = "auto"
    return n, 1, memory


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def _http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        return requests.get(url, timeout=timeout).status_code == 200
    except requests.RequestException:
        return False


def become_subreaper() -> bool:
    """Adopt orphaned descendants (Linux), so none escape the stack's shutdown."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


class Stack:
    def __init__(self, settings: Settings, out: IO[str] | None = None):
        self.settings = settings
        self.out = out or sys.stdout
        self.color = hasattr(self.out, "isatty") and self.out.isatty()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.components: list[Component] = []
        self.logs_dir = settings.data_dir / "logs"
        self.prefect_api: str | None = None
        self.dask_address: str | None = None
        self.dashboard: str | None = None
        self.token = secrets.token_hex(16)
        self.watchdog: subprocess.Popen | None = None
        self._watchdog_pipe: int | None = None

    # ---------------------------------------------------------------- output
    def say(self, name: str, line: str) -> None:
        prefix = f"{name:<9}|"
        if self.color:
            prefix = f"\033[{COLORS.get(name, '0')}m{prefix}\033[0m"
        with self.lock:
            try:
                self.out.write(f"{prefix} {line.rstrip()}\n")
                self.out.flush()
            except (ValueError, OSError):
                pass

    def _pump(self, c: Component, stream: IO[bytes]) -> None:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        with open(self.logs_dir / f"{c.name}.log", "ab") as log:
            for raw in iter(stream.readline, b""):
                log.write(raw)
                log.flush()
                line = raw.decode("utf-8", "replace").rstrip()
                c.tail.append(line)
                self.say(c.name, line)
        stream.close()

    # ---------------------------------------------------------------- plan
    def plan(self) -> list[Component]:
        s = self.settings
        data = s.data_dir
        py = sys.executable
        base = dict(os.environ)
        base.update({"VODFLOW_DATA_DIR": str(data), "PYTHONUNBUFFERED": "1",
                     "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                     # inherited by every descendant: how the watchdog finds them all
                     TOKEN_VAR: self.token})
        comps: list[Component] = []

        external_api = prefect_api_url()
        if external_api:
            self.prefect_api = external_api.rstrip("/")
        else:
            port = s.prefect_port
            self.prefect_api = f"http://127.0.0.1:{port}/api"
            home = data / "prefect"
            env = {**base, "PREFECT_HOME": str(home),
                   "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}"}
            # queued ingests re-check for a free slot every few seconds, not every 30 (unless the
            # operator chose a pace)
            env.setdefault("PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS", "5")
            env.pop("PREFECT_API_URL", None)
            comps.append(Component("prefect", [py, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                               "--port", str(port)], env,
                                   lambda c: _http_ok(f"{self.prefect_api}/health")))
            base["PREFECT_HOME"] = str(home)
        base["PREFECT_API_URL"] = self.prefect_api

        if s.dask_address:
            self.dask_address = s.dask_address
        else:
            port = s.dask_scheduler_port
            self.dask_address = f"tcp://127.0.0.1:{port}"
            sched = [py, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", str(port)]
            if _has_bokeh():
                sched += ["--dashboard-address", f"127.0.0.1:{s.dask_dashboard_port}"]
                if s.dask_dashboard_port:
                    self.dashboard = f"http://127.0.0.1:{s.dask_dashboard_port}/status"
            else:
                sched += ["--no-dashboard"]
            comps.append(Component("scheduler", sched, dict(base), lambda c: _tcp_ok(self.dask_address)))
            n, threads, memory = worker_sizing(s)
            self.worker_count = n
            comps.append(Component(
                "workers",
                [py, "-m", "dask", "worker", self.dask_address, "--nworkers", str(n), "--nthreads", str(threads),
                 "--memory-limit", memory, "--local-directory", str(data / "dask-worker-space"),
                 "--name", f"{socket.gethostname()}-w", "--no-dashboard", "--death-timeout", "120",
                 "--preload", "tasks.preload"],
                # each encode sizes ffmpeg's threads to its share of this machine's cores. A
                # worker's first task asks the Prefect server for its version, and fails if the
                # server is restarting at that moment; the workers run the server's own Prefect
                {**base, "VODFLOW_WORKERS_ON_HOST": str(n),
                 "PREFECT_CLIENT_SERVER_VERSION_CHECK_ENABLED": base.get(
                     "PREFECT_CLIENT_SERVER_VERSION_CHECK_ENABLED", "false")},
                lambda c: _worker_count(self.dask_address) >= n))
        base["VODFLOW_DASK_ADDRESS"] = self.dask_address

        serve_env = dict(base)
        serve_env.setdefault("PREFECT_RUNNER_POLL_FREQUENCY", "2")
        serve_env.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "30")
        comps.append(Component("serve", [py, "-m", "deployments.cli", "serve-flows"], serve_env,
                               self._deployments_ready))

        web_cmd = [py, "-m", "deployments.cli", "web"]
        local_url = f"http://{_local_host(s.web_host)}:{s.web_port}/healthz"
        if s.front == "nginx":
            front = Front.of(s)
            front.write_config(s)
            comps.append(Component("web", web_cmd, {**base, **web_environment(s)},
                                   lambda c: _unix_http_ok(front.app_socket, "/healthz")))
            comps.append(Component("front", front.command(nginx_binary() or "nginx"), dict(base),
                                   lambda c: _http_ok(local_url), before_start=front.clear_sockets))
        else:
            env = dict(base)
            env.pop("VODFLOW_WEB_SOCKET", None)
            comps.append(Component("web", web_cmd, env, lambda c: _http_ok(local_url)))
        self.components = comps
        return comps

    def _deployments_ready(self, c: Component) -> bool:
        """All three deployments registered by this serve process (not left from a past run)."""
        for name in ("ingest/on-demand", "bulk-ingest/scheduled", "maintenance/hourly"):
            try:
                r = requests.get(f"{self.prefect_api}/deployments/name/{name}", timeout=2)
            except requests.RequestException:
                return False
            if r.status_code != 200:
                return False
            updated = r.json().get("updated")
            if updated:
                ts = datetime.fromisoformat(updated.replace("Z", "+00:00")).timestamp()
                if ts < c.started_at - 5:
                    return False
        return True

    # ---------------------------------------------------------------- processes
    def start(self, c: Component) -> None:
        if c.before_start is not None:
            c.before_start()
        c.proc = subprocess.Popen(c.cmd, env=c.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        c.started_at = c.wall_started_at = time.time()
        c.reader = threading.Thread(target=self._pump, args=(c, c.proc.stdout), daemon=True,
                                    name=f"log-{c.name}")
        c.reader.start()

    def wait_ready(self, c: Component) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT.get(c.name, 60.0)
        while time.monotonic() < deadline and not self.stopping.is_set():
            if c.proc.poll() is not None:
                self.say("up", f"{c.name} exited with code {c.proc.returncode} while starting")
                return False
            if c.ready(c):
                return True
            self.reap_orphans()
            time.sleep(0.5)
        if not self.stopping.is_set():
            self.say("up", f"{c.name} did not become healthy within {READY_TIMEOUT.get(c.name, 60):.0f} s")
        return False

    def stop(self, c: Component) -> None:
        p = c.proc
        if p is None or p.poll() is not None:
            if p is not None:
                _killpg(p.pid, signal.SIGKILL)  # leftovers of a group whose leader died
            return
        _killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(STOP_GRACE.get(c.name, 10.0))
        except subprocess.TimeoutExpired:
            self.say("up", f"{c.name} did not stop in {STOP_GRACE.get(c.name, 10):.0f} s; killing it")
            _killpg(p.pid, signal.SIGKILL)
            p.wait()
        _killpg(p.pid, signal.SIGKILL)  # any member that ignored SIGTERM
        if c.reader is not None:
            c.reader.join(2)

    def component_pids(self) -> set[int]:
        """Children that are ours to keep: the components and the watchdog."""
        pids = {c.proc.pid for c in self.components if c.proc is not None}
        if self.watchdog is not None:
            pids.add(self.watchdog.pid)
        return pids

    def start_watchdog(self) -> None:
        read, write = os.pipe()  # not inherited: only this process holds the writing end
        env = {k: v for k, v in os.environ.items() if k != TOKEN_VAR}
        env["VODFLOW_FRONT_DIR"] = str(Front.of(self.settings).dir.resolve())  # nginx keeps no env
        self.watchdog = subprocess.Popen([sys.executable, "-m", "deployments.watchdog", self.token],
                                         stdin=read, env=env, start_new_session=True)
        os.close(read)
        self._watchdog_pipe = write

    def stop_watchdog(self) -> None:
        if self._watchdog_pipe is not None:
            os.close(self._watchdog_pipe)  # everything is stopped: it finds nothing and exits
            self._watchdog_pipe = None
        if self.watchdog is not None:
            try:
                self.watchdog.wait(30)
            except subprocess.TimeoutExpired:
                pass

    def reap_orphans(self, kill_all: bool = False) -> None:
        """Reap adopted orphans that exited; kill orphaned ffmpeg (or everything, at shutdown)."""
        mine = self.component_pids()
        try:
            children = psutil.Process().children(recursive=False)
        except psutil.Error:
            return
        for child in children:
            if child.pid in mine:
                continue
            try:
                if kill_all:
                    for grandchild in child.children(recursive=True):
                        grandchild.kill()
                if child.status() == psutil.STATUS_ZOMBIE:
                    os.waitpid(child.pid, os.WNOHANG)
                    continue
                name = child.name()
                if kill_all or name in ORPHAN_KILL_NAMES:
                    self.say("up", f"stopping orphaned {name} (pid {child.pid}) left by a dead worker"
                             if not kill_all else f"stopping leftover {name} (pid {child.pid})")
                    child.kill()
                    child.wait(5)
            except (psutil.Error, ChildProcessError, subprocess.TimeoutExpired):
                continue

    def shutdown(self) -> None:
        self.stopping.set()
        started = [c for c in self.components if c.proc is not None]
        if started:
            self.say("up", "stopping: " + ", ".join(c.name for c in reversed(started)))
        for c in reversed(started):
            self.stop(c)
            self.say("up", f"{c.name} stopped")
            self.reap_orphans()
        for _ in range(5):  # grandchildren are adopted as their parents die
            self.reap_orphans(kill_all=True)
            if not self._adopted():
                break
            time.sleep(0.2)

    def _adopted(self) -> list:
        mine = self.component_pids()
        try:
            return [p for p in psutil.Process().children() if p.pid not in mine]
        except psutil.Error:
            return []

    # ---------------------------------------------------------------- main loop
    def preflight(self) -> str | None:
        s = self.settings
        checks = [("web", s.web_port, "VODFLOW_WEB_PORT")]
        if not prefect_api_url():
            checks.append(("prefect", s.prefect_port, "VODFLOW_PREFECT_PORT (or PREFECT_API_URL to use a running server)"))
        if not s.dask_address:
            checks.append(("scheduler", s.dask_scheduler_port,
                           "VODFLOW_DASK_SCHEDULER_PORT (or VODFLOW_DASK_ADDRESS to use a running scheduler)"))
        if s.front == "nginx" and nginx_binary() is None:
            return ("nginx is not installed: install it (Debian: nginx-light), or set VODFLOW_FRONT=none "
                    "to serve with the web app alone")
        for name, port, var in checks:
            if not port_free(port, "0.0.0.0" if name == "web" else "127.0.0.1"):
                return f"port {port} for {name} is already in use; stop what holds it or set {var}"
        return None

    def record(self) -> None:
        """DATA_DIR/stack.json: where commands in another shell find this stack, and what became
        of each of its processes (exits and restarts, for `vodflow status`)."""
        stack_record.write_record(
            self.settings.data_dir, prefect_api=self.prefect_api, dask_address=self.dask_address,
            web=self.settings.public_url, logs=str(self.logs_dir),
            components={c.name: {"title": TITLES.get(c.name, c.name), "pid": c.proc.pid,
                                 "since": c.wall_started_at, "state": c.state, "restarts": len(c.exits),
                                 "exits": c.exits[-5:]}
                        for c in self.components if c.proc is not None})

    def banner(self) -> None:
        s = self.settings
        lines = [
            "vodflow is up",
            f"  web app     {s.public_url}/",
            f"  upload      {s.public_url}/upload",
            f"  catalog     {s.public_url}/api/videos",
            f"  health      {s.public_url}/healthz",
            f"  Prefect UI  {self.prefect_api[:-4] if self.prefect_api.endswith('/api') else self.prefect_api}",
            f"  Prefect API {self.prefect_api}",
            f"  Dask        {self.dask_address}" + (f"  (dashboard {self.dashboard})" if self.dashboard else ""),
            f"  data        {s.data_dir}   logs in {self.logs_dir}",
            (f"  front       nginx, configuration in {Front.of(s).config}" if s.front == "nginx"
             else "  front       none: the web app itself listens on the port"),
            "Ctrl-C stops everything.",
        ]
        for line in lines:
            self.say("up", line)

    def run(self) -> int:
        problem = self.preflight()
        if problem:
            self.say("up", problem)
            return 2
        become_subreaper()
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        get_engine()  # migrate once, before several processes race to
        self.start_watchdog()
        self.plan()
        interrupted: list[int] = []

        def on_signal(signum, _frame):
            if self.stopping.is_set():  # a second Ctrl-C: do not wait politely
                for c in self.components:
                    if c.proc is not None:
                        _killpg(c.proc.pid, signal.SIGKILL)
                return
            interrupted.append(signum)
            self.stopping.set()

        old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        code = 0
        try:
            for c in self.components:
                if self.stopping.is_set():
                    break
                self.say("up", f"starting {c.name}: {' '.join(c.cmd[1:4])} …")
                self.start(c)
                if not self.wait_ready(c):
                    if not self.stopping.is_set():
                        self.say("up", f"{c.name} failed to start; last lines:")
                        for line in list(c.tail)[-15:]:
                            self.say("up", "    " + line)
                        code = 1
                    break
                c.state = "running"
                self.say("up", f"{c.name} is healthy ({time.time() - c.started_at:.1f} s)")
            else:
                self.record()
                self.banner()
                code = self.supervise()
        finally:
            stack_record.remove_record(self.settings.data_dir)
            self.shutdown()
            self.stop_watchdog()
            for sig, handler in old.items():
                signal.signal(sig, handler)
        if interrupted and code == 0:
            self.say("up", "stopped cleanly")
        return code

    def supervise(self) -> int:
        """Restart what exits (with backoff), notice when it is healthy again, keep the record."""
        while not self.stopping.wait(1.0):
            self.reap_orphans()
            changed = False
            for c in self.components:
                if self.stopping.is_set():
                    break
                if c.restart_at is not None:
                    if time.monotonic() >= c.restart_at:
                        self._restart(c)
                        changed = True
                    continue
                if c.proc is None:
                    continue
                if c.proc.poll() is None:
                    if c.recovering and c.ready(c):
                        c.recovering, c.state, changed = False, "running", True
                        self.say("up", f"{c.name} is healthy again, {time.time() - c.started_at:.1f} s after "
                                       "its restart")
                        if c.name in RECOVERY_AFTER:
                            # in a thread: the Prefect server may answer 503 for a while after a
                            # restart of its own, and supervision must not wait for it
                            threading.Thread(target=self.request_recovery, args=(c.name,), daemon=True,
                                             name=f"recovery after {c.name}").start()
                    continue
                now = time.monotonic()
                c.restarts.append(now)
                recent = [t for t in c.restarts if now - t < RESTART_WINDOW]
                how = describe_exit(c.proc.returncode)
                c.exits.append({"at": time.time(), "code": c.proc.returncode, "how": how})
                if len(recent) > MAX_RESTARTS:
                    self.say("up", f"{c.name} keeps exiting ({how}, {len(recent)} times in "
                                   f"{RESTART_WINDOW / 60:.0f} min); stopping the stack")
                    return 1
                # members of its group that outlived it (a flow run of a killed serve process)
                # finish their work; they are adopted here and reaped or stopped on exit
                delay = backoff(len(recent))
                self.say("up", f"{c.name} exited ({TITLES.get(c.name, c.name)}, {how}); restarting it"
                               + (f" in {delay:.0f} s (restart {len(recent)} in {RESTART_WINDOW / 60:.0f} min)"
                                  if delay else ""))
                if c.reader is not None:
                    c.reader.join(2)
                c.restart_at, c.recovering, c.state, changed = now + delay, False, "restarting", True
                if not delay:
                    self._restart(c)
            if changed and not self.stopping.is_set():
                self.record()
        return 0

    def _restart(self, c: Component) -> None:
        c.restart_at = None
        self.start(c)
        c.recovering, c.state = True, "recovering"
        self.say("up", f"{c.name} started again (pid {c.proc.pid})")

    def request_recovery(self, after: str) -> None:
        """Ask for a maintenance run (recovery of videos in flight only), due RECOVERY_DELAY from
        now: ingests that the restart of `after` cut short are dispatched again, instead of at the
        next hourly run."""

        api = self.prefect_api
        deadline = time.monotonic() + RECOVERY_ASK_SECONDS
        pause = 1.0
        while True:
            when = datetime.now(timezone.utc) + timedelta(seconds=RECOVERY_DELAY)
            try:
                dep = requests.get(f"{api}/deployments/name/maintenance/hourly", timeout=10)
                dep.raise_for_status()
                run = requests.post(f"{api}/deployments/{dep.json()['id']}/create_flow_run", timeout=10,
                                    json={"parameters": {"cleanup": False}, "name": f"recovery after {after} restart",
                                          "tags": ["vodflow", "recovery"],
                                          "state": {"type": "SCHEDULED", "name": "Scheduled",
                                                    "state_details": {"scheduled_time": when.isoformat()}}})
                run.raise_for_status()
                break
            except (requests.RequestException, KeyError, ValueError) as exc:
                # a Prefect server that is itself recovering answers 503 for a while: ask again
                if time.monotonic() + pause > deadline or self.stopping.is_set():
                    self.say("up", f"could not ask for a maintenance run after the {after} restart ({exc}); "
                                   "the hourly run (or `vodflow maintain`) will check the videos in flight")
                    return
                time.sleep(pause)
                pause = min(pause * 2, 15.0)
        self.say("up", f"asked maintenance to check the videos in flight after the {after} restart "
                       f"(flow run '{run.json().get('name')}', in {RECOVERY_DELAY:.0f} s)")


def _killpg(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _local_host(host: str) -> str:
    """An address of this machine the web port answers on."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


def _unix_http_ok(path: Path, url_path: str, timeout: float = 2.0) -> bool:
    """GET url_path answers 200 over the unix socket at `path` (gunicorn behind the front)."""
    class UnixConnection(http.client.HTTPConnection):
        def connect(self):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(str(path))

    conn = UnixConnection("localhost", timeout=timeout)
    try:
        conn.request("GET", url_path)
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def _has_bokeh() -> bool:
    try:
        import bokeh  # noqa: F401 - optional: Dask's dashboard needs it, vodflow does not depend on it
    except ImportError:
        return False
    return True


def _tcp_ok(address: str) -> bool:
    host, port = _host_port(address)
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _worker_count(address: str) -> int:
    try:
        with Client(address, timeout=5, set_as_default=False) as client:
            return len(client.scheduler_info(n_workers=-1).get("workers", {}))
    except Exception:  # noqa: BLE001 - not up yet
        return 0


def run_stack(settings: Settings) -> int:
    """`vodflow up`: start everything, supervise until Ctrl-C/SIGTERM, stop everything."""
    return Stack(settings).run()
