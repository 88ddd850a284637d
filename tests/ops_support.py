"""Real infrastructure for the tests: a throwaway PostgreSQL server, moto's S3
server, a separately started Dask scheduler with worker processes, and process inspection."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import requests

from tests.servers import free_port, stop


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not candidates:
        raise RuntimeError(f"PostgreSQL's {name} is not installed (Debian package 'postgresql')")
    return candidates[-1]


def _as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: drop to the 'postgres' user when we are root."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


class PostgresServer:
    """A throwaway PostgreSQL cluster (initdb + pg_ctl on a free port) that hands out fresh
    databases. One server serves a whole test session; each test that needs isolation gets a
    database of its own, copied from a template the catalog's migrations already ran on."""

    def __init__(self, port: int, control: dict | None = None):
        self.port = port
        self._made = 0
        self._template: str | None = None
        self._control = control or {}  # how to stop and start it: data dir, options, log, cwd

    def stop(self) -> None:
        """Stop the server as an operator's restart does (fast: open sessions are ended)."""
        c = self._control
        subprocess.run(_as_postgres([_pg_bin("pg_ctl"), "-D", str(c["data"]), "-m", "fast", "-w", "stop"]),
                       check=True, capture_output=True, cwd=c["cwd"])

    def start(self) -> None:
        """Start it again on the same port and data."""
        c = self._control
        subprocess.run(_as_postgres([_pg_bin("pg_ctl"), "-D", str(c["data"]), "-l", str(c["log"]), "-o",
                                     c["options"], "-w", "start"]), check=True, capture_output=True, cwd=c["cwd"])

    def url(self, name: str) -> str:
        return f"postgresql://vodflow@127.0.0.1:{self.port}/{name}"

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=vodflow dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(sql)

    def new_database(self, *, migrated: bool = True) -> str:
        """A new, empty database (with the catalog's tables when `migrated`); its URL."""
        self._made += 1
        name = f"t{os.getpid()}_{self._made}"
        if migrated:
            self._admin(f'CREATE DATABASE "{name}" TEMPLATE "{self._migrated_template()}"')
        else:
            self._admin(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def _migrated_template(self) -> str:
        if self._template is None:
            from catalog.db import make_engine, migrate

            name = "vodflow_template"
            self._admin(f'CREATE DATABASE "{name}"')
            engine = make_engine(self.url(name))
            try:
                migrate(engine)
            finally:
                engine.dispose()  # a template must have no open connections to be copied
            self._template = name
        return self._template


@contextmanager
def postgres_server():
    """A PostgreSQL server for as long as the block runs; yields a PostgresServer.

    The cluster lives in its own temporary folder: pytest's are private to root, and the
    server runs as 'postgres'."""
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="vodflow-pg-"))
    try:
        with _postgres_in(base) as (port, control):
            yield PostgresServer(port, control)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@contextmanager
def _postgres_in(base: Path):
    data = base / "pgdata"
    sock = base / "pgsock"
    data.mkdir(parents=True)
    sock.mkdir()
    if os.geteuid() == 0:
        import pwd

        pw = pwd.getpwnam("postgres")
        for p in (base, data, sock):
            os.chown(p, pw.pw_uid, pw.pw_gid)
    run = dict(check=True, capture_output=True, cwd=base)
    subprocess.run(_as_postgres([_pg_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "vodflow",
                                 "--no-sync", "-E", "UTF8"]), **run)
    port = free_port()
    log = base / "postgres.log"
    # enough connections for two gunicorn workers' pools, flows and racing test processes at once
    opts = (f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off "
            "-c synchronous_commit=off -c max_connections=200")
    subprocess.run(_as_postgres([_pg_bin("pg_ctl"), "-D", str(data), "-l", str(log), "-o", opts, "-w",
                                 "start"]), **run)
    try:
        yield port, {"data": data, "options": opts, "log": log, "cwd": base}
    finally:
        subprocess.run(_as_postgres([_pg_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                       capture_output=True, cwd=base)


@contextmanager
def moto_s3(bucket: str = "vodflow"):
    """moto's S3 server on a free port; yields (endpoint, boto3 client) with the bucket made."""
    import boto3
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket=bucket)
    try:
        yield endpoint, client
    finally:
        server.stop()


def aws_env(endpoint: str) -> dict:
    return {"AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
            "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
            "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
            "VODFLOW_S3_ENDPOINT_URL": endpoint}


def wait_tcp(port: int, timeout: float = 60, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before port {port} opened")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"port {port} did not open within {timeout}s")


def dask_workers_of(address: str) -> dict:
    from distributed import Client

    with Client(address, timeout=10, set_as_default=False) as c:
        return c.scheduler_info(n_workers=-1)["workers"]


@contextmanager
def dask_cluster(base: Path, env: dict, workers: int = 2):
    """`dask scheduler` plus `workers` separate `dask worker` processes, each with its own
    working directory, data dir and local directory (they share no disk). Yields the address."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs = []
    full = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    base.mkdir(parents=True, exist_ok=True)
    with open(base / "scheduler.log", "ab") as log:
        sched = subprocess.Popen([sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port",
                                  str(port), "--no-dashboard"], env=full, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True, cwd=base)
    procs.append(sched)
    try:
        wait_tcp(port, 60, sched)
        for i in range(workers):
            home = base / f"worker{i}"
            home.mkdir()
            wenv = {**full, "VODFLOW_DATA_DIR": str(home / "var")}
            with open(base / f"worker{i}.log", "ab") as log:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "dask", "worker", address, "--nworkers", "1", "--nthreads", "1",
                     "--no-dashboard", "--local-directory", str(home / "dask"), "--name", f"w{i}"],
                    env=wenv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=home))
        deadline = time.monotonic() + 90
        while len(dask_workers_of(address)) < workers:
            if time.monotonic() > deadline:
                raise TimeoutError("dask workers did not register")
            time.sleep(0.5)
        yield address
    finally:
        for p in reversed(procs):
            stop(p)


def descendants(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def of_data_dir(p, data: Path) -> bool:
    """Whether live process `p` was started by the stack (or CLI) with this data dir."""
    import psutil

    try:
        return p.environ().get("VODFLOW_DATA_DIR") == str(data) and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def stack_processes(data: Path) -> list:
    """Every live process on the machine started by the stack with this data dir (its
    components, their workers and flow runs, and any ffmpeg they started), wherever it was
    re-parented to."""
    import psutil

    return [p for p in psutil.process_iter() if of_data_dir(p, data)]


def alive(procs) -> list:
    import psutil

    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            pass
    return out


def _prefect(method: str, api: str, path: str, body: dict | None = None):
    # Prefect answers 503 while its SQLite is busy (the Prefect client retries these too)
    for attempt in range(8):
        r = requests.request(method, api.rstrip("/") + path, json=body, timeout=30)
        if r.status_code not in (429, 503):
            break
        time.sleep(0.5 * (attempt + 1))
    r.raise_for_status()
    return r.json()


def prefect_get(api: str, path: str):
    return _prefect("GET", api, path)


def prefect_post(api: str, path: str, body: dict):
    return _prefect("POST", api, path, body)


def artifacts_of(api: str, flow_run_id: str) -> list[dict]:
    return prefect_post(api, "/artifacts/filter",
                        {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
