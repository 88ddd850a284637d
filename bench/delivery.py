"""`vodflow bench delivery`: HLS delivery by the app under gunicorn against nginx, same files.

Both servers serve one storage folder at the same URLs: the app as `vodflow web` runs it
(`vodflow web`), nginx with bench/nginx-delivery.conf (sendfile on, access log on, like the
app). wrk drives each at the same concurrency with the same URL list:
  - segments: 1 MiB .ts files (32 of them, round-robin), what players pull all day;
  - master:   /v/{id}/master.m3u8, which the app builds from the catalog (nginx: a static copy).
Runs alternate app/nginx over several rounds so machine noise hits both; medians are printed,
with the ratios app/nginx. A final soak loads the app with a mix of both for --soak seconds
while sampling the resident memory of all its processes, to show it stays flat.

Goals: segment throughput >= 0.5 x nginx; master p99 <= 20 ms at 64 connections; no errors;
flat memory over a 60 s run.

    vodflow bench delivery                      # 3 rounds x 10 s each, 60 s soak
    vodflow bench delivery --seconds 3 --rounds 1 --soak 10   # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SEGMENT_BYTES = 1024 * 1024
SEGMENTS = 32
GOALS = {"segment_ratio": 0.5, "master_p99_ms": 20.0, "memory_growth_mb": 20.0}

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
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    import requests

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


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def prepare(data_dir: Path) -> dict:
    """A READY video with a 4-rung master (catalog rows) and 32 x 1 MiB segments in storage."""
    os.environ["VODFLOW_DATA_DIR"] = str(data_dir)
    os.environ.pop("VODFLOW_STORAGE_URL", None)
    os.environ.pop("VODFLOW_DATABASE_URL", None)
    from catalog.db import session_scope
    from catalog.models import Rendition, RenditionStatus, Video, VideoStatus
    from catalog.state import now
    from config import storage
    from config.settings import reset_settings

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
def app_server(run_dir: Path, workers: int):
    """`vodflow web` itself; it execs gunicorn, so the process is gunicorn's master."""
    port = free_port()
    env = {**os.environ, "VODFLOW_WEB_HOST": "127.0.0.1", "VODFLOW_WEB_PORT": str(port),
           "VODFLOW_WEB_WORKERS": str(workers)}
    log = open(run_dir / "gunicorn.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "deployments.cli", "web"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/healthz", proc)
        yield base, proc
    finally:
        stop(proc)
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
        yield base, proc
    finally:
        stop(proc)
        log.close()


def wrk(base: str, paths: list[str], seconds: float, connections: int, run_dir: Path, pid: int | None = None) -> dict:
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (make setup-test installs it)")
    script = run_dir / f"wrk-{secrets.token_hex(3)}.lua"
    script.write_text(WRK_SCRIPT % {"paths": ", ".join(json.dumps(p) for p in paths)})
    threads = max(1, min(connections, os.cpu_count() or 1))
    cpu_before = tree_cpu_seconds(pid) if pid else 0.0
    out = subprocess.run(["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(seconds))}s",
                          "--timeout", "10s", "-s", str(script), base + paths[0]],
                         capture_output=True, text=True, timeout=seconds + 60)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"wrk gave no result:\n{out.stdout}\n{out.stderr}")
    r = json.loads(line[len("RESULT "):])
    secs = r["duration_us"] / 1e6
    cpu_us = (tree_cpu_seconds(pid) - cpu_before) / max(1, r["requests"]) * 1e6 if pid else 0.0
    return {"rps": r["requests"] / secs, "mbps": r["bytes"] / secs / 1e6, "p50_ms": r["p50_us"] / 1000,
            "p99_ms": r["p99_us"] / 1000, "p999_ms": r["p999_us"] / 1000, "cpu_us": cpu_us,
            "errors": sum(r[k] for k in ("connect", "read", "write", "status", "timeout")), "requests": r["requests"]}


def _tree(pid: int):
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_rss_mb(pid: int) -> float:
    import psutil

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
    import psutil

    total = 0.0
    for p in _tree(pid):
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def check_same_files(app: str, nginx: str, case: dict) -> None:
    import requests

    for path in (case["segments"][0], case["master"]):
        a, n = requests.get(app + path, timeout=10), requests.get(nginx + path, timeout=10)
        if a.status_code != 200 or n.status_code != 200 or a.content != n.content:
            raise SystemExit(f"app and nginx disagree on {path}: {a.status_code} vs {n.status_code}")


def median_of(runs: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]} | {"errors": sum(r["errors"] for r in runs)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="vodflow bench delivery", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10, help="length of each measured wrk run")
    ap.add_argument("--rounds", type=int, default=3, help="alternating app/nginx rounds (medians reported)")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--soak", type=float, default=60, help="seconds of mixed load on the app for the memory check (0: skip)")
    ap.add_argument("--workers", type=int, default=0, help="gunicorn workers (0: as `vodflow web` sizes them)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, configs)")
    args = ap.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(120, shutil.get_terminal_size().columns))
    run_dir = Path(tempfile.mkdtemp(prefix="vodflow-bench-delivery-"))
    try:
        case = prepare(run_dir / "var")
        console.print(f"[bold]delivery bench[/bold]: {args.connections} connections, {args.rounds} x {args.seconds:g} s "
                      f"per server and kind, {SEGMENTS} x 1 MiB segments; cores: {os.cpu_count()}, "
                      f"load average before: {os.getloadavg()[0]:.1f}")
        with app_server(run_dir, args.workers) as (app, app_proc):
            # nginx serves the master the app renders, as a static file at the same URL
            import requests

            from config import storage

            master = requests.get(app + case["master"], timeout=10).content
            storage.write_bytes(storage.url_for("hls", case["video_id"], "master.m3u8"), master)
            with nginx_server(run_dir, case["storage"]) as (ngx, ngx_proc):
                check_same_files(app, ngx, case)
                servers = {"app": (app, app_proc.pid), "nginx": (ngx, ngx_proc.pid)}
                results: dict[tuple[str, str], list[dict]] = {}
                for rnd in range(args.rounds):
                    order = ["app", "nginx"] if rnd % 2 == 0 else ["nginx", "app"]
                    for kind, paths in (("segments", case["segments"]), ("master", [case["master"]])):
                        for name in order:
                            base, pid = servers[name]
                            r = wrk(base, paths, args.seconds, args.connections, run_dir, pid)
                            results.setdefault((name, kind), []).append(r)
                            console.print(f"  round {rnd + 1} {kind:8} {name:5} {r['rps']:9.0f} req/s "
                                          f"{r['mbps']:8.1f} MB/s  p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms  p99.9 {r['p999_ms']:6.1f} ms"
                                          f"  {r['cpu_us']:6.0f} us CPU/req  errors {r['errors']}  "
                                          f"load {os.getloadavg()[0]:.1f}")
            soak = None
            if args.soak > 0:
                samples: list[tuple[float, float]] = []
                stop_sampling = threading.Event()

                def sample():
                    t0 = time.monotonic()
                    while not stop_sampling.wait(1.0):
                        samples.append((time.monotonic() - t0, tree_rss_mb(app_proc.pid)))

                before = tree_rss_mb(app_proc.pid)
                sampler = threading.Thread(target=sample, daemon=True)
                sampler.start()
                mixed = case["segments"] + [case["master"]] * 8
                soak = wrk(app, mixed, args.soak, args.connections, run_dir, app_proc.pid)
                stop_sampling.set()
                sampler.join()
                tenth = max(1, len(samples) // 10)
                early = statistics.median(v for _, v in samples[:tenth]) if samples else before
                late = statistics.median(v for _, v in samples[-tenth:]) if samples else before
                soak |= {"rss_before": before, "rss_early": early, "rss_late": late,
                         "rss_max": max((v for _, v in samples), default=before)}
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
        a, n = med[("app", kind)], med[("nginx", kind)]
        for name, m in (("app", a), ("nginx", n)):
            table.add_row(kind, name, f"{m['rps']:.0f}", f"{m['mbps']:.1f}", f"{m['p50_ms']:.2f}", f"{m['p99_ms']:.2f}",
                          f"{m['p999_ms']:.1f}", f"{m['cpu_us']:.0f}", str(m["errors"]))
        table.add_row(kind, "app/nginx", f"{a['rps'] / n['rps']:.2f}", f"{a['mbps'] / n['mbps']:.2f}",
                      f"{a['p50_ms'] / n['p50_ms']:.2f}", f"{a['p99_ms'] / n['p99_ms']:.2f}",
                      f"{a['p999_ms'] / n['p999_ms']:.2f}", f"{a['cpu_us'] / n['cpu_us']:.2f}" if n["cpu_us"] else "", "", end_section=True)
    console.print(table)

    seg_ratio = med[("app", "segments")]["rps"] / med[("nginx", "segments")]["rps"]
    master_p99 = med[("app", "master")]["p99_ms"]
    errors = sum(m["errors"] for m in med.values())
    nginx_p99 = med[("nginx", "master")]["p99_ms"]
    checks = [
        (f"segment throughput app/nginx = {seg_ratio:.2f} (goal >= {GOALS['segment_ratio']})",
         seg_ratio >= GOALS["segment_ratio"]),
        (f"master p99 = {master_p99:.1f} ms at {args.connections} connections (goal <= {GOALS['master_p99_ms']:g} ms; "
         f"nginx's static copy: {nginx_p99:.1f} ms in the same run)",
         master_p99 <= GOALS["master_p99_ms"]),
        (f"errors in measured runs: {errors}", errors == 0),
    ]
    if soak is not None:
        growth = soak["rss_late"] - soak["rss_early"]
        console.print(f"soak {args.soak:g} s, mixed segments+master on the app: {soak['rps']:.0f} req/s, "
                      f"{soak['mbps']:.0f} MB/s, p99 {soak['p99_ms']:.1f} ms, {soak['requests']} requests, "
                      f"errors {soak['errors']}; resident memory of all gunicorn processes: "
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
