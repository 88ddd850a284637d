"""Check a chunk's segments of a rung before they are stored. A failed check fails the rung
with the reason (the flow records it and publishes what came before).

What is checked, per chunk and rung, from the segments themselves (one ffprobe over the chunk's
segments, packet headers only):
- the segments the plan asked for, each with exactly its frames and opening with a keyframe, so
  segment N covers the same frames in every rung;
- no audio in a video segment (the audio is its own rendition);
- the picture: H.264 High, yuv420p (an HEVC rung: Main, or Main 10 in yuv420p10le, at most its
  level), the rung's size, square pixels.
The whole rung is then checked by arithmetic over what the chunks measured
(`tasks.package.check_rung_totals`), with no second read of its segments.
"""

from __future__ import annotations

from pathlib import Path

from tasks import ffmpeg
from tasks.ffmpeg import hevc_codecs, init_digest
from tasks.ladder import HEVC


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
