"""Poster and timeline previews, taken from frames a decode already has in hand.

The ingest flow does not decode the source a second time for them: each chunk encode adds a
branch to its filtergraph (`preview_graph`) that picks the frame at or after every multiple
of the preview interval, writes it small for the sprite sheets and at poster size as a
candidate, and measures it; the chunk stores those few files in the run's scratch space
(`upload_previews`). Once every chunk is encoded, `assemble_thumbnails` tiles the sheets,
picks the poster from the measurements and publishes. `make_thumbnails` does the same for a
source on its own (one pass over it).

Contract of what is published (what the flow and the player rely on):

* under the run folder the HLS output goes to (`…/hls/{id}/{run}`): `poster.jpg`,
  `thumbs/sprite_NNN.jpg` and `thumbs/thumbs.vtt`, images first and the WebVTT index last, so
  a reader never sees an index pointing at missing sheets;
* returned, a small dict (no bytes): `poster_url` and `thumbnails_url` (the storage URLs the
  flow stores in `Video.poster_url` / `Video.thumbnails_url`), `sprite_urls`, `interval`
  (seconds between previews), `count`, `width`/`height` of one preview, `columns`/`rows` of a
  sheet, `poster_time` (seconds into the video the poster shows);
* everything moves by storage URL, so any Dask worker can run any step; nothing here
  touches the catalog. `PermanentMediaError` when there is no decodable picture.

The poster avoids black, washed-out and flat frames (fades, slates) and, among the rest,
takes the sharpest one (ffmpeg's `blurdetect`: lower is sharper), preferring the first third
of the video on near ties, where the subject is usually introduced.
"""

from __future__ import annotations

import math
import re
import tempfile
from fractions import Fraction
from dataclasses import dataclass
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from config import storage
from config.settings import get_settings
from tasks import ffmpeg
from tasks.ffmpeg import PermanentMediaError
from tasks.probe import probe_path
from tasks.retry import RETRY_OPTIONS, check_lease

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
    time: float = 0.0  # seconds, on the analysed stream's clock
    pts: int | None = None  # exact, in the analysed stream's time base

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


_FRAME = re.compile(r"\bframe:\s*(\d+)\s+pts:\s*(\S+)\s+pts_time:\s*(\S+)")
_VALUE = re.compile(r"\blavfi\.(signalstats\.YAVG|signalstats\.YLOW|signalstats\.YHIGH|blur)=(\S+)")
_FIELDS = {"signalstats.YAVG": "luma", "signalstats.YLOW": "low", "signalstats.YHIGH": "high", "blur": "blur"}


def parse_stats(text: str) -> list[FrameStats]:
    """Per-frame statistics from what ffmpeg's `metadata=print` writes."""
    frames: dict[int, FrameStats] = {}
    current = None
    for line in text.splitlines():
        m = _FRAME.search(line)
        if m:
            current = frames.setdefault(int(m.group(1)), FrameStats(int(m.group(1))))
            try:
                current.time = float(m.group(3))  # printed to 6 significant digits only
                current.pts = int(m.group(2))
            except ValueError:
                pass
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


def preview_plan(duration: float, display_w: int, display_h: int) -> dict:
    """Where previews fall and how big they are, for a video of `duration` seconds: preview k
    shows the frame at or just after k * interval. A plain dict, so it travels to workers."""
    if not duration or duration <= 0:
        raise PermanentMediaError("the source has no duration; cannot place previews")
    interval = preview_interval(duration)
    count = max(1, math.ceil(duration / interval - 1e-9))
    pw, ph = fit(display_w, display_h, PREVIEW_LONG_SIDE)
    vw, vh = fit(display_w, display_h, POSTER_LONG_SIDE)
    columns = min(GRID, count)
    rows = min(GRID, math.ceil(count / columns))
    return {"interval": interval, "count": count, "duration": duration, "width": pw, "height": ph,
            "poster_width": vw, "poster_height": vh, "columns": columns, "rows": rows}


def preview_targets(plan: dict, start: float, end: float, half_frame: float) -> list[tuple[int, float]]:
    """The previews whose frame lies in [start, end) of the global timeline (a chunk), as
    (index, time relative to `start` from which the first frame is taken). Preview k shows the
    first frame at or after k * interval - half a frame, so it belongs to the chunk when
    start - half <= k * interval < end - half: every preview to exactly one chunk, the same
    rule on both sides of a join."""
    interval = plan["interval"]
    out = []
    k = max(0, math.ceil((start - half_frame) / interval - 1e-9))
    while k < plan["count"] and k * interval < end - half_frame - 1e-9:
        out.append((k, max(0.0, k * interval - start - half_frame)))
        k += 1
    return out


STATS_FILE = "preview-stats.txt"


def preview_graph(source: str, targets: list[tuple[int, float]], plan: dict) -> tuple[str, list[str]]:
    """A filtergraph fragment taking frames from the link `source` (timestamps relative to the
    targets' origin) and the ffmpeg output arguments it needs: small previews for the sheets,
    poster candidates, and the statistics the poster is chosen by (brightness, contrast and
    blur, written to STATS_FILE in the working directory). It adds a few scaled frames per
    chunk to a decode that happens anyway; the run needs no second pass over the source."""
    # the first frame at or after each target: select sees every frame's time and its
    # predecessor's; one frame can stand for two targets only across a gap in a VFR source
    terms = "+".join(f"gte(t\\,{t:.6f})*(isnan(prev_t)+lt(prev_t\\,{t:.6f}))" for _, t in targets)
    graph = (f"{source}select=gt({terms}\\,0),setsar=1,split=3[pv_sheet][pv_stat][pv_poster];"
             f"[pv_sheet]scale={plan['width']}:{plan['height']}:flags=bicubic,setsar=1[pv_sheet_out];"
             f"[pv_stat]scale={ANALYSIS_WIDTH}:-2,signalstats,blurdetect,metadata=print:file={STATS_FILE}[pv_stat_out];"
             f"[pv_poster]scale={plan['poster_width']}:{plan['poster_height']}:flags=lanczos,setsar=1[pv_poster_out]")
    outputs = [
        "-map", "[pv_sheet_out]", "-fps_mode", "passthrough", "-c:v", "png", "-start_number", "0",
        "-f", "image2", "preview_%06d.png",
        "-map", "[pv_poster_out]", "-fps_mode", "passthrough", "-q:v", "3", "-start_number", "0",
        "-f", "image2", "poster_%06d.jpg",
        "-map", "[pv_stat_out]", "-fps_mode", "passthrough", "-f", "null", "-",
    ]
    return graph, outputs


def read_previews(folder: Path, targets: list[tuple[int, float]], time_base: Fraction | None = None) -> list[dict]:
    """After the ffmpeg run of `preview_graph` in `folder`: one entry per target with its files
    and statistics, in index order. With the stream's `time_base`, frame times come from the
    exact pts (ffmpeg prints pts_time to 6 significant digits, too coarse past 1000 s)."""
    stats_path = folder / STATS_FILE
    frames = parse_stats(stats_path.read_text(errors="replace") if stats_path.exists() else "")
    if not frames:
        raise PermanentMediaError("no picture could be decoded for previews")
    if time_base is not None:
        for f in frames:
            if f.pts is not None:
                f.time = float(f.pts * time_base)
    out = []
    i = 0
    for k, t in targets:
        # the selected frame for target t is the first one at or after it
        while i < len(frames) - 1 and frames[i].time < t - 1e-6:
            i += 1
        f = frames[i]
        out.append({"index": k, "preview": str(folder / f"preview_{f.index:06d}.png"),
                    "poster": str(folder / f"poster_{f.index:06d}.jpg"),
                    "luma": f.luma, "low": f.low, "high": f.high,
                    "blur": f.blur if math.isfinite(f.blur) else None})
    return out


def upload_previews(previews: list[dict], url: str) -> list[dict]:
    """Store a chunk's previews under `url` (the run's scratch space); returns them by URL."""
    out = []
    for p in previews:
        k = p["index"]
        entry = {key: v for key, v in p.items() if key not in ("preview", "poster")}
        entry["preview_url"] = storage.join(url, f"preview_{k:06d}.png")
        entry["poster_url"] = storage.join(url, f"poster_{k:06d}.jpg")
        storage.put_file(p["preview"], entry["preview_url"])
        storage.put_file(p["poster"], entry["poster_url"])
        out.append(entry)
    return out


def assemble_thumbnails(previews: list[dict], output_url: str, plan: dict, lease_url: str | None = None) -> dict:
    """Sprite sheets, WebVTT index and poster from every chunk's stored previews, published
    under `output_url`. See the module docstring for what is returned."""
    settings = get_settings()
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    by_index = {p["index"]: p for p in previews}
    if not by_index:
        raise PermanentMediaError("no picture could be decoded for previews")
    count = max(by_index) + 1
    with tempfile.TemporaryDirectory(dir=settings.work_dir, prefix="thumbs-") as tmp:
        out = Path(tmp) / "publish"
        (out / "thumbs").mkdir(parents=True)
        src = Path(tmp) / "previews"
        src.mkdir()
        last = None
        for k in range(count):
            # a preview a chunk could not give (never expected) repeats its neighbour
            p = by_index.get(k) or last or by_index[min(by_index)]
            storage.get_file(p["preview_url"], src / f"preview_{k:06d}.png")
            last = p
        ffmpeg.run([*ffmpeg.SAFE_INPUT, "-framerate", "1", "-start_number", "0", "-i", str(src / "preview_%06d.png"),
                    "-vf", f"tile={plan['columns']}x{plan['rows']}", "-q:v", "5", "-start_number", "0",
                    str(out / "thumbs" / "sprite_%03d.jpg")],
                   timeout=min(settings.ffmpeg_timeout, 600), what="ffmpeg (sprite sheets)")
        stats = [FrameStats(k, luma=p["luma"], low=p["low"], high=p["high"],
                            blur=math.inf if p.get("blur") is None else p["blur"])
                 for k, p in sorted(by_index.items())]
        poster = choose_poster(stats)
        storage.get_file(by_index[poster.index]["poster_url"], out / "poster.jpg")
        check_lease(lease_url)
        return _publish(out, output_url, plan, count, poster.index * plan["interval"])


def _publish(out: Path, output_url: str, plan: dict, count: int, poster_time: float) -> dict:
    """Write the WebVTT index last and publish the folder; the contract's return value."""
    sheets = sorted((out / "thumbs").glob("sprite_*.jpg"))
    if not sheets or not (out / "poster.jpg").is_file():
        raise PermanentMediaError("no picture could be decoded for previews")
    per_sheet = plan["columns"] * plan["rows"]
    count = min(count, len(sheets) * per_sheet)
    duration = plan["duration"]
    (out / "thumbs" / "thumbs.vtt").write_text(
        render_vtt(count, plan["interval"], duration, plan["width"], plan["height"], plan["columns"], per_sheet),
        encoding="utf-8")
    published = storage.publish_dir(out, output_url)
    return {
        "poster_url": storage.join(output_url, "poster.jpg"),
        "thumbnails_url": storage.join(output_url, "thumbs", "thumbs.vtt"),
        "sprite_urls": [u for u in published if u.endswith(".jpg") and "/thumbs/" in u],
        "interval": plan["interval"],
        "count": count,
        "width": plan["width"],
        "height": plan["height"],
        "columns": plan["columns"],
        "rows": plan["rows"],
        "poster_time": round(min(poster_time, max(0.0, duration - 0.1)), 3),
    }


def make_thumbnails(source_url: str, output_url: str) -> dict:
    """Poster + timeline sprite sheets + WebVTT index for `source_url` on its own, published
    under `output_url` (the ingest flow gets the same from its chunk encodes instead). See the
    module docstring for the contract."""
    settings = get_settings()
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    with storage.local_copy(source_url, settings.work_dir) as src, \
            tempfile.TemporaryDirectory(dir=settings.work_dir, prefix="thumbs-") as tmp:
        info = probe_path(src)
        plan = preview_plan(info.duration or 0.0, info.display_width, info.display_height)
        half = 0.5 / info.frame_rate if info.frame_rate else 0.0
        targets = preview_targets(plan, 0.0, plan["duration"] + 2 * half, half)
        graph, outputs = preview_graph("[0:v:0]settb=1/90000,setpts=PTS-STARTPTS,", targets, plan)
        folder = Path(tmp) / "frames"
        folder.mkdir()
        ffmpeg.run([*ffmpeg.SAFE_INPUT, "-i", str(src), "-an", "-sn", "-dn", "-filter_complex", graph, *outputs],
                   timeout=settings.ffmpeg_timeout, what="ffmpeg (previews)", cwd=folder)
        previews = read_previews(folder, targets, Fraction(1, 90000))
        for p in previews:
            p["preview_url"], p["poster_url"] = p["preview"], p["poster"]
        return assemble_thumbnails(previews, output_url, plan)


@task(name="thumbnails", task_run_name="thumbnails {label}", cache_policy=NO_CACHE, **RETRY_OPTIONS)
def thumbnails_task(previews: list[dict], output_url: str, plan: dict, label: str = "",
                    lease_url: str | None = None) -> dict:
    """`assemble_thumbnails` as a Prefect task on the cluster, retried when transient."""
    return assemble_thumbnails(previews, output_url, plan, lease_url)
