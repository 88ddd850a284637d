"""The chunks of one ingest run on the cluster: submitted earliest first, published as each
lands, resubmitted after a transient failure; and the audio rendition settled beside them.

This is the flow's one loop over finished tasks (`flows.futures.wait_any` + `outcome`)."""

from __future__ import annotations

import dask

from flows.futures import describe, outcome, settle, wait_any
from flows.publish import Publisher
from flows.run import IngestRun
from catalog.runs import IngestFailed
from tasks.encode import encode_chunk
from tasks.retry import is_permanent

# how many times the flow itself resubmits a chunk whose task failed for a transient reason
# after Prefect's own retries (a worker that died takes the task run with it)
FLOW_RESUBMITS = 2
# progress bands (percent): probe+split, then encode and publish chunk by chunk
P_SPLIT, P_ENCODED = 5.0, 98.0


def settle_audio(r: IngestRun, client, audio_fut, publisher: Publisher, intervals: list) -> str | None:
    """Wait for the audio rendition (long done in most runs: audio encodes far faster than video);
    a video whose sound cannot be encoded is still worth watching: say so and publish it silent."""
    if audio_fut is None:
        return None
    ok, value = settle(client, audio_fut)
    if ok:
        publisher.audio_done(value)
        intervals.append(("audio", 0, value["started_at"], value["ended_at"]))
        return None
    note = f"the audio track could not be encoded ({describe(value)}); published without sound"
    r.logger.warning(note)
    publisher.audio_done(None, failure=note)
    return note


class Replan(Exception):
    """A chunk read by the container's timestamps came out wrong in every mode."""


def encode_chunks(r: IngestRun, plan: dict, client, publisher: Publisher, done: dict[int, dict],
                  encode_kwargs: dict) -> dict[int, dict]:
    """Encode every chunk of the plan on the cluster, earliest first, and publish each as it
    lands (the publisher keeps the playlists a contiguous prefix); resubmit transient failures.
    Audio segments the audio task reports are published along the way. `done`: chunks an
    earlier attempt of this run stored, published again from their results, not encoded."""
    chunks = plan["chunks"]
    tracker = r.tracker

    def submit_chunk(c: dict):
        # earlier chunks first: Dask runs higher priorities first, so the playable prefix grows
        # steadily instead of in whatever order the workers pick
        with dask.annotate(priority=len(chunks) - c["index"]):
            return tracker.track(encode_chunk.submit(c, label=f"{c['index'] + 1}/{c['count']}",
                                                     progress_key=f"{r.run}:chunk:{c['index']}", **encode_kwargs))

    encoded: dict[int, dict] = {}
    for idx, value in sorted(done.items()):
        encoded[idx] = {**value, "resumed": True}
        tracker.chunk_done[idx] = 1.0
        publisher.chunk_done(idx, value)
    pending = {c["index"]: submit_chunk(c) for c in chunks if c["index"] not in done}
    resubmits = {c["index"]: 0 for c in chunks}
    while pending:
        wait_any(client, [f.wrapped_future for f in pending.values()])
        audio_segments = tracker.poll_events(client, r.run)
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
                    raise Replan(str(value))
                raise ChunkFailed(f"{label} ({where}) cannot be encoded: {describe(value)}", encoded)
            if resubmits[idx] >= FLOW_RESUBMITS:
                for other in pending.values():
                    other.wrapped_future.cancel()
                raise ChunkFailed(f"{label} ({where}) failed {resubmits[idx] + 1} times, last: {describe(value)}; "
                                  "check the workers (disk space, memory) and re-run the ingest", encoded)
            resubmits[idx] += 1
            r.logger.warning("%s failed (%s); resubmitting it (%d/%d)", label, describe(value),
                           resubmits[idx], FLOW_RESUBMITS)
            pending[idx] = submit_chunk(chunks[idx])
        tracker.set(P_SPLIT + (P_ENCODED - P_SPLIT) * tracker.encode_fraction(chunks))
    return encoded


class ChunkFailed(IngestFailed):
    """A chunk failed for good: the run ends with what was published before it."""

    def __init__(self, message: str, encoded: dict | None = None):
        super().__init__(message)
        self.encoded = encoded or {}
