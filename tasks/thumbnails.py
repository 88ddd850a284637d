"""Poster and timeline previews for a source: one decode pass, one seek, published by URL.

Contract (what the ingest flow relies on):

    make_thumbnails(source_url, output_url) -> dict

* `source_url`: storage URL of the source (`…/sources/{id}/source.mp4`); local or remote.
* `output_url`: storage URL of the run folder the HLS output goes to
  (`…/hls/{id}/{run}`); the task writes `poster.jpg`, `thumbs/sprite_NNN.jpg` and
  `thumbs/thumbs.vtt` below it, images first and the WebVTT index last, so a reader never
  sees an index pointing at missing sheets.
* Returns a small dict (no bytes): `poster_url` and `thumbnails_url` (the storage URLs the
  flow stores in `Video.poster_url` / `Video.thumbnails_url`), `sprite_urls`, `interval`
  (seconds between previews), `count`, `width`/`height` of one preview, `columns`/`rows` of a
  sheet, `poster_time` (seconds into the video the poster shows).
* Needs only the URLs and the settings, so any Dask worker can run it; it never touches the
  catalog. It reads the source once, in parallel with the encodes.
* Raises `tasks.ffmpeg.PermanentMediaError` when the source has no decodable picture and
  `TransientMediaError` when ffmpeg was interrupted (retry those).

The poster avoids black, washed-out and flat frames (fades, slates) and, among the rest,
takes the sharpest one (ffmpeg's `blurdetect`: lower is sharper), preferring the first third
of the video on near ties, where the subject is usually introduced.
"""

from __future__ import annotations

import math
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from config import storage
from config.settings import get_settings
from tasks import ffmpeg
from tasks.ffmpeg import PermanentMediaError
from tasks.probe import probe_path
from tasks.retry import RETRY_OPTIONS

PREVIEW_LONG_SIDE = 160  # px: the size players show under the seek bar
ANALYSIS_WIDTH = 320  # px: large enough for blur detection, small enough to be cheap
POSTER_LONG_SIDE = 1280  # px: never upscaled
GRID = 10  # previews per sheet row and column (a 1600x900 sheet for 16:9)
MAX_PREVIEWS = 450

# frames this dark/bright (limited-range luma average) or this flat are not posters
MIN_LUMA, MAX_LUMA, MIN_CONTRAST = 40.0, 225.0, 30.0


@dataclass
class FrameStats:
    index: int
    luma: float = 0.0
    low: float = 0.0
    high: float = 0.0
    blur: float = math.inf

    @property
    def usable(self) -> bool:
        return (MIN_LUMA <= self.luma <= MAX_LUMA and self.high - self.low >= MIN_CONTRAST
                and math.isfinite(self.blur))


def preview_interval(duration: float) -> float:
    """Seconds between previews: fine for short videos, at most MAX_PREVIEWS per video."""
    if duration <= 120:
        return 1.0
    if duration <= 900:
        return 2.0
    return float(max(2, math.ceil(duration / MAX_PREVIEWS)))


def _even(x: float) -> int:
    return max(2, int(round(x / 2)) * 2)


def fit(display_w: int, display_h: int, long_side: int) -> tuple[int, int]:
    """Even dimensions with the display aspect, long side at most `long_side`, never upscaled."""
    long_side = min(long_side, max(display_w, display_h))
    if display_w >= display_h:
        return _even(long_side), _even(long_side * display_h / display_w)
    return _even(long_side * display_w / display_h), _even(long_side)


def choose_poster(stats: list[FrameStats]) -> FrameStats:
    """The sharpest usable frame, avoiding the very start and end (fades, slates)."""
    if not stats:
        raise PermanentMediaError("the source has no decodable picture")
    n = len(stats)
    inner = [s for s in stats if n < 5 or (0.03 * n <= s.index < 0.95 * n)] or stats
    usable = [s for s in inner if s.usable] or [s for s in stats if s.usable]
    if not usable:
        # nothing passes: take the frame with most contrast, then brightness closest to mid-grey
        return max(stats, key=lambda s: (s.high - s.low, -abs(s.luma - 128)))
    best = min(s.blur for s in usable)
    near = [s for s in usable if s.blur <= best * 1.1 + 0.05]
    return min(near, key=lambda s: abs(s.index - n / 3))


_FRAME = re.compile(r"\bframe:\s*(\d+)\s+pts:")
_VALUE = re.compile(r"\blavfi\.(signalstats\.YAVG|signalstats\.YLOW|signalstats\.YHIGH|blur)=(\S+)")
_FIELDS = {"signalstats.YAVG": "luma", "signalstats.YLOW": "low", "signalstats.YHIGH": "high", "blur": "blur"}


def parse_stats(stderr: str) -> list[FrameStats]:
    """Per-preview statistics from the `metadata=print` lines ffmpeg writes to stderr."""
    frames: dict[int, FrameStats] = {}
    current = None
    for line in stderr.splitlines():
        m = _FRAME.search(line)
        if m:
            current = frames.setdefault(int(m.group(1)), FrameStats(int(m.group(1))))
            continue
        m = _VALUE.search(line)
        if m and current is not None:
            try:
                value = float(m.group(2))
            except ValueError:
                value = math.nan
            if math.isnan(value):
                value = math.inf if m.group(1) == "blur" else 0.0
            setattr(current, _FIELDS[m.group(1)], value)
    return [frames[i] for i in sorted(frames)]


def _timestamp(t: float) -> str:
    ms = int(round(t * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}"


def render_vtt(count: int, interval: float, duration: float, w: int, h: int, columns: int,
               per_sheet: int, sheet_name: str = "sprite_{:03d}.jpg") -> str:
    """WebVTT index: one cue per preview, its sheet and `#xywh=` region."""
    lines = ["WEBVTT", ""]
    for i in range(count):
        start = i * interval
        if start >= duration:
            break
        end = min(duration, (i + 1) * interval) if i < count - 1 else duration
        sheet, slot = divmod(i, per_sheet)
        x, y = (slot % columns) * w, (slot // columns) * h
        lines += [f"{_timestamp(start)} --> {_timestamp(end)}",
                  f"{sheet_name.format(sheet)}#xywh={x},{y},{w},{h}", ""]
    return "\n".join(lines)


def make_thumbnails(source_url: str, output_url: str) -> dict:
    """Poster + timeline sprite sheets + WebVTT index for `source_url`, published under
    `output_url`. See the module docstring for the contract."""
    settings = get_settings()
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    with storage.local_copy(source_url, settings.work_dir) as src, \
            tempfile.TemporaryDirectory(dir=settings.work_dir, prefix="thumbs-") as tmp:
        info = probe_path(src)
        if not info.duration or info.duration <= 0:
            raise PermanentMediaError("the source has no duration; cannot place previews")
        duration = info.duration
        interval = preview_interval(duration)
        expected = max(1, math.ceil(duration / interval))
        pw, ph = fit(info.display_width, info.display_height, PREVIEW_LONG_SIDE)
        columns = min(GRID, expected)
        rows = min(GRID, math.ceil(expected / columns))
        out = Path(tmp)
        (out / "thumbs").mkdir()
        # One decode: previews go to the sheets; the same frames, a little larger, are measured
        # (brightness, contrast, blur) to pick the poster. Only the video stream is read.
        graph = (
            f"[0:v:0]fps=1/{interval},setsar=1,split=2[p][m];"
            f"[p]scale={pw}:{ph}:flags=bicubic,setsar=1,tile={columns}x{rows}[sheets];"
            f"[m]scale={ANALYSIS_WIDTH}:-2,signalstats,blurdetect,"
            "metadata=print:key=lavfi.signalstats.YAVG,metadata=print:key=lavfi.signalstats.YLOW,"
            "metadata=print:key=lavfi.signalstats.YHIGH,metadata=print:key=lavfi.blur[stats]"
        )
        stderr = ffmpeg.run(
            [*ffmpeg.SAFE_INPUT, "-i", str(src), "-an", "-sn", "-dn", "-filter_complex", graph,
             "-map", "[sheets]", "-q:v", "5", "-start_number", "0",
             str(out / "thumbs" / "sprite_%03d.jpg"),
             "-map", "[stats]", "-f", "null", "-"],
            timeout=settings.ffmpeg_timeout, what="ffmpeg (previews)",
        )
        stats = parse_stats(stderr)
        sheets = sorted((out / "thumbs").glob("sprite_*.jpg"))
        if not stats or not sheets:
            raise PermanentMediaError("no picture could be decoded for previews")
        count = min(len(stats), len(sheets) * columns * rows)
        poster = choose_poster(stats[:count])
        poster_time = min(poster.index * interval, max(0.0, duration - 0.1))
        vw, vh = fit(info.display_width, info.display_height, POSTER_LONG_SIDE)
        ffmpeg.run(
            [*ffmpeg.SAFE_INPUT, "-ss", f"{poster_time:.3f}", "-i", str(src), "-an", "-sn", "-dn",
             "-frames:v", "1", "-vf", f"scale={vw}:{vh}:flags=lanczos,setsar=1", "-q:v", "3",
             str(out / "poster.jpg")],
            timeout=min(settings.ffmpeg_timeout, 600), what="ffmpeg (poster)",
        )
        if not (out / "poster.jpg").is_file():
            raise PermanentMediaError(f"no picture at {poster_time:.1f} s for the poster")
        (out / "thumbs" / "thumbs.vtt").write_text(
            render_vtt(count, interval, duration, pw, ph, columns, columns * rows), encoding="utf-8")
        published = storage.publish_dir(out, output_url)
    return {
        "poster_url": storage.join(output_url, "poster.jpg"),
        "thumbnails_url": storage.join(output_url, "thumbs", "thumbs.vtt"),
        "sprite_urls": [u for u in published if u.endswith(".jpg") and "/thumbs/" in u],
        "interval": interval,
        "count": count,
        "width": pw,
        "height": ph,
        "columns": columns,
        "rows": rows,
        "poster_time": round(poster_time, 3),
    }


@task(name="thumbnails", task_run_name="thumbnails {label}", cache_policy=NO_CACHE, **RETRY_OPTIONS)
def thumbnails_task(source_url: str, output_url: str, label: str = "") -> dict:
    """`make_thumbnails` as a Prefect task on the cluster, retried when transient."""
    return make_thumbnails(source_url, output_url)
