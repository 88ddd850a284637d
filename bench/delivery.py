"""`vodflow bench delivery`: HLS delivery as vodflow serves it, against nginx alone, same files.

Three servers serve one storage folder at the same URLs:
  - front: what `vodflow up` runs: nginx with the configuration it writes into the data dir, in
    front of `vodflow web` on a unix socket (the app decides, nginx sends the files);
  - app:   `vodflow web` alone (gunicorn's gthread worker), the minimal install;
  - nginx: nginx alone with bench/nginx-delivery.conf (sendfile on, no access log), the baseline.
wrk drives each at the same concurrency with the same URL list:
  - segments: 1 MiB .ts files (32 of them, round-robin), what players pull all day;
  - master:   /v/{id}/master.m3u8, which the app builds from the catalog (nginx: a static copy).
Runs alternate between the servers over several rounds so machine noise hits all of them;
medians are printed, with the ratios to nginx. A final soak loads the front with a mix of both
for --soak seconds while sampling the resident memory of all its processes (nginx and gunicorn),
to show it stays flat.

Goals: front segment throughput >= 0.9 x nginx and master p99 <= 20 ms at 64 connections; the
app alone >= 0.5 x nginx on segments; no errors; flat memory over a 60 s run.

    vodflow bench delivery                      # 3 rounds x 10 s each, 60 s soak
    vodflow bench delivery --seconds 3 --rounds 1 --soak 10   # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import psutil
import requests
from rich.console import Console
from rich.table import Table

from bench.published import stop
from catalog.db import session_scope
from catalog.models import Rendition, RenditionStatus, Video, VideoStatus
from catalog.state import now
from config import storage
from config.settings import load_settings, reset_settings
from deployments.web import Front, nginx_binary, web_environment

ROOT = Path(__file__).resolve().parent.parent

SEGMENT_BYTES = 1024 * 1024
SEGMENTS = 32
GOALS = {"front_segment_ratio": 0.9, "app_segment_ratio": 0.5, "master_p99_ms": 20.0, "memory_growth_mb": 20.0}
SERVERS = ("front", "app", "nginx")

WRK_SCRIPT = """
local paths = {%(paths)s}
local i = 0
setup = function(thread) thread:set("offset", math.random(#paths)) end
request = function()
  i = i + 1
  return wrk.format("GET", paths[((i + offset) %% #paths) + 1])
end
done = function(summary, latency, requests)
  io.write(string.format('RESULT {"requests": %%d, "bytes": %%d, "duration_us": %%d, "p50_us": %%d, ' ..
    '"p99_us": %%d, "p999_us": %%d, "max_us": %%d, "connect": %%d, "read": %%d, "write": %%d, "status": %%d, "timeout": %%d}\\n',
    summary.requests, summary.bytes, summary.duration, latency:percentile(50), latency:percentile(99),
    latency:percentile(99.9), latency.max, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.status, summary.errors.timeout))
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server for {url} exited with {proc.returncode}; see its log")
        try:
            if requests.get(url, timeout=2).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not answer within {timeout}s")


def prepare(data_dir: Path) -> dict:
    """A READY video with a 4-rung master (catalog rows) and 32 x 1 MiB segments in storage."""
    os.environ["VODFLOW_DATA_DIR"] = str(data_dir)
    os.environ.pop("VODFLOW_STORAGE_URL", None)
    os.environ.pop("VODFLOW_DATABASE_URL", None)
    reset_settings()
    video_id, run = secrets.token_hex(6), "r" + secrets.token_hex(4)
    ladder = [("234p", 416, 234, 145), ("360p", 640, 360, 730), ("540p", 960, 540, 2000), ("720p", 1280, 720, 3000)]
    with session_scope() as s:
        s.add(Video(id=video_id, title="bench", status=VideoStatus.READY, current_run=run, progress=100.0))
        s.flush()
        for name, w, h, kbps in ladder:
            s.add(Rendition(video_id=video_id, run=run, name=name, width=w, height=h, bandwidth=kbps * 1400,
                            average_bandwidth=kbps * 1000, codecs="avc1.64001f,mp4a.40.2", frame_rate=30.0,
                            status=RenditionStatus.READY, published_at=now()))
    seg_paths = []
    for i in range(SEGMENTS):
        name = f"seg_{i:05d}.ts"
        storage.write_bytes(storage.url_for("hls", video_id, run, "720p", name), os.urandom(SEGMENT_BYTES))
        seg_paths.append(f"/v/{video_id}/{run}/720p/{name}")
    return {"video_id": video_id, "run": run, "segments": seg_paths, "master": f"/v/{video_id}/master.m3u8",
            "storage": storage.local_path_of(storage.root_url())}


@contextmanager
def app_server(run_dir: Path, workers: int, front: bool = False):
    """`vodflow web` itself (it execs gunicorn, so the process is gunicorn's master); with
    front=True on its unix socket behind nginx, configured exactly as `vodflow up` does.
    Yields (base URL, pids of the server process trees)."""
    port = free_port()
    env = {**os.environ, "VODFLOW_WEB_HOST": "127.0.0.1", "VODFLOW_WEB_PORT": str(port),
           "VODFLOW_WEB_WORKERS": str(workers)}
    env.pop("VODFLOW_WEB_SOCKET", None)
    name = "front" if front else "app"
    base = f"http://127.0.0.1:{port}"
    procs: list[subprocess.Popen] = []
    logs = []
    try:
        if front:
            old = dict(os.environ)
            os.environ.update(env)
            try:
                settings = load_settings()
            finally:
                os.environ.clear()
                os.environ.update(old)
            fr = Front.of(settings)
            fr.write_config(settings)
            fr.clear_sockets()
            env.update(web_environment(settings))
        logs.append(open(run_dir / f"{name}-gunicorn.log", "wb"))
        procs.append(subprocess.Popen([sys.executable, "-m", "deployments.cli", "web"], env=env, stdout=logs[-1],
                                      stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT))
        if front:
            nginx = nginx_binary()
            if nginx is None:
                raise SystemExit("nginx is not installed (make setup installs nginx-light)")
            deadline = time.monotonic() + 60
            while not fr.app_socket.exists():
                if procs[0].poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"`vodflow web` did not start; see {run_dir / 'front-gunicorn.log'}")
                time.sleep(0.2)
            logs.append(open(run_dir / "front-nginx.log", "wb"))
            procs.append(subprocess.Popen(fr.command(nginx), env=env, stdout=logs[-1], stderr=subprocess.STDOUT,
                                          start_new_session=True))
        for proc in procs:
            wait_http(base + "/healthz", proc)
        yield base, [p.pid for p in procs]
    finally:
        for proc in reversed(procs):
            stop(proc)
        for log in logs:
            log.close()


@contextmanager
def nginx_server(run_dir: Path, storage_dir: Path):
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        raise SystemExit("nginx is not installed (make setup-test installs nginx-light)")
    www = run_dir / "www"
    www.mkdir()
    (www / "v").symlink_to(storage_dir / "hls")
    port = free_port()
    conf = (Path(__file__).with_name("nginx-delivery.conf").read_text()
            .replace("@USER@", "user root;" if os.geteuid() == 0 else "")
            .replace("@RUN@", str(run_dir)).replace("@WWW@", str(www)).replace("@PORT@", str(port)))
    (run_dir / "nginx.conf").write_text(conf)
    log = open(run_dir / "nginx.out", "wb")
    proc = subprocess.Popen([nginx, "-p", str(run_dir), "-c", str(run_dir / "nginx.conf")], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/", proc)
        yield base, [proc.pid]
    finally:
        stop(proc)
        log.close()


def wrk(base: str, paths: list[str], seconds: float, connections: int, run_dir: Path, pids: list[int]) -> dict:
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (make setup-test installs it)")
    script = run_dir / f"wrk-{secrets.token_hex(3)}.lua"
    script.write_text(WRK_SCRIPT % {"paths": ", ".join(json.dumps(p) for p in paths)})
    threads = max(1, min(connections, os.cpu_count() or 1))
    cpu_before = sum(tree_cpu_seconds(pid) for pid in pids)
    out = subprocess.run(["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(seconds))}s",
                          "--timeout", "10s", "-s", str(script), base + paths[0]],
                         capture_output=True, text=True, timeout=seconds + 60)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"wrk gave no result:\n{out.stdout}\n{out.stderr}")
    r = json.loads(line[len("RESULT "):])
    secs = r["duration_us"] / 1e6
    cpu_us = (sum(tree_cpu_seconds(pid) for pid in pids) - cpu_before) / max(1, r["requests"]) * 1e6
    return {"rps": r["requests"] / secs, "mbps": r["bytes"] / secs / 1e6, "p50_ms": r["p50_us"] / 1000,
            "p99_ms": r["p99_us"] / 1000, "p999_ms": r["p999_us"] / 1000, "cpu_us": cpu_us,
            "errors": sum(r[k] for k in ("connect", "read", "write", "status", "timeout")), "requests": r["requests"]}


def _tree(pid: int):
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_rss_mb(pid: int) -> float:
    total = 0
    for p in _tree(pid):
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 1e6


def tree_cpu_seconds(pid: int) -> float:
    """user + system CPU time of a server and its workers: what a request costs, whatever the
    other tenants of the machine are doing to the latencies."""
    total = 0.0
    for p in _tree(pid):
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def check_same_files(servers: dict, case: dict) -> None:
    for path in (case["segments"][0], case["master"]):
        answers = {name: requests.get(base + path, timeout=10) for name, (base, _) in servers.items()}
        bodies = {r.content for r in answers.values()}
        if any(r.status_code != 200 for r in answers.values()) or len(bodies) != 1:
            raise SystemExit(f"the servers disagree on {path}: "
                             + ", ".join(f"{n} {r.status_code}" for n, r in answers.items()))


def median_of(runs: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]} | {"errors": sum(r["errors"] for r in runs)}


def soak_run(base: str, pids: list[int], case: dict, args, run_dir: Path) -> dict:
    """Mixed load for args.soak seconds while sampling the resident memory of the servers."""
    samples: list[tuple[float, float]] = []
    stop_sampling = threading.Event()

    def rss() -> float:
        return sum(tree_rss_mb(pid) for pid in pids)

    def sample():
        t0 = time.monotonic()
        while not stop_sampling.wait(1.0):
            samples.append((time.monotonic() - t0, rss()))

    before = rss()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    mixed = case["segments"] + [case["master"]] * 8
    soak = wrk(base, mixed, args.soak, args.connections, run_dir, pids)
    stop_sampling.set()
    sampler.join()
    tenth = max(1, len(samples) // 10)
    early = statistics.median(v for _, v in samples[:tenth]) if samples else before
    late = statistics.median(v for _, v in samples[-tenth:]) if samples else before
    return soak | {"rss_before": before, "rss_early": early, "rss_late": late,
                   "rss_max": max((v for _, v in samples), default=before)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="vodflow bench delivery", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10, help="length of each measured wrk run")
    ap.add_argument("--rounds", type=int, default=3, help="rounds alternating the servers' order (medians reported)")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--soak", type=float, default=60,
                    help="seconds of mixed load on the front for the memory check (0: skip)")
    ap.add_argument("--workers", type=int, default=0, help="gunicorn workers (0: as `vodflow web` sizes them)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, configs)")
    args = ap.parse_args(argv)

    console = Console(width=max(120, shutil.get_terminal_size().columns))
    run_dir = Path(tempfile.mkdtemp(prefix="vodflow-bench-delivery-"))
    soak = None
    try:
        case = prepare(run_dir / "var")
        console.print(f"[bold]delivery bench[/bold]: {args.connections} connections, {args.rounds} x {args.seconds:g} s "
                      f"per server and kind, {SEGMENTS} x 1 MiB segments; cores: {os.cpu_count()}, "
                      f"load average before: {os.getloadavg()[0]:.1f}")
        with app_server(run_dir, args.workers, front=True) as front, app_server(run_dir, args.workers) as app:
            # nginx serves the master the app renders, as a static file at the same URL
            master = requests.get(app[0] + case["master"], timeout=10).content
            storage.write_bytes(storage.url_for("hls", case["video_id"], "master.m3u8"), master)
            with nginx_server(run_dir, case["storage"]) as ngx:
                servers = {"front": front, "app": app, "nginx": ngx}
                check_same_files(servers, case)
                results: dict[tuple[str, str], list[dict]] = {}
                for rnd in range(args.rounds):
                    order = list(SERVERS[rnd % 3:] + SERVERS[:rnd % 3])  # each server goes first once
                    for kind, paths in (("segments", case["segments"]), ("master", [case["master"]])):
                        for name in order:
                            base, pids = servers[name]
                            r = wrk(base, paths, args.seconds, args.connections, run_dir, pids)
                            results.setdefault((name, kind), []).append(r)
                            console.print(f"  round {rnd + 1} {kind:8} {name:5} {r['rps']:9.0f} req/s "
                                          f"{r['mbps']:8.1f} MB/s  p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms  p99.9 {r['p999_ms']:6.1f} ms"
                                          f"  {r['cpu_us']:6.0f} us CPU/req  errors {r['errors']}  "
                                          f"load {os.getloadavg()[0]:.1f}")
            if args.soak > 0:
                soak = soak_run(front[0], front[1], case, args, run_dir)
    finally:
        if args.keep:
            console.print(f"kept {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)

    med = {key: median_of(runs) for key, runs in results.items()}
    table = Table(title=f"median of {args.rounds} run(s), {args.connections} connections, {args.seconds:g} s each")
    for col in ("kind", "server", "req/s", "MB/s", "p50 ms", "p99 ms", "p99.9 ms", "CPU us/req", "errors"):
        table.add_column(col, justify="right" if col not in ("kind", "server") else "left")
    for kind in ("segments", "master"):
        n = med[("nginx", kind)]
        for name in SERVERS:
            m = med[(name, kind)]
            table.add_row(kind, name, f"{m['rps']:.0f}", f"{m['mbps']:.1f}", f"{m['p50_ms']:.2f}", f"{m['p99_ms']:.2f}",
                          f"{m['p999_ms']:.1f}", f"{m['cpu_us']:.0f}", str(m["errors"]))
        for name in ("front", "app"):
            a = med[(name, kind)]
            table.add_row(kind, f"{name}/nginx", f"{a['rps'] / n['rps']:.2f}", f"{a['mbps'] / n['mbps']:.2f}",
                          f"{a['p50_ms'] / n['p50_ms']:.2f}", f"{a['p99_ms'] / n['p99_ms']:.2f}",
                          f"{a['p999_ms'] / n['p999_ms']:.2f}", f"{a['cpu_us'] / n['cpu_us']:.2f}" if n["cpu_us"] else "",
                          "", end_section=name == "app")
    console.print(table)

    # ratios per round (servers measured back to back), then their median: steadier on a shared
    # machine than a ratio of medians
    def ratio(name: str) -> float:
        return statistics.median(a["rps"] / n["rps"] for a, n in zip(results[(name, "segments")],
                                                                     results[("nginx", "segments")]))

    front_ratio, app_ratio = ratio("front"), ratio("app")
    master_p99 = med[("front", "master")]["p99_ms"]
    app_p99 = med[("app", "master")]["p99_ms"]
    nginx_p99 = med[("nginx", "master")]["p99_ms"]
    errors = sum(m["errors"] for m in med.values())
    checks = [
        (f"segment throughput front/nginx = {front_ratio:.2f} (goal >= {GOALS['front_segment_ratio']})",
         front_ratio >= GOALS["front_segment_ratio"]),
        (f"segment throughput app alone/nginx = {app_ratio:.2f} (goal >= {GOALS['app_segment_ratio']})",
         app_ratio >= GOALS["app_segment_ratio"]),
        (f"master p99 through the front = {master_p99:.1f} ms at {args.connections} connections (goal <= "
         f"{GOALS['master_p99_ms']:g} ms; app alone {app_p99:.1f} ms, nginx's static copy {nginx_p99:.1f} ms "
         "in the same run)", master_p99 <= GOALS["master_p99_ms"]),
        (f"errors in measured runs: {errors}", errors == 0),
    ]
    if soak is not None:
        growth = soak["rss_late"] - soak["rss_early"]
        console.print(f"soak {args.soak:g} s, mixed segments+master on the front: {soak['rps']:.0f} req/s, "
                      f"{soak['mbps']:.0f} MB/s, p99 {soak['p99_ms']:.1f} ms, {soak['requests']} requests, "
                      f"errors {soak['errors']}; resident memory of nginx and gunicorn, all processes: "
                      f"{soak['rss_before']:.0f} MB before, {soak['rss_early']:.0f} MB early, "
                      f"{soak['rss_late']:.0f} MB late, max {soak['rss_max']:.0f} MB")
        checks += [(f"memory growth over the soak: {growth:+.1f} MB (goal <= {GOALS['memory_growth_mb']:g} MB)",
                    growth <= GOALS["memory_growth_mb"]),
                   (f"errors in the soak: {soak['errors']}", soak["errors"] == 0)]
    for text, ok in checks:
        console.print(("[green]PASS[/green] " if ok else "[red]MISS[/red] ") + text)
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
