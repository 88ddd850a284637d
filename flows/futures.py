"""Watching the ingest's Prefect-on-Dask futures: progress (catalog and Prefect artifact),
outcomes, and the one loop that hands back tasks as they finish.

Futures that Dask cancelled because the scheduler connection was lost raise
`flows.cluster.ClusterLost` here instead of reading as failed tasks: a lost cluster must not
turn into a failed rung, a video published without sound, or a FAILED video."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import distributed
from prefect.artifacts import update_progress_artifact

from catalog.runs import progress
from flows.cluster import cluster_lost, lost
from tasks.retry import PROGRESS_TOPIC

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5


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

    def poll_events(self, client, run: str) -> tuple[int | None, list[dict]]:
        """Read the tasks' progress reports: each chunk's fraction done; returns the number of
        audio segments published so far (None when no news) and what the fast lane reported since
        the last call (a segment stored, or a chunk's result)."""
        audio, lane = None, []
        try:
            events = client.get_events(PROGRESS_TOPIC)
        except Exception:  # noqa: BLE001
            return None, lane
        for ts, msg in events:
            if ts <= self.events_since:
                continue
            self.events_since = ts
            key = str(msg.get("key", ""))
            if key.startswith(run + ":chunk:"):
                idx = int(key.rsplit(":", 1)[1])
                self.chunk_done[idx] = max(self.chunk_done.get(idx, 0.0), float(msg.get("fraction", 0)))
            elif key == run + ":audio" and msg.get("segments") is not None:
                audio = max(audio or 0, int(msg["segments"]))
            elif key == run + ":lane" and (msg.get("result") is not None or msg.get("segment") is not None):
                lane.append(msg)
        return audio, lane


def outcome(fut) -> tuple[bool, object]:
    """(ok, result or exception) of a finished Prefect-on-Dask future; raises ClusterLost when
    the scheduler connection was lost (the task's fate is unknown, not failed)."""
    try:
        state = fut.wrapped_future.result()
    except BaseException as exc:  # noqa: BLE001 - a dead worker, a cancelled key
        if cluster_lost(exc):
            raise lost() from exc
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


def wait_any(client, futures: list, timeout: float | None = POLL_SECONDS) -> None:
    """Return as soon as one future finishes, or after `timeout` (the poll interval, for
    progress updates; None: until one finishes); raises ClusterLost when the scheduler connection
    was lost."""
    if not futures:
        return
    try:
        with client.as_current():
            distributed.wait(futures, timeout=timeout, return_when="FIRST_COMPLETED")
    except (TimeoutError, distributed.TimeoutError):
        pass
    except BaseException as exc:
        if cluster_lost(exc):
            raise lost() from exc
        raise


def settle(client, fut) -> tuple[bool, object]:
    """Wait for one future to finish and give its `outcome`."""
    wait_any(client, [fut.wrapped_future], timeout=None)
    return outcome(fut)


def describe(exc: object) -> str:
    text = str(exc) or type(exc).__name__
    detail = getattr(exc, "detail", "")
    if detail:
        text += f" ({detail.splitlines()[-1][:200]})"
    return text
