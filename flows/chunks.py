"""The chunks of one ingest run on the cluster: submitted earliest first, published as each
lands, resubmitted after a transient failure; and the audio rendition settled beside them.

This is the flow's one loop over finished tasks (`flows.futures.wait_any` + `outcome`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import dask

from flows.futures import describe, outcome, settle, wait_any
from config import storage
from flows.publish import PLAN_FILE, Publisher, resave_plan
from flows.run import IngestRun
from catalog.runs import IngestFailed
from tasks.encode import encode_chunk
from tasks.lane import LANE, encode_lane
from tasks.package import is_fmp4
from tasks.retry import is_permanent
from tasks.split import apply_slices, plan_summary, slice_source

# how many times the flow itself resubmits a chunk whose task failed for a transient reason
# after Prefect's own retries (a worker that died takes the task run with it)
FLOW_RESUBMITS = 2
# progress bands (percent): probe+split, then encode and publish chunk by chunk
P_SPLIT, P_ENCODED = 5.0, 98.0


def settle_audio(r: IngestRun, client, audio_fut, publisher: Publisher, intervals: list,
                 skipped: list[dict] = ()) -> str | None:
    """Wait for the audio renditions (long done in most runs: audio encodes far faster than video);
    a video whose sound cannot be encoded is still worth watching: say so and publish it silent,
    or without the tracks left out. `skipped`: the source's audio streams the probe found unusable."""
    if audio_fut is None:
        if not skipped:
            return None
        note = ("no audio stream of the source could be used (" + "; ".join(
            f"#{x['index']} {x['codec']}: {x['reason']}" for x in skipped) + "); published without sound")
        r.logger.warning(note)
        return note
    ok, value = settle(client, audio_fut)
    if ok:
        publisher.audio_done(value)
        intervals.append(("audio", 0, value["started_at"], value["ended_at"]))
        if not publisher.audio_dropped:
            return None
        note = "; ".join(f"the audio track {label} could not be encoded ({why}); published without it"
                         for label, why in publisher.audio_dropped.items())
        r.logger.warning(note)
        return note
    note = f"the audio track could not be encoded ({describe(value)}); published without sound"
    r.logger.warning(note)
    publisher.audio_done(None, failure=note)
    return note


class Replan(Exception):
    """A chunk read by the container's timestamps came out wrong in every mode."""


@dataclass
class Lane:
    """The fast lane of a run (`tasks.lane`): its rung, what it has stored, how to submit it."""

    rung: dict
    done: dict[int, dict] = field(default_factory=dict)  # chunk index -> result (resumed or reported)
    kwargs: dict = field(default_factory=dict)  # encode_lane's arguments but the chunks
    resubmits: int = 0
    resumed: int = 0  # chunks an earlier attempt of the run stored
    fallback: str | None = None  # why its rung went back to the chunk encodes

    @property
    def name(self) -> str:
        return self.rung["name"]

    @classmethod
    def of(cls, r: IngestRun, plan: dict, rungs: list[dict], info, settings, stored: dict[int, dict]) -> "Lane | None":
        """The lane of a plan (None when it has none), carrying on from the chunks `stored`."""
        if not plan.get("lane"):
            return None
        rung = next(x for x in rungs if x["name"] == plan["lane"])
        return cls(rung, dict(stored), resumed=len(stored), kwargs=dict(
            source_url=r.source_url, rung=rung, hls_url=r.hls_url, rotation=info.rotation, cfr=plan["cfr"],
            frame_rate=plan["frame_rate"], keyframe_seconds=settings.keyframe_seconds, lease_url=r.lease_url,
            deinterlace=info.field_order, plan_url=storage.join(r.hls_url, PLAN_FILE)))


def lane_rung(plan: dict, rungs: list[dict], settings) -> str | None:
    """The rung a plan gives a fast lane: the lowest, when there is a ladder and more than one
    chunk (else it would only decode the source twice), and never for a plan made from decoded
    frames (the lane reads with an exact seek). The lowest rung is always H.264 (MPEG-TS), the
    only packaging the lane writes."""
    if (settings.fast_lane and len(rungs) > 1 and len(plan["chunks"]) > 1 and plan["timing"] == "container"
            and not is_fmp4(rungs[0])):
        return rungs[0]["name"]
    return None


def submit_slices(r: IngestRun, plan: dict, video_stream_index: int | None):
    """The stream-copy slices of a fresh plan, written while the fast lane and the audio start
    (the slicing task leaves its worker slot to them); the chunk encodes wait for them. None when
    the plan has no chunk to slice."""
    if not any(c["mode"] == "copy" and not c.get("url") for c in plan["chunks"]):
        return None
    with dask.annotate(priority=len(plan["chunks"]) + 3):  # first: it frees its slot at once
        return r.tracker.track(slice_source.submit(r.source_url, r.work_url, plan, video_stream_index,
                                                   label=r.video_id))


def take_slices(r: IngestRun, plan: dict, fut) -> None:
    """Record the slices in the plan (and the saved plan, for a resume); chunks left without one
    are read from the source with exact seeking."""
    ok, value = outcome(fut)
    note = apply_slices(plan, value if ok else None,
                        None if ok else f"the stream-copy slices could not be written ({describe(value)})")
    if note:
        r.logger.warning(note)
    r.logger.info(plan_summary(plan))
    resave_plan(r.hls_url, plan)


def encode_chunks(r: IngestRun, plan: dict, client, publisher: Publisher, done: dict[int, dict],
                  encode_kwargs: dict, lane: Lane | None = None, audio_fut=None,
                  slices=None) -> dict[int, dict]:
    """Encode every chunk of the plan on the cluster, earliest first, and publish each as it
    lands (the publisher keeps the playlists a contiguous prefix); resubmit transient failures.
    Audio segments the audio task reports are published along the way. `done`: chunks an
    earlier attempt of this run stored, published again from their results, not encoded.

    With a `lane`, its rung is left out of the chunk encodes and made by the fast lane, ahead
    of them, published as it reports each segment, and finished (with the audio, `audio_fut`)
    as soon as it is whole; if the lane fails for good, its rung goes back to chunk encodes of
    that rung alone (from the first chunk the lane did not store). `slices`: the future of the
    plan's stream-copy slices, which the chunk encodes wait for (the lane and audio do not)."""
    chunks = plan["chunks"]
    tracker = r.tracker
    lane_rungs = [lane.rung] if lane else []

    def submit_chunk(c: dict, kind: str = ""):
        # earlier chunks first: Dask runs higher priorities first, so the playable prefix grows
        # steadily instead of in whatever order the workers pick
        key = f"{r.run}:chunk:{c['index']}" if not kind else f"{r.run}:{kind}chunk:{c['index']}"
        kwargs = encode_kwargs if not kind else {**encode_kwargs, "rungs": lane_rungs, "previews": None,
                                                 "marker": kind}
        with dask.annotate(priority=len(chunks) - c["index"]):
            return tracker.track(encode_chunk.submit(c, label=f"{c['index'] + 1}/{c['count']}" + (
                f" {lane.name}" if kind else ""), progress_key=key, **kwargs))

    def submit_lane():
        first = next(i for i in range(len(chunks)) if i not in lane.done)
        # right after the audio (which takes a slot for a short while): it is what a viewer plays
        # first, and it runs ahead of the chunk encodes
        with dask.annotate(priority=len(chunks) + 1):
            return tracker.track(encode_lane.submit(chunks[first:], label=f"{lane.name} {r.video_id}",
                                                    progress_key=f"{r.run}:lane", **lane.kwargs))

    def lane_took(result: dict) -> None:
        lane.done.setdefault(int(result["index"]), result)
        publisher.lane_done(int(result["index"]), result)

    def finish_early(finished: tuple[bool, bool]) -> tuple[bool, bool]:
        """Once the lane's rung is whole it is finished at once, and the audio as soon as it is
        whole too, so a viewer who reaches the end sees the video end instead of waiting at the
        edge while the other rungs encode. Returns (rung finished, audio finished)."""
        rung, audio = finished
        if lane and not rung and publisher.lane_complete:
            publisher.finish_lane()
            rung = True
        if rung and not audio and audio_fut is not None and audio_fut.wrapped_future.done():
            ok, value = outcome(audio_fut)
            if ok:
                publisher.finish_audio(value)
            audio = True
        return rung, audio

    lane_fut, lane_finished = None, (False, audio_fut is None)
    if lane:
        # a resumed lane's chunks are published once, finished at once if they are all there
        # (a finished playlist never goes back to growing)
        for idx, value in sorted(lane.done.items()):
            publisher.lane_done(idx, value, publish=False)
        lane_finished = finish_early(lane_finished)
        if lane.done:
            publisher.publish()
    encoded: dict[int, dict] = {}
    for idx, value in sorted(done.items()):
        encoded[idx] = {**value, "resumed": True}
        tracker.chunk_done[idx] = 1.0
        publisher.chunk_done(idx, value)
    def take_news() -> None:
        """Publish what the audio and the lane reported since the last look."""
        audio_segments, lane_news = tracker.poll_events(client, r.run)
        if audio_segments:
            publisher.audio_progress(audio_segments)
        for msg in lane_news:
            if msg.get("result") is not None:
                lane_took(msg["result"])
            else:
                publisher.lane_segment(int(msg["segment"]), msg["frames"], msg["size"], msg.get("level"))

    if lane and len(lane.done) < len(chunks):
        lane_fut = submit_lane()
    while slices is not None and not slices.wrapped_future.done():
        wait_any(client, [slices.wrapped_future])  # the lane's first segments are published meanwhile
        take_news()
    if slices is not None:
        take_slices(r, plan, slices)
    pending = {("", c["index"]): submit_chunk(c) for c in chunks if c["index"] not in done}
    resubmits = {("", c["index"]): 0 for c in chunks} | {(LANE, c["index"]): 0 for c in chunks}
    while pending or lane_fut is not None:
        wait_any(client, [f.wrapped_future for f in pending.values()]
                 + ([lane_fut.wrapped_future] if lane_fut is not None else []))
        take_news()
        if lane_fut is not None and lane_fut.wrapped_future.done():
            ok, value = outcome(lane_fut)
            lane_fut = None
            if ok:
                for _, result in sorted(value["results"].items(), key=lambda kv: int(kv[0])):
                    lane_took(result)
            elif not is_permanent(value) and lane.resubmits < FLOW_RESUBMITS:
                lane.resubmits += 1
                r.logger.warning("the fast lane of %s failed (%s); resubmitting it from chunk %d (%d/%d)",
                                 lane.name, describe(value), len(lane.done) + 1, lane.resubmits, FLOW_RESUBMITS)
                lane_fut = submit_lane()
            else:
                lane.fallback = f"the fast lane of {lane.name} failed ({describe(value)}); encoded it chunk by chunk"
                r.logger.warning(lane.fallback)
                for c in chunks:
                    if c["index"] not in lane.done:
                        pending[(LANE, c["index"])] = submit_chunk(c, LANE)
        for key, fut in list(pending.items()):
            if not fut.wrapped_future.done():
                continue
            kind, idx = key
            ok, value = outcome(fut)
            del pending[key]
            if ok:
                if kind:
                    lane_took(value)
                    continue
                encoded[idx] = value
                tracker.chunk_done[idx] = 1.0
                publisher.chunk_done(idx, value)
                continue
            label = f"chunk {idx + 1}/{len(chunks)}" + (f" of {lane.name}" if kind else "")
            where = f"{chunks[idx]['start']:.3f}-{chunks[idx]['end']:.3f} s"
            if is_permanent(value):
                for other in pending.values():
                    other.wrapped_future.cancel()
                if lane_fut is not None:
                    lane_fut.wrapped_future.cancel()
                if getattr(value, "replan", False) and plan.get("timing") != "decoded":
                    raise Replan(str(value))
                raise ChunkFailed(f"{label} ({where}) cannot be encoded: {describe(value)}", encoded)
            if resubmits[key] >= FLOW_RESUBMITS:
                for other in pending.values():
                    other.wrapped_future.cancel()
                if lane_fut is not None:
                    lane_fut.wrapped_future.cancel()
                raise ChunkFailed(f"{label} ({where}) failed {resubmits[key] + 1} times, last: {describe(value)}; "
                                  "check the workers (disk space, memory) and re-run the ingest", encoded)
            resubmits[key] += 1
            r.logger.warning("%s failed (%s); resubmitting it (%d/%d)", label, describe(value),
                             resubmits[key], FLOW_RESUBMITS)
            pending[key] = submit_chunk(chunks[idx], kind)
        lane_finished = finish_early(lane_finished)
        tracker.set(P_SPLIT + (P_ENCODED - P_SPLIT) * tracker.encode_fraction(chunks))
    return encoded


class ChunkFailed(IngestFailed):
    """A chunk failed for good: the run ends with what was published before it."""

    def __init__(self, message: str, encoded: dict | None = None):
        super().__init__(message)
        self.encoded = encoded or {}
