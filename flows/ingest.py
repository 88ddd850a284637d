"""The ingest flow: probe → ladder → split by GOP → encode chunks × rungs on Dask (audio once,
in parallel) → publish each chunk as it lands → finish every rung by arithmetic → publish.

Tasks move only storage URLs and small dicts, so any Dask worker that can reach the storage
runs them. Only this flow touches the catalog, through the steps of `catalog/runs.py`: state
changes, progress (forward only), renditions. Output goes to a run folder
`hls/{video_id}/{run}/`; `flows/publish.py` lists what is in it for viewers chunk by chunk.
A re-dispatch after a crash carries the unfinished run on; a deliberate re-run starts a new run
and removes the leftovers of runs that never finished. The pieces: `flows/run.py` (the run as
one object, its lease), `flows/chunks.py` (the loop over the chunk encodes), `flows/publish.py`
(playlists, catalog rows, the resume files, the ladder report).

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
from prefect.artifacts import create_progress_artifact
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
from config import storage
from config.settings import get_settings, prefect_api_url
from flows import cluster
from flows.captions import import_source_captions
from flows.chunks import (P_ENCODED, P_SPLIT, ChunkFailed, Lane, Replan, encode_chunks, lane_rung, settle_audio,
                          submit_slices)
from flows.futures import Tracker, describe, settle
from flows.intake import video_fields
from flows.publish import (
    Publisher,
    drop_resume_files,
    ladder_artifact,
    resumable_run,
    resume_state,
    save_plan,
)
from flows.run import IngestRun
from tasks.audio import audio_renditions, encode_audio, skipped_note
from tasks.ffmpeg import MediaError
from tasks.ladder import choose_ladder
from tasks.probe import MediaInfo
from tasks.probe import probe as probe_source
from tasks.retry import RETRY_OPTIONS
from tasks.split import plan_source
from tasks.thumbnails import preview_plan, thumbnails_task

log = logging.getLogger(__name__)


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
    owner = str(ctx.flow_run.id) if ctx and ctx.flow_run else None
    run = new_run_id()
    t_start = time.monotonic()
    source_url, published, recovering = begin(video_id, run, owner)
    # a re-dispatch after a crash carries on the run that never finished, keeping every chunk
    # it stored; a deliberate reprocess (a READY, PARTIAL or FAILED video) starts clean
    resumed = resumable_run(video_id) if recovering else None
    if resumed:
        run = resumed
        published = None if resumed == published else published
        logger.info("video %s: carrying on run %s, which never finished", video_id, run)
    r = IngestRun(video_id, run, owner, source_url, published, resume=bool(resumed),
                  tracker=Tracker(video_id, owner=owner), logger=logger)
    removed = remove_stale_runs(video_id, run, {run} | ({published} if published else set()), owner=owner)
    if removed:
        logger.info("removed unfinished earlier runs: %s", ", ".join(removed))
    # every way out of this attempt removes its lease (see IngestRun.take_lease)
    r.take_lease()
    try:
        r.tracker.artifact_id = create_progress_artifact(
            progress=0.0, key=f"transcode-{video_id}", description=f"transcode of video {video_id}, run {run}")
    except Exception:  # noqa: BLE001
        r.tracker.artifact_id = None
    try:
        result = _transcode(r)
    except (ExternalSignal, KeyboardInterrupt, SystemExit):
        # the process is being stopped (Ctrl-C, a deploy, SIGTERM), not the video failing:
        # it stays PROCESSING, Prefect records the run as crashed, and maintenance dispatches
        # it again. This run's unpublished output goes now; maintenance would remove it later.
        r.tracker.cancel_all()
        try:
            if r.taken_over():
                pass  # a later attempt took the run's folder over: nothing here is this one's
            elif has_published(video_id, run):
                # what it published stays, and so does its scratch space (stream-copy slices,
                # previews): the re-dispatch carries this run on
                r.release()
            else:
                r.drop_unpublished()
        finally:
            logger.warning("video %s: this run was stopped from outside; maintenance will run it again",
                           video_id)
        raise
    except BaseException as exc:
        r.tracker.cancel_all()
        ended = _failed(r, exc)
        if ended is exc:
            raise
        raise ended from exc
    storage.delete(r.work_url)
    result["seconds"] = round(time.monotonic() - t_start, 3)
    result["timings"] = r.timings
    logger.info("video %s %s in %.1f s", video_id, result["status"], result["seconds"])
    return result


def _failed(r: IngestRun, exc: BaseException) -> BaseException:
    """The video's fate after `exc` ended the attempt (FAILED, or PARTIAL with what was
    published), its files tidied; returns what the flow raises."""
    if r.taken_over():
        # a later attempt carried this run on and took its folder: the files are its now
        taken = exc if isinstance(exc, Superseded) else Superseded(
            f"video {r.video_id}: a newer attempt carries run {r.run} on; this one stops "
            f"({type(exc).__name__}: {exc})")
        r.logger.warning("%s", taken)
        return taken
    message = exc.args[0] if isinstance(exc, IngestFailed) else (
        f"{describe(exc)}" if isinstance(exc, MediaError) else
        f"processing stopped by an internal error: {type(exc).__name__}: {exc}; "
        "re-run it with `python -m flows.ingest " + r.video_id + "` and report it if it repeats")
    superseded = exc if isinstance(exc, Superseded) else None
    try:
        if superseded is None:
            fail(r.video_id, message, published=r.published, owner=r.owner)
    except Superseded as taken:
        # a newer run removed this one's files (that is how it failed): not the video's fault
        superseded = taken
    finally:
        r.drop_unpublished()
    if superseded is not None:
        r.logger.warning("%s", superseded)
        return superseded
    r.logger.error("video %s FAILED: %s", r.video_id, message)
    return exc


def _transcode(r: IngestRun) -> dict:
    settings = get_settings()
    with r.timed("probe"):
        info = MediaInfo.from_dict(probe_task(r.source_url, r.video_id))
        save_probe(r.video_id, video_fields(info), owner=r.owner)
        rungs = ladder_task(info.to_dict(), r.video_id)
    r.logger.info("ladder for %dx%d %s: %s", info.display_width, info.display_height, info.video_codec,
                  ", ".join(f"{x['name']} {x['width']}x{x['height']} L{x['level']}" for x in rungs))
    r.tracker.set(2.0, "split")
    client = FlowRunContext.get().task_runner.client
    workers = cluster.slots(client)

    def split(timing: str | None) -> tuple[dict, object]:
        """The plan, saved, and the future of its stream-copy slices (being written)."""
        with r.timed("split"):
            plan = plan_source.submit(r.source_url, workers, info.video_stream_index, info.frame_rate_fraction,
                                      settings.keyframe_seconds, settings.segment_seconds, timing=timing).result()
        r.tracker.total_frames = plan["frames"]
        plan["lane"] = lane_rung(plan, rungs, settings)
        r.logger.info("%d chunks on %d worker slots; %d frames, %.3f s; timing from %s%s", len(plan["chunks"]),
                      workers, plan["frames"], plan["duration"],
                      "decoded frames" if plan["timing"] == "decoded" else "container timestamps",
                      f"; fast lane {plan['lane']}" if plan["lane"] else "")
        save_plan(r.hls_url, plan, rungs, settings)
        return plan, submit_slices(r, plan, info.video_stream_index)

    audio = audio_renditions(info.audio_tracks)

    def submit_audio(plan: dict):
        # audio first: it takes one slot for a short while, publishes its segments as it goes
        # and is far ahead of the video
        if not audio:
            return None
        with dask.annotate(priority=len(plan["chunks"]) + 2):
            return r.tracker.track(encode_audio.submit(
                r.source_url, r.hls_url, audio, plan["t0"], plan["duration"], plan["segment_times"],
                label=r.video_id, progress_key=f"{r.run}:audio", lease_url=r.lease_url))

    def publisher_for(plan: dict) -> Publisher:
        return Publisher(r.video_id, r.run, r.hls_url, rungs, plan, audio, info.frame_rate,
                         make_current=r.progressive, owner=r.owner, logger=r.logger, lane=plan.get("lane"))

    carried = resume_state(r.hls_url, rungs, settings) if r.resume else None
    done: dict[int, dict] = {}
    lane_done: dict[int, dict] = {}
    slices = None  # a resumed plan has its slices (or reads those chunks by exact seek)
    if carried is not None:
        plan, done, lane_done = carried
        r.tracker.total_frames = plan["frames"]
        r.logger.info("resuming: %d of %d chunks were stored by the earlier attempt; encoding the other %d",
                      len(done), len(plan["chunks"]), len(plan["chunks"]) - len(done))
        if plan.get("lane"):
            r.logger.info("resuming the fast lane of %s: %d of %d chunks were stored by the earlier attempt",
                          plan["lane"], len(lane_done), len(plan["chunks"]))
    else:
        if r.resume:
            # made for another ladder or other settings: start the run over
            withdraw_run(r.video_id, r.run, owner=r.owner)
            storage.delete(r.hls_url)
        plan, slices = split(None)
    r.tracker.set(P_SPLIT, "encode")
    audio_fut = submit_audio(plan)
    publisher = publisher_for(plan)
    lane = Lane.of(r, plan, rungs, info, settings, lane_done)
    previews = preview_plan(plan["duration"], info.display_width, info.display_height)

    fallbacks = [skipped_note(x) for x in info.audio_skipped]  # fallen back to, left out: for the report
    closed_early: str | None = None
    with r.timed("encode"):
        while True:  # once more, from decoded frames, if the container's timing gave wrong chunks
            try:
                encoded = encode_chunks(r, plan, client, publisher, done, dict(
                    source_url=r.source_url, rungs=[x for x in rungs if x["name"] != plan.get("lane")],
                    out_url=storage.join(r.work_url, "enc"),
                    hls_url=r.hls_url, rotation=info.rotation, cfr=plan["cfr"], frame_rate=plan["frame_rate"],
                    keyframe_seconds=settings.keyframe_seconds, previews=previews, lease_url=r.lease_url,
                    deinterlace=info.field_order), lane, audio_fut, slices)
                break
            except ChunkFailed as exc:
                if not publisher.published_anything:
                    raise
                # the viewer keeps what was published: the playlists close at the published
                # prefix (VOD + ENDLIST) and the video ends PARTIAL, saying which chunk failed
                closed_early = (f"{exc}; published the first {publisher.available_seconds:.1f} s of "
                                f"{plan['duration']:.1f} s")
                r.logger.error(closed_early)
                encoded = {i: v for i, v in exc.encoded.items() if i < publisher.prefix}
                break
            except Replan as exc:
                note = (f"{exc}: the container's timestamps cannot be trusted for this source; "
                        "planning the chunks again from the decoded frames")
                r.logger.warning(note)
                fallbacks.append(note)
                r.tracker.chunk_done.clear()
                # what was published on the old plan's frame numbers goes: the new plan renumbers them
                if audio_fut is not None:
                    audio_fut.wrapped_future.cancel()
                withdraw_run(r.video_id, r.run, owner=r.owner)
                storage.delete(r.hls_url)
                (plan, slices), done = split("decoded"), {}
                audio_fut = submit_audio(plan)
                publisher = publisher_for(plan)
                lane = Lane.of(r, plan, rungs, info, settings, {})
    chunks = plan["chunks"]
    chunk_modes = {i: v["mode"] for i, v in sorted(encoded.items())}
    seek_chunks = sum(1 for m in chunk_modes.values() if m != "copy")
    if seek_chunks:
        r.logger.warning("%d of %d chunks were not read from stream-copy slices: %s", seek_chunks, len(chunks),
                         ", ".join(f"{i + 1}: {m}" for i, m in chunk_modes.items()))
    fallbacks += [n for n in plan["notes"] if n not in fallbacks]
    if lane and lane.fallback:
        fallbacks.append(lane.fallback)

    intervals = [("encode", i, v["started_at"], v["ended_at"]) for i, v in sorted(encoded.items())]
    audio_note = settle_audio(r, client, audio_fut, publisher, intervals, info.audio_skipped)
    r.tracker.set(P_ENCODED, "publish")

    with r.timed("publish"):
        # sheets and poster from the previews the chunks stored (side task: never decides the video's fate)
        thumbs = r.tracker.track(thumbnails_task.submit(
            [p for _, v in sorted(encoded.items()) for p in v.get("previews", [])], r.hls_url, previews,
            label=r.video_id, lease_url=r.lease_url))
        results = publisher.finish(closed_early=closed_early)
        order = [x["name"] for x in rungs]
        for name in order:
            if results[name]["ok"]:
                r.logger.info("published %s", name)
            else:
                r.logger.error("rung %s failed: %s", name, results[name]["reason"])
                storage.delete(storage.join(r.hls_url, name))
    ok, value = settle(client, thumbs)
    if not ok:
        r.logger.warning("side task thumbnails failed: %s", describe(value))
    else:
        save_thumbnails(r.video_id, value, owner=r.owner)

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
    finish(r.video_id, r.run, status, "; ".join(messages) or None, switch_from=r.published, owner=r.owner)
    drop_resume_files(r.hls_url)
    r.tracker.owner = None  # done: a re-dispatch from here on must not fail this finished run
    if r.published and r.published != r.run:
        storage.delete(storage.url_for("hls", r.video_id, r.published))
    try:
        # captions and chapters of the source, and every caption aligned to this run's timing;
        # never a reason to fail a published video
        text_tracks = import_source_captions(r.video_id, r.source_url, info)
        for skipped in text_tracks.get("skipped", []):
            r.logger.warning("subtitle stream %s (%s) not imported: %s", skipped.get("stream"),
                             skipped.get("codec"), skipped.get("reason"))
    except Exception as exc:  # noqa: BLE001
        r.logger.warning("captions and chapters of video %s were not imported: %s", r.video_id, describe(exc))
    r.tracker.set(100.0)
    ladder_artifact(r.video_id, r.run, rungs, publisher.summary(), results, status,
                    timing=plan["timing"], chunk_modes=chunk_modes, fallbacks=fallbacks)
    return {"video_id": r.video_id, "run": r.run, "status": status.value, "renditions": good, "failed": bad,
            "chunks": len(chunks), "seek_chunks": seek_chunks,
            "resumed_chunks": sum(1 for v in encoded.values() if v.get("resumed")),
            "encoded_chunks": sum(1 for v in encoded.values() if not v.get("resumed")), "timing": plan["timing"],
            "chunk_modes": chunk_modes, "fallbacks": fallbacks,
            "lane": {"rung": lane.name, "resumed_chunks": lane.resumed, "fallback": lane.fallback} if lane else None,
            "encode_seconds": {i: round(v["seconds"], 3) for i, v in encoded.items()},
            "encode_cpu_seconds": {i: v.get("cpu_seconds") for i, v in encoded.items()},
            "chunk_frames": {c["index"]: c["frames"] for c in chunks}, "intervals": intervals}


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
