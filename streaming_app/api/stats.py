"""GET /api/videos/{id}/stats: what viewers did with a video, from its playback events.

Definitions (the stats page says the same in words):
* session: one page view of the player (a random id, nothing else about the viewer);
  view: a session in which a frame was shown or play was pressed.
* watch time: seconds spent playing while the page was visible (the player's own count,
  reported cumulatively, so the session's largest report is its total).
* completion: views that reached the end (the `ended` event, or a played stretch reaching
  the last 5 % of the video).
* startup: from opening the page (or pressing play when autoplay was refused) to the first
  frame; p50/p95 over views.
* rebuffer ratio: stalled time / (stalled + watched time), stalls after start-up and not
  caused by a seek.
* switches per minute: rendition changes after the first choice, per minute watched.
* retention: share of views that played each point of the timeline.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict

from flask import jsonify
from sqlalchemy import select

from catalog.db import session_scope
from catalog.models import PlaybackEvent, Video, VideoStatus
from catalog.state import VideoNotFound, get_video, published_renditions
from streaming_app.api import bp
from streaming_app.api.serialize import run_file_url
from streaming_app.errors import error_response

RETENTION_POINTS = 100


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100); None for no values."""
    if not values:
        return None
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def merge_ranges(ranges: list[tuple[float, float]], gap: float = 0.5) -> list[tuple[float, float]]:
    out: list[list[float]] = []
    for a, b in sorted((float(a), float(b)) for a, b in ranges if b > a):
        if out and a <= out[-1][1] + gap:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def _label_sort_key(label: str) -> tuple[int, str]:
    digits = "".join(ch for ch in label if ch.isdigit())
    return (-(int(digits) if digits else 0), label)


def compute_stats(duration: float | None, events: list[dict]) -> dict:
    """Aggregate events (dicts with session_id, type, client_ts, position, data)."""
    by_session: dict[str, list[dict]] = defaultdict(list)
    for ev in events:
        by_session[ev["session_id"]].append(ev)

    views = 0
    total_watch = 0.0
    total_rebuffer_ms = 0.0
    rebuffer_count = 0
    completed = 0
    startups: list[float] = []
    rendition_time: dict[str, float] = defaultdict(float)
    switches = Counter()
    errors = Counter()
    fatal_errors = 0
    sessions_with_errors = 0
    view_ranges: list[list[tuple[float, float]]] = []
    seeks = 0
    end_margin = max(1.0, 0.05 * duration) if duration else None

    for evs in by_session.values():
        types = {e["type"] for e in evs}
        started = bool(types & {"first_frame", "play"})
        best = None  # the progress report with the largest cumulative watch time
        ranges: list[tuple[float, float]] = []
        first_frame = None
        stalls_ms = 0.0
        had_error = False
        for e in evs:
            d = e.get("data") or {}
            t = e["type"]
            if t in ("heartbeat", "session_end"):
                if best is None or d.get("watched", 0) >= best.get("watched", 0):
                    best = d
                ranges += [tuple(r) for r in d.get("ranges") or []]
            elif t == "first_frame" and first_frame is None:
                first_frame = d
            elif t == "rendition_switch" and not d.get("initial"):
                switches[d.get("mode", "auto")] += 1
            elif t == "rebuffer_end":
                rebuffer_count += 1
                stalls_ms += float(d.get("duration_ms", 0))
            elif t == "error":
                errors[f"{d.get('kind', '?')}/{d.get('details', '?')}"] += 1
                fatal_errors += bool(d.get("fatal"))
                had_error = True
            elif t == "seek":
                seeks += 1
        sessions_with_errors += had_error
        if not started:
            continue
        views += 1
        if first_frame is not None:
            startups.append(float(first_frame.get("startup_ms", 0)))
        if best is not None:
            total_watch += float(best.get("watched", 0))
            for label, secs in (best.get("rendition_time") or {}).items():
                rendition_time[label] += float(secs)
            # the cumulative figure covers stalls still running at page hide; the per-stall
            # events cover a session whose final report was lost
            stalls_ms = max(stalls_ms, float(best.get("rebuffer_ms", 0)))
        total_rebuffer_ms += stalls_ms
        merged = merge_ranges(ranges)
        view_ranges.append(merged)
        reached_end = "ended" in types or (
            duration is not None and merged and merged[-1][1] >= duration - end_margin)
        completed += bool(reached_end)

    retention = []
    if duration and duration > 0 and views:
        n = min(RETENTION_POINTS, max(2, int(math.ceil(duration))))
        step = duration / n
        for i in range(n):
            mid = (i + 0.5) * step
            watched = sum(1 for rs in view_ranges if any(a <= mid <= b for a, b in rs))
            retention.append({"t": round(i * step, 3), "share": round(watched / views, 4)})

    watch_minutes = total_watch / 60
    stalled_s = total_rebuffer_ms / 1000
    return {
        "views": views,
        "unique_sessions": len(by_session),
        "watch_time": {
            "total_s": round(total_watch, 1),
            "average_s": round(total_watch / views, 1) if views else None,
        },
        "completion_rate": round(completed / views, 4) if views else None,
        "completions": completed,
        "startup_ms": {
            "p50": round(percentile(startups, 50)) if startups else None,
            "p95": round(percentile(startups, 95)) if startups else None,
            "samples": len(startups),
        },
        "rebuffer": {
            "ratio": round(stalled_s / (stalled_s + total_watch), 4) if (stalled_s + total_watch) > 0 else None,
            "count": rebuffer_count,
            "total_s": round(stalled_s, 2),
        },
        "rendition_time_s": {k: round(v, 1) for k, v in sorted(rendition_time.items(),
                                                                key=lambda kv: _label_sort_key(kv[0]))},
        "switches": {
            "auto": switches["auto"],
            "manual": switches["manual"],
            "per_minute": round((switches["auto"] + switches["manual"]) / watch_minutes, 3)
            if watch_minutes > 0 else None,
        },
        "seeks": seeks,
        "errors": {
            "total": sum(errors.values()),
            "fatal": fatal_errors,
            "sessions": sessions_with_errors,
            "by_kind": dict(errors.most_common(10)),
        },
        "retention": retention,
    }


def video_stats(video_id: str) -> tuple[dict, dict] | None:
    """(video summary, stats) for a video, or None when there is no such video."""
    with session_scope() as s:
        try:
            video: Video = get_video(s, video_id)
        except VideoNotFound:
            return None
        if video.status == VideoStatus.DELETED:
            return {"id": video.id, "deleted": True}, {}
        renditions = [r.name for r in published_renditions(s, video)]
        summary = {"id": video.id, "title": video.title, "duration": video.duration,
                   "status": video.status.value, "renditions": renditions,
                   "poster_url": run_file_url(video.id, video.poster_url)}
        rows = s.execute(
            select(PlaybackEvent.session_id, PlaybackEvent.type, PlaybackEvent.client_ts,
                   PlaybackEvent.position, PlaybackEvent.data)
            .where(PlaybackEvent.video_id == video_id)
            .order_by(PlaybackEvent.session_id, PlaybackEvent.seq)
        ).all()
    events = [{"session_id": r[0], "type": r[1], "client_ts": r[2], "position": r[3], "data": r[4]}
              for r in rows]
    return summary, compute_stats(summary["duration"], events)


@bp.get("/api/videos/<video_id>/stats")
def get_video_stats(video_id: str):
    found = video_stats(video_id)
    if found is None:
        return error_response(404, f"no video with id '{video_id}'")
    summary, stats = found
    if summary.get("deleted"):
        return error_response(410, f"video '{video_id}' was deleted")
    return jsonify(video=summary, **stats)
