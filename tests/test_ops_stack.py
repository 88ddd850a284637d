"""The whole stack as `vodflow up` starts it, and the faults it must survive.

One stack serves every test in this module (starting it costs ~15 s): an upload through tus
reaching READY through the `ingest/on-demand` deployment, a batch of uploads queueing behind the
ingest concurrency limit (1 here, so any overlap shows), a Dask worker killed mid-encode, the
serve process killed mid-run and recovered by maintenance, a watch folder with one file under two
names, `vodflow ingest` and `vodflow status` in a second shell joining the running stack, and
finally Ctrl-C in the middle of an encode, which must leave no process behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import psutil
import pytest
import requests
from distributed import Client

from tests.media import make_clip
from tests.ops_support import (alive, artifacts_of, descendants, kill_group, prefect_get, prefect_post,
                               stack_processes)
from tests.servers import free_port

pytestmark = pytest.mark.slow
VODFLOW = shutil.which("vodflow", path=str(Path(sys.executable).parent)) or "vodflow"
TERMINAL = ("READY", "PARTIAL", "FAILED", "DELETED")


class Stack:
    def __init__(self, proc, log: Path, api: str, web: str, data: Path, watch: Path):
        self.proc, self.log, self.api, self.web, self.data, self.watch = proc, log, api, web, data, watch

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def component(self, needle: str) -> psutil.Process:
        for p in psutil.Process(self.proc.pid).children():
            if needle in " ".join(p.cmdline()):
                return p
        raise LookupError(needle)

    def video(self, vid: str) -> dict:
        r = requests.get(f"{self.web}/api/videos/{vid}", timeout=10)
        r.raise_for_status()
        return r.json()

    def wait_video(self, vid: str, until=TERMINAL, timeout: float = 240) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            v = self.video(vid)
            if v["status"] in until:
                return v
            assert self.proc.poll() is None, "the stack stopped:\n" + self.output()[-3000:]
            time.sleep(0.5)
        raise TimeoutError(f"video {vid} still {v['status']} after {timeout}s")

    def wait_run(self, run_id: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            run = prefect_get(self.api, f"/flow_runs/{run_id}")
            if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") \
                    or time.monotonic() > deadline:
                return run
            time.sleep(0.3)

    def run_deployment(self, name: str, parameters: dict | None = None, timeout: float = 180) -> dict:
        dep = prefect_get(self.api, f"/deployments/name/{name}")
        run = prefect_post(self.api, f"/deployments/{dep['id']}/create_flow_run",
                           {"parameters": parameters or {}})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = prefect_get(self.api, f"/flow_runs/{run['id']}")
            if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                return run
            time.sleep(0.5)
        raise TimeoutError(f"{name} run did not finish")

    def upload(self, path: Path) -> str:
        with open(path, "rb") as fh:
            r = requests.post(f"{self.web}/api/uploads", files={"file": (path.name, fh, "video/mp4")}, timeout=60)
        assert r.status_code == 201, r.text
        return r.json()["id"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    base = tmp_path_factory.mktemp("stack")
    data, watch = base / "var", base / "watch"
    watch.mkdir()
    ports = {"VODFLOW_PREFECT_PORT": free_port(), "VODFLOW_DASK_SCHEDULER_PORT": free_port(),
             "VODFLOW_WEB_PORT": free_port()}
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "VODFLOW_"))}
    env.update({k: str(v) for k, v in ports.items()})
    env.update({
        "VODFLOW_DATA_DIR": str(data),
        "VODFLOW_WEB_HOST": "127.0.0.1",
        "VODFLOW_WEB_WORKERS": "2",
        "VODFLOW_BULK_INGEST_URL": str(watch),
        "VODFLOW_BULK_INGEST_SETTLE_SECONDS": "1",
        # one ingest at a time: a second run RUNNING at once is then a broken limit, not load
        "VODFLOW_MAX_CONCURRENT_INGESTS": "1",
        "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "1",  # queued runs retry sooner
        # above the 30 s heartbeat, so only a really silent run counts as dead
        "VODFLOW_STALE_RUN_SECONDS": "40",
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "PREFECT_UI_ENABLED": "false",
    })
    log = base / "up.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "deployments.cli", "up"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, cwd=base)
    s = Stack(proc, log, f"http://127.0.0.1:{ports['VODFLOW_PREFECT_PORT']}/api",
              f"http://127.0.0.1:{ports['VODFLOW_WEB_PORT']}", data, watch)
    s.env = env
    deadline = time.monotonic() + 240
    while "vodflow is up" not in s.output():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("vodflow up did not come up:\n" + s.output()[-4000:])
        time.sleep(0.5)
    yield s
    if proc.poll() is None:
        tree = descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            proc.kill()
        for p in alive(tree):
            p.kill()


def test_stack_is_healthy_and_serves_the_deployments(stack):
    health = requests.get(f"{stack.web}/healthz", timeout=10).json()
    assert health["status"] == "ok", health
    assert all(c["ok"] and c.get("configured", True) for c in health["checks"].values())
    ingest = prefect_get(stack.api, "/deployments/name/ingest/on-demand")
    assert ingest["global_concurrency_limit"]["limit"] == 1
    for name, cron in (("bulk-ingest/scheduled", "*/10 * * * *"), ("maintenance/hourly", "7 * * * *")):
        dep = prefect_get(stack.api, f"/deployments/name/{name}")
        assert not dep["paused"]
        assert [s["schedule"]["cron"] for s in dep["schedules"] if s["active"]] == [cron]
    out = stack.output()
    for line in ("Prefect UI", "Dask        tcp://127.0.0.1:", "web app", "/upload"):
        assert line in out
    # before any video, every worker has the task modules loaded (`--preload tasks.preload`): the
    # first video's first tasks do not stall their worker for the imports
    with Client(f"tcp://127.0.0.1:{stack.env['VODFLOW_DASK_SCHEDULER_PORT']}", timeout=30) as client:
        loaded = client.run(lambda: sorted(m for m in sys.modules if m.startswith("tasks.")))
    assert loaded and all({"tasks.encode", "tasks.lane", "tasks.split"} <= set(mods) for mods in loaded.values()), loaded


def test_tus_upload_becomes_ready_through_the_deployment(stack, clip):
    from tusclient.client import TusClient

    uploader = TusClient(f"{stack.web}/files/").uploader(str(clip), chunk_size=256 * 1024,
                                                         metadata={"filename": "tus clip.mp4"})
    uploader.upload()
    head = requests.head(uploader.url, headers={"Tus-Resumable": "1.0.0"}, timeout=10)
    vid = head.headers["Vodflow-Video-Id"]
    video = stack.wait_video(vid)
    assert video["status"] == "READY", video
    run = stack.wait_run(video["flow_run_id"])  # the video is READY just before the run ends
    dep = prefect_get(stack.api, f"/deployments/{run['deployment_id']}")
    assert dep["name"] == "on-demand" and run["parameters"] == {"video_id": vid}
    assert run["state"]["type"] == "COMPLETED"
    assert artifacts_of(stack.api, run["id"]), "the ingest run left no artifacts"
    master = requests.get(f"{stack.web}/v/{vid}/master.m3u8", timeout=10)
    assert master.status_code == 200 and "#EXT-X-STREAM-INF" in master.text


def test_ingests_beyond_the_concurrency_limit_queue(stack, media_dir):
    """Three uploads at once under a limit of 1: one runs, the others wait for its slot."""
    clips = [make_clip(media_dir / f"queued {i}.mp4", duration=3, size="320x180", rate=str(24 + i))
             for i in range(3)]  # distinct bytes: three videos, not one upload seen three times
    dep = prefect_get(stack.api, "/deployments/name/ingest/on-demand")
    assert dep["global_concurrency_limit"]["limit"] == 1
    vids = {stack.upload(c) for c in clips}
    runs: dict[str, dict] = {}
    most_active, waited = 0, set()
    deadline = time.monotonic() + 180
    while True:
        polled = prefect_post(stack.api, "/flow_runs/filter",
                              {"flow_runs": {"deployment_id": {"any_": [dep["id"]]}}})
        runs = {r["id"]: r for r in polled if r["parameters"].get("video_id") in vids}
        states = [r["state"] for r in runs.values()]
        # PENDING already holds the slot (it is taken on the way to PENDING, given back at the end)
        active = [st for st in states if st["type"] in ("PENDING", "RUNNING")]
        most_active = max(most_active, len(active))
        assert len(active) <= 1, f"{len(active)} ingests held the slot at once: {states}"
        for rid, r in runs.items():
            if r["state"]["name"] == "AwaitingConcurrencySlot" or (r["state"]["type"] == "SCHEDULED" and active):
                waited.add(rid)
        if len(runs) == 3 and all(st["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
                                  for st in states):
            break
        assert time.monotonic() < deadline, f"the batch did not finish: {states}"
        assert stack.proc.poll() is None, "the stack stopped:\n" + stack.output()[-3000:]
        time.sleep(0.3)
    assert most_active == 1
    assert waited, "no ingest was ever seen waiting for the slot"
    assert [r["state"]["type"] for r in runs.values()] == ["COMPLETED"] * 3
    # the full state history closes the gaps between polls: running spans never overlap, and the
    # runs that queued did so in AwaitingConcurrencySlot
    spans, queued = [], 0
    for rid in runs:
        history = sorted(prefect_get(stack.api, f"/flow_run_states/?flow_run_id={rid}"),
                         key=lambda st: datetime.fromisoformat(st["timestamp"]))
        queued += "AwaitingConcurrencySlot" in [st["name"] for st in history]
        start = next(datetime.fromisoformat(st["timestamp"]) for st in history if st["type"] == "RUNNING")
        end = next(datetime.fromisoformat(st["timestamp"]) for st in history if st["type"] == "COMPLETED")
        spans.append((start, end))
    spans.sort()
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end, f"running spans overlap: {spans}"
    assert queued >= 1
    for vid in vids:
        assert stack.wait_video(vid)["status"] == "READY"


def test_curl_upload_plays_end_to_end(stack, media_dir):
    """The foundation's promise: curl a file in, get every rendition out as valid HLS."""
    import json

    import m3u8

    src = make_clip(media_dir / "e2e 480p.mp4", duration=5, size="854x480")
    out = subprocess.run(["curl", "-sS", "-F", f"file=@{src}", f"{stack.web}/api/uploads"],
                         capture_output=True, text=True, check=True)
    body = json.loads(out.stdout)
    assert set(body) >= {"id", "status_url", "watch_url"}
    video = stack.wait_video(body["id"])
    assert video["status"] == "READY", video

    master_url = f"{stack.web}/v/{body['id']}/master.m3u8"
    master = m3u8.load(master_url)
    assert master.is_variant
    heights = sorted(p.stream_info.resolution[1] for p in master.playlists)
    assert heights == [360, 480]
    for variant in master.playlists:
        info = variant.stream_info
        assert info.codecs.startswith("avc1.64") and "mp4a.40.2" in info.codecs
        assert info.bandwidth >= (info.average_bandwidth or 0) > 0
        playlist = m3u8.load(variant.absolute_uri)
        assert playlist.playlist_type == "vod" and playlist.is_endlist
        total = 0.0
        for seg in playlist.segments:
            data = requests.get(seg.absolute_uri, timeout=10)
            assert data.status_code == 200 and data.headers["Content-Type"] == "video/mp2t"
            tmp = stack.data.parent / "seg.ts"
            tmp.write_bytes(data.content)
            probe = json.loads(subprocess.run(
                ["ffprobe", "-v", "error", "-print_format", "json", "-show_streams", "-show_format", str(tmp)],
                capture_output=True, text=True, check=True).stdout)
            v = next(s for s in probe["streams"] if s["codec_type"] == "video")
            assert not [s for s in probe["streams"] if s["codec_type"] == "audio"]  # audio: its own rendition
            assert (v["codec_name"], v["profile"], v["pix_fmt"]) == ("h264", "High", "yuv420p")
            assert [v["width"], v["height"]] == list(info.resolution)
            assert abs(float(probe["format"]["duration"]) - seg.duration) < 0.1
            total += seg.duration
        assert abs(total - 5.0) < 0.1
    # the audio rendition every variant references, encoded and stored once
    audio = [m for m in master.media if m.type == "AUDIO"]
    assert len(audio) == 1 and all(p.stream_info.audio == audio[0].group_id for p in master.playlists)
    apl = m3u8.load(audio[0].absolute_uri)
    assert apl.playlist_type == "vod" and apl.is_endlist and abs(sum(s.duration for s in apl.segments) - 5.0) < 0.1
    data = requests.get(apl.segments[0].absolute_uri, timeout=10)
    assert data.status_code == 200 and data.headers["Content-Type"] == "video/mp2t"
    tmp = stack.data.parent / "aseg.ts"
    tmp.write_bytes(data.content)
    probe = json.loads(subprocess.run(["ffprobe", "-v", "error", "-print_format", "json", "-show_streams", str(tmp)],
                                      capture_output=True, text=True, check=True).stdout)
    assert [(a["codec_type"], a["codec_name"], a["channels"], a["sample_rate"]) for a in probe["streams"]] == \
        [("audio", "aac", 2, "48000")]
    # ffprobe reads every rendition through the master playlist, over HTTP
    probe = subprocess.run(["ffprobe", "-v", "error", "-print_format", "json", "-show_programs", master_url],
                           capture_output=True, text=True, check=True)
    programs = json.loads(probe.stdout)["programs"]
    assert len(programs) == 2


def _worker_ffmpeg(stack, timeout: float = 120, encoding: bool = False) -> psutil.Process:
    """An ffmpeg started by a Dask worker process of the stack, as soon as one runs (with
    `encoding`, only a video encode: not the split, audio or thumbnail steps)."""
    workers = stack.component("dask worker")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in workers.children(recursive=True):
            try:
                if p.name() == "ffmpeg" and (not encoding or "libx264" in p.cmdline()):
                    return p
            except psutil.Error:
                continue
        time.sleep(0.05)
    raise TimeoutError("no ffmpeg ran on a worker")


def test_killing_a_worker_mid_encode_still_ends_ready(stack, media_dir):
    clip = make_clip(media_dir / "long.mp4", duration=12, size="640x360")
    vid = stack.upload(clip)
    ffmpeg = _worker_ffmpeg(stack)
    worker = ffmpeg.parent()
    assert "dask" in " ".join(worker.cmdline()) or "multiprocessing" in " ".join(worker.cmdline())
    os.kill(worker.pid, signal.SIGKILL)
    video = stack.wait_video(vid)
    assert video["status"] == "READY", video
    # the killed worker's ffmpeg did not live on
    assert not alive([ffmpeg])
    assert "READY" == stack.video(vid)["status"]


def test_killing_the_serve_process_mid_run_is_recovered_by_maintenance(stack, media_dir):
    clip = make_clip(media_dir / "medium.mp4", duration=6, size="640x360")
    vid = stack.upload(clip)
    stack.wait_video(vid, until=("PROCESSING",) + TERMINAL)
    first_run = stack.video(vid).get("flow_run_id")
    serve = stack.component("serve-flows")
    kill_group(serve.pid)  # the serve process and the flow run it was executing, as in a crash
    # the supervisor restarts serve. The stack judges a run dead after 40 s of silence (above
    # Prefect's 30 s heartbeat); an operator on this host runs `vodflow maintain` with a limit
    # of 2 s instead, again until the silent run is found dead and the video dispatched anew
    env = {**stack.env, "PREFECT_API_URL": stack.api, "VODFLOW_STALE_RUN_SECONDS": "2"}
    deadline = time.monotonic() + 240
    while True:
        out = subprocess.run([sys.executable, "-m", "deployments.cli", "maintain"], env=env,
                             capture_output=True, text=True, timeout=120, cwd=stack.data.parent)
        assert out.returncode == 0, out.stdout + out.stderr
        v = stack.video(vid)
        if v.get("flow_run_id") != first_run or v["status"] in TERMINAL:
            break
        assert time.monotonic() < deadline, "maintenance never re-dispatched the video:\n" + out.stdout
        time.sleep(0.5)
    assert "re-dispatched" in out.stdout, out.stdout
    video = stack.wait_video(vid)
    assert video["status"] == "READY", video
    old = prefect_get(stack.api, f"/flow_runs/{first_run}")
    assert old["state"]["type"] == "CRASHED"
    # the restarted serve process runs the maintenance deployment, and kept the schedules running
    report = stack.run_deployment("maintenance/hourly", {"cleanup": False})
    assert report["state"]["type"] == "COMPLETED", report["state"]
    for name in ("bulk-ingest/scheduled", "maintenance/hourly"):
        dep = prefect_get(stack.api, f"/deployments/name/{name}")
        assert not dep["paused"] and all(s["active"] for s in dep["schedules"])
    assert "serve exited" in stack.output()


def test_same_file_dropped_twice_is_transcoded_once(stack, clip):
    before = {v["id"] for v in requests.get(f"{stack.web}/api/videos", timeout=10).json()["videos"]}
    shutil.copy(clip, stack.watch / "dropped.mp4")
    shutil.copy(clip, stack.watch / "dropped again.mp4")
    run = stack.run_deployment("bulk-ingest/scheduled")
    assert run["state"]["type"] == "COMPLETED"
    new = [v for v in requests.get(f"{stack.web}/api/videos", timeout=10).json()["videos"] if v["id"] not in before]
    assert len(new) == 1
    video = stack.wait_video(new[0]["id"])
    assert video["status"] == "READY"
    runs = prefect_post(stack.api, "/flow_runs/filter", {"flow_runs": {"name": {"like_": new[0]["id"]}}})
    assert len([r for r in runs if r["parameters"].get("video_id") == new[0]["id"]]) == 1
    (art,) = [a for a in artifacts_of(stack.api, run["id"]) if a["key"] == "bulk-ingest-summary"]
    assert "duplicate" in art["data"]


def _second_shell(env: dict) -> dict:
    """What a user's other shell has: the same data dir, no Prefect or Dask address."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "VODFLOW_"))},
            "VODFLOW_DATA_DIR": env["VODFLOW_DATA_DIR"], "VODFLOW_WEB_PORT": env["VODFLOW_WEB_PORT"],
            "COLUMNS": "200"}


def test_cli_in_another_shell_joins_the_running_stack(stack, media_dir):
    """While `up` runs, commands in another shell with the same data dir join it: `vodflow
    ingest --wait` goes through the stack's `ingest/on-demand` deployment (it shows in the
    stack's Prefect UI and uses its Dask workers) and `vodflow status` reports its servers."""
    record = json.loads((stack.data / "stack.json").read_text())
    assert record["pid"] == stack.proc.pid and record["prefect_api"] == stack.api
    assert record["dask_address"] == f"tcp://127.0.0.1:{stack.env['VODFLOW_DASK_SCHEDULER_PORT']}"

    clip = make_clip(media_dir / "second shell.mp4", duration=2, size="320x180")
    out = subprocess.run([VODFLOW, "ingest", str(clip), "--wait"], capture_output=True, text=True,
                         timeout=300, env=_second_shell(stack.env))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"using the Prefect API at {stack.api}" in out.stderr
    assert "temporary Prefect server" not in out.stdout + out.stderr
    vid = out.stdout.strip().splitlines()[-1].split()[0]
    assert stack.video(vid)["status"] == "READY"
    # the run is the stack's deployment run: it shows in the stack's Prefect UI
    dep = prefect_get(stack.api, "/deployments/name/ingest/on-demand")
    runs = prefect_post(stack.api, "/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [dep["id"]]}}})
    mine = [r for r in runs if r["parameters"].get("video_id") == vid]
    assert len(mine) == 1 and mine[0]["state"]["type"] in ("RUNNING", "COMPLETED")

    status = subprocess.run([VODFLOW, "status", "--json"], capture_output=True, text=True, timeout=120,
                            env=_second_shell(stack.env))
    checks = json.loads(status.stdout)["checks"]
    assert checks["prefect"]["url"] == stack.api and checks["dask"]["address"] == record["dask_address"]
    assert checks["dask"]["ok"] and checks["prefect"]["ok"]


def test_zz_ctrl_c_mid_encode_stops_everything(stack, media_dir):
    """Last in the module, as it stops the stack: Ctrl-C while a worker's ffmpeg is encoding."""
    # 720p: three rungs per chunk, so one encode outlasts the web and serve stops (~3 s)
    clip = make_clip(media_dir / "interrupted.mp4", duration=6, size="1280x720")
    vid = stack.upload(clip)
    ffmpeg = _worker_ffmpeg(stack, encoding=True)
    tree = descendants(stack.proc.pid)
    stack.proc.send_signal(signal.SIGINT)
    assert ffmpeg in tree and alive([ffmpeg]) == [ffmpeg], "the encode ended before Ctrl-C: nothing to prove"
    assert len(tree) >= 6
    # the encode is still going once the web app has stopped: the shutdown has to deal with it,
    # it does not just outwait it
    deadline = time.monotonic() + 30
    while "web stopped" not in stack.output() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert alive([ffmpeg]) == [ffmpeg], "the encode ended early in the shutdown: nothing to prove"
    assert stack.proc.wait(120) == 0, stack.output()[-3000:]
    assert not alive([ffmpeg]), f"ffmpeg {ffmpeg.pid} outlived the stack: {ffmpeg.cmdline()}"
    # processes that were told to stop may take a moment to be reaped: wait for it, not a fixed pause
    deadline = time.monotonic() + 30
    while alive(tree) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = alive(tree)
    assert left == [], [p.cmdline() for p in left]
    left = stack_processes(stack.data)
    assert left == [], [p.cmdline() for p in left]
    assert "stopped cleanly" in stack.output()
    # being stopped is not the video's fault: it is left PROCESSING for maintenance to dispatch
    # again when the stack is back, not FAILED
    with sqlite3.connect(stack.data / "vodflow.db") as db:
        (status, error), = db.execute("select status, error from videos where id = ?", (vid,)).fetchall()
    assert status == "PROCESSING", (status, error)
