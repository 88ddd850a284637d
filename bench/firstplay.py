"""`vodflow bench firstplay`: watch while it transcodes, on the real stack.

    vodflow bench firstplay [--repeat N] [--minutes 5] [--height 1080] [--long-hours 2 | --skip-long]
                            [--no-kill] [--quick] [--source FILE]

Generates a camera-like source (moving picture with grain, AAC; the same as `vodflow bench
transcode`), starts the whole stack with `vodflow up` in a data dir of its own (free loopback
ports, default settings otherwise), and in the same run:

- first play: uploads the source with one POST (`/api/uploads`), opens `/watch/{id}` in headless
  Chromium right after the answer (muted autoplay) and times, from the upload's answer, the
  master playlist listing a playable rung and the first frame on screen (the player's own
  measurement: `performance.timeOrigin` + its start-up base + `startup_ms`, then checked to
  advance). The viewer plays on at 1x to the end while the encode goes on; its stalls are the
  player's own analytics events (`rebuffer_start`/`rebuffer_end`), as the server stored them
  (`GET /api/videos/{id}/stats`). The same run times the video's READY (`ready_at`) from the
  upload's answer;
- the baseline, "one ffmpeg": one process making the same ladder from the same file (the
  command of `vodflow bench transcode`), timed while the stack stands idle;
- orchestration cost per chunk: a long small source (2 hours of 320x180 at 15 fps, 240 chunks)
  uploaded the same way, READY against one ffmpeg making the same single rung;
- resume after a crash: a second upload of the source; once about 70 % of its chunks are
  published, the serve process and the flow run it executes (its process group) get SIGKILL,
  `vodflow up` restarts serve, and `vodflow maintain` (run-silence limit 2 s, as an operator
  would) dispatches the video again. The re-run's encodes are counted from its flow run's
  `encode chunk` task runs and its "resuming" log line.

Each figure is printed with its goal and PASS or MISS; with `--repeat N` the first-play and
long parts run N times (baseline and vodflow in alternating order) and medians are printed.
Ratios are against the baseline measured in the same run: on a shared machine they hold
better than wall times. Exit code 0 when every goal is met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import m3u8
import psutil
import requests
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench.published import free_port, launch_chromium
from bench.shared import TreeSampler, baseline_command, make_source
from tasks.ladder import choose_ladder
from tasks.probe import probe_path

ROOT = Path(__file__).resolve().parent.parent
# a log file gets full lines, not a terminal's 80 columns
console = Console() if sys.stdout.isatty() else Console(width=200)

GOAL_FIRST_S = 10.0  # master lists a playable rung, first frame: seconds after the upload's answer
GOAL_READY_RATIO, AIM_READY_RATIO = 1.10, 1.00  # READY against one ffmpeg making the same ladder
GOAL_LONG_RATIO = 1.0  # READY of the long source against one ffmpeg making its single rung
KILL_AT = 0.70  # share of the chunks published when the serve process is killed
SEGMENT_SECONDS, KEYFRAME_SECONDS = 6.0, 2.0  # the stack's defaults (VODFLOW_SEGMENT/KEYFRAME_SECONDS)
TERMINAL = ("READY", "PARTIAL", "FAILED", "DELETED")

# Counts what the player tells its analytics (the page's own events), next to what the server
# stores: where each stall happened and how long it lasted.
EVENT_TAP = """(() => {
  let cls;
  window.__events = [];
  Object.defineProperty(window, "PlaybackAnalytics", {configurable: true, get() { return cls; }, set(v) {
    cls = v;
    const track = v.prototype.track;
    v.prototype.track = function (type, pos, data) {
      window.__events.push({type: type, pos: pos, at: performance.timeOrigin + performance.now(), data: data || null});
      return track.apply(this, arguments);
    };
  }});
})();"""

FLUSH_ANALYTICS = """async () => {
  const a = window.vodflowPlayer && window.vodflowPlayer.analytics;
  if (!a) return false;
  a.heartbeat(false);
  for (let i = 0; i < 60; i++) {
    if (!a.queue.length && !a.inFlight) return true;
    a.flush(false);
    await new Promise(r => setTimeout(r, 500));
  }
  return false;
}"""


class Clock:
    """Lines per phase, with the time since the bench started."""

    def __init__(self):
        self.t0 = time.monotonic()

    def say(self, text: str) -> None:
        m, s = divmod(int(time.monotonic() - self.t0), 60)
        console.print(f"[dim]{m:3d}:{s:02d}[/dim] {text}", highlight=False)


clock = Clock()


def load() -> str:
    a, b, c = os.getloadavg()
    return f"{a:.2f} {b:.2f} {c:.2f}"


def interleaved(repeat: int):
    """(repeat, side) pairs, the baseline and vodflow taking turns to go first, so that neither
    always runs on the machine the other just warmed (or loaded)."""
    for rep in range(repeat):
        for side in (("baseline", "vodflow") if rep % 2 == 0 else ("vodflow", "baseline")):
            yield rep, side


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# ---------------------------------------------------------------------------------------------
# the stack


class Stack:
    """`vodflow up` of this source tree with its own data dir and free loopback ports."""

    def __init__(self, work: Path):
        self.work = work
        self.data = work / "var"
        self.log = work / "up.log"
        ports = {"VODFLOW_PREFECT_PORT": free_port(), "VODFLOW_DASK_SCHEDULER_PORT": free_port(),
                 "VODFLOW_WEB_PORT": free_port()}
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "VODFLOW_"))}
        env.update({k: str(v) for k, v in ports.items()})
        env.update({"VODFLOW_DATA_DIR": str(self.data), "VODFLOW_WEB_HOST": "127.0.0.1",
                    "VODFLOW_DASK_DASHBOARD_PORT": "0",
                    # the stack runs the code of the tree this bench belongs to
                    "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])})
        self.env = env
        self.web = f"http://127.0.0.1:{ports['VODFLOW_WEB_PORT']}"
        self.api = f"http://127.0.0.1:{ports['VODFLOW_PREFECT_PORT']}/api"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "deployments.cli", "up"], env=self.env,
                                         stdout=out, stderr=subprocess.STDOUT, cwd=self.work)
        deadline = time.monotonic() + 300
        while "vodflow is up" not in self.output():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("vodflow up did not come up:\n" + self.output()[-3000:])
            time.sleep(0.5)

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(180)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # its watchdog ends the rest
            self.proc.wait()

    def record(self) -> dict:
        return json.loads((self.data / "stack.json").read_text())

    def upload(self, path: Path) -> tuple[str, float]:
        """One POST of the whole file (curl streams it); returns the id and the wall-clock time
        of the answer."""
        out = subprocess.run(["curl", "-sS", "--fail-with-body", "-F", f"file=@{path};type=video/mp4",
                              f"{self.web}/api/uploads"], capture_output=True, text=True)
        answered = time.time()
        if out.returncode:
            raise RuntimeError(f"upload refused: {out.stdout} {out.stderr}")
        return json.loads(out.stdout)["id"], answered

    def video(self, vid: str) -> dict:
        r = requests.get(f"{self.web}/api/videos/{vid}", timeout=30)
        r.raise_for_status()
        return r.json()

    def stats(self, vid: str) -> dict:
        r = requests.get(f"{self.web}/api/videos/{vid}/stats", timeout=30)
        r.raise_for_status()
        return r.json()

    def master_lists_a_rung(self, vid: str) -> bool:
        try:
            r = requests.get(f"{self.web}/v/{vid}/master.m3u8", timeout=10)
        except requests.RequestException:
            return False
        return r.status_code == 200 and bool(m3u8.loads(r.text).playlists)

    def flow_logs(self, run_id: str) -> list[str]:
        r = requests.post(f"{self.api}/logs/filter", timeout=30, json={
            "logs": {"flow_run_id": {"any_": [run_id]}}, "sort": "TIMESTAMP_ASC", "limit": 200})
        r.raise_for_status()
        return [x["message"] for x in r.json()]

    def flow_run_started(self, run_id: str) -> float | None:
        """Wall-clock time the flow run started (Prefect's record)."""
        r = requests.get(f"{self.api}/flow_runs/{run_id}", timeout=30)
        r.raise_for_status()
        start = r.json().get("start_time")
        return datetime.fromisoformat(start.replace("Z", "+00:00")).timestamp() if start else None

    def encode_tasks(self, run_id: str) -> list[dict]:
        r = requests.post(f"{self.api}/task_runs/filter", timeout=30, json={
            "flow_runs": {"id": {"any_": [run_id]}}, "task_runs": {"name": {"like_": "encode chunk"}},
            "limit": 200})
        r.raise_for_status()
        return r.json()

    def maintain(self) -> str:
        """`vodflow maintain` in another shell, judging a run dead after 2 s of silence."""
        out = subprocess.run([sys.executable, "-m", "deployments.cli", "maintain"], cwd=self.work,
                             env={**self.env, "VODFLOW_STALE_RUN_SECONDS": "2"}, capture_output=True, text=True,
                             timeout=300)
        return out.stdout + out.stderr

    def run_dir(self, vid: str, v: dict | None = None) -> Path | None:
        """The local folder of the run the video's renditions point at."""
        v = v or self.video(vid)
        for r in v["renditions"] + ([v["audio"]] if v.get("audio") else []):
            if r.get("playlist"):
                run = r["playlist"].split(f"/v/{vid}/", 1)[1].split("/", 1)[0]
                return self.data / "storage" / "hls" / vid / run
        return None


def ready_after(v: dict, since: float) -> float | None:
    if not v.get("ready_at"):
        return None
    return datetime.fromisoformat(v["ready_at"]).timestamp() - since


def chunk_count(stack: Stack, v: dict) -> tuple[int | None, int | None]:
    """(chunks, worker slots) as the flow logged them ("12 chunks on 2 worker slots")."""
    if not v.get("flow_run_id"):
        return None, None
    for line in stack.flow_logs(v["flow_run_id"]):
        m = re.match(r"(\d+) chunks on (\d+) worker slots", line)
        if m:
            return int(m.group(1)), int(m.group(2))
    return None, None


def wait_terminal(stack: Stack, vid: str, progress: Progress, label: str, timeout: float) -> dict:
    task = progress.add_task(label, total=100)
    deadline = time.monotonic() + timeout
    try:
        while True:
            v = stack.video(vid)
            progress.update(task, completed=v.get("progress") or 0)
            if v["status"] in TERMINAL:
                return v
            if stack.proc.poll() is not None:
                raise RuntimeError("the stack stopped:\n" + stack.output()[-3000:])
            if time.monotonic() > deadline:
                raise TimeoutError(f"video {vid} still {v['status']} after {timeout:.0f} s")
            time.sleep(0.5)
    finally:
        progress.remove_task(task)


def progress_bar() -> Progress:
    return Progress(TextColumn("      {task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f} %"),
                    TimeElapsedColumn(), console=console, transient=True)


# ---------------------------------------------------------------------------------------------
# the baseline


def one_ffmpeg(source: Path, work: Path, stack: Stack | None) -> dict:
    """One ffmpeg making the ladder vodflow would make of `source`; the stack's idle CPU over the
    same time is reported beside it."""
    info = probe_path(source)
    rungs = [r.to_dict() for r in choose_ladder(info)]
    out = work / "baseline"
    shutil.rmtree(out, ignore_errors=True)
    for r in rungs:
        (out / r["name"]).mkdir(parents=True, exist_ok=True)
    cmd = baseline_command(source, rungs, out, KEYFRAME_SECONDS, SEGMENT_SECONDS, info.has_audio)
    idle = TreeSampler(stack.proc.pid, interval=1.0) if stack else None
    t = time.monotonic()
    proc = subprocess.Popen(cmd)
    with TreeSampler(proc.pid) as s:
        if idle:
            with idle:
                proc.wait()
        else:
            proc.wait()
    wall = time.monotonic() - t
    if proc.returncode:
        raise RuntimeError(f"baseline ffmpeg failed ({proc.returncode}): {' '.join(cmd)}")
    shutil.rmtree(out, ignore_errors=True)
    return {"wall": wall, "cpu": s.used(), "rungs": [r["name"] for r in rungs],
            "stack_idle_cpu": idle.used() if idle else None}


# ---------------------------------------------------------------------------------------------
# first play: upload, watch at once, play to the end at 1x


def first_play(stack: Stack, browser, source: Path, duration: float) -> dict:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    context.add_init_script(EVENT_TAP)
    page = context.new_page()
    page_errors: list[str] = []
    page.on("pageerror", lambda e: page_errors.append(str(e)))
    seen: dict = {}
    stop = threading.Event()
    sampler = TreeSampler(interval=1.0)

    def watch_server(vid: str, since: float):
        """The master listing a playable rung, then READY, from the server's side."""
        while not stop.is_set() and "master" not in seen:
            if stack.master_lists_a_rung(vid):
                seen["master"] = time.time() - since
                break
            time.sleep(0.1)

    with sampler, progress_bar() as progress:
        vid, t0 = stack.upload(source)
        page.goto(f"{stack.web}/watch/{vid}")
        watcher = threading.Thread(target=watch_server, args=(vid, t0), daemon=True)
        watcher.start()
        clock.say(f"  uploaded as {vid}; the page is open, waiting for the first frame")
        result: dict = {"video_id": vid}
        try:
            page.wait_for_function("() => window.vodflowPlayer && window.vodflowPlayer.startupMs !== null",
                                   timeout=(duration * 3 + 600) * 1000, polling=100)
            ff = page.evaluate("""() => { const p = window.vodflowPlayer;
                return {at: performance.timeOrigin + p.startupBase + p.startupMs, ms: p.startupMs,
                        pos: p.video.currentTime}; }""")
            result["first_frame"] = ff["at"] / 1000 - t0
            result["startup_ms"] = ff["ms"]
            page.wait_for_function(f"() => document.getElementById('video').currentTime > {ff['pos'] + 0.5}",
                                   timeout=120_000, polling=100)
            result["advancing"] = True
            clock.say(f"  first frame {result['first_frame']:.1f} s after the upload's answer; playing at 1x")
        except Exception as exc:  # noqa: BLE001 - reported as a miss, the run goes on
            result["advancing"] = False
            clock.say(f"  [red]no first frame: {type(exc).__name__}: {str(exc)[:200]}[/red]")
        v = wait_terminal(stack, vid, progress, f"encoding {vid} while the viewer plays", duration * 6 + 1800)
        result["status"] = v["status"]
        result["ready"] = ready_after(v, t0)
        clock.say(f"  {v['status']} {result['ready']:.1f} s after the upload's answer"
                  if result["ready"] is not None else f"  ended {v['status']}: {v.get('error')}")
        result["chunks"], result["workers"] = chunk_count(stack, v)
        started = stack.flow_run_started(v["flow_run_id"]) if v.get("flow_run_id") else None
        result["flow_started"] = started - t0 if started else None
        if result.get("advancing"):
            try:
                # what is left to play at 1x, and a margin for stalls at the end
                left = duration - page.evaluate("() => document.getElementById('video').currentTime") + 180
                page.wait_for_function("() => document.getElementById('video').ended", timeout=left * 1000,
                                       polling=1000)
                result["played_to_end"] = True
            except Exception:  # noqa: BLE001
                result["played_to_end"] = False
                clock.say("  [red]the viewer did not reach the end[/red]")
        result["analytics_flushed"] = page.evaluate(FLUSH_ANALYTICS)
        events = page.evaluate("() => window.__events")
        result["position"] = page.evaluate("() => document.getElementById('video').currentTime")
        context.close()  # pagehide: the session's last beacon
        stop.set()
        watcher.join(5)
    result["master"] = seen.get("master")
    stalls = [e for e in events if e["type"] == "rebuffer_end"]
    result["page_stalls"] = [{"at": round(e["pos"], 1), "seconds": round(e["data"]["duration_ms"] / 1000, 2)}
                             for e in stalls]
    result["page_stalls_open"] = sum(1 for e in events if e["type"] == "rebuffer_start") - len(stalls)
    # what the server stored of the player's events (the beacons may land a moment after close)
    deadline = time.monotonic() + 30
    while True:
        stats = stack.stats(vid)
        if stats["rebuffer"]["count"] >= len(stalls) or time.monotonic() > deadline:
            break
        time.sleep(1)
    result["stalls"] = stats["rebuffer"]["count"]
    result["stalled_seconds"] = stats["rebuffer"]["total_s"]
    result["stored_startup_samples"] = stats["startup_ms"]["samples"]
    by_kind = sampler.used_by_kind()
    result["chromium_cpu"] = by_kind.get("chromium", 0.0)
    result["page_errors"] = page_errors
    return result


# ---------------------------------------------------------------------------------------------
# ingest only (the long source), and a crash at 70 %


def ingest_only(stack: Stack, source: Path, label: str, timeout: float) -> dict:
    with progress_bar() as progress:
        vid, t0 = stack.upload(source)
        clock.say(f"  uploaded as {vid}")
        master = None
        task = progress.add_task(label, total=100)
        deadline = time.monotonic() + timeout
        while True:
            v = stack.video(vid)
            progress.update(task, completed=v.get("progress") or 0)
            if master is None and stack.master_lists_a_rung(vid):
                master = time.time() - t0
            if v["status"] in TERMINAL:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"video {vid} still {v['status']} after {timeout:.0f} s")
            time.sleep(0.5)
    chunks, workers = chunk_count(stack, v)
    started = stack.flow_run_started(v["flow_run_id"]) if v.get("flow_run_id") else None
    return {"video_id": vid, "status": v["status"], "ready": ready_after(v, t0), "master": master,
            "chunks": chunks, "workers": workers, "flow_started": started - t0 if started else None}


def published_chunks(run_dir: Path) -> tuple[int, int, int] | None:
    """(chunks published, chunks stored, chunks planned) of a run in progress: the published
    prefix is read from the highest rung's playlist (the lowest one's runs ahead in the fast
    lane), stored chunks from their result files (the fast lane's own are not counted)."""
    try:
        saved = json.loads((run_dir / "plan.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
    chunks = saved["plan"]["chunks"]
    highest = max(saved["rungs"], key=lambda r: r["height"])["name"]
    try:
        listed = len(m3u8.loads((run_dir / highest / "index.m3u8").read_text()).segments)
    except FileNotFoundError:
        listed = 0
    published, segs = 0, 0
    for c in chunks:
        segs += len(c["segment_frames"])
        if segs > listed:
            break
        published += 1
    stored = len([p for p in (run_dir / "chunks").glob("*.json") if not p.name.endswith(".lane.json")]
                 ) if (run_dir / "chunks").exists() else 0
    return published, stored, len(chunks)


def crash_and_resume(stack: Stack, source: Path, duration: float) -> dict:
    with progress_bar() as progress:
        vid, t0 = stack.upload(source)
        clock.say(f"  uploaded as {vid}; SIGKILL to the serve process group once "
                  f"{KILL_AT:.0%} of the chunks are published")
        task = progress.add_task(f"encoding {vid} up to {KILL_AT:.0%}", total=100)
        deadline = time.monotonic() + duration * 6 + 1800
        run_dir, checked = None, 0.0
        while True:
            if time.monotonic() - checked > 1.0 or run_dir is None:
                checked = time.monotonic()
                v = stack.video(vid)
                progress.update(task, completed=v.get("progress") or 0)
                run_dir = run_dir or stack.run_dir(vid, v)
                if v["status"] in TERMINAL:
                    raise RuntimeError(f"video {vid} ended {v['status']} before {KILL_AT:.0%} of it was published")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"video {vid}: {KILL_AT:.0%} not published after {duration * 6 + 1800:.0f} s")
            # between the API's looks, the published prefix is read from the run's files
            state = published_chunks(run_dir) if run_dir else None
            if state and state[0] >= math.ceil(KILL_AT * state[2]) and state[0] < state[2]:
                break
            time.sleep(0.05)
        serve = stack.record()["components"]["serve"]["pid"]
        first_run = v["flow_run_id"]
        os.killpg(serve, signal.SIGKILL)  # the serve process and the flow run it executes, as in a crash
        published, stored, total = state
        clock.say(f"  killed at {published}/{total} chunks published ({stored} stored), "
                  f"{time.time() - t0:.0f} s after the upload")
        progress.remove_task(task)
        # the supervisor restarts serve; maintenance finds the silent run and dispatches the video again
        task = progress.add_task("waiting for maintenance to dispatch it again", total=None)
        deadline = time.monotonic() + 600
        rounds = 0
        while True:
            out = stack.maintain()
            rounds += 1
            v = stack.video(vid)
            if v.get("flow_run_id") != first_run or v["status"] in TERMINAL:
                break
            if time.monotonic() > deadline:
                raise TimeoutError("maintenance did not dispatch the video again:\n" + out[-2000:])
            time.sleep(1)
        progress.remove_task(task)
        clock.say(f"  dispatched again by maintenance (round {rounds}); run {v.get('flow_run_id')}")
        v = wait_terminal(stack, vid, progress, f"re-run of {vid}", duration * 6 + 1800)
    rerun = v["flow_run_id"]
    tasks = stack.encode_tasks(rerun)
    logs = stack.flow_logs(rerun)
    resumed = encoded_logged = lane_resumed = None
    for line in logs:
        m = re.match(r"resuming: (\d+) of (\d+) chunks were stored by the earlier attempt; encoding the other (\d+)",
                     line)
        if m:
            resumed, encoded_logged = int(m.group(1)), int(m.group(3))
        m = re.match(r"resuming the fast lane of \S+: (\d+) of (\d+) chunks", line)
        if m:
            lane_resumed = int(m.group(1))
    _, workers = chunk_count(stack, {"flow_run_id": first_run})
    labels = {t["name"] for t in tasks}
    return {"video_id": vid, "status": v["status"], "total": total, "published_at_kill": published,
            "stored_at_kill": stored, "resumed": resumed, "encoded_logged": encoded_logged,
            "lane_resumed": lane_resumed,
            "rerun_encode_tasks": len(tasks), "rerun_chunks_encoded": len(labels), "workers": workers,
            "maintenance_rounds": rounds}


# ---------------------------------------------------------------------------------------------
# the report


def verdict(ok: bool | None) -> str:
    return "[green]PASS[/green]" if ok else ("[red]MISS[/red]" if ok is not None else "[yellow]n/a[/yellow]")


def fmt(x, unit: str = " s", digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}{unit}"


def _described(path: Path) -> tuple[float, str, str]:
    """(minutes, "WxH", frame rate) of an existing source."""
    info = probe_path(path)
    num, den = (int(x) for x in info.frame_rate_fraction.split("/"))
    return (round(info.duration / 60, 2), f"{info.display_width}x{info.display_height}",
            str(num) if den == 1 else f"{num}/{den}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="vodflow bench firstplay", description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=1, help="runs of the first-play and long parts; medians (1)")
    ap.add_argument("--minutes", type=float, help="source length in minutes (5)")
    ap.add_argument("--height", type=int, help="source height, 16:9 (1080)")
    ap.add_argument("--rate", default="30", help="source frame rate (30)")
    ap.add_argument("--long-hours", type=float, help="length of the long 320x180 15 fps source (2)")
    ap.add_argument("--skip-long", action="store_true", help="skip the orchestration-cost part")
    ap.add_argument("--no-kill", action="store_true", help="skip the crash-and-resume part")
    ap.add_argument("--quick", action="store_true", help="a short preset: 1-minute 720p source, 0.25 h long source")
    ap.add_argument("--json", type=Path, help="write the figures here too")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (sources, data dir, logs)")
    ap.add_argument("--source", type=Path, help="use this file (as generated by an earlier run kept with --keep) "
                                                "instead of generating one; its length and size are probed")
    args = ap.parse_args(argv)
    minutes = args.minutes if args.minutes is not None else (1.0 if args.quick else 5.0)
    height = args.height if args.height is not None else (720 if args.quick else 1080)
    long_hours = args.long_hours if args.long_hours is not None else (0.25 if args.quick else 2.0)
    size = f"{int(round(height * 16 / 9 / 2)) * 2}x{height}"
    duration = minutes * 60

    if not (ROOT / "streaming_app" / "static" / "vendor" / "hls.min.js").exists():
        console.print("hls.js is not installed in streaming_app/static/vendor: run `make setup` first")
        return 2
    from playwright.sync_api import sync_playwright  # optional: the test extra only

    work = Path(tempfile.mkdtemp(prefix="vodflow-bench-firstplay-"))
    os.environ["VODFLOW_DATA_DIR"] = str(work / "bench-var")  # this process's own probes
    cores = len(os.sched_getaffinity(0))
    clock.say(f"machine: {cores} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB; load average {load()} "
              "(other work on the machine makes walls noisy; the ratios hold better)")
    load_start = os.getloadavg()

    source = work / "source.mp4"
    if args.source:
        source = args.source.resolve()
        minutes, size, args.rate = _described(source)
        duration = minutes * 60
        clock.say(f"using {source}: {minutes:g} minutes, {size}@{args.rate}, {source.stat().st_size / 2**20:.0f} MiB")
    else:
        t = time.monotonic()
        clock.say(f"generating a {minutes:g}-minute {size}@{args.rate} source (picture with grain, AAC) …")
        make_source(source, duration, size, args.rate)
        clock.say(f"  done in {time.monotonic() - t:.0f} s, {source.stat().st_size / 2**20:.0f} MiB")
    long_source = None
    if not args.skip_long:
        long_source = work / "long.mp4"
        t = time.monotonic()
        clock.say(f"generating a {long_hours:g}-hour 320x180@15 source …")
        make_source(long_source, long_hours * 3600, "320x180", "15")
        clock.say(f"  done in {time.monotonic() - t:.0f} s, {long_source.stat().st_size / 2**20:.0f} MiB")

    stack = Stack(work)
    clock.say("starting the stack (vodflow up) …")
    t = time.monotonic()
    stack.start()
    clock.say(f"  up in {time.monotonic() - t:.0f} s: {stack.web}, log in {stack.log}")

    plays, bases, longs, long_bases = [], [], [], []
    crash = None
    failed: str | None = None
    try:
        with sync_playwright() as pw:
            browser = launch_chromium(pw)
            for rep, side in interleaved(args.repeat):
                if side == "baseline":
                    clock.say(f"run {rep + 1}/{args.repeat}: one ffmpeg making the same ladder …")
                    bases.append(one_ffmpeg(source, work, stack))
                    clock.say(f"  one ffmpeg: {bases[-1]['wall']:.1f} s ({', '.join(bases[-1]['rungs'])}); "
                              f"load {load()}")
                else:
                    clock.say(f"run {rep + 1}/{args.repeat}: upload, watch at once, play at 1x to the end …")
                    plays.append(first_play(stack, browser, source, duration))
                    p = plays[-1]
                    clock.say(f"  stalls {p['stalls']} ({p['stalled_seconds']:.1f} s); Chromium used "
                              f"{p['chromium_cpu']:.0f} CPU s; load {load()}")
            browser.close()
        if long_source is not None:
            for rep, side in interleaved(args.repeat):
                if side == "baseline":
                    clock.say(f"long run {rep + 1}/{args.repeat}: one ffmpeg making the single rung …")
                    long_bases.append(one_ffmpeg(long_source, work, stack))
                    clock.say(f"  one ffmpeg: {long_bases[-1]['wall']:.1f} s; load {load()}")
                else:
                    clock.say(f"long run {rep + 1}/{args.repeat}: upload and ingest …")
                    longs.append(ingest_only(stack, long_source, "ingest of the long source",
                                             long_hours * 3600 + 3600))
                    r = longs[-1]
                    clock.say(f"  {r['status']} {fmt(r['ready'])} after the upload's answer, "
                              f"{r['chunks']} chunks; load {load()}")
        if not args.no_kill:
            clock.say("crash and resume: upload, SIGKILL the serve process at "
                      f"{KILL_AT:.0%}, let the stack recover …")
            crash = crash_and_resume(stack, source, duration)
            clock.say(f"  re-run {crash['status']}: encoded {crash['encoded_logged']} chunks, "
                      f"resumed {crash['resumed']}; load {load()}")
    except Exception as exc:  # noqa: BLE001 - the figures measured so far are still printed
        failed = f"{type(exc).__name__}: {exc}"
        clock.say(f"[red]stopped early: {failed}[/red]")
    finally:
        clock.say("stopping the stack …")
        stack.stop()

    load_end = os.getloadavg()
    met = report(args, minutes, size, long_hours, plays, bases, longs, long_bases, crash, load_start, load_end)
    if args.json:
        args.json.write_text(json.dumps({
            "source": {"minutes": minutes, "size": size, "rate": args.rate}, "long_hours": long_hours,
            "plays": plays, "baselines": bases, "long": longs, "long_baselines": long_bases, "crash": crash,
            "load_start": load_start, "load_end": load_end, "failed": failed}, indent=2, default=str))
    if args.keep:
        clock.say(f"work folder kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if met and not failed else 1


def report(args, minutes, size, long_hours, plays, bases, longs, long_bases, crash, load_start, load_end) -> bool:
    rows: list[tuple[str, str, str, bool | None]] = []
    b_wall = median([b["wall"] for b in bases])
    master = median([p.get("master") for p in plays])
    first = median([p.get("first_frame") for p in plays])
    if plays:
        rows.append(("master lists a playable rung, after the upload's answer", fmt(master),
                     f"<= {GOAL_FIRST_S:g} s", master is not None and master <= GOAL_FIRST_S))
        rows.append(("first frame advancing in headless Chromium on /watch/{id}", fmt(first),
                     f"<= {GOAL_FIRST_S:g} s",
                     first is not None and first <= GOAL_FIRST_S and all(p.get("advancing") for p in plays)))
        stalls = median([p["stalls"] for p in plays])
        stalled = median([p["stalled_seconds"] for p in plays])
        ended = all(p.get("played_to_end") for p in plays)
        rows.append(("stalls of the 1x viewer, first frame to the end (count)",
                     fmt(stalls, "", 0) + ("" if ended else " (did not reach the end)"), "0",
                     stalls == 0 and ended))
        rows.append(("  time stalled", fmt(stalled), "0 s", stalled == 0 and ended))
        v_ready = median([p.get("ready") for p in plays])
        ratios = [p["ready"] / b["wall"] for p, b in zip(plays, bases) if p.get("ready")]
        ratio = median(ratios)
        rows.append((f"READY, after the upload's answer (one ffmpeg: {fmt(b_wall)})", fmt(v_ready), "", None))
        rows.append(("  READY / one ffmpeg", fmt(ratio, "", 3),
                     f"<= {GOAL_READY_RATIO:.2f} (aim {AIM_READY_RATIO:.2f})",
                     ratio is not None and ratio <= GOAL_READY_RATIO))
    if longs:
        lb = median([b["wall"] for b in long_bases])
        lr = median([r.get("ready") for r in longs])
        ratio = median([r["ready"] / b["wall"] for r, b in zip(longs, long_bases) if r.get("ready")])
        chunks = median([r.get("chunks") for r in longs])
        rows.append((f"long source READY ({chunks or '?'} chunks; one ffmpeg: {fmt(lb)})", fmt(lr), "", None))
        rows.append(("  READY / one ffmpeg", fmt(ratio, "", 3), f"<= {GOAL_LONG_RATIO:.2f}",
                     ratio is not None and ratio <= GOAL_LONG_RATIO))
        if chunks and lr is not None and lb is not None:
            rows.append(("  orchestration cost per chunk ((READY - one ffmpeg) / chunks)",
                         fmt((lr - lb) / chunks * 1000, " ms", 0), "", None))
    if crash:
        limit = crash["total"] - crash["published_at_kill"] + (crash["workers"] or 0)
        encoded = crash["encoded_logged"] if crash["encoded_logged"] is not None else crash["rerun_chunks_encoded"]
        rows.append((f"re-run encodes after kill -9 at {crash['published_at_kill']}/{crash['total']} chunks "
                     f"published ({crash['stored_at_kill']} stored, {crash['workers']} workers)",
                     f"{encoded} chunks", f"<= {limit} ({crash['total'] - crash['published_at_kill']} unpublished "
                     f"+ {crash['workers']})", encoded is not None and encoded <= limit and crash["status"] == "READY"))

    console.print()
    table = Table(title=f"vodflow bench firstplay: {minutes:g} min {size}@{args.rate}"
                        + (f", long source {long_hours:g} h 320x180@15" if longs else "")
                        + f"; median of {args.repeat}", title_justify="left")
    table.add_column("figure")
    table.add_column("measured", justify="right")
    table.add_column("goal", justify="right")
    table.add_column("")
    for name, value, goal, ok in rows:
        table.add_row(name, value, goal, verdict(ok) if goal else "")
    console.print(table)
    for i, (p, b) in enumerate(zip(plays, bases)):
        console.print(f"  run {i + 1}: flow run started {fmt(p.get('flow_started'))}, master {fmt(p.get('master'))}, "
                      f"first frame {fmt(p.get('first_frame'))} "
                      f"(player's startup_ms {fmt(p.get('startup_ms'), ' ms', 0)}), READY {fmt(p.get('ready'))} "
                      f"vs one ffmpeg {fmt(b['wall'])} (stack idle meanwhile {fmt(b['stack_idle_cpu'], ' CPU s', 0)}), "
                      f"{p.get('chunks')} chunks on {p.get('workers')} workers; viewer's stalls "
                      f"{p['page_stalls'] or 'none'}{' + one still open' if p.get('page_stalls_open') else ''}; "
                      f"Chromium {p['chromium_cpu']:.0f} CPU s; page errors {len(p['page_errors'])}", highlight=False)
    for i, (r, b) in enumerate(zip(longs, long_bases)):
        console.print(f"  long run {i + 1}: READY {fmt(r.get('ready'))} vs one ffmpeg {fmt(b['wall'])}, "
                      f"flow run started {fmt(r.get('flow_started'))}, master {fmt(r.get('master'))}, "
                      f"{r.get('chunks')} chunks",
                      highlight=False)
    if crash:
        console.print(f"  crash: {crash['published_at_kill']} of {crash['total']} chunks published at the kill, "
                      f"{crash['stored_at_kill']} stored; the re-run resumed {crash['resumed']} and encoded "
                      f"{crash['encoded_logged']} (its encode task runs: {crash['rerun_encode_tasks']} for "
                      f"{crash['rerun_chunks_encoded']} chunks); {crash['workers']} workers; video {crash['status']}"
                      + (f"; the fast lane had stored {crash['lane_resumed']} of {crash['total']} chunks of its rung"
                         if crash.get("lane_resumed") is not None else ""),
                      highlight=False)
    console.print(f"  load average at start {' '.join(f'{x:.2f}' for x in load_start)}, "
                  f"at end {' '.join(f'{x:.2f}' for x in load_end)}")
    return all(ok for _, _, goal, ok in rows if goal)


if __name__ == "__main__":
    sys.exit(main())
