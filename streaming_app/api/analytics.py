"""POST /api/analytics/events: playback events from the player, validated, rate-limited, stored.

The player sends batches (`fetch` with keepalive while the page lives, `navigator.sendBeacon`
on page hide, whose body arrives as text/plain). Every event is checked against a schema per
type with only known fields allowed, so nothing personal can ride along: the only identity is
the random per-page-view `session_id`. A batch delivered twice is stored once (unique
`(session_id, seq)`).
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from typing import Annotated, Literal, Union

from flask import jsonify, request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from catalog.db import get_engine, session_scope
from catalog.models import PlaybackEvent, VideoStatus
from catalog.state import VideoNotFound, get_video
from streaming_app.api import bp
from streaming_app.errors import error_response

MAX_BODY_BYTES = 64 * 1024  # the keepalive/beacon budget of a browser
MAX_EVENTS_PER_BATCH = 200
SESSION_RE = r"^[A-Za-z0-9_-]{16,64}$"
LABEL = Annotated[str, Field(max_length=16, pattern=r"^[A-Za-z0-9 ._-]*$")]
CODE = Annotated[str, Field(max_length=64, pattern=r"^[A-Za-z0-9 ._:-]*$")]
SECONDS = Annotated[float, Field(ge=0, le=1e6)]
MILLIS = Annotated[float, Field(ge=0, le=1e9)]


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class NoData(_Data):
    pass


class SessionStartData(_Data):
    duration: SECONDS | None = None
    levels: int | None = Field(None, ge=0, le=50)
    autoplay: bool | None = None


class FirstFrameData(_Data):
    startup_ms: Annotated[float, Field(ge=0, le=3_600_000)]
    autoplay: bool = True
    rendition: LABEL | None = None


class SeekData(_Data):
    from_: SECONDS = Field(alias="from")
    to: SECONDS


class SwitchData(_Data):
    from_: LABEL | None = Field(None, alias="from")
    to: LABEL
    bitrate: int | None = Field(None, ge=0, le=10**10)
    mode: Literal["auto", "manual"]
    bandwidth_estimate: int | None = Field(None, ge=0, le=10**11)
    initial: bool = False


class RebufferEndData(_Data):
    duration_ms: MILLIS


class ErrorData(_Data):
    kind: CODE  # hls.js error type or "media"
    details: CODE
    fatal: bool
    action: Literal["none", "recover", "retry", "reload", "shown"] = "none"


class ProgressData(_Data):
    """Cumulative figures for the session so far (so a lost batch loses nothing but ranges),
    and the stretches of the timeline played since the previous report."""

    watched: SECONDS  # seconds spent playing while the page was visible
    rebuffer_ms: MILLIS = 0
    rendition_time: dict[LABEL, SECONDS] = Field(default_factory=dict, max_length=20)
    ranges: list[tuple[SECONDS, SECONDS]] = Field(default_factory=list, max_length=200)
    reason: Literal["pagehide", "hidden", "destroy", "ended", "navigate"] | None = None

    @field_validator("ranges")
    @classmethod
    def _ordered(cls, v: list[tuple[float, float]]) -> list[tuple[float, float]]:
        for a, b in v:
            if b < a:
                raise ValueError(f"range end {b} is before its start {a}")
        return v


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seq: int = Field(ge=0, le=10_000_000)
    t: MILLIS  # ms since the session started
    pos: SECONDS | None = None  # seconds into the video


class SessionStart(_Event):
    type: Literal["session_start"]
    data: SessionStartData = Field(default_factory=SessionStartData)


class FirstFrame(_Event):
    type: Literal["first_frame"]
    data: FirstFrameData


class Simple(_Event):
    type: Literal["play", "pause", "ended", "rebuffer_start"]
    data: NoData = Field(default_factory=NoData)


class Seek(_Event):
    type: Literal["seek"]
    data: SeekData


class Switch(_Event):
    type: Literal["rendition_switch"]
    data: SwitchData


class RebufferEnd(_Event):
    type: Literal["rebuffer_end"]
    data: RebufferEndData


class Error(_Event):
    type: Literal["error"]
    data: ErrorData


class Progress(_Event):
    type: Literal["heartbeat", "session_end"]
    data: ProgressData


Event = Annotated[
    Union[SessionStart, FirstFrame, Simple, Seek, Switch, RebufferEnd, Error, Progress],
    Field(discriminator="type"),
]
EVENT_TYPES = ("session_start", "first_frame", "play", "pause", "seek", "rendition_switch",
               "rebuffer_start", "rebuffer_end", "error", "heartbeat", "session_end", "ended")


class Batch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    session_id: str = Field(pattern=SESSION_RE)
    video_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")
    events: list[Event] = Field(min_length=1, max_length=MAX_EVENTS_PER_BATCH)


class TokenBucket:
    """Requests per key: `burst` at once, then `rate` a second. In memory, per worker process:
    cheap, and a client hammering the endpoint is cut off long before the database notices."""

    def __init__(self, rate: float, burst: float, max_keys: int = 20_000):
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self._state: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str, now: float | None = None) -> float:
        """0 when allowed; otherwise the seconds to wait before the next request is."""
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._state.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1:
                self._state[key] = (tokens - 1, now)
                wait = 0.0
            else:
                self._state[key] = (tokens, now)
                wait = (1 - tokens) / self.rate
            if len(self._state) > self.max_keys:
                # forget the quietest half rather than grow without bound
                for k, _ in sorted(self._state.items(), key=lambda kv: kv[1][1])[: self.max_keys // 2]:
                    self._state.pop(k, None)
            return wait


# A player sends a batch every ~10 s plus one when the page hides; these leave ample room.
per_session = TokenBucket(rate=0.5, burst=20)
per_client = TokenBucket(rate=5.0, burst=100)


def _describe(err: ValidationError) -> str:
    parts = []
    for e in err.errors()[:5]:
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"]).lstrip(".")
        # the discriminator adds the type name to the path; it reads better without it
        loc = re.sub(r"\.(session_start|first_frame|play|pause|ended|rebuffer_start|rebuffer_end|seek"
                     r"|rendition_switch|error|heartbeat|session_end)\b", "", loc)
        parts.append(f"{loc or 'body'}: {e['msg']}")
    more = len(err.errors()) - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def _too_many(wait: float, what: str):
    resp = error_response(429, f"too many analytics requests from this {what}; "
                               f"retry in {math.ceil(wait)} s")
    resp.headers["Retry-After"] = str(max(1, math.ceil(wait)))
    return resp


@bp.post("/api/analytics/events")
def analytics_events():
    length = request.content_length
    if length is not None and length > MAX_BODY_BYTES:
        return error_response(413, f"a batch may be at most {MAX_BODY_BYTES} bytes (got {length}); "
                                   "send fewer events per request")
    ctype = (request.mimetype or "").lower()
    if ctype not in ("application/json", "text/plain"):
        return error_response(415, "send the batch as JSON (Content-Type application/json, "
                                   "or text/plain from navigator.sendBeacon)")
    wait = per_client.take(request.remote_addr or "?")
    if wait:
        return _too_many(wait, "client")
    raw = request.stream.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        return error_response(413, f"a batch may be at most {MAX_BODY_BYTES} bytes; send fewer events per request")
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return error_response(400, f"the body is not valid JSON: {exc}")
    if not isinstance(payload, dict):
        return error_response(400, "the body must be a JSON object with session_id, video_id and events")
    try:
        batch = Batch.model_validate(payload)
    except ValidationError as exc:
        return error_response(400, f"invalid analytics batch: {_describe(exc)}")
    wait = per_session.take(batch.session_id)
    if wait:
        return _too_many(wait, "session")

    rows = [
        {
            "video_id": batch.video_id,
            "session_id": batch.session_id,
            "seq": ev.seq,
            "type": ev.type,
            "client_ts": ev.t,
            "position": ev.pos,
            "data": ev.data.model_dump(by_alias=True, exclude_none=True) or None,
        }
        for ev in batch.events
    ]
    with session_scope() as s:
        try:
            video = get_video(s, batch.video_id)
        except VideoNotFound:
            return error_response(404, f"no video with id '{batch.video_id}'")
        if video.status == VideoStatus.DELETED:
            return error_response(410, f"video '{batch.video_id}' was deleted")
        dialect = get_engine().dialect.name
        insert = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}.get(dialect)
        if insert is not None:
            stmt = insert(PlaybackEvent).on_conflict_do_nothing(index_elements=["session_id", "seq"])
            # core execution on the session's connection: one multi-row INSERT, and a rowcount
            result = s.connection().execute(stmt, rows)
            stored = result.rowcount if result.rowcount is not None and result.rowcount >= 0 else len(rows)
        else:  # other databases: skip what is already there, one query

            have = set(s.scalars(select(PlaybackEvent.seq).where(
                PlaybackEvent.session_id == batch.session_id,
                PlaybackEvent.seq.in_([r["seq"] for r in rows]))))
            fresh = [r for r in rows if r["seq"] not in have]
            s.add_all(PlaybackEvent(**r) for r in fresh)
            stored = len(fresh)
    return jsonify(accepted=len(rows), stored=stored, duplicates=len(rows) - stored), 202
