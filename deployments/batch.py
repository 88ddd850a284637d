"""`python -m deployments.batch VIDEO_ID...`: the ingests of one `vodflow ingest` invocation
when no stack is running.

One temporary Prefect server and one Dask LocalCluster serve every file of the batch, and at
most VODFLOW_MAX_CONCURRENT_INGESTS ingests run at once (each `python -m flows.ingest ID` in a
process of its own, pointed at both). Without this, each file got a local process that started
its own temporary Prefect server and cluster, all at once: a dozen clips started a dozen servers
and a dozen clusters on one machine, and every one of them timed out.

The server keeps its database where `vodflow up` keeps its own (DATA_DIR/prefect), so the runs
show in the stack's UI later. It must answer within PREFECT_START_TIMEOUT seconds; if it exits or
does not, this prints the cause (the end of its log) and what to do, and exits with code 3, and
`vodflow ingest` reports it at once instead of waiting.

Protocol with `vodflow ingest`: one line `ready <prefect api> <dask address>` on stdout once both
are up, or the failure on stderr and exit code 3. The runner then carries on detached; its log is
DATA_DIR/logs/ingest-<pid>.log.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from config.settings import get_settings
from flows.cluster import start_local_cluster
from flows.dispatch import start_local_ingest

PREFECT_START_TIMEOUT = 60.0
EXIT_START_FAILED = 3


class StartFailed(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def start_prefect_server(data_dir: Path, log_path: Path, timeout: float = PREFECT_START_TIMEOUT):
    """`prefect server start` on a free loopback port; (process, api url) once it answers."""
    home = data_dir / "prefect"
    home.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
           "PREFECT_UI_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                 "--port", str(port)], env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StartFailed(
                f"the temporary Prefect server exited with code {proc.returncode} while starting; the end "
                f"of its log ({log_path}):\n{_tail(log_path)}\n"
                f"What to do: if its database ({home / 'prefect.db'}) was made by another Prefect version, "
                "move it aside (it holds only run history); or start the stack with `vodflow up`; or "
                "set PREFECT_API_URL to a running Prefect server.")
        try:
            if requests.get(api + "/health", timeout=2).status_code == 200:
                return proc, api
        except requests.RequestException:
            pass
        time.sleep(0.5)
    _stop(proc)
    raise StartFailed(
        f"the temporary Prefect server did not answer within {timeout:.0f} s; the end of its log "
        f"({log_path}):\n{_tail(log_path)}\n"
        "What to do: start the stack with `vodflow up` (it waits longer and keeps the server), or set "
        "PREFECT_API_URL to a running Prefect server.")


def _stop(proc: subprocess.Popen, grace: float = 15) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def run_batch(video_ids: list[str], announce=print) -> int:
    """Run the ingests; exit code 0 when every one ended READY or PARTIAL, else 1."""
    settings = get_settings()
    logs = settings.data_dir / "logs"
    server, api = start_prefect_server(settings.data_dir, logs / f"ingest-prefect-{os.getpid()}.log")
    cluster = None
    try:
        cluster = start_local_cluster()
        env = {**os.environ, "PREFECT_API_URL": api, "VODFLOW_DASK_ADDRESS": cluster.scheduler_address,
               "VODFLOW_WORKERS_ON_HOST": str(len(cluster.workers))}
        announce(f"ready {api} {cluster.scheduler_address}")
        os.dup2(2, 1)  # from here on `vodflow ingest` may be gone: everything goes to the log
        limit = settings.max_concurrent_ingests
        queue = list(video_ids)
        running: dict[str, subprocess.Popen] = {}
        failed = 0
        while queue or running:
            while queue and len(running) < limit:
                vid = queue.pop(0)
                running[vid] = start_local_ingest(vid, env=env)
            time.sleep(0.5)
            for vid, proc in list(running.items()):
                if proc.poll() is not None:
                    del running[vid]
                    failed += proc.returncode != 0
                    print(f"ingest {vid} ended with code {proc.returncode}", file=sys.stderr, flush=True)
        return 1 if failed else 0
    finally:
        if cluster is not None:
            cluster.close()
        _stop(server)


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if not args:
        print("usage: python -m deployments.batch VIDEO_ID...", file=sys.stderr)
        return 2
    try:
        return run_batch(args, announce=lambda line: print(line, flush=True))
    except StartFailed as exc:
        print(str(exc), file=sys.stderr, flush=True)
        return EXIT_START_FAILED


if __name__ == "__main__":
    sys.exit(main())
