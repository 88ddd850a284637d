"""One attempt at ingesting a video, as one typed object: who it is, where it writes, what it
holds (the video, through its flow run id; the run's folder, through its lease) and how long
each phase took. The ingest flow and its helpers pass this around instead of a dozen values.

Folders of a run `R` of video `V`: `hls/V/R/` (published output, kept once a rendition of it is
published) and `scratch/V/R/` (stream-copy slices, previews, the lease; removed at the end).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field

from catalog.runs import has_published
from config import storage
from flows.futures import Tracker

# an attempt's lease file in its run's scratch space: lease-<flow run id>
LEASE_PREFIX = "lease-"


@dataclass
class IngestRun:
    video_id: str
    run: str  # the run id: names the run's folders; sorts by start time
    owner: str | None  # the flow run id that holds the video (None outside Prefect)
    source_url: str
    published: str | None  # the run already playing, kept until this one is complete
    resume: bool  # carrying on a run an earlier attempt left unfinished
    tracker: Tracker
    logger: logging.Logger | logging.LoggerAdapter
    timings: dict[str, float] = field(default_factory=dict)
    lease_url: str | None = None

    @property
    def work_url(self) -> str:
        return storage.url_for("scratch", self.video_id, self.run)

    @property
    def hls_url(self) -> str:
        return storage.url_for("hls", self.video_id, self.run)

    @property
    def progressive(self) -> bool:
        """Publish chunk by chunk for viewers: only when nothing of the video is playing yet (a
        video already playing keeps its published run until this one is complete)."""
        return self.published is None

    @contextlib.contextmanager
    def timed(self, phase: str):
        """Add the wall time of the block to `timings[phase]`."""
        t = time.monotonic()
        try:
            yield
        finally:
            self.timings[phase] = self.timings.get(phase, 0.0) + time.monotonic() - t

    # -- the lease: this attempt's tasks store output only while it exists (tasks.retry.check_lease)

    def take_lease(self) -> str:
        """Write this attempt's lease, removing an earlier attempt's: a run carried on takes its
        folder over, so whatever of that attempt still runs stops storing, and leaves the
        folder to this one when it ends."""
        for entry in storage.list_dir(self.work_url):
            if entry["name"].startswith(LEASE_PREFIX):
                storage.delete(entry["url"])
        holder = self.owner or self.run
        self.lease_url = storage.join(self.work_url, LEASE_PREFIX + holder)
        storage.write_text(self.lease_url, holder)
        return self.lease_url

    def taken_over(self) -> bool:
        """Did a later attempt take this run's folder over (its lease replaced this one's)?"""
        if self.lease_url is None or storage.exists(self.lease_url):
            return False
        return any(e["name"].startswith(LEASE_PREFIX) for e in storage.list_dir(self.work_url))

    def release(self) -> None:
        """Stop this attempt's tasks from storing more, keeping what is stored (for a re-dispatch
        to carry the run on)."""
        if self.lease_url:
            storage.delete(self.lease_url)

    def drop_unpublished(self) -> None:
        """An attempt that ends early removes the scratch space (the lease with it) and the HLS
        folder unless a rendition of the run was published."""
        storage.delete(self.work_url)
        if not has_published(self.video_id, self.run):
            storage.delete(self.hls_url)
