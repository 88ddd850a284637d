"""vodflow bench upload: resumable (tus) upload against the one-shot POST, on loopback.

Goals:
  * a 2 GB upload through tuspy in 8 MiB chunks adds < 50 MB to the web server's resident
    memory (sum over gunicorn's master and workers, sampled every 50 ms);
  * tus throughput >= 0.7 x that of `POST /api/uploads` (curl -F) of the same file to the same
    server: the price of chunking, offsets and per-request bookkeeping.

Both uploads run the whole path: validation (sniff + ffprobe), fsync, hand-off into storage
and the Video row (ingest dispatch is off). The file is a real short clip followed by a
`free` box of random bytes up to the size asked, so ffprobe accepts it whatever its size.
The server is started the way `vodflow web` starts it (gunicorn, gthread). Each upload runs
--runs times, alternating which goes first; medians are reported.

    vodflow bench upload                      # 2 GB, 8 MiB chunks, 3 runs
    vodflow bench upload --size 256M --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from tasks import ffmpeg

ROOT = Path(__file__).resolve().parent.parent

MIB = 1024 * 1024


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(?i)\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 2G, 512M)")
    return int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2).lower() or " "))


def make_source(path: Path, size: int) -> None:
    """A 4 s real clip, then a `free` box of random bytes up to `size` (readers skip it)."""
    clip = path.with_suffix(".clip.mp4")
    ffmpeg.run(["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30:duration=4",
                "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(clip)], timeout=120)
    head = clip.read_bytes()
    clip.unlink()
    pad = size - len(head)
    if pad < 16:
        raise SystemExit(f"--size must be above {len(head) + 16} bytes")
    block = os.urandom(8 * MIB)
    with open(path, "wb") as fh:
        fh.write(head)
        if pad < 2**32:
            fh.write(struct.pack(">I4s", pad, b"free"))
            left = pad - 8
        else:
            fh.write(struct.pack(">I4sQ", 1, b"free", pad))
            left = pad - 16
        while left:
            n = min(left, len(block))
            fh.write(block[:n])
            left -= n


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebServer:
    """`vodflow web` (gunicorn) in its own process group, on a free port."""

    def __init__(self, data_dir: Path, workers: int, max_bytes: int, log: Path):
        self.port = free_port()
        self.env = {**os.environ, "VODFLOW_DATA_DIR": str(data_dir), "VODFLOW_WEB_HOST": "127.0.0.1",
                    "VODFLOW_WEB_PORT": str(self.port), "VODFLOW_WEB_WORKERS": str(workers),
                    "VODFLOW_MAX_UPLOAD_BYTES": str(max_bytes), "VODFLOW_DISPATCH": "off",
                    "VODFLOW_LOG_LEVEL": "WARNING"}
        for name in ("VODFLOW_STORAGE_URL", "VODFLOW_DATABASE_URL", "VODFLOW_CONFIG"):
            self.env.pop(name, None)
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log

    def __enter__(self) -> "WebServer":
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "deployments.cli", "web"], env=self.env,
                                         cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the web server exited; see {self.log}")
            try:
                if requests.get(self.base + "/healthz", timeout=2).status_code < 500:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise SystemExit("the web server did not start within 60 s")

    def __exit__(self, *exc) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def rss_bytes(self) -> tuple[int, int]:
        """Resident memory of the server's processes (gunicorn master and workers), and of the
        tools they run (the ffprobe that checks a finished upload), in bytes."""
        server = tools = 0
        pgid = self.proc.pid
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat") as fh:
                    comm, rest = fh.read().split(" (", 1)[1].rsplit(")", 1)
                if int(rest.split()[2]) != pgid:  # field 5: process group
                    continue
                with open(f"/proc/{entry.name}/status") as fh:
                    rss = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:"))
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError, StopIteration):
                continue
            if comm in ("ffprobe", "ffmpeg"):
                tools += rss
            else:
                server += rss
        return server, tools


class PeakRss:
    """Samples RSS while a block runs: `added` = the server's peak minus its level before;
    `tools` = the peak of the short-lived ffprobe child (a fixed cost, whatever the size)."""

    def __init__(self, server: WebServer, every: float = 0.05):
        self.server, self.every = server, every

    def __enter__(self) -> "PeakRss":
        self.before = self.server.rss_bytes()[0]
        self.peak, self.tools = self.before, 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _sample(self) -> None:
        server, tools = self.server.rss_bytes()
        self.peak = max(self.peak, server)
        self.tools = max(self.tools, tools)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self._sample()

    @property
    def added(self) -> int:
        return self.peak - self.before


def tus_upload(base: str, path: Path, chunk: int) -> str:
    from tusclient.client import TusClient  # optional: tuspy comes with the test extra only

    up = TusClient(base + "/files/").uploader(str(path), chunk_size=chunk, metadata={"filename": "bench.mp4"})
    up.upload()
    info = requests.get(up.url, timeout=30).json()
    if info["status"] != "COMPLETE":
        raise SystemExit(f"tus upload did not complete: {info}")
    return info["video"]["id"]


def post_upload(base: str, path: Path) -> str:
    out = subprocess.run(["curl", "-sS", "-F", f"file=@{path};filename=bench.mp4", base + "/api/uploads"],
                         capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise SystemExit(f"curl failed: {out.stderr}")
    body = json.loads(out.stdout)
    if "id" not in body:
        raise SystemExit(f"POST /api/uploads refused the file: {body}")
    return body["id"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="vodflow bench upload", description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=parse_size, default=parse_size("2G"), help="file size (default 2G)")
    ap.add_argument("--chunk", type=parse_size, default=8 * MIB, help="tus chunk size (default 8M)")
    ap.add_argument("--runs", type=int, default=3, help="uploads of each kind (default 3)")
    ap.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    ap.add_argument("--dir", type=Path, default=None, help="scratch folder (needs ~3x --size free)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="vodflow-bench-upload-", dir=args.dir))
    free = shutil.disk_usage(work).free
    if free < 3 * args.size:
        raise SystemExit(f"{work} has {free / 1e9:.1f} GB free; this run needs about {3 * args.size / 1e9:.1f} GB")
    source = work / "source.mp4"
    try:
        t = time.monotonic()
        make_source(source, args.size)
        print(f"source: {args.size / 1e9:.2f} GB in {time.monotonic() - t:.1f} s; server: gunicorn, "
              f"{args.workers} workers; tus chunks {args.chunk / MIB:g} MiB; {args.runs} runs each", flush=True)
        data_dir = work / "var"
        with WebServer(data_dir, args.workers, max(args.size * 2, 1 << 30), work / "gunicorn.log") as srv:
            warm = work / "warm.mp4"
            make_source(warm, 2 * MIB)
            for _ in range(2):  # small chunks, so every worker has served PATCHes before we measure
                tus_upload(srv.base, warm, 256 * 1024)
                post_upload(srv.base, warm)
            print(f"server resident memory after warm-up: {srv.rss_bytes()[0] / 1e6:.0f} MB")
            results: dict[str, list[tuple[float, int]]] = {"tus": [], "post": []}
            tools = 0
            for run in range(args.runs):
                order = ("tus", "post") if run % 2 == 0 else ("post", "tus")
                for kind in order:
                    with PeakRss(srv) as mem:
                        t = time.monotonic()
                        vid = tus_upload(srv.base, source, args.chunk) if kind == "tus" else post_upload(srv.base, source)
                        elapsed = time.monotonic() - t
                    stored = data_dir / "storage" / "sources" / vid
                    if not stored.is_dir():
                        raise SystemExit(f"{kind}: video {vid} has no stored source")
                    shutil.rmtree(stored)  # keep the disk from filling up over the runs
                    results[kind].append((args.size / elapsed, mem.added))
                    tools = max(tools, mem.tools)
                    print(f"  run {run + 1} {kind:>4}: {args.size / elapsed / 1e6:7.1f} MB/s "
                          f"({elapsed:5.1f} s), server memory +{mem.added / 1e6:.1f} MB", flush=True)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    tus_rate = statistics.median(r for r, _ in results["tus"])
    post_rate = statistics.median(r for r, _ in results["post"])
    tus_mem = max(m for _, m in results["tus"])
    post_mem = max(m for _, m in results["post"])
    ratio = tus_rate / post_rate
    mem_ok, rate_ok = tus_mem < 50e6, ratio >= 0.7
    print()
    print(f"tus (tuspy, {args.chunk / MIB:g} MiB chunks): {tus_rate / 1e6:7.1f} MB/s median, "
          f"server memory +{tus_mem / 1e6:.1f} MB at most")
    print(f"one-shot POST /api/uploads (curl -F):  {post_rate / 1e6:7.1f} MB/s median, "
          f"server memory +{post_mem / 1e6:.1f} MB at most")
    print(f"throughput ratio tus / one-shot POST: {ratio:.2f}  (goal >= 0.70: {'PASS' if rate_ok else 'FAIL'})")
    print(f"server memory added by a {args.size / 1e9:.2f} GB tus upload: {tus_mem / 1e6:.1f} MB  "
          f"(goal < 50 MB: {'PASS' if mem_ok else 'FAIL'})")
    print(f"(besides, the ffprobe that checks each finished file peaks at {tools / 1e6:.0f} MB for a moment, "
          "whatever the size)")
    return 0 if (mem_ok and rate_ok) else 1


if __name__ == "__main__":
    raise SystemExit(main())
