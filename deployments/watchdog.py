"""Ends what `vodflow up` started when `up` itself dies, even by SIGKILL.

`up` stops its processes in order when it is asked to (Ctrl-C, SIGTERM). Killed outright it
can do nothing, and its Prefect server, Dask scheduler and workers, serve process and web server
would keep running and holding their ports. So `up` starts this small process first, in a
session of its own (a Ctrl-C in the terminal does not reach it), holding the reading end of a
pipe whose writing end only `up` has. When the pipe closes - `up` exited, however it exited - it
ends every process that carries the stack's token in its environment: the components, their
workers and flow runs, and the ffmpeg those started in sessions of their own, wherever they were
re-parented to. SIGTERM first, SIGKILL to what is left after a grace period.

Why not PR_SET_PDEATHSIG in the children: it reaches only direct children (the Prefect server's
uvicorn, the Dask nannies' workers and gunicorn's workers are grandchildren), and fires when
the *thread* that started a child ends, not the process.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import psutil

TOKEN_VAR = "VODFLOW_STACK_TOKEN"
GRACE = 10.0


def stack_processes(token: str) -> list:
    me = os.getpid()
    # nginx clears its environment and writes its process title over it, so the front server
    # is known by its prefix (DATA_DIR/front) on its command line instead
    front = os.environ.get("VODFLOW_FRONT_DIR")
    found = []
    for p in psutil.process_iter():
        if p.pid == me:
            continue
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            if p.environ().get(TOKEN_VAR) == token or (front and front in " ".join(p.cmdline())):
                found.append(p)
        except psutil.Error:
            continue
    return found


def end_stack(token: str, grace: float = GRACE) -> int:
    """SIGTERM to every process of the stack, then SIGKILL to those still there; how many."""
    procs = stack_processes(token)
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace)
    # processes started while the others were stopping (a restart, a flow run) count too
    alive = list({p.pid: p for p in alive + stack_processes(token)}.values())
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)
    return len(procs)


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        print("usage: python -m deployments.watchdog TOKEN  (reads stdin until it closes)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    while os.read(0, 4096):  # returns b"" when every writer is gone
        pass
    if stack_processes(args[0]):
        time.sleep(0.5)  # a clean stop is still finishing: leave it a moment
        n = end_stack(args[0])
        if n:
            print(f"vodflow up is gone: stopped {n} processes it had started", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
