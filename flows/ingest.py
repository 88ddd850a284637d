"""The ingest flow: probe → ladder → split by GOP → encode chunks × rungs on Dask (audio once,
in parallel) → package each rung → validate → publish, lowest rung first.

Tasks move only storage URLs and small dicts, so any Dask worker that can reach the storage
runs them. This flow is the only place that touches the catalog: state changes, progress
(forward only), renditions. Output goes to a new run folder `hls/{video_id}/{run}/`; a rung
becomes visible when its Rendition row is READY and the video's `current_run` points at its
run. Re-running the flow for a video (after a crash, or to reprocess) starts a new run and
removes the leftovers of runs that never finished.

Run one by hand with `python -m flows.ingest VIDEO_ID`.
"""

from __future__ import annotations

import logging
import re
import secrets
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import distributed
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.exceptions import ExternalSignal
from sqlalchemy import delete as sql_delete
from sqlalchemy import select, update

from catalog.db import session_scope
from catalog.models import Rendition, RenditionStatus, Video, VideoStatus
from catalog.state import get_video, set_progress, transition
from config import links, storage
from config.settings import get_settings, prefect_api_url
from flows import cluster
from tasks.audio import encode_audio
from tasks.encode import encode_chunk
from tasks.ffmpeg import MediaError
from tasks.ladder import choose_ladder
from tasks.package import package_rung
from tasks.probe import MediaInfo
from tasks.probe import probe as probe_source
from tasks.retry import PROGRESS_TOPIC, RETRY_OPTIONS, is_permanent
from tasks.split import split_source
from tasks.thumbnails import preview_plan, thumbnails_task
from tasks.validate import validate_rung

log = logging.getLogger(__name__)

# how many times the flow itself resubmits a chunk whose task failed for a transient reason
# after Prefect's own retries (a worker that died takes the task run with it)
FLOW_RESUBMITS = 2
POLL_SECONDS = 0.5
REPROCESSABLE = {VideoStatus.UPLOADED, VideoStatus.PROCESSING, VideoStatus.READY, VideoStatus.PARTIAL,
                 VideoStatus.FAILED}
# progress bands (percent): probe+split, encode, package+validate
P_SPLIT, P_ENCODED, P_PACKAGED = 5.0, 90.0, 99.0


class IngestFailed(RuntimeError):
    """The video could not be transcoded; the message says why and what to do."""


class Superseded(RuntimeError):
    """A newer run of the same video took it over (a re-dispatch while this one was still
    alive): this run stops without touching the video, whose state is the newer run's."""


def _owned(s, video_id: str, owner: str | None):
    """The video row, locked, if run `owner` (a flow run id) still holds it; else Superseded.
    A run holds the video from `begin` until another dispatch or run records its own id."""
    if owner is not None:
        # take the write lock before reading: SQLite starts a transaction only at the first
        # write, and the check must hold until this session commits (a row lock on PostgreSQL)
        s.execute(update(Video).where(Video.id == video_id).values(flow_run_id=Video.flow_run_id))
    v = get_video(s, video_id, lock=True)
    if owner is not None and v.flow_run_id is not None and v.flow_run_id != owner:
        raise Superseded(f"video {video_id} was handed to flow run {v.flow_run_id}; this run "
                         f"({owner}) stops and leaves the video to it")
    return v


def new_run_id() -> str:
    return "r" + datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S") + secrets.token_hex(2)


def _logger():
    try:
        return get_run_logger()
    except Exception:  # noqa: BLE001
        return log


# ---------------------------------------------------------------------------------------------
# catalog steps (flow side only)


def begin(video_id: str, run: str, flow_run_id: str | None) -> tuple[str, str | None]:
    """Move the video to PROCESSING for this run. Returns (source_url, published_run)."""
    with session_scope() as s:
        v = get_video(s, video_id, lock=True)
        status = VideoStatus(v.status)
        if status not in REPROCESSABLE:
            raise IngestFailed(f"video {video_id} is {status.value}; it cannot be processed")
        if not v.source_url:
            transition(s, v, VideoStatus.FAILED, error="the source file is missing; upload the video again")
            raise IngestFailed("the source file is missing; upload the video again")
        published = v.current_run if status in (VideoStatus.READY, VideoStatus.PARTIAL) else None
        if status == VideoStatus.PROCESSING:
            # a re-dispatch after a crash: the earlier run never finished
            published = v.current_run if any(
                r.run == v.current_run and r.status == RenditionStatus.READY for r in v.renditions) else None
        transition(s, v, VideoStatus.PROCESSING)
        v.progress = 0.0
        v.error = None
        v.stage = "probe"
        v.flow_run_id = flow_run_id
        source_url = v.source_url
    return source_url, published


_RUN_ID = re.compile(r"r\d{14}[0-9a-f]{4}")


def _earlier(name: str, run: str) -> bool:
    """Whether run folder `name` belongs to a run started before `run` (ids sort by start
    time); a folder that is not a run id at all is leftover and counts as earlier."""
    return name < run if _RUN_ID.fullmatch(name) else True


def remove_stale_runs(video_id: str, run: str, keep: set[str], *, owner: str | None = None) -> list[str]:
    """Delete run folders and rendition rows of earlier runs that are neither published nor
    ours. Run ids sort by start time, so a run never removes a newer one's files; and only
    while it still holds the video."""
    with session_scope() as s:
        _owned(s, video_id, owner)
    removed = []
    for entry in storage.list_dir(storage.url_for("hls", video_id)):
        if entry["type"] == "directory" and entry["name"] not in keep and _earlier(entry["name"], run):
            storage.delete(entry["url"])
            removed.append(entry["name"])
    for entry in storage.list_dir(storage.url_for("scratch", video_id)):
        if entry["name"] not in keep and _earlier(entry["name"], run):
            storage.delete(entry["url"])
    with session_scope() as s:
        _owned(s, video_id, owner)
        runs = set(s.scalars(select(Rendition.run).where(Rendition.video_id == video_id)))
        stale = [r for r in runs if r not in keep and _earlier(r, run)]
        if stale:
            s.execute(sql_delete(Rendition).where(Rendition.video_id == video_id, Rendition.run.in_(stale)))
    return removed


def save_probe(video_id: str, info: MediaInfo, *, owner: str | None = None) -> None:
    from flows.intake import video_fields

    with session_scope() as s:
        v = _owned(s, video_id, owner)
        for k, val in video_fields(info).items():
            setattr(v, k, val)


def progress(video_id: str, pct: float, stage: str | None = None, *, owner: str | None = None) -> None:
    with session_scope() as s:
        if owner is not None:
            _owned(s, video_id, owner)
        set_progress(s, video_id, pct, stage)


def publish_rendition(video_id: str, run: str, rung: dict, packaged: dict, frame_rate: float,
                      *, make_current: bool, owner: str | None = None) -> None:
    with session_scope() as s:
        _owned(s, video_id, owner)
        s.add(Rendition(
            video_id=video_id, run=run, name=rung["name"], width=rung["width"], height=rung["height"],
            bandwidth=packaged["bandwidth"], average_bandwidth=packaged["average_bandwidth"],
            codecs=packaged["codecs"], frame_rate=frame_rate, playlist_url=packaged["playlist_url"],
            segment_count=len(packaged["segment_urls"]), status=RenditionStatus.READY,
            published_at=datetime.now(timezone.utc),
        ))
        if make_current:
            v = get_video(s, video_id)
            v.current_run = run


def record_failed_rendition(video_id: str, run: str, rung: dict, reason: str, *, owner: str | None = None) -> None:
    with session_scope() as s:
        _owned(s, video_id, owner)
        s.add(Rendition(video_id=video_id, run=run, name=rung["name"], width=rung["width"],
                        height=rung["height"], status=RenditionStatus.FAILED, error=reason[:2000]))


def save_thumbnails(video_id: str, thumbs: dict, *, owner: str | None = None) -> None:
    with session_scope() as s:
        v = _owned(s, video_id, owner)
        v.poster_url = thumbs.get("poster_url")
        v.thumbnails_url = thumbs.get("thumbnails_url")


def finish(video_id: str, run: str, status: VideoStatus, error: str | None, *, switch_from: str | None,
           owner: str | None = None) -> None:
    with session_scope() as s:
        v = _owned(s, video_id, owner)
        if VideoStatus(v.status) == VideoStatus.DELETED:
            return
        if status in (VideoStatus.READY, VideoStatus.PARTIAL):
            v.current_run = run
            if switch_from and switch_from != run:
                s.execute(sql_delete(Rendition).where(Rendition.video_id == video_id, Rendition.run == switch_from))
        v.stage = status.value.lower()
        transition(s, v, status, error=error)


def fail(video_id: str, message: str, *, published: str | None = None, owner: str | None = None) -> None:
    """End the run as failed. A video that still has an earlier published run keeps playing
    it: it goes back to READY/PARTIAL with the reason of this failure in `error`."""
    with session_scope() as s:
        v = _owned(s, video_id, owner)
        if VideoStatus(v.status) != VideoStatus.PROCESSING:
            return
        v.stage = "failed"
        if published and v.current_run == published:
            kept = [r for r in v.renditions if r.run == published]
            ok = all(r.status == RenditionStatus.READY for r in kept)
            transition(s, v, VideoStatus.READY if ok else VideoStatus.PARTIAL,
                       error=f"reprocessing failed, the previous version is still published: {message}")
            v.progress = 100.0
            return
        transition(s, v, VideoStatus.FAILED, error=message)


# ---------------------------------------------------------------------------------------------
# in-process tasks (cheap: no reason to ship them to a worker)


@task(name="probe", task_run_name="probe {video_id}", cache_policy=NO_CACHE, **RETRY_OPTIONS)
def probe_task(source_url: str, video_id: str) -> dict:
    return probe_source(source_url).to_dict()


@task(name="ladder", task_run_name="ladder {video_id}", cache_policy=NO_CACHE)
def ladder_task(info: dict, video_id: str) -> list[dict]:
    return [r.to_dict() for r in choose_ladder(MediaInfo.from_dict(info))]


# ---------------------------------------------------------------------------------------------
# watching Dask futures


@dataclass
class Tracker:
    """Progress of the transcode: catalog (forward only) and a Prefect progress artifact."""

    video_id: str
    owner: str | None = None  # the flow run id that holds the video
    total_frames: int = 1
    artifact_id: object = None
    last: float = -1.0
    last_at: float = 0.0
    chunk_done: dict = field(default_factory=dict)  # index -> fraction
    events_since: float = 0.0
    inflight: list = field(default_factory=list)  # every future submitted, to cancel on failure

    def track(self, fut):
        self.inflight.append(fut)
        return fut

    def cancel_all(self) -> None:
        for fut in self.inflight:
            try:
                fut.wrapped_future.cancel()
            except Exception:  # noqa: BLE001
                pass

    def set(self, pct: float, stage: str | None = None) -> None:
        # a step of at least 0.5 % and a second since the last write: the catalog and the
        # Prefect API see ~1 update a second per ingest, not one per poll
        now = time.monotonic()
        if stage is None and pct < 100.0 and (pct < self.last + 0.5 or now - self.last_at < 1.0):
            return
        pct = max(pct, self.last)
        self.last, self.last_at = pct, now
        progress(self.video_id, pct, stage, owner=self.owner)
        if self.artifact_id is not None:
            try:
                update_progress_artifact(self.artifact_id, round(pct, 1))
            except Exception:  # noqa: BLE001 - observability must not fail the transcode
                log.debug("progress artifact update failed", exc_info=True)

    def encode_fraction(self, chunks: list[dict]) -> float:
        done = sum(self.chunk_done.get(c["index"], 0.0) * c["frames"] for c in chunks)
        return done / max(1, self.total_frames)

    def poll_events(self, client, run: str) -> None:
        try:
            events = client.get_events(PROGRESS_TOPIC)
        except Exception:  # noqa: BLE001
            return
        for ts, msg in events:
            if ts <= self.events_since:
                continue
            self.events_since = ts
            key = str(msg.get("key", ""))
            if key.startswith(run + ":chunk:"):
                idx = int(key.rsplit(":", 1)[1])
                self.chunk_done[idx] = max(self.chunk_done.get(idx, 0.0), float(msg.get("fraction", 0)))


def _outcome(fut) -> tuple[bool, object]:
    """(ok, result or exception) of a finished Prefect-on-Dask future."""
    try:
        state = fut.wrapped_future.result()
    except BaseException as exc:  # noqa: BLE001 - a dead worker, a cancelled key
        return False, exc
    if hasattr(state, "is_completed"):
        if state.is_completed():
            return True, state.result()
        try:
            exc = state.result(raise_on_failure=False)
        except BaseException as e:  # noqa: BLE001
            exc = e
        if not isinstance(exc, BaseException):
            exc = RuntimeError(state.message or f"task ended {state.type}")
        return False, exc
    return True, state


def _wait_any(client, futures: list) -> None:
    """Return as soon as one future finishes, or after the poll interval (progress updates)."""
    if not futures:
        return
    try:
        with client.as_current():
            distributed.wait(futures, timeout=POLL_SECONDS, return_when="FIRST_COMPLETED")
    except (TimeoutError, distributed.TimeoutError):
        pass


def _describe(exc: object) -> str:
    text = str(exc) or type(exc).__name__
    detail = getattr(exc, "detail", "")
    if detail:
        text += f" ({detail.splitlines()[-1][:200]})"
    return text


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
    source_url, published = begin(video_id, run, flow_run_id)
    keep = {run} | ({published} if published else set())
    removed = remove_stale_runs(video_id, run, keep, owner=flow_run_id)
    if removed:
        logger.info("removed unfinished earlier runs: %s", ", ".join(removed))
    # a video already playing keeps its published run until this one is complete
    progressive = published is None
    work_url = storage.url_for("scratch", video_id, run)
    hls_url = storage.url_for("hls", video_id, run)
    tracker = Tracker(video_id, owner=flow_run_id)
    # the run's lease: tasks store output only while it exists (see tasks.retry.check_lease);
    # every way out of this run removes the scratch space, and the lease with it
    lease_url = storage.join(work_url, "lease")
    storage.write_text(lease_url, flow_run_id or run)
    try:
        tracker.artifact_id = create_progress_artifact(progress=0.0, key=f"transcode-{video_id}",
                                                       description=f"transcode of video {video_id}, run {run}")
    except Exception:  # noqa: BLE001
        tracker.artifact_id = None
    timings: dict[str, float] = {}
    try:
        result = _transcode(video_id, run, source_url, work_url, hls_url, tracker, timings, progressive,
                            published, logger, lease_url)
    except (ExternalSignal, KeyboardInterrupt, SystemExit):
        # the process is being stopped (Ctrl-C, a deploy, SIGTERM), not the video failing:
        # it stays PROCESSING, Prefect records the run as crashed, and maintenance dispatches
        # it again. This run's unpublished output goes now; maintenance would remove it later.
        tracker.cancel_all()
        try:
            _drop_unpublished(video_id, run, work_url, hls_url)
        finally:
            logger.warning("video %s: this run was stopped from outside; maintenance will run it again",
                           video_id)
        raise
    except BaseException as exc:
        tracker.cancel_all()
        message = exc.args[0] if isinstance(exc, IngestFailed) else (
            f"{_describe(exc)}" if isinstance(exc, MediaError) else
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


def _drop_unpublished(video_id: str, run: str, work_url: str, hls_url: str) -> None:
    """A run that ends early removes its scratch space (and its lease with it) and its HLS
    folder unless a rendition of it was published."""
    storage.delete(work_url)
    if not _has_published(video_id, run):
        storage.delete(hls_url)


def _has_published(video_id: str, run: str) -> bool:
    with session_scope() as s:
        return s.scalars(select(Rendition.id).where(Rendition.video_id == video_id, Rendition.run == run,
                                                    Rendition.status == RenditionStatus.READY)).first() is not None


def _transcode(video_id, run, source_url, work_url, hls_url, tracker, timings, progressive, published,
               logger, lease_url) -> dict:
    settings = get_settings()
    t = time.monotonic()
    info = MediaInfo.from_dict(probe_task(source_url, video_id))
    save_probe(video_id, info, owner=tracker.owner)
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
        # audio first: it takes one slot for a short while and is ready long before the video
        if not info.has_audio:
            return None
        return tracker.track(encode_audio.submit(source_url, storage.join(work_url, "audio.m4a"),
                                                 info.audio_stream_index, plan["t0"], plan["duration"],
                                                 info.audio_channels, label=video_id, lease_url=lease_url))

    plan = split(None)
    tracker.set(P_SPLIT, "encode")
    audio_fut = submit_audio(plan)
    # side tasks never decide the video's fate (poster and sprite sheets); each entry:
    # (name, future). The chunk encodes take the preview frames from their own decode.
    side_tasks: list[tuple[str, object]] = []
    previews = preview_plan(plan["duration"], info.display_width, info.display_height)

    t = time.monotonic()
    rotation = info.rotation
    fallbacks: list[str] = []  # what the run had to fall back to, for the result and the artifact
    while True:  # once more, from decoded frames, if the container's timing gave wrong chunks
        chunks = plan["chunks"]
        try:
            encoded = _encode_chunks(plan, run, client, tracker, logger, dict(
                source_url=source_url, rungs=rungs, out_url=storage.join(work_url, "enc"),
                rotation=rotation, cfr=plan["cfr"], frame_rate=plan["frame_rate"],
                keyframe_seconds=settings.keyframe_seconds, previews=previews, lease_url=lease_url))
            break
        except _Replan as exc:
            note = (f"{exc}: the container's timestamps cannot be trusted for this source; "
                    "planning the chunks again from the decoded frames")
            logger.warning(note)
            fallbacks.append(note)
            tracker.chunk_done.clear()
            old = plan
            plan = split("decoded")
            if audio_fut is not None and (plan["t0"], plan["duration"]) != (old["t0"], old["duration"]):
                audio_fut.wrapped_future.cancel()
                audio_fut = submit_audio(plan)
    timings["encode"] = time.monotonic() - t
    chunk_modes = {i: r["mode"] for i, r in sorted(encoded.items())}
    seek_chunks = sum(1 for m in chunk_modes.values() if m != "copy")
    if seek_chunks:
        logger.warning("%d of %d chunks were not read from stream-copy slices: %s", seek_chunks, len(chunks),
                       ", ".join(f"{i + 1}: {m}" for i, m in chunk_modes.items()))
    fallbacks += [n for n in plan["notes"] if n not in fallbacks]

    intervals = [("encode", i, r["started_at"], r["ended_at"]) for i, r in sorted(encoded.items())]
    audio_url = None
    audio_note = None
    if audio_fut is not None:
        ok, value = _outcome(audio_fut)
        if ok:
            audio_url = value["url"]
            intervals.append(("audio", 0, value["started_at"], value["ended_at"]))
        else:
            # a video whose sound cannot be decoded is still worth watching; say so
            audio_note = f"the audio track could not be encoded ({_describe(value)}); published without sound"
            logger.warning(audio_note)
    tracker.set(P_ENCODED, "package")

    t = time.monotonic()
    per_rung_chunks = {
        r["name"]: [{"url": encoded[c["index"]]["outputs"][r["name"]], "start": c["start"], "end": c["end"]}
                    for c in chunks] for r in rungs}
    packaging = {}
    for r in rungs:  # lowest first: Dask starts them in submission order
        packaging[r["name"]] = tracker.track(package_rung.submit(
            r, per_rung_chunks[r["name"]], audio_url, storage.join(hls_url, r["name"]), plan["segment_starts"],
            plan["segment_times"], plan["duration"], rung_name=r["name"], lease_url=lease_url))
    # sheets and poster from the previews the chunks stored; after the rungs, which players wait for
    side_tasks.append(("thumbnails", tracker.track(thumbnails_task.submit(
        [p for _, r in sorted(encoded.items()) for p in r.get("previews", [])], hls_url, previews,
        label=video_id, lease_url=lease_url))))
    validating: dict[str, object] = {}
    packaged: dict[str, dict] = {}
    results: dict[str, dict] = {}  # name -> {"ok", "reason"}
    order = [r["name"] for r in rungs]
    by_name = {r["name"]: r for r in rungs}
    next_to_publish = 0
    while next_to_publish < len(order):
        _wait_any(client, [f.wrapped_future for f in [*packaging.values(), *validating.values()]])
        for name, fut in list(packaging.items()):
            if fut.wrapped_future.done():
                del packaging[name]
                ok, value = _outcome(fut)
                if not ok:
                    results[name] = {"ok": False, "reason": f"packaging failed: {_describe(value)}"}
                    continue
                packaged[name] = value
                validating[name] = tracker.track(validate_rung.submit(
                    value["playlist_url"], by_name[name], plan["frames"], plan["duration"], plan["frame_interval"],
                    plan["segment_starts"], audio_url is not None, settings.segment_seconds, rung_name=name))
        for name, fut in list(validating.items()):
            if fut.wrapped_future.done():
                del validating[name]
                ok, value = _outcome(fut)
                if not ok:
                    results[name] = {"ok": False, "reason": f"validation could not run: {_describe(value)}"}
                elif not value["ok"]:
                    results[name] = {"ok": False, "reason": "; ".join(value["reasons"])}
                else:
                    results[name] = {"ok": True, "measured": value["measured"]}
        # publish in ladder order: a rung waits for the ones below it to be decided
        while next_to_publish < len(order) and order[next_to_publish] in results:
            name = order[next_to_publish]
            res = results[name]
            if res["ok"]:
                publish_rendition(video_id, run, by_name[name], packaged[name], info.frame_rate,
                                  make_current=progressive, owner=tracker.owner)
                logger.info("published %s", name)
            else:
                record_failed_rendition(video_id, run, by_name[name], res["reason"], owner=tracker.owner)
                logger.error("rung %s failed: %s", name, res["reason"])
                storage.delete(storage.join(hls_url, name))
            next_to_publish += 1
            tracker.set(P_ENCODED + (P_PACKAGED - P_ENCODED) * next_to_publish / len(order))
    timings["package"] = time.monotonic() - t

    for name, fut in side_tasks:
        _wait_any(client, [fut.wrapped_future])
        ok, value = _outcome(fut)
        if not ok:
            logger.warning("side task %s failed: %s", name, _describe(value))
        elif name == "thumbnails":
            save_thumbnails(video_id, value, owner=tracker.owner)

    good = [n for n in order if results[n]["ok"]]
    bad = [n for n in order if not results[n]["ok"]]
    if not good:
        reasons = "; ".join(f"{n}: {results[n]['reason']}" for n in bad)
        raise IngestFailed(f"no rendition passed validation ({reasons}); the source may be damaged - "
                           "re-export it and upload again")
    messages = [f"{n} failed: {results[n]['reason']}" for n in bad]
    if audio_note:
        messages.append(audio_note)
    status = VideoStatus.PARTIAL if messages else VideoStatus.READY
    finish(video_id, run, status, "; ".join(messages) or None, switch_from=published, owner=tracker.owner)
    tracker.owner = None  # done: a re-dispatch from here on must not fail this finished run
    if published and published != run:
        storage.delete(storage.url_for("hls", video_id, published))
    tracker.set(100.0)
    _ladder_artifact(video_id, run, rungs, packaged, results, status, settings,
                     timing=plan["timing"], chunk_modes=chunk_modes, fallbacks=fallbacks)
    return {"video_id": video_id, "run": run, "status": status.value, "renditions": good, "failed": bad,
            "chunks": len(chunks), "seek_chunks": seek_chunks, "timing": plan["timing"],
            "chunk_modes": chunk_modes, "fallbacks": fallbacks,
            "encode_seconds": {i: round(r["seconds"], 3) for i, r in encoded.items()},
            "encode_cpu_seconds": {i: r.get("cpu_seconds") for i, r in encoded.items()},
            "chunk_frames": {c["index"]: c["frames"] for c in chunks}, "intervals": intervals,
            "package_seconds": {n: round(p["seconds"], 3) for n, p in packaged.items()}}


class _Replan(Exception):
    """A chunk read by the container's timestamps came out wrong in every mode."""


def _encode_chunks(plan, run, client, tracker, logger, encode_kwargs) -> dict[int, dict]:
    """Encode every chunk of the plan on the cluster; resubmit transient failures."""
    chunks = plan["chunks"]

    def submit_chunk(c: dict):
        return tracker.track(encode_chunk.submit(c, label=f"{c['index'] + 1}/{c['count']}",
                                                 progress_key=f"{run}:chunk:{c['index']}", **encode_kwargs))

    pending = {c["index"]: submit_chunk(c) for c in chunks}
    resubmits = {c["index"]: 0 for c in chunks}
    encoded: dict[int, dict] = {}
    while pending:
        _wait_any(client, [f.wrapped_future for f in pending.values()])
        tracker.poll_events(client, run)
        for idx, fut in list(pending.items()):
            if not fut.wrapped_future.done():
                continue
            ok, value = _outcome(fut)
            del pending[idx]
            if ok:
                encoded[idx] = value
                tracker.chunk_done[idx] = 1.0
                continue
            label = f"chunk {idx + 1}/{len(chunks)}"
            if is_permanent(value):
                for other in pending.values():
                    other.wrapped_future.cancel()
                if getattr(value, "replan", False) and plan.get("timing") != "decoded":
                    raise _Replan(str(value))
                raise IngestFailed(f"{label} cannot be encoded: {_describe(value)}")
            if resubmits[idx] >= FLOW_RESUBMITS:
                for other in pending.values():
                    other.wrapped_future.cancel()
                raise IngestFailed(f"{label} failed {resubmits[idx] + 1} times, last: {_describe(value)}; "
                                   "check the workers (disk space, memory) and re-run the ingest")
            resubmits[idx] += 1
            logger.warning("%s failed (%s); resubmitting it (%d/%d)", label, _describe(value),
                           resubmits[idx], FLOW_RESUBMITS)
            pending[idx] = submit_chunk(chunks[idx])
        tracker.set(P_SPLIT + (P_ENCODED - P_SPLIT) * tracker.encode_fraction(chunks))
    return encoded


def _ladder_artifact(video_id, run, rungs, packaged, results, status, settings, *, timing="container",
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
                     f"{p.get('codecs', '')} | {len(p.get('segment_urls', []))} | {state} |")
    try:
        create_markdown_artifact(markdown="\n".join(lines), key=f"ladder-{video_id}",
                                 description=f"ladder of video {video_id}")
    except Exception:  # noqa: BLE001
        log.debug("markdown artifact failed", exc_info=True)


def main(argv: list[str] | None = None) -> int:
    """`python -m flows.ingest VIDEO_ID`: run one ingest in this process (what dispatch does
    when no deployment is served). Exit 0 when READY or PARTIAL, 1 when FAILED."""
    import os

    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        print("usage: python -m flows.ingest VIDEO_ID", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import contextlib

    from prefect.settings import PREFECT_API_URL, temporary_settings

    settings_ctx = contextlib.nullcontext()
    if not prefect_api_url():
        # without an API every Dask worker would start its own temporary Prefect server:
        # start one here and point this process and the workers (through the env) at it
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
