"""Check a packaged rung before it is published. A failed check fails the rung with the reason.

What is checked, from the stored segments themselves (one ffprobe over all of them):
- the frame count equals the source's, and the duration is within one frame of it;
- every segment starts with a keyframe, at the frame the split planned (so segment boundaries
  are identical across rungs: every rung is held to the same list);
- no segment is longer than the target duration;
- audio and video start within one frame of each other (the AAC priming counted);
- the picture: H.264 High, yuv420p (an HEVC rung: Main, or Main 10 in yuv420p10le, at most its
  level), the rung's size, square pixels.
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
from pathlib import Path

import m3u8
from prefect import task
from prefect.cache_policies import NO_CACHE

from config import storage
from config.settings import get_settings
from tasks import ffmpeg
from tasks.audio import AAC_PRIMING_SECONDS
from tasks.ladder import HEVC
from tasks.package import hevc_codecs, init_digest
from tasks.retry import RETRY_OPTIONS
from tasks.split import _logger

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _local_segments(playlist_url: str, names: list[str], workdir: Path):
    base = playlist_url.rsplit("/", 1)[0]
    urls = [storage.join(base, n) for n in names]
    if storage.is_local(playlist_url):
        yield [str(storage.local_path_of(u)) for u in urls]
        return
    with tempfile.TemporaryDirectory(dir=workdir, prefix="validate-") as tmp:
        paths = []
        for u in urls:
            p = Path(tmp) / Path(u).name
            storage.get_file(u, p)
            paths.append(str(p))
        yield paths


def picture_reasons(meta: dict, rung: dict) -> tuple[list[str], dict]:
    """What is wrong with the picture of a segment (ffprobe's streams), and its level."""
    reasons: list[str] = []
    measured: dict = {}
    v = next((st for st in meta.get("streams", []) if st.get("codec_type") == "video"), None)
    if v is None:
        return ["the segment has no video"], measured
    hevc = rung.get("codec") == HEVC
    want = ("hevc", "main 10" if rung.get("profile") == "main10" else "main") if hevc else ("h264", "high")
    if v.get("codec_name") != want[0] or (v.get("profile") or "").lower() != want[1]:
        reasons.append(f"video is {v.get('codec_name')} {v.get('profile')}, not "
                       + ("HEVC " + ("Main 10" if want[1] == "main 10" else "Main") if hevc else "H.264 High"))
    pix = "yuv420p10le" if want[1] == "main 10" else "yuv420p"
    if v.get("pix_fmt") != pix:
        reasons.append(f"pixel format {v.get('pix_fmt')}, not {pix}")
    if (int(v.get("width", 0)), int(v.get("height", 0))) != (rung["width"], rung["height"]):
        reasons.append(f"picture {v.get('width')}x{v.get('height')}, expected {rung['width']}x{rung['height']}")
    sar = v.get("sample_aspect_ratio") or "1:1"
    if sar not in ("1:1", "0:1", "N/A"):
        reasons.append(f"sample aspect ratio {sar}, not square pixels")
    level = int(v.get("level") or 0)
    if hevc:
        # HEVC's level_idc is 30 times the level (150 is 5.0)
        if level > int(round(float(rung["level"]) * 30)):
            reasons.append(f"HEVC level {level / 30:.1f} is above the rung's {rung['level']}")
    elif level > 42:
        reasons.append(f"H.264 level {level / 10:.1f} is above 4.2")
    measured["level"] = level
    return reasons, measured


def check_chunk_segments(paths: list[str], rung: dict, segment_frames: list[int], *, first_segment: int,
                         timeout: float, init: str | None = None) -> dict:
    """Per-chunk validation of one rung's segments, before they are published: the segments
    the plan asked for, each with exactly its frames and opening with a keyframe (so segment N
    has the same frames in every rung), the picture the rung promises, no audio (audio is its
    own rendition). Reads packet headers only, no decode. Returns {ok, reasons, frames: [per
    segment], sizes: [bytes per segment]}; with `init` (fragmented MP4: the segments are read
    behind it) also the init segment's `init` digest and the `codecs` it declares."""
    reasons: list[str] = []
    if len(paths) != len(segment_frames):
        reasons.append(f"{len(paths)} segments, expected {len(segment_frames)}")
    head = [init] if init else []
    extra: dict = {}
    if init:
        try:
            extra = {"init": init_digest(init), "codecs": hevc_codecs(Path(init).read_bytes())}
        except ValueError as exc:
            reasons.append(f"init segment: {exc}")
    if paths and head:
        meta = ffmpeg.probe_json("concat:" + "|".join(head + paths[:1]), timeout=timeout,
                                 protocols="concat,file,pipe")
    else:
        meta = ffmpeg.probe_json(paths[0], timeout=timeout) if paths else {}
    pic, measured = picture_reasons(meta, rung) if paths else (["no segments"], {})
    reasons += pic
    if any(st.get("codec_type") == "audio" for st in meta.get("streams", [])):
        reasons.append("a video segment carries audio")
    # every packet of the chunk's segments in one ffprobe (concat over our own files), each
    # placed in its segment by byte position
    sizes = [Path(p).stat().st_size for p in paths]
    bounds, total = [], sum(Path(p).stat().st_size for p in head)
    for sz in sizes:
        bounds.append(total)
        total += sz
    counts, first_key = [0] * len(paths), [None] * len(paths)
    seg = 0
    if paths:
        for row in ffmpeg.iter_probe_rows("concat:" + "|".join(head + paths), timeout=timeout, entries="pos,flags",
                                          protocols="concat,file,pipe"):
            if len(row) < 2 or row[0] in ("N/A", ""):
                continue
            pos = int(row[0])
            while seg + 1 < len(bounds) and pos >= bounds[seg + 1]:
                seg += 1
            if first_key[seg] is None:
                first_key[seg] = "K" in row[1]
            counts[seg] += 1
    for k, (got, want, key) in enumerate(zip(counts, segment_frames, first_key)):
        if got != want:
            reasons.append(f"segment {first_segment + k} has {got} frames, expected {want}")
        if not key:
            reasons.append(f"segment {first_segment + k} does not start with a keyframe")
    return {"ok": not reasons, "reasons": reasons[:10], "frames": counts, "sizes": sizes, **measured, **extra}


def validate_rung_fn(playlist_url: str, *, rung: dict, frames: int, duration: float, frame_interval: float,
                     segment_starts: list[int], has_audio: bool, segment_seconds: float | None = None) -> dict:
    """Returns {"ok": bool, "reasons": [...], "measured": {...}}; never raises for a bad rung."""
    settings = get_settings()
    logger = _logger()
    segment_seconds = segment_seconds or settings.segment_seconds
    reasons: list[str] = []
    text = storage.read_text(playlist_url)
    pl = m3u8.loads(text)
    names = [s.uri for s in pl.segments]
    if not pl.is_endlist or (pl.playlist_type or "").upper() != "VOD":
        reasons.append("playlist is not a finished VOD playlist")
    if "#EXT-X-INDEPENDENT-SEGMENTS" not in text:
        reasons.append("playlist lacks EXT-X-INDEPENDENT-SEGMENTS")
    if (pl.version or 1) < 3:
        reasons.append(f"playlist version {pl.version} is below 3")
    target = pl.target_duration or 0
    if target > math.ceil(segment_seconds):
        reasons.append(f"target duration {target} s is over the configured {segment_seconds:g} s")
    for s in pl.segments:
        if round(s.duration) > target:
            reasons.append(f"{s.uri} lasts {s.duration:.3f} s, over the target duration {target} s")
            break
    if len(names) != len(segment_starts):
        reasons.append(f"{len(names)} segments, expected {len(segment_starts)}")
    measured: dict = {"segments": len(names)}
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    with _local_segments(playlist_url, names, settings.work_dir) as paths:
        # picture properties from the first segment
        meta = ffmpeg.probe_json(paths[0], timeout=settings.probe_timeout)
        v = next((s for s in meta.get("streams", []) if s.get("codec_type") == "video"), None)
        a = next((s for s in meta.get("streams", []) if s.get("codec_type") == "audio"), None)
        if v is None:
            reasons.append("first segment has no video")
        else:
            if v.get("codec_name") != "h264" or (v.get("profile") or "").lower() != "high":
                reasons.append(f"video is {v.get('codec_name')} {v.get('profile')}, not H.264 High")
            if v.get("pix_fmt") != "yuv420p":
                reasons.append(f"pixel format {v.get('pix_fmt')}, not yuv420p")
            if (int(v.get("width", 0)), int(v.get("height", 0))) != (rung["width"], rung["height"]):
                reasons.append(f"picture {v.get('width')}x{v.get('height')}, expected {rung['width']}x{rung['height']}")
            sar = v.get("sample_aspect_ratio") or "1:1"
            if sar not in ("1:1", "0:1", "N/A"):
                reasons.append(f"sample aspect ratio {sar}, not square pixels")
            level = int(v.get("level") or 0)
            if level > 42:
                reasons.append(f"H.264 level {level / 10:.1f} is above 4.2")
            measured["level"] = level
        if has_audio:
            if a is None:
                reasons.append("no audio track although the source has audio")
            elif a.get("codec_name") != "aac" or int(a.get("sample_rate") or 0) != 48000 or int(a.get("channels") or 0) != 2:
                reasons.append(f"audio is {a.get('codec_name')} {a.get('sample_rate')} Hz {a.get('channels')} ch, "
                               "not AAC 48 kHz stereo")
        elif a is not None:
            reasons.append("audio track present although the source is silent")
        index = {int(s["index"]): s.get("codec_type") for s in meta.get("streams", [])}
        # every packet of every segment, in one pass: the concat protocol over our own files
        sizes = [Path(p).stat().st_size for p in paths]
        bounds = []
        total = 0
        for sz in sizes:
            bounds.append(total)
            total += sz
        concat = "concat:" + "|".join(paths)
        seg_first_video: list[tuple[int, bool, float] | None] = [None] * len(paths)
        seg_min_pts: list[float] = [math.inf] * len(paths)
        vcount = 0
        first_v = first_a = math.inf
        last_v = -math.inf
        seg = 0
        for row in ffmpeg.iter_probe_rows(concat, timeout=settings.ffmpeg_timeout, stream=None,
                                          entries="stream_index,pts_time,pos,flags",
                                          protocols="concat,file,pipe"):
            if len(row) < 4 or row[1] in ("N/A", "") or row[2] in ("N/A", ""):
                continue
            kind = index.get(int(row[0]))
            pts, pos, key = float(row[1]), int(row[2]), "K" in row[3]
            while seg + 1 < len(bounds) and pos >= bounds[seg + 1]:
                seg += 1
            if kind == "video":
                if seg_first_video[seg] is None:
                    seg_first_video[seg] = (vcount, key, pts)
                seg_min_pts[seg] = min(seg_min_pts[seg], pts)
                vcount += 1
                first_v = min(first_v, pts)
                last_v = max(last_v, pts)
            elif kind == "audio":
                first_a = min(first_a, pts)
    measured.update(frames=vcount)
    if vcount != frames:
        reasons.append(f"{vcount} frames, the source has {frames}")
    if vcount:
        got = last_v - first_v + frame_interval
        measured["duration"] = round(got, 6)
        if abs(got - duration) > frame_interval + 1e-3:
            reasons.append(f"duration {got:.3f} s, the source lasts {duration:.3f} s")
    for i, first in enumerate(seg_first_video):
        if first is None:
            reasons.append(f"segment {i} has no video")
            continue
        idx, key, _ = first
        if not key:
            reasons.append(f"segment {i} does not start with a keyframe")
        if i < len(segment_starts) and idx != segment_starts[i]:
            reasons.append(f"segment {i} starts at frame {idx}, expected frame {segment_starts[i]} "
                           "(boundaries would differ between rungs)")
    # real segment lengths, from the pictures' own timestamps
    starts = [p for p in seg_min_pts if p != math.inf]
    lengths = [b - a for a, b in zip(starts, starts[1:])]
    if starts:
        lengths.append(last_v + frame_interval - starts[-1])
    longest = max(lengths) if lengths else 0.0
    measured["longest_segment"] = round(longest, 6)
    if longest > segment_seconds + frame_interval / 2 + 1e-3:
        reasons.append(f"a segment lasts {longest:.3f} s, longer than the target {segment_seconds:g} s")
    if has_audio and first_a != math.inf and first_v != math.inf:
        skew = (first_a + AAC_PRIMING_SECONDS) - first_v
        measured["av_skew"] = round(skew, 6)
        if abs(skew) > frame_interval + 1e-3:
            reasons.append(f"audio starts {skew * 1000:+.1f} ms from the video, more than one frame")
    # de-duplicate while keeping order; cap the list so a broken rung stays readable
    seen, uniq = set(), []
    for r in reasons:
        if r not in seen:
            seen.add(r)
            uniq.append(r)
    ok = not uniq
    (logger.info if ok else logger.warning)("validate %s: %s", rung["name"], "ok" if ok else "; ".join(uniq[:5]))
    return {"name": rung["name"], "ok": ok, "reasons": uniq[:10], "measured": measured}


@task(name="validate", task_run_name="validate {rung_name}", cache_policy=NO_CACHE, **RETRY_OPTIONS)
def validate_rung(playlist_url: str, rung: dict, frames: int, duration: float, frame_interval: float,
                  segment_starts: list[int], has_audio: bool, segment_seconds: float | None = None,
                  rung_name: str = "") -> dict:
    return validate_rung_fn(playlist_url, rung=rung, frames=frames, duration=duration,
                            frame_interval=frame_interval, segment_starts=segment_starts, has_audio=has_audio,
                            segment_seconds=segment_seconds)
