"""/stats/{id}: the playback statistics of one video, with server-drawn charts."""

from __future__ import annotations

from flask import abort, render_template

from streaming_app.api.stats import video_stats
from streaming_app.pages import bp
from streaming_app.pages.charts import bars_svg, format_duration, format_span, retention_svg


@bp.app_template_filter("duration")
def _duration_filter(seconds):
    return format_duration(seconds)


@bp.app_template_filter("span")
def _span_filter(seconds):
    return format_span(seconds)


@bp.app_template_filter("percent")
def _percent_filter(share, digits: int = 0):
    return "–" if share is None else f"{share * 100:.{digits}f} %"


@bp.get("/stats/<video_id>")
def stats(video_id: str):
    found = video_stats(video_id)
    if found is None:
        abort(404, f"no video with id '{video_id}'")
    video, data = found
    if video.get("deleted"):
        abort(410, f"video '{video_id}' was deleted")
    charts = {
        "retention": retention_svg(data["retention"], video["duration"]),
        "renditions": bars_svg(data["rendition_time_s"]),
    }
    return render_template("stats.html", video=video, s=data, charts=charts)
