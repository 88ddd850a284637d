"""The fast lane: the lowest rung encoded in one continuous pass over the source, published chunk
by chunk while the chunk encodes make the rest of the ladder.

Why: on a cluster that encodes the whole ladder slower than real time, a viewer at 1x catches up
with the published edge of the chunk encodes and stalls. The lowest rung alone encodes several
times faster than real time, so one pass of it runs ahead of the viewer from its first segment
on, and it is never waiting behind the higher rungs' chunks in the queue. It costs a second
decode of the source and nothing else: the chunk encodes leave this rung out.

The pass is the chunk encode's own command (`tasks.encode.build_encode_command`) over one chunk
that spans the plan from a chunk boundary to the end (`whole_chunk`): same frame selection, same
forced keyframes, same segment cuts by frame number, same timeline. So its segments are the
segments a chunk encode would have made of this rung, numbered the same, and the per-chunk
checks are the chunk encode's (`tasks.validate.check_chunk_segments`). ffmpeg's segment list
says which segments are closed; each is checked, stored and reported to the flow (through the
Dask event log, which the flow publishes from) as soon as it is, and once every segment of a
chunk is stored the chunk's result is written beside them (`chunks/NNNNN.lane.json`, what a
resumed run skips). A segment already in storage (stored by an earlier try, perhaps published)
is kept, never replaced.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from config import storage
from config.settings import get_settings
from tasks import ffmpeg
from tasks.encode import build_encode_command, worker_threads
from tasks.package import SEGMENT_PATTERN, marker_url, segment_name
from tasks.retry import RETRY_OPTIONS, RunStopped, check_lease, report_progress
from tasks.split import _logger
from tasks.validate import check_chunk_segments

log = logging.getLogger(__name__)

LANE = "lane"  # the kind of its chunk results (`tasks.package.marker_url`)


def whole_chunk(chunks: list[dict]) -> dict:
    """The plan's chunks from `chunks[0]` to the last as one chunk, read in one pass from the
    source (exact seek to the first one's start, when it is not the video's start)."""
    first, last = chunks[0], chunks[-1]
    s = float(first["start"])
    keyframes: list[float] = []
    for c in chunks:
        if c is not first:
            keyframes.append(float(c["start"]) - s)  # a chunk start is a segment start
        keyframes += [float(c["start"]) - s + k for k in c.get("keyframes") or []]
    return {**first, "mode": "seek", "url": None, "end": last["end"], "source_end": last["source_end"],
            "frames": sum(int(c["frames"]) for c in chunks),
            "segment_frames": [int(f) for c in chunks for f in c["segment_frames"]],
            "keyframes": keyframes, "half_frame": min(float(c["half_frame"]) for c in chunks)}


def _planned_lane(plan_url: str) -> str | None:
    try:
        return (json.loads(storage.read_text(plan_url)).get("plan") or {}).get("lane")
    except (FileNotFoundError, ValueError):
        return None


def encode_lane_fn(chunks: list[dict], *, source_url: str, rung: dict, hls_url: str, rotation: int, cfr: bool,
                   frame_rate: str, keyframe_seconds: float, progress_key: str, lease_url: str | None = None,
                   deinterlace: str | None = None, threads: int | None = None, plan_url: str | None = None) -> dict:
    """Encode `rung` over `chunks` (consecutive, to the end of the plan) in one pass, storing and
    reporting each chunk's segments as soon as they are closed and checked. Returns {rung,
    results: {chunk index: result}, seconds, started_at, ended_at}. `plan_url`: the run's saved
    plan, read before each store: a flow that planned the video again (without a fast lane)
    may not get this pass's segments in its folder, and Dask cannot stop a running task."""
    settings = get_settings()
    logger = _logger()
    threads = threads or worker_threads()
    whole = whole_chunk(chunks)
    name = rung["name"]
    t_begin = time.monotonic()
    started_at = time.time()
    results: dict[int, dict] = {}
    pending = list(chunks)
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.work_dir, prefix="lane-") as tmp:
        out_dir = Path(tmp)
        seg_list = out_dir / "segments.csv"

        partial: list[dict] = []  # checks of the next chunk's segments stored so far

        def store_closed(fraction: float | None = None) -> None:
            closed = set(ffmpeg.closed_segments(seg_list))
            while pending:
                c = pending[0]
                first = int(c["first_segment"])
                names = [segment_name(first + k) for k in range(len(c["segment_frames"]))]
                stored = marker_url(hls_url, c["index"], LANE)
                if not partial and storage.exists(stored):
                    # a retry of this task: what the first try stored (and maybe published) stays
                    results[c["index"]] = json.loads(storage.read_text(stored))
                    pending.pop(0)
                    continue
                # each segment as soon as it is closed: checked, stored, reported
                while len(partial) < len(names) and names[len(partial)] in closed:
                    k = len(partial)
                    local = out_dir / names[k]
                    check = check_chunk_segments([str(local)], rung, [c["segment_frames"][k]], first_segment=first + k,
                                                 timeout=settings.probe_timeout)
                    if not check["ok"]:
                        raise ffmpeg.PermanentMediaError(
                            f"fast lane {name}: segment {first + k} failed its checks: " + "; ".join(check["reasons"]))
                    check_lease(lease_url)
                    if plan_url and _planned_lane(plan_url) != name:
                        raise RunStopped(f"fast lane {name}: the run was planned again; its output was dropped")
                    target = storage.join(hls_url, name, names[k])
                    if storage.exists(target):
                        # stored by an earlier try or attempt of this run, maybe published: it stays
                        check["sizes"] = [storage.size(target)]
                        local.unlink()
                    else:
                        storage.move_local_file(local, target)
                    partial.append(check)
                    report_progress(progress_key, fraction if fraction is not None else 0.0, segment=first + k,
                                    frames=check["frames"][0], size=check["sizes"][0], level=check.get("level"))
                if len(partial) < len(names):
                    return
                check = {**partial[0], "frames": [x["frames"][0] for x in partial],
                         "sizes": [x["sizes"][0] for x in partial]}
                result = {"index": c["index"], "frames": c["frames"], "start": c["start"], "end": c["end"],
                          "rungs": {name: check}, "lane": True}
                storage.write_text(stored, json.dumps(result))
                results[c["index"]] = result
                partial.clear()
                pending.pop(0)
                report_progress(progress_key, fraction if fraction is not None else 0.0, chunk=c["index"],
                                result=result)

        with storage.local_copy(source_url, settings.work_dir) as path:
            args = build_encode_command(
                whole, str(path), [rung], [str(out_dir / SEGMENT_PATTERN)], rotation=rotation, cfr=cfr,
                frame_rate=frame_rate, keyframe_seconds=keyframe_seconds, threads=threads, offset=0.0,
                seek=True, deinterlace=deinterlace, segment_list=str(seg_list))
            ffmpeg.run(args, timeout=settings.ffmpeg_timeout, what=f"fast lane {name}", on_progress=store_closed,
                       duration=max(float(whole["end"]) - float(whole["start"]), 0.001), cwd=out_dir)
        store_closed(1.0)
    if pending:
        raise ffmpeg.PermanentMediaError(
            f"fast lane {name}: ffmpeg ended before chunk {pending[0]['index'] + 1}/{pending[0]['count']} was "
            "complete")
    seconds = time.monotonic() - t_begin
    logger.info("fast lane %s: %d frames of %d chunks in %.2f s (%d threads)", name, whole["frames"], len(chunks),
                seconds, threads)
    return {"rung": name, "results": results, "seconds": seconds, "started_at": started_at,
            "ended_at": time.time()}


@task(name="fast lane", task_run_name="fast lane {label}", cache_policy=NO_CACHE, **RETRY_OPTIONS)
def encode_lane(chunks: list[dict], source_url: str, rung: dict, hls_url: str, rotation: int, cfr: bool,
                frame_rate: str, keyframe_seconds: float, progress_key: str, label: str = "",
                lease_url: str | None = None, deinterlace: str | None = None, plan_url: str | None = None) -> dict:
    return encode_lane_fn(chunks, source_url=source_url, rung=rung, hls_url=hls_url, rotation=rotation, cfr=cfr,
                          frame_rate=frame_rate, keyframe_seconds=keyframe_seconds, progress_key=progress_key,
                          lease_url=lease_url, deinterlace=deinterlace, plan_url=plan_url)
