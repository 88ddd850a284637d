"""The ingest flow: probe → ladder → split by GOP → encode chunks × rungs on Dask (audio once,
in parallel) → package each rung → validate → publish, lowest rung first.

Tasks move only storage URLs and small dicts, so any Dask worker that can reach the storage
runs them. Only this flow touches the catalog, through the steps of `catalog/runs.py`: state
changes, progress (forward only), renditions. Output goes to a new run folder `hls/{video_id}/{run}/`; a rung
becomes visible when its Rendition row is READY and the video's `current_run` points at its
run. Re-running the flow for a video (after a crash, or to reprocess) starts a new run and
removes the leftovers of runs that never finished.

Run one by hand with `python -m flows.ingest VIDEO_ID`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time

import dask
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.exceptions import ExternalSignal
from prefect.settings import PREFECT_API_URL, temporary_settings

from catalog.models import VideoStatus
from catalog.runs import (  # noqa: F401 - IngestFailed and Superseded are this flow's outcomes too
    IngestFailed,
    Superseded,
    begin,
    fail,
    finish,
    has_published,
    new_run_id,
    withdraw_run,
    remove_stale_runs,
    save_probe,
    save_thumbnails,
)
from config import links, storage
from config.settings import get_settings, prefect_api_url
from flows import cluster
from flows.captions import import_source_captions
from flows.futures import Tracker, describe, outcome, wait_any
from flows.publish import Publisher, drop_resume_files, resumable_run, resume_state, save_plan
from flows.intake import video_fields
from tasks.audio import encode_audio
from tasks.encode import encode_chunk
from tasks.ffmpeg import MediaError
from tasks.ladder import choose_ladder
from tasks.package import AUDIO_RENDITION
from tasks.probe import MediaInfo
from tasks.probe import probe as probe_source
from tasks.retry import RETRY_OPTIONS, is_permanent
from tasks.split import split_source
from tasks.thumbnails import preview_plan, thumbnails_task

log = logging.getLogger(__name__)

# how many times the flow itself resubmits a chunk whose task failed for a transient reason
# after Prefect's own retries (a worker that died takes the task run with it)
FLOW_RESUBMITS = 2
# an attempt's lease file in its run's scratch space: lease-<flow run id>
LEASE_PREFIX = "lease-"
# progress bands (percent): probe+split, then encode and publish chunk by chunk
P_SPLIT, P_ENCODED = 5.0, 98.0


def _logger():
    try:
        return get_run_logger()
    except Exception:  # noqa: BLE001
        return log


# ---------------------------------------------------------------------------------------------
# in-process tasks (cheap: no reason to ship them to a worker)


@task(name="probe", task_run_name="probe {video_id}", cache_policy=NO_CACHE, **RETRY_OPTIONS)
def probe_task(source_url: str, video_id: str) -> dict:
    return probe_source(source_url).to_dict()


@task(name="ladder", task_run_name="ladder {video_id}", cache_policy=NO_CACHE)
def ladder_task(info: dict, video_id: str) -> list[dict]:
    return [r.to_dict() for r in choose_ladder(MediaInfo.from_dict(info))]


# ---------------------------------------------------------------------------------------------
# the flow


@flow(name="ingest", flow_run_name="ingest {video_id}", task_runner=cluster.task_runner(), log_prints=False)
def ingest(video_id: str) -> dict:
    """Transcode one stored video into an HLS ladder and publish it. Idempotent per video:
    every run writes a new run folder and removes unfinished earlier ones."""
    logger = _logger()
    ctx = FlowRunContext.get()
    flow_run_id = str(ctx.flow_run.id) if ctx and ctx.flow_run else None
    run = new_run_id()
    t_start = time.monotonic()
    source_url, published, recovering = begin(video_id, run, flow_run_id)
    # a re-dispatch after a crash carries on the run that never finished, keeping every chunk
    # it stored; a deliberate reprocess (a READY, PARTIAL or FAILED video) starts clean
    resumed = resumable_run(video_id, published) if recovering else None
    if resumed:
        run = resumed
        logger.info("video %s: carrying on run %s, which never finished", video_id, run)
    keep = {run} | ({published} if published else set())
    removed = remove_stale_runs(video_id, run, keep, owner=flow_run_id)
    if removed:
        logger.info("removed unfinished earlier runs: %s", ", ".join(removed))
    # a video already playing keeps its published run until this one is complete
    progressive = published is None
    work_url = storage.url_for("scratch", video_id, run)
    hls_url = storage.url_for("hls", video_id, run)
    tracker = Tracker(video_id, owner=flow_run_id)
    # this attempt's lease: its tasks store output only while it exists (see
    # tasks.retry.check_lease); every way out of the attempt removes it. A run carried on takes
    # the folder over: the earlier attempt's lease goes, so whatever of that attempt is still
    # running stops storing, and leaves the folder to this one when it ends.
    lease_url = _take_lease(work_url, flow_run_id or run)
    try:
        tracker.artifact_id = create_progress_artifact(progress=0.0, key=f"transcode-{video_id}",
                                                       description=f"transcode of video {video_id}, run {run}")
    except Exception:  # noqa: BLE001
        tracker.artifact_id = None
    timings: dict[str, float] = {}
    try:
        result = _transcode(video_id, run, source_url, work_url, hls_url, tracker, timings, progressive,
                            published, logger, lease_url, resume=bool(resumed))
    except (ExternalSignal, KeyboardInterrupt, SystemExit):
        # the process is being stopped (Ctrl-C, a deploy, SIGTERM), not the video failing:
        # it stays PROCESSING, Prefect records the run as crashed, and maintenance dispatches
        # it again. This run's unpublished output goes now; maintenance would remove it later.
        tracker.cancel_all()
        try:
            if _taken_over(work_url, lease_url):
                pass  # a later attempt took the run's folder over: nothing here is this one's
            elif has_published(video_id, run):
                # what it published stays, and so does its scratch space (stream-copy slices,
                # previews): the re-dispatch carries this run on. Only the lease goes, so no
                # task of this attempt stores anything more.
                storage.delete(lease_url)
            else:
                _drop_unpublished(video_id, run, work_url, hls_url)
        finally:
            logger.warning("video %s: this run was stopped from outside; maintenance will run it again",
                           video_id)
        raise
    except BaseException as exc:
        tracker.cancel_all()
        if _taken_over(work_url, lease_url):
            # a later attempt carried this run on and took its folder: the files are its now
            exc = exc if isinstance(exc, Superseded) else Superseded(
                f"video {video_id}: a newer attempt carries run {run} on; this one stops "
                f"({type(exc).__name__}: {exc})")
            logger.warning("%s", exc)
            raise exc
        message = exc.args[0] if isinstance(exc, IngestFailed) else (
            f"{describe(exc)}" if isinstance(exc, MediaError) else
            f"processing stopped by an internal error: {type(exc).__name__}: {exc}; "
            "re-run it with `python -m flows.ingest " + video_id + "` and report it if it repeats")
        superseded = exc if isinstance(exc, Superseded) else None
        try:
            if superseded is None:
                fail(video_id, message, published=published, owner=flow_run_id)
        except Superseded as taken:
            # a newer run removed this one's files (that is how it failed): not the video's fault
            superseded = taken
        finally:
            _drop_unpublished(video_id, run, work_url, hls_url)
        if superseded is not None:
            logger.warning("%s", superseded)
            if superseded is exc:
                raise
            raise superseded from exc
        logger.error("video %s FAILED: %s", video_id, message)
        raise
    storage.delete(work_url)
    result["seconds"] = round(time.monotonic() - t_start, 3)
    result["timings"] = timings
    logger.info("video %s %s in %.1f s", video_id, result["status"], result["seconds"])
    return result


def _take_lease(work_url: str, holder: str) -> str:
    """Write this attempt's lease in the run's scratch space, removing any earlier attempt's."""
    for entry in storage.list_dir(work_url):
        if entry["name"].startswith(LEASE_PREFIX):
            storage.delete(entry["url"])
    lease_url = storage.join(work_url, LEASE_PREFIX + holder)
    storage.write_text(lease_url, holder)
    return lease_url


def _taken_over(work_url: str, lease_url: str) -> bool:
    """Did a later attempt take this run's folder over (its lease replaced this one's)?"""
    if storage.exists(lease_url):
        return False
    return any(e["name"].startswith(LEASE_PREFIX) for e in storage.list_dir(work_url))


def _drop_unpublished(video_id: str, run: str, work_url: str, hls_url: str) -> None:
    """A run that ends early removes its scratch space (and its lease with it) and its HLS
    folder unless a rendition of it was published."""
    storage.delete(work_url)
    if not has_published(video_id, run):
        storage.delete(hls_url)


def _transcode(video_id, run, source_url, work_url, hls_url, tracker, timings, progressive, published,
               logger, lease_url, resume: bool = False) -> dict:
    settings = get_settings()
    t = time.monotonic()
    info = MediaInfo.from_dict(probe_task(source_url, video_id))
    save_probe(video_id, video_fields(info), owner=tracker.owner)
    rungs = ladder_task(info.to_dict(), video_id)
    timings["probe"] = time.monotonic() - t
    logger.info("ladder for %dx%d %s: %s", info.display_width, info.display_height, info.video_codec,
                ", ".join(f"{r['name']} {r['width']}x{r['height']} L{r['level']}" for r in rungs))
    tracker.set(2.0, "split")
    ctx = FlowRunContext.get()
    client = ctx.task_runner.client
    workers = cluster.slots(client)

    def split(timing: str | None) -> dict:
        t = time.monotonic()
        plan = split_source.submit(source_url, work_url, workers, info.video_stream_index,
                                   info.frame_rate_fraction, settings.keyframe_seconds,
                                   settings.segment_seconds, timing=timing).result()
        timings["split"] = timings.get("split", 0.0) + time.monotonic() - t
        tracker.total_frames = plan["frames"]
        logger.info("%d chunks on %d worker slots; %d frames, %.3f s; timing from %s", len(plan["chunks"]),
                    workers, plan["frames"], plan["duration"],
                    "decoded frames" if plan["timing"] == "decoded" else "container timestamps")
        return plan

    def submit_audio(plan: dict):
        # audio first: it takes one slot for a short while, publishes its segments as it goes
        # and is far ahead of the video
        if not info.has_audio:
            return None
        with dask.annotate(priority=len(plan["chunks"]) + 1):
            return tracker.track(encode_audio.submit(
                source_url, storage.join(hls_url, AUDIO_RENDITION), info.audio_stream_index, plan["t0"],
                plan["duration"], info.audio_channels, plan["segment_times"], label=video_id,
                progress_key=f"{run}:audio", lease_url=lease_url))

    def publisher_for(plan: dict) -> Publisher:
        return Publisher(video_id, run, hls_url, rungs, plan, info.has_audio, info.frame_rate,
                         make_current=progressive, owner=tracker.owner, logger=logger)

    carried = resume_state(hls_url, rungs, settings) if resume else None
    done: dict[int, dict] = {}
    if carried is not None:
        plan, done = carried
        tracker.total_frames = plan["frames"]
        logger.info("resuming: %d of %d chunks were stored by the earlier attempt; encoding the other %d",
                    len(done), len(plan["chunks"]), len(plan["chunks"]) - len(done))
    else:
        if resume:
            # made for another ladder or other settings: start the run over
            withdraw_run(video_id, run, owner=tracker.owner)
            storage.delete(hls_url)
        plan = split(None)
        save_plan(hls_url, plan, rungs, settings)
    tracker.set(P_SPLIT, "encode")
    audio_fut = submit_audio(plan)
    publisher = publisher_for(plan)
    previews = preview_plan(plan["duration"], info.display_width, info.display_height)

    t = time.monotonic()
    fallbacks: list[str] = []  # what the run had to fall back to, for the result and the artifact
    closed_early: str | None = None
    while True:  # once more, from decoded frames, if the container's timing gave wrong chunks
        chunks = plan["chunks"]
        try:
            encoded = _encode_chunks(plan, run, client, tracker, logger, publisher, done, dict(
                source_url=source_url, rungs=rungs, out_url=storage.join(work_url, "enc"), hls_url=hls_url,
                rotation=info.rotation, cfr=plan["cfr"], frame_rate=plan["frame_rate"],
                keyframe_seconds=settings.keyframe_seconds, previews=previews, lease_url=lease_url,
                deinterlace=info.field_order))
            break
        except ChunkFailed as exc:
            if not publisher.segments:
                raise
            # the viewer keeps what was published: the playlists close at the published prefix
            # (VOD + ENDLIST) and the video ends PARTIAL, saying which chunk failed and why
            closed_early = (f"{exc}; published the first {publisher.available_seconds:.1f} s of "
                            f"{plan['duration']:.1f} s")
            logger.error(closed_early)
            encoded = {i: r for i, r in exc.encoded.items() if i < publisher.prefix}
            break
        except _Replan as exc:
            note = (f"{exc}: the container's timestamps cannot be trusted for this source; "
                    "planning the chunks again from the decoded frames")
            logger.warning(note)
            fallbacks.append(note)
            tracker.chunk_done.clear()
            # what was published on the old plan's frame numbers goes: the new plan renumbers them
            if audio_fut is not None:
                audio_fut.wrapped_future.cancel()
            withdraw_run(video_id, run, owner=tracker.owner)
            storage.delete(hls_url)
            plan = split("decoded")
            save_plan(hls_url, plan, rungs, settings)
            done = {}
            audio_fut = submit_audio(plan)
            publisher = publisher_for(plan)
    timings["encode"] = time.monotonic() - t
    chunk_modes = {i: r["mode"] for i, r in sorted(encoded.items())}
    seek_chunks = sum(1 for m in chunk_modes.values() if m != "copy")
    if seek_chunks:
        logger.warning("%d of %d chunks were not read from stream-copy slices: %s", seek_chunks, len(chunks),
                       ", ".join(f"{i + 1}: {m}" for i, m in chunk_modes.items()))
    fallbacks += [n for n in plan["notes"] if n not in fallbacks]

    intervals = [("encode", i, r["started_at"], r["ended_at"]) for i, r in sorted(encoded.items())]
    audio_note = _settle_audio(client, audio_fut, publisher, intervals, logger)
    tracker.set(P_ENCODED, "publish")

    t = time.monotonic()
    # sheets and poster from the previews the chunks stored (side task: never decides the video's fate)
    thumbs = tracker.track(thumbnails_task.submit(
        [p for _, r in sorted(encoded.items()) for p in r.get("previews", [])], hls_url, previews,
        label=video_id, lease_url=lease_url))
    results = publisher.finish(closed_early=closed_early)
    order = [r["name"] for r in rungs]
    for name in order:
        if results[name]["ok"]:
            logger.info("published %s", name)
        else:
            logger.error("rung %s failed: %s", name, results[name]["reason"])
            storage.delete(storage.join(hls_url, name))
    timings["publish"] = time.monotonic() - t
    wait_any(client, [thumbs.wrapped_future], timeout=None)
    ok, value = outcome(thumbs)
    if not ok:
        logger.warning("side task thumbnails failed: %s", describe(value))
    else:
        save_thumbnails(video_id, value, owner=tracker.owner)

    good = [n for n in order if results[n]["ok"]]
    bad = [n for n in order if not results[n]["ok"]]
    if not good:
        reasons = "; ".join(f"{n}: {results[n]['reason']}" for n in bad)
        raise IngestFailed(f"no rendition passed validation ({reasons}); the source may be damaged - "
                           "re-export it and upload again")
    messages = [f"{n} failed: {results[n]['reason']}" for n in bad]
    if closed_early:
        messages.insert(0, closed_early)
    if audio_note:
        messages.append(audio_note)
    status = VideoStatus.PARTIAL if messages else VideoStatus.READY
    finish(video_id, run, status, "; ".join(messages) or None, switch_from=published, owner=tracker.owner)
    drop_resume_files(hls_url)
    tracker.owner = None  # done: a re-dispatch from here on must not fail this finished run
    if published and published != run:
        storage.delete(storage.url_for("hls", video_id, published))
    try:
        # captions and chapters of the source, and every caption aligned to this run's timing;
        # never a reason to fail a published video
        text_tracks = import_source_captions(video_id, source_url, info)
        for skipped in text_tracks.get("skipped", []):
            logger.warning("subtitle stream %s (%s) not imported: %s", skipped.get("stream"),
                           skipped.get("codec"), skipped.get("reason"))
    except Exception as exc:  # noqa: BLE001
        logger.warning("captions and chapters of video %s were not imported: %s", video_id, describe(exc))
    tracker.set(100.0)
    _ladder_artifact(video_id, run, rungs, publisher.summary(), results, status,
                     timing=plan["timing"], chunk_modes=chunk_modes, fallbacks=fallbacks)
    return {"video_id": video_id, "run": run, "status": status.value, "renditions": good, "failed": bad,
            "chunks": len(chunks), "seek_chunks": seek_chunks,
            "resumed_chunks": sum(1 for r in encoded.values() if r.get("resumed")),
            "encoded_chunks": sum(1 for r in encoded.values() if not r.get("resumed")), "timing": plan["timing"],
            "chunk_modes": chunk_modes, "fallbacks": fallbacks,
            "encode_seconds": {i: round(r["seconds"], 3) for i, r in encoded.items()},
            "encode_cpu_seconds": {i: r.get("cpu_seconds") for i, r in encoded.items()},
            "chunk_frames": {c["index"]: c["frames"] for c in chunks}, "intervals": intervals}


def _settle_audio(client, audio_fut, publisher: Publisher, intervals: list, logger) -> str | None:
    """Wait for the audio rendition (long done in most runs: audio encodes far faster than video);
    a video whose sound cannot be encoded is still worth watching: say so and publish it silent."""
    if audio_fut is None:
        return None
    wait_any(client, [audio_fut.wrapped_future], timeout=None)
    ok, value = outcome(audio_fut)
    if ok:
        publisher.audio_done(value)
        intervals.append(("audio", 0, value["started_at"], value["ended_at"]))
        return None
    note = f"the audio track could not be encoded ({describe(value)}); published without sound"
    logger.warning(note)
    publisher.audio_done(None, failure=note)
    return note


class _Replan(Exception):
    """A chunk read by the container's timestamps came out wrong in every mode."""


def _encode_chunks(plan, run, client, tracker, logger, publisher: Publisher, done: dict[int, dict],
                   encode_kwargs) -> dict[int, dict]:
    """Encode every chunk of the plan on the cluster, earliest first, and publish each as it
    lands (the publisher keeps the playlists a contiguous prefix); resubmit transient failures.
    Audio segments the audio task reports are published along the way. `done`: chunks an
    earlier attempt of this run stored, published again from their results, not encoded."""
    chunks = plan["chunks"]

    def submit_chunk(c: dict):
        # earlier chunks first: Dask runs higher priorities first, so the playable prefix grows
        # steadily instead of in whatever order the workers pick
        with dask.annotate(priority=len(chunks) - c["index"]):
            return tracker.track(encode_chunk.submit(c, label=f"{c['index'] + 1}/{c['count']}",
                                                     progress_key=f"{run}:chunk:{c['index']}", **encode_kwargs))

    encoded: dict[int, dict] = {}
    for idx, value in sorted(done.items()):
        encoded[idx] = {**value, "resumed": True}
        tracker.chunk_done[idx] = 1.0
        publisher.chunk_done(idx, value)
    pending = {c["index"]: submit_chunk(c) for c in chunks if c["index"] not in done}
    resubmits = {c["index"]: 0 for c in chunks}
    while pending:
        wait_any(client, [f.wrapped_future for f in pending.values()])
        audio_segments = tracker.poll_events(client, run)
        if audio_segments:
            publisher.audio_progress(audio_segments)
        for idx, fut in list(pending.items()):
            if not fut.wrapped_future.done():
                continue
            ok, value = outcome(fut)
            del pending[idx]
            if ok:
                encoded[idx] = value
                tracker.chunk_done[idx] = 1.0
                publisher.chunk_done(idx, value)
                continue
            label = f"chunk {idx + 1}/{len(chunks)}"
            where = f"{chunks[idx]['start']:.3f}-{chunks[idx]['end']:.3f} s"
            if is_permanent(value):
                for other in pending.values():
                    other.wrapped_future.cancel()
                if getattr(value, "replan", False) and plan.get("timing") != "decoded":
                    raise _Replan(str(value))
                raise ChunkFailed(f"{label} ({where}) cannot be encoded: {describe(value)}", encoded)
            if resubmits[idx] >= FLOW_RESUBMITS:
                for other in pending.values():
                    other.wrapped_future.cancel()
                raise ChunkFailed(f"{label} ({where}) failed {resubmits[idx] + 1} times, last: {describe(value)}; "
                                  "check the workers (disk space, memory) and re-run the ingest", encoded)
            resubmits[idx] += 1
            logger.warning("%s failed (%s); resubmitting it (%d/%d)", label, describe(value),
                           resubmits[idx], FLOW_RESUBMITS)
            pending[idx] = submit_chunk(chunks[idx])
        tracker.set(P_SPLIT + (P_ENCODED - P_SPLIT) * tracker.encode_fraction(chunks))
    return encoded


class ChunkFailed(IngestFailed):
    """A chunk failed for good: the run ends with what was published before it."""

    def __init__(self, message: str, encoded: dict | None = None):
        super().__init__(message)
        self.encoded = encoded or {}


def _ladder_artifact(video_id, run, rungs, packaged, results, status, *, timing="container",
                     chunk_modes=None, fallbacks=()) -> None:
    watch = links.watch_url(video_id)
    modes = {}
    for m in (chunk_modes or {}).values():
        modes[m] = modes.get(m, 0) + 1
    how = (f"Timing from {'decoded frames' if timing == 'decoded' else 'container timestamps'}; "
           f"{len(chunk_modes or {})} chunks: " + ", ".join(f"{k} {v}" for k, v in modes.items()))
    lines = [f"## Video `{video_id}`: {status.value}", "", f"Run `{run}` · [watch it]({watch})", "", how, "",
             *[f"- {f}" for f in fallbacks], *([""] if fallbacks else []),
             "| rung | resolution | level | peak kb/s | average kb/s | codecs | segments | status |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rungs:
        p = packaged.get(r["name"], {})
        res = results.get(r["name"], {})
        state = "published" if res.get("ok") else f"failed: {res.get('reason', '')[:120]}"
        lines.append(f"| {r['name']} | {r['width']}x{r['height']} | {r['level']} | "
                     f"{p.get('bandwidth', 0) / 1000:.0f} | {p.get('average_bandwidth', 0) / 1000:.0f} | "
                     f"{p.get('codecs', '')} | {p.get('segments', 0)} | {state} |")
    try:
        create_markdown_artifact(markdown="\n".join(lines), key=f"ladder-{video_id}",
                                 description=f"ladder of video {video_id}")
    except Exception:  # noqa: BLE001
        log.debug("markdown artifact failed", exc_info=True)


def main(argv: list[str] | None = None) -> int:
    """`python -m flows.ingest VIDEO_ID`: run one ingest in this process (what dispatch does
    when no deployment is served). Exit 0 when READY or PARTIAL, 1 when FAILED."""
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        print("usage: python -m flows.ingest VIDEO_ID", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings_ctx = contextlib.nullcontext()
    if not prefect_api_url():
        # without an API every Dask worker would start its own temporary Prefect server:
        # start one here and point this process and the workers (through the env) at it
        # (imported here: Prefect's server application is heavy and rarely needed)
        from prefect.server.api.server import SubprocessASGIServer

        server = SubprocessASGIServer()
        server.start()
        os.environ["PREFECT_API_URL"] = server.api_url
        settings_ctx = temporary_settings(updates={PREFECT_API_URL: server.api_url})
    try:
        with settings_ctx:
            ingest(args[0])
    except Exception as exc:  # noqa: BLE001
        print(f"ingest {args[0]} failed: {exc}", file=sys.stderr)
        return 1
    # the temporary server stops itself at exit, after Prefect has shipped the run's logs
    # and events (stopping it here first leaves those retrying a closed port for a minute)
    return 0


if __name__ == "__main__":
    sys.exit(main())
