"""`vodflow bench transcode`: the split-by-GOP pipeline against one ffmpeg making the same ladder.

Generates (or takes with --source) a 1080p30 H.264+AAC clip (`--size 3840x2160` for a 4K one,
whose ladder adds the HEVC rungs), then in the same run:
- vodflow: the `ingest` flow on a LocalCluster of this machine (started before timing, as
  `vodflow up` keeps one running), with a real Prefect server;
- baseline "one ffmpeg": one process decoding once, `split` into every rung, the same x264
  settings (preset, capped CRF, forced keyframes every 2 s, scene-cut off), `-threads 0`, HLS out.
- "media work alone": the same split, chunk encodes (the encode task's own function) and
  audio on one plain thread per worker, with no Prefect, Dask or packaging: the best wall time
  any orchestration of this design could reach on this machine (`--no-ideal` skips it). With
  HEVC rungs in the ladder it also runs without them: the difference is what they cost.
Prints the wall times and their ratios, CPU utilisation of the machine's cores by each, the peak
memory of any single process, every task's duration, the pipeline overhead (wall time outside
the chunk and audio encodes), the speed-up projected for 4, 16 and 64 workers, and quality
parity per rung (PSNR against the scaled source, and size). `--long-check` also builds a
2-hour 1080p source (stream-copy loop) and measures the memory of the steps whose work grows
with the duration (probe, packet scan and chunk plan, the stream-copy split).

Timings on a shared machine are noisy: `--repeat N` runs both N times and reports medians.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import m3u8
import psutil
from distributed import Client

from bench.shared import TreeSampler, baseline_command, make_source
from catalog.db import session_scope
from catalog.state import get_video, published_renditions
from config import storage
from config.settings import get_settings, reset_settings
from flows.cluster import start_local_cluster
from flows.ingest import ingest
from flows.intake import accept
from tasks.audio import audio_renditions, encode_audio_fn
from tasks.encode import encode_chunk_fn
from tasks.ladder import choose_ladder
from tasks.package import is_fmp4
from tasks.probe import probe_path
from tasks.split import plan_split, read_packets, split_source_fn, target_chunk_seconds
from tasks.thumbnails import preview_plan

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------
# quality


def psnr(segments: list[Path], source: Path, width: int, height: int, frames: int | None = None) -> float:
    concat = "concat:" + "|".join(str(p) for p in segments)
    # both from 0: published segments sit on the HLS timeline (tasks.package.TS_OFFSET)
    graph = (f"[1:v]setpts=PTS-STARTPTS,scale={width}:{height}:flags=bicubic,setsar=1,format=yuv420p[ref];"
             f"[0:v]setpts=PTS-STARTPTS,setsar=1,format=yuv420p[out];[out][ref]psnr")
    cmd = ["ffmpeg", "-hide_banner", "-nostats", "-protocol_whitelist", "concat,file,pipe", "-i", concat,
           "-i", str(source), "-filter_complex", graph]
    if frames:
        cmd += ["-frames:v", str(frames)]
    cmd += ["-f", "null", "-"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    for line in out.stderr.splitlines():
        if "PSNR" in line and "average:" in line:
            return float(line.split("average:")[1].split()[0])
    raise RuntimeError(out.stderr[-2000:])


def rung_files(playlist: Path) -> list[Path]:

    pl = m3u8.load(str(playlist))
    # fragmented MP4: the init segment first, then the media segments read behind it
    init = [playlist.parent / m.uri for m in pl.segment_map][:1]
    return init + [playlist.parent / s.uri for s in pl.segments]


# ---------------------------------------------------------------------------------------------
# scheduling projection


def lpt_makespan(durations: list[float], workers: int) -> float:
    loads = [0.0] * workers
    for d in sorted(durations, reverse=True):
        i = loads.index(min(loads))
        loads[i] += d
    return max(loads) if loads else 0.0


def project(result: dict, wall: float, overhead_serial: float, duration: float, keyframe_seconds: float,
            workers_measured: int) -> list[tuple[int, float]]:
    """Wall time for W workers: the serial part as measured, plus the chunk encodes re-planned
    for W workers (the planner makes more, shorter chunks for more workers) and scheduled
    longest-first, each chunk costing a fixed start-up plus a per-frame cost fitted from this
    run (chunks publish their own segments: no packaging pass at the end)."""

    secs = result["encode_seconds"]
    frames = result["chunk_frames"]
    xs = [frames[k] for k in secs]
    ys = [secs[k] for k in secs]
    if len(xs) >= 2 and max(xs) != min(xs):
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
        fixed = max(0.0, my - slope * mx)
    else:
        slope, fixed = (sum(ys) / sum(xs) if xs else 0.0), 0.0
    total_frames = sum(frames.values())
    out = []
    for w in (workers_measured, 4, 16, 64):
        target = target_chunk_seconds(duration, w, keyframe_seconds)
        n = max(1, int(round(duration / target)))
        per = [fixed + slope * (total_frames / n)] * n
        out.append((w, overhead_serial + lpt_makespan(per, w)))
    return out


# ---------------------------------------------------------------------------------------------


def ideal_run(source: Path, info, rungs: list[dict], work: Path, slots: int) -> dict:
    """The media work of the pipeline with no orchestration at all: the same split, the same
    chunk encodes (the encode task's own function, previews included) and the audio, on `slots`
    plain threads in this process - no Prefect, no Dask, no publishing. Its wall time is what
    any orchestration of this design could reach on this machine at best."""


    settings = get_settings()
    out = work / "ideal"
    out.mkdir(parents=True, exist_ok=True)
    t = time.monotonic()
    plan = split_source_fn(str(source), str(out), workers=slots, video_stream_index=info.video_stream_index,
                           avg_frame_rate=info.frame_rate_fraction)
    previews = preview_plan(plan["duration"], info.display_width, info.display_height)
    jobs = []
    if info.has_audio:
        jobs.append(lambda: encode_audio_fn(str(source), str(out / "hls"), tracks=audio_renditions(info.audio_tracks),
                                            t0=plan["t0"], duration=plan["duration"],
                                            segment_times=plan["segment_times"]))
    for c in plan["chunks"]:
        jobs.append(lambda c=c: encode_chunk_fn(
            c, source_url=str(source), rungs=rungs, out_url=str(out / "enc"), hls_url=str(out / "hls"),
            rotation=info.rotation, deinterlace=info.field_order,
            cfr=plan["cfr"], frame_rate=plan["frame_rate"], threads=max(1, (os.cpu_count() or 1) // slots),
            keyframe_seconds=settings.keyframe_seconds, previews=previews))
    with ThreadPoolExecutor(slots) as pool:
        for f in [pool.submit(j) for j in jobs]:
            f.result()
    wall = time.monotonic() - t
    shutil.rmtree(out, ignore_errors=True)
    return {"wall": wall, "chunks": len(plan["chunks"])}


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="vodflow bench transcode", description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", type=Path, help="use this file instead of a generated clip")
    ap.add_argument("--duration", type=float, default=60.0, help="generated clip length, s (60)")
    ap.add_argument("--size", default="1920x1080", help="generated clip size (1920x1080)")
    ap.add_argument("--rate", default="30", help="generated clip frame rate (30)")
    ap.add_argument("--workers", type=int, default=0, help="LocalCluster workers (0 = one per core)")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each side; medians are reported")
    ap.add_argument("--no-quality", action="store_true", help="skip the PSNR comparison")
    ap.add_argument("--no-ideal", action="store_true",
                    help="skip the run of the media work alone (split, chunk encodes, audio on plain threads)")
    ap.add_argument("--long-check", action="store_true", help="memory of the duration-bound steps on 2 h")
    ap.add_argument("--json", type=Path, help="write the figures here too")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (sources, outputs)")
    args = ap.parse_args(argv)


    work = Path(tempfile.mkdtemp(prefix="vodflow-bench-"))
    os.environ["VODFLOW_DATA_DIR"] = str(work / "var")
    for k in ("VODFLOW_STORAGE_URL", "VODFLOW_DATABASE_URL", "VODFLOW_DASK_ADDRESS"):
        os.environ.pop(k, None)

    reset_settings()
    settings = get_settings()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    print(f"machine: {cores} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB; "
          f"load average {os.getloadavg()[0]:.1f} (other work on this machine makes timings noisy)")

    if args.source:
        source = args.source.resolve()
    else:
        source = work / "source.mp4"
        t = time.monotonic()
        make_source(source, args.duration, args.size, args.rate)
        print(f"source: generated {args.duration:g} s {args.size}@{args.rate} H.264+AAC in {time.monotonic() - t:.1f} s")


    info = probe_path(source)
    rungs = [r.to_dict() for r in choose_ladder(info)]
    print(f"ladder: {', '.join(r['name'] + (' (HEVC)' if is_fmp4(r) else '') for r in rungs)}; "
          f"preset {rungs[0]['preset']}, CRF {rungs[0]['crf']} capped")

    # a Prefect server and a warm LocalCluster, as `vodflow up` keeps them
    server = None
    if not os.environ.get("PREFECT_API_URL"):
        # imported here: Prefect's server application takes seconds to import, needed only without one
        from prefect.server.api.server import SubprocessASGIServer

        server = SubprocessASGIServer()
        server.start()
        os.environ["PREFECT_API_URL"] = server.api_url

    cluster = start_local_cluster(args.workers or None)
    os.environ["VODFLOW_DASK_ADDRESS"] = cluster.scheduler_address
    reset_settings()

    with Client(cluster, set_as_default=False) as c:
        c.run(lambda: __import__("flows.ingest"))  # workers import the pipeline once, like a warm cluster
        n_workers = len(c.scheduler_info()["workers"])

    runs, base_runs, ideal_runs, hevc_runs = [], [], [], []
    last_result = None
    base_dir = None
    try:
        for rep in range(args.repeat):
            # baseline first on even runs, vodflow first on odd ones, so drift in the machine's
            # load does not always favour one side
            order = ["baseline", "vodflow"] if rep % 2 == 0 else ["vodflow", "baseline"]
            if not args.no_ideal:
                order.append("ideal")
            for side in order:
                if side == "ideal":
                    with TreeSampler() as s:
                        r = ideal_run(source, info, rungs, work, n_workers)
                    ideal_runs.append({**r, "cpu": s.used()})
                    print(f"  run {rep + 1}: media work alone {r['wall']:.1f} s")
                    h264 = [r for r in rungs if not is_fmp4(r)]
                    if len(h264) < len(rungs):
                        # the same without the HEVC rungs: what they cost
                        with TreeSampler() as s:
                            r = ideal_run(source, info, h264, work, n_workers)
                        hevc_runs.append({**r, "cpu": s.used()})
                        print(f"  run {rep + 1}: media work alone, H.264 rungs only {r['wall']:.1f} s")
                elif side == "vodflow":
                    tmp = work / f"in-{rep}{source.suffix}"
                    tmp.write_bytes(source.read_bytes())
                    vid = accept(tmp, filename=source.name, title="bench", info=info, dispatch=False)
                    with TreeSampler() as s:
                        t = time.monotonic()
                        result = ingest(vid)
                        wall = time.monotonic() - t
                    last_result = (vid, result)
                    iv = sorted((a, b) for _, _, a, b in result["intervals"])
                    covered, cur_a, cur_b = 0.0, None, None
                    for a, b in iv:
                        if cur_b is None or a > cur_b:
                            if cur_b is not None:
                                covered += cur_b - cur_a
                            cur_a, cur_b = a, b
                        else:
                            cur_b = max(cur_b, b)
                    if cur_b is not None:
                        covered += cur_b - cur_a
                    runs.append({"wall": wall, "cpu": s.used(), "cpu_by_kind": s.used_by_kind(), "peak": s.peak_rss, "peak_name": s.peak_name,
                                 "peaks": dict(s.peaks), "encoding": covered, "result": result})
                    print(f"  run {rep + 1}: vodflow {wall:.1f} s ({result['chunks']} chunks)")
                else:
                    base_dir = work / f"baseline-{rep}"
                    for r in rungs:
                        (base_dir / r["name"]).mkdir(parents=True, exist_ok=True)
                    cmd = baseline_command(source, rungs, base_dir, settings.keyframe_seconds,
                                           settings.segment_seconds, info.has_audio)
                    t = time.monotonic()
                    proc = subprocess.Popen(cmd)
                    with TreeSampler(proc.pid) as s:
                        proc.wait()
                    wall = time.monotonic() - t
                    if proc.returncode:
                        raise SystemExit(f"baseline ffmpeg failed ({proc.returncode}): {' '.join(cmd)}")
                    base_runs.append({"wall": wall, "cpu": s.used(), "peak": s.peak_rss})
                    print(f"  run {rep + 1}: baseline {wall:.1f} s")
    finally:
        pass
    v_wall = median([r["wall"] for r in runs])
    b_wall = median([r["wall"] for r in base_runs])
    v_cpu = median([r["cpu"] / (r["wall"] * cores) for r in runs])
    b_cpu = median([r["cpu"] / (r["wall"] * cores) for r in base_runs])
    v_enc = median([r["encoding"] for r in runs])
    overhead = v_wall - v_enc
    print()
    print("== wall time (median of %d) ==" % args.repeat)
    print(f"  baseline, one ffmpeg (-threads 0): {b_wall:7.2f} s   CPU use {100 * b_cpu:5.1f} % of {cores} cores")
    print(f"  vodflow, {n_workers} Dask workers:        {v_wall:7.2f} s   CPU use {100 * v_cpu:5.1f} % of {cores} cores")
    print("  vodflow CPU seconds by process: " + ", ".join(
        f"{k} {v:.1f}" for k, v in sorted(runs[-1]["cpu_by_kind"].items(), key=lambda kv: -kv[1])))
    print(f"  CPU seconds: baseline {median([r['cpu'] for r in base_runs]):.1f}, "
          f"vodflow {median([r['cpu'] for r in runs]):.1f}")
    enc_cpu = sum(v or 0 for v in runs[-1]["result"].get("encode_cpu_seconds", {}).values())
    print(f"  of which chunk encodes (ffmpeg): {enc_cpu:.1f} CPU s")
    print(f"  ratio vodflow / baseline: {v_wall / b_wall:.3f}   (goal <= 1.10, aim 1.00)")
    # what the goal asks of this machine: the chunk encodes alone, on every core without a gap,
    # against a baseline that already keeps b_cpu of the cores busy
    floor = enc_cpu / cores
    print(f"  floor on this machine: the chunk encodes alone ({enc_cpu:.1f} CPU s) on all {cores} cores "
          f"= {floor:.1f} s, ratio {floor / b_wall:.2f}; the baseline already keeps {b_cpu * cores:.2f} "
          f"of {cores} cores busy")
    if hevc_runs:
        h_wall, h_cpu = median([r["wall"] for r in hevc_runs]), median([r["cpu"] for r in hevc_runs])
        i_wall, i_cpu = median([r["wall"] for r in ideal_runs]), median([r["cpu"] for r in ideal_runs])
        print(f"  cost of the HEVC rungs ({', '.join(r['name'] for r in rungs if is_fmp4(r))}): media work alone "
              f"{i_wall:.2f} s / {i_cpu:.1f} CPU s with them, {h_wall:.2f} s / {h_cpu:.1f} CPU s with the H.264 "
              f"rungs only: x{i_cpu / max(h_cpu, 1e-6):.2f} the CPU of the H.264 ladder")
    if ideal_runs:
        i_wall = median([r["wall"] for r in ideal_runs])
        print(f"  media work alone (the same split, chunk encodes and audio on {n_workers} plain threads, no "
              f"Prefect, Dask or packaging): {i_wall:.2f} s, {median([r['cpu'] for r in ideal_runs]):.1f} CPU s, "
              f"ratio {i_wall / b_wall:.3f}: the best any orchestration of this design reaches here")
    print(f"  pipeline overhead (wall outside chunk+audio encodes): {overhead:.2f} s = "
          f"{100 * overhead / v_wall:.1f} % of vodflow's wall (goal <= 10 %)")
    print()
    print("== memory (peak RSS of any single process) ==")
    print(f"  vodflow: {max(r['peak'] for r in runs) / 2**20:.0f} MiB ({runs[-1]['peak_name']}); by kind: "
          + ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in sorted(runs[-1]["peaks"].items())))
    print(f"  baseline ffmpeg: {max(r['peak'] for r in base_runs) / 2**20:.0f} MiB")

    vid, result = last_result
    print()
    print("== tasks (last vodflow run) ==")
    tm = result["timings"]
    print("  flow phases: " + ", ".join(f"{k} {v:.2f} s" for k, v in tm.items()))
    for i, sec in sorted(result["encode_seconds"].items(), key=lambda kv: int(kv[0])):
        print(f"  encode chunk {int(i) + 1}/{result['chunks']}: {sec:6.2f} s ({result['chunk_frames'][i]} frames)")
    for kind, _, a, b in result["intervals"]:
        if kind == "audio":
            print(f"  audio: {b - a:6.2f} s")
    serial = tm.get("probe", 0) + tm.get("split", 0) + (v_wall - sum(tm.values()))
    print()
    print("== projected wall time (same per-frame cost, chunks re-planned for the worker count) ==")
    for w, t in project(result, v_wall, serial, info.duration, settings.keyframe_seconds, n_workers):
        print(f"  {w:3d} workers: {t:7.2f} s   speed-up vs baseline x{b_wall / t:5.2f}")

    quality = []
    if not args.no_quality:

        print()
        print("== quality parity per rung (PSNR vs the source scaled to the rung; sizes) ==")
        with session_scope() as s:
            v = get_video(s, vid)
            rends = {r.name: r for r in published_renditions(s, v)}
            rends = {k: (r.playlist_url, r.width, r.height) for k, r in rends.items()}
            audio = published_renditions(s, v, kind="audio")
            audio_bytes = sum(p.stat().st_size for p in rung_files(storage.local_path_of(audio[0].playlist_url))) \
                if audio else 0
        # vodflow stores the audio once, as its own rendition; the baseline (and vodflow before
        # it) muxed it into every rung: a rung is compared with its audio, the storage in total
        total_v, total_b = audio_bytes, 0
        for r in rungs:
            url, w, h = rends[r["name"]]
            v_segs = rung_files(storage.local_path_of(url))
            b_segs = rung_files(base_dir / r["name"] / "index.m3u8")
            pv, pb = psnr(v_segs, source, w, h), psnr(b_segs, source, w, h)
            sv, sb = sum(p.stat().st_size for p in v_segs) + audio_bytes, sum(p.stat().st_size for p in b_segs)
            total_v, total_b = total_v + sv - audio_bytes, total_b + sb
            quality.append({"rung": r["name"], "psnr_vodflow": pv, "psnr_baseline": pb, "size_vodflow": sv,
                            "size_baseline": sb})
            print(f"  {r['name']:>6}: PSNR {pv:6.2f} vs {pb:6.2f} dB ({pv - pb:+.2f}, goal within 0.3); "
                  f"size {sv / 2**20:7.2f} vs {sb / 2**20:7.2f} MiB ({100 * (sv / sb - 1):+.1f} %, goal within 5 %)")
        print(f"  storage: {total_v / 2**20:.2f} MiB with the audio stored once, against {total_b / 2**20:.2f} MiB "
              f"muxed into every rung: {(total_b - total_v) / 2**20:.2f} MiB ({100 * (1 - total_v / max(total_b, 1)):.1f} %) "
              "saved")

    long = None
    if args.long_check:
        long = long_check(source, work)

    if server is not None:
        server.stop()
    cluster.close()
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"outputs kept in {work}")
    if args.json:
        args.json.write_text(json.dumps({
            "baseline_wall": b_wall, "vodflow_wall": v_wall, "ratio": v_wall / b_wall, "overhead": overhead,
            "cpu_baseline": b_cpu, "cpu_vodflow": v_cpu, "quality": quality, "long": long,
            "runs": [{k: v for k, v in r.items() if k != "result"} for r in runs], "base_runs": base_runs,
            "ideal_runs": ideal_runs,
        }, indent=2, default=str))
    return 0


def long_check(source: Path, work: Path) -> dict:
    """Memory of the steps that grow with the duration, on a 2-hour 1080p source made by
    looping the clip with stream copy (seconds to build instead of an hour of encoding)."""


    long_src = work / "long.mp4"
    # memory here follows the number of packets, not the bit rate: a light 1080p30 clip
    # looped to 2 hours keeps the file at ~1-2 GB instead of tens
    seed = work / "long-seed.mp4"
    t = time.monotonic()
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=30:duration=30",
                    "-f", "lavfi", "-i", "sine=sample_rate=48000:duration=30", "-c:v", "libx264", "-preset",
                    "ultrafast", "-crf", "38", "-g", "60", "-bf", "2", "-pix_fmt", "yuv420p", "-c:a", "aac",
                    "-shortest", str(seed)], check=True)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-stream_loop", "239", "-i", str(seed), "-c", "copy",
                    "-t", "7200", str(long_src)], check=True)
    print()
    print(f"== 2-hour source ({long_src.stat().st_size / 2**30:.1f} GiB, built in {time.monotonic() - t:.0f} s) ==")
    me = psutil.Process()
    before = me.memory_info().rss
    peak = [before]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], me.memory_info().rss)
            for c in me.children(recursive=True):
                try:
                    peak.append(c.memory_info().rss)
                except psutil.NoSuchProcess:
                    pass
            stop.wait(0.1)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t = time.monotonic()
    info = probe_path(long_src)
    pk = read_packets(long_src)
    plan, _ = plan_split(pk, workers=2, keyframe_seconds=2, segment_seconds=6, avg_frame_rate=info.frame_rate_fraction)
    scan = time.monotonic() - t
    # the stream-copy split of the whole file into its chunks
    out = work / "long-chunks"
    out.mkdir()
    cuts = ",".join(str(int(round(c["start"] * float(eval(plan.frame_rate))))) for c in plan.chunks[1:])
    t = time.monotonic()
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(long_src), "-map", "0:v:0", "-c", "copy", "-f", "segment",
                    "-segment_format", "matroska", "-segment_frames", cuts, str(out / "c_%05d.mkv")], check=True)
    split_s = time.monotonic() - t
    stop.set()
    th.join()
    flow_peak = peak[0]
    child_peak = max(peak[1:]) if len(peak) > 1 else 0
    print(f"  packet scan + chunk plan of {plan.frames} frames into {len(plan.chunks)} chunks: {scan:.1f} s, "
          f"this process peaked at {flow_peak / 2**20:.0f} MiB (started at {before / 2**20:.0f} MiB)")
    print(f"  stream-copy split: {split_s:.1f} s; largest child process {child_peak / 2**20:.0f} MiB")
    print("  chunk encodes, audio (streamed by ffmpeg), packaging (one rung at a time, stream copy) and")
    print("  validation (streamed ffprobe rows) do not grow with the duration: chunks are at most "
          "30 s, whatever the source's length.")
    for p in out.iterdir():
        p.unlink()
    long_src.unlink()
    return {"frames": plan.frames, "chunks": len(plan.chunks), "flow_peak": flow_peak, "child_peak": child_peak}


if __name__ == "__main__":
    sys.exit(main())
