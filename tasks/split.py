"""Split a source at its keyframes into chunks that encode independently.

The source's own packet timestamps are the truth: every chunk records where it sits on the
global timeline (`start`, `end`, seconds from the first displayed frame) and how many frames it
must produce. Chunk containers are never trusted for timing (the segment muxer gives chunk 0
a first pts of the B-frame delay while later chunks start elsewhere), so the encoder selects a
chunk's frames by the source's timestamps and rebases them itself.

Two ways to deliver a chunk's packets to the encoder:
- `copy`: a stream-copy slice of the source from one keyframe to the next. Exact only when the
  keyframe starts a closed GOP: no packet before it (in decode order) is displayed after it and
  no packet after it is displayed before it. Checked per keyframe from the packet list.
- `seek`: the encoder reads the source itself, seeking to the keyframe at or before the chunk
  and dropping earlier frames. Exact wherever the decoder's timestamps are (open GOPs, leading
  pictures, edit lists), but it reads the whole source file; used when no clean keyframe exists,
  when the stream-copy split itself fails, or as a retry when a copy chunk came out with the
  wrong frame count.
- `frames`: the encoder decodes the source from its first frame and keeps the chunk's frames by
  their position in the decoded sequence (not by timestamp). Exact even where the decoder's
  timestamps are guesses; it costs a decode of everything before the chunk, so it is the last
  resort for a chunk of a plan made from decoded frames (see below).

Where the timing comes from (`timing` in the plan):
- `container`: the video packets' presentation timestamps (MP4/MOV, Matroska/WebM, MPEG-TS,
  Ogg, MXF, DV...).
- `decoded`: containers whose timestamps cannot be trusted for cutting - AVI (no presentation
  timestamps at all: B-frames and packed bitstreams carry only decode order), MPEG-PS (a
  timestamp per PES, not per frame), FLV and ASF/WMV (milliseconds, decode order), raw
  elementary streams - or any source with video packets without a timestamp. The plan is then
  made from what the decoder produces (one decoding pass of the source, as ffprobe's frames), no
  stream-copy chunk is made, and chunks are read with an exact seek, falling back to `frames`.
  Frames without any decoder timestamp get `n / frame rate` and go straight to `frames` mode.
"""

from __future__ import annotations

import bisect
import logging
import math
import tempfile
from array import array
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

from distributed import get_worker, secede
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from config import storage
from config.settings import get_settings
from tasks import ffmpeg
from tasks.ffmpeg import PermanentMediaError
from tasks.retry import RETRY_OPTIONS

log = logging.getLogger(__name__)

MIN_CHUNK_SECONDS = 4.0
MAX_CHUNK_SECONDS = 30.0
CHUNKS_PER_WORKER = 4
# segments in the first chunk: a short first chunk publishes the first segments early
FIRST_CHUNK_SEGMENTS = 1
# CPU priority of the stream-copy slicing (nice): it runs beside the fast lane and the audio,
# which a viewer waits for; the chunk encodes that need the slices come after those anyway
SLICE_NICE = 10

# ffprobe format names whose video timestamps are not presentation times of every frame:
# AVI (decode order only), MPEG-PS (one timestamp per PES), FLV/ASF (milliseconds, and
# decode-order for B-frames), and raw elementary streams (no container clock at all)
DECODED_TIMING_FORMATS = {
    "avi", "mpeg", "vob", "svcd", "vcd", "dvd", "flv", "asf", "h261", "h263", "h264", "hevc", "m4v",
    "mpegvideo", "mpeg1video", "mpeg2video", "cavsvideo", "vc1", "avs2", "avs3", "mjpeg", "rawvideo",
    "ivf", "obu", "dirac", "yuv4mpegpipe",
}


@dataclass
class Chunk:
    index: int
    count: int
    mode: str  # "copy" | "seek" | "frames"
    start: float  # seconds from the first displayed frame (global timeline)
    end: float
    frames: int  # frames this chunk must produce
    first_frame: int  # index of its first frame in the whole video
    key_pts: float  # source pts (seconds) of the keyframe the chunk's packets start at
    source_start: float  # source pts (seconds) of the first frame to keep
    source_end: float  # source pts (seconds) of the first frame NOT to keep (or +inf sentinel)
    half_frame: float  # half the smallest frame interval near the chunk (selection margin)
    url: str | None = None  # the copy slice, for mode "copy"
    reason: str = ""  # why seek mode, when it is
    timing: str = "container"  # the plan's timing: "decoded" means first_frame counts decoder output
    first_segment: int = 0  # index of the chunk's first HLS segment (chunks start on segment starts)
    segment_frames: list = field(default_factory=list)  # frames of each of the chunk's segments
    # chunk-relative times of the frames inside the chunk (after its first) that must be keyframes
    keyframes: list = field(default_factory=list)
    # decode index of the packet a stream-copy slice starts at (-1: no slice starts here)
    slice_at: int = -1

    @property
    def duration(self) -> float:
        return self.end - self.start

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Chunk":
        return cls(**d)


@dataclass
class SplitPlan:
    frames: int  # frames in the whole video (what every rung must have)
    duration: float  # first displayed frame to end of the last one
    t0: float  # source pts (seconds) of the first displayed frame
    frame_rate: str  # "30000/1001" (average)
    cfr: bool  # every frame interval equal: output timestamps can be rebuilt exactly
    frame_interval: float  # typical (median) frame interval, seconds
    segment_starts: list[int]  # index of the first frame of each HLS segment
    segment_times: list[float]  # their times on the global timeline
    keyframe_times: list[float]  # global times where every rung must have a keyframe
    chunks: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    timing: str = "container"  # "container" | "decoded": where the frame times came from

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# reading the source's packets


@dataclass
class Packets:
    """Video packets of the source in decode order (compact arrays, not dicts)."""

    time_base: Fraction
    pts: array  # int64 ticks (dts when pts is missing)
    key: bytearray
    discard: bytearray
    missing_pts: int = 0  # packets that had only a decode timestamp (or none)
    format_name: str = ""

    def __len__(self) -> int:
        return len(self.pts)

    def seconds(self, ticks: int | float) -> float:
        return float(ticks * self.time_base)


def read_packets(path: str | Path, stream_index: int | None = None) -> Packets:
    settings = get_settings()
    sel = f"{stream_index}" if stream_index is not None else "v:0"
    meta = ffmpeg.probe_json(path, timeout=settings.probe_timeout,
                             extra=["-select_streams", sel, "-show_entries", "stream=time_base:format=format_name"])
    streams = meta.get("streams") or []
    if not streams:
        raise PermanentMediaError("no video stream to split")
    time_base = Fraction(streams[0].get("time_base") or "1/90000")
    pts, key, discard = array("q"), bytearray(), bytearray()
    missing = no_pts = 0
    # ffprobe prints entries in its own order (pts, dts, flags), whatever order we ask in
    for row in ffmpeg.iter_probe_rows(path, timeout=settings.ffmpeg_timeout, stream=sel,
                                      entries="pts,dts,flags"):
        if len(row) < 3:
            continue
        p, d, flags = row[0], row[1], row[2]
        value = p if p not in ("N/A", "") else d
        if p in ("N/A", ""):
            no_pts += 1
        if value in ("N/A", ""):
            missing += 1
            continue
        pts.append(int(value))
        key.append(1 if "K" in flags else 0)
        discard.append(1 if "D" in flags else 0)
    if not pts:
        raise PermanentMediaError("the video stream has no readable frames; the file may be corrupt")
    if missing:
        log.warning("%d video packets without timestamps were ignored", missing)
    return Packets(time_base, pts, key, discard, missing_pts=no_pts,
                   format_name=str((meta.get("format") or {}).get("format_name") or ""))


def needs_decoded_timing(pk: Packets) -> str | None:
    """Why the container's timestamps cannot be trusted for cutting this source (or None)."""
    names = set(pk.format_name.split(","))
    if names & DECODED_TIMING_FORMATS:
        return f"the {pk.format_name} container does not give every frame a presentation time"
    if pk.missing_pts:
        return f"{pk.missing_pts} of {len(pk)} video packets have no presentation timestamp"
    return None


@dataclass
class DecodedFrames:
    """The source's frames as the decoder outputs them (display order)."""

    packets: Packets  # pts = the decoder's timestamp of each frame, key = keyframe
    regenerated: bool  # some frames had no timestamp: times are n / rate
    stream_start: float  # seconds: the stream's first decode timestamp (where frame 0 is shown
    # when the container has no presentation times)


def read_decoded_frames(path: str | Path, pk: Packets, stream_index: int | None = None,
                        avg_frame_rate: str | None = None) -> DecodedFrames:
    """Decode the video once (ffprobe's frames: the same decoder and timestamps ffmpeg's
    filters see) and return every frame's timestamp and keyframe flag, in output order."""
    settings = get_settings()
    sel = f"{stream_index}" if stream_index is not None else "v:0"
    times: list[int | None] = []
    key = bytearray()
    try:
        # printed in ffprobe's own order: key_frame, then best_effort_timestamp
        for row in ffmpeg.iter_probe_rows(path, timeout=settings.ffmpeg_timeout, section="frame",
                                          entries="key_frame,best_effort_timestamp", stream=sel):
            if len(row) < 2 or row[0] not in ("0", "1"):
                continue  # side data lines
            value = row[1]
            times.append(int(value) if value not in ("N/A", "") else None)
            key.append(1 if row[0] == "1" else 0)
    except PermanentMediaError as exc:
        raise PermanentMediaError(f"ffmpeg cannot decode the video in this file: {exc.detail.splitlines()[-1] if exc.detail else exc}; "
                                  "the file is damaged or incomplete - re-export it and upload again",
                                  exc.detail, exc.returncode) from None
    if not times:
        raise PermanentMediaError("ffmpeg decodes no picture from this file's video stream; the file is damaged "
                                  "or incomplete - re-export it and upload again")
    tb = pk.time_base
    # frames flushed out of a B-frame decoder at the end can come without any timestamp: ffmpeg
    # shows them one frame interval after the previous one, and so does the plan
    trailing = 0
    while trailing < len(times) and times[-1 - trailing] is None:
        trailing += 1
    timed = [t for t in times if t is not None]
    regenerated = (len(timed) + trailing != len(times) or len(timed) < 2 or len(set(timed)) != len(timed)
                   or any(b <= a for a, b in zip(timed, timed[1:])))
    if trailing and not regenerated:
        step = sorted(b - a for a, b in zip(timed, timed[1:]))[(len(timed) - 1) // 2]
        times = timed + [timed[-1] + step * (i + 1) for i in range(trailing)]
    if regenerated:
        rate = Fraction(avg_frame_rate) if avg_frame_rate and Fraction(avg_frame_rate) > 0 else Fraction(25)
        first = next((t for t in times if t is not None), 0)
        # n / rate from the first frame, in ticks of the stream's time base (or finer)
        tick = min(tb, Fraction(1, 90000))
        tb = tick
        base = int(first * pk.time_base / tick)
        ticks = array("q", (base + int(round(i / rate / tick)) for i in range(len(times))))
    else:
        ticks = array("q", times)
    stream_start = pk.seconds(min(pk.pts)) if len(pk) else 0.0
    return DecodedFrames(Packets(tb, ticks, key, bytearray(len(ticks)), format_name=pk.format_name),
                         regenerated, stream_start)


# ---------------------------------------------------------------------------------------------
# planning (pure functions: tested without ffmpeg)


def target_chunk_seconds(duration: float, workers: int, keyframe_seconds: float) -> float:
    """Enough chunks to keep every worker busy to the end (several per worker, so the last
    ones are short and the tail is even), few enough that per-chunk start-up stays small."""
    workers = max(1, workers)
    target = duration / (CHUNKS_PER_WORKER * workers)
    return min(MAX_CHUNK_SECONDS, max(MIN_CHUNK_SECONDS, keyframe_seconds, target))


def clean_keyframes(pk: Packets) -> list[int]:
    """Decode-order indices of keyframes that start a closed GOP: a stream-copy cut there
    puts exactly the frames displayed before it in one chunk and the rest in the next."""
    n = len(pk)
    suffix_min = array("q", [0]) * n
    m = 2**63 - 1
    for i in range(n - 1, -1, -1):
        if pk.pts[i] < m:
            m = pk.pts[i]
        suffix_min[i] = m
    out = []
    prefix_max = -(2**63)
    for i in range(n):
        p = pk.pts[i]
        if i > 0 and pk.key[i] and not pk.discard[i] and prefix_max < p <= suffix_min[i]:
            out.append(i)
        if p > prefix_max:
            prefix_max = p
    return out


def _nearest(sorted_vals: list[float] | array, x: float) -> int:
    i = bisect.bisect_left(sorted_vals, x)
    if i == 0:
        return 0
    if i >= len(sorted_vals):
        return len(sorted_vals) - 1
    return i if sorted_vals[i] - x < x - sorted_vals[i - 1] else i - 1


def plan_split(pk: Packets, *, workers: int, keyframe_seconds: float, segment_seconds: float,
               avg_frame_rate: str | None = None, chunk_mode: str | None = None,
               timing: str = "container", presentation_t0: float | None = None) -> tuple[SplitPlan, list[int]]:
    """Choose chunk boundaries. Returns the plan (chunks without URLs yet) and, for copy
    chunks, the decode-order packet index each chunk starts at.

    `chunk_mode` ("seek" or "frames") plans every chunk in that mode, with no stream copy: for
    a plan made from decoded frames (`timing="decoded"`, `pk` holding the decoder's frames),
    where `presentation_t0` is where the first frame is shown on the source's clock when that
    is not the decoder's timestamp of it (AVI: the stream start, not the reorder delay)."""
    tb = pk.time_base
    # the first keyframe may itself be hidden by an edit list: it is still where decoding starts
    first_key = next((i for i in range(len(pk)) if pk.key[i]), None)
    if first_key is None:
        raise PermanentMediaError("the video has no keyframe to start decoding from; the file may be corrupt")
    # frames before the first keyframe (a capture cut mid-GOP) or displayed before it (leading
    # pictures of an open GOP) cannot be decoded: they are not part of the video
    floor = pk.pts[first_key]
    kept = sorted(p for p, d in zip(pk.pts, pk.discard) if not d and p >= floor)
    if not kept:
        raise PermanentMediaError("every video frame is outside the edit list; nothing to show")
    t0_ticks = kept[0]
    times = array("d", (float((p - t0_ticks) * tb) for p in kept))  # global times, sorted
    n = len(times)
    deltas = sorted(times[i + 1] - times[i] for i in range(n - 1)) if n > 1 else []
    deltas = [d for d in deltas if d > 0]
    if avg_frame_rate and Fraction(avg_frame_rate) > 0:
        rate = Fraction(avg_frame_rate)
    elif deltas:
        rate = Fraction(1 / deltas[len(deltas) // 2]).limit_denominator(1001)
    else:
        rate = Fraction(30)
    interval = deltas[len(deltas) // 2] if deltas else float(1 / rate)
    smallest = deltas[0] if deltas else interval
    cfr = bool(deltas) and (deltas[-1] - deltas[0]) <= max(2 * float(tb), 0.002) \
        and abs(interval - float(1 / rate)) < 0.001 and len(deltas) == n - 1
    if n == 1:
        cfr = True
    duration = times[-1] + interval
    half = max(smallest / 2, 1e-4)
    notes: list[str] = []

    # where every rung gets a keyframe, and where each HLS segment starts
    def first_frame_at_or_after(t: float) -> int:
        return bisect.bisect_left(times, t - half)

    kf_times, seg_starts = [], []
    k = 0
    while k * keyframe_seconds < duration - half:
        idx = first_frame_at_or_after(k * keyframe_seconds)
        if idx < n and (not kf_times or times[idx] > kf_times[-1]):
            kf_times.append(times[idx])
        k += 1
    s = 0
    while s * segment_seconds < duration - half:
        idx = first_frame_at_or_after(s * segment_seconds)
        if idx < n and (not seg_starts or idx > seg_starts[-1]):
            seg_starts.append(idx)
        s += 1

    # Chunk boundaries are segment starts, so that every chunk yields whole final segments of
    # every rung: a chunk's segments are published the moment it is encoded, and nothing at the
    # end re-reads a rung. A boundary where the source has a keyframe starting a closed GOP lets
    # the chunks on both sides be stream-copy slices; elsewhere a chunk is read with exact seeking.
    clean = clean_keyframes(pk) if chunk_mode is None else []
    clean_frame: dict[int, int] = {}  # global frame index -> decode index of a clean keyframe there
    for i in clean:
        t = float((pk.pts[i] - t0_ticks) * tb)
        idx = first_frame_at_or_after(t)
        if idx < n and abs(times[idx] - t) < half:
            clean_frame[idx] = i
    if chunk_mode is None:
        unclean = sum(pk.key[1:]) - len(clean)
        if unclean > 0:
            notes.append(f"{unclean} keyframe(s) do not start a closed GOP and are not used as cut points")
    target = target_chunk_seconds(duration, workers, keyframe_seconds)
    seg_t = [times[i] for i in seg_starts]
    cut_segments: list[int] = []  # indices into seg_starts where a new chunk begins
    last = 0.0
    while True:
        # the first chunk is short, so the first segments of every rung are out early
        step = min(target, FIRST_CHUNK_SEGMENTS * segment_seconds) if not cut_segments else target
        want = last + step
        if want > duration - min(step, target) / 2:
            break
        lo = bisect.bisect_right(seg_t, last + half)
        if lo >= len(seg_t):
            break
        near = min(range(lo, len(seg_t)), key=lambda k: abs(seg_t[k] - want))
        best = near
        if seg_starts[near] not in clean_frame:
            # a clean keyframe on a nearby segment start keeps both chunks stream copies
            window = [k for k in range(lo, len(seg_t)) if abs(seg_t[k] - want) <= 0.25 * target
                      and seg_starts[k] in clean_frame]
            if window:
                best = min(window, key=lambda k: abs(seg_t[k] - want))
        if seg_t[best] >= duration - 0.25 * step:
            break
        cut_segments.append(best)
        last = seg_t[best]
    bounds_f = [0] + [seg_starts[k] for k in cut_segments] + [n]
    count = len(bounds_f) - 1
    chunks: list[Chunk] = []
    starts: list[int] = []
    t0_sec = float(t0_ticks * tb)
    seek_cuts = 0
    for i in range(count):
        f0, f1 = bounds_f[i], bounds_f[i + 1]
        start_clean = i == 0 or f0 in clean_frame
        end_clean = i + 1 == count or f1 in clean_frame
        copy = chunk_mode is None and start_clean and end_clean and (count == 1 or clean_frame)
        mode = "copy" if copy else (chunk_mode or "seek")
        seek_cuts += 0 if copy or chunk_mode else 1
        dec_idx = (0 if i == 0 else clean_frame[f0]) if (chunk_mode is None and start_clean) else None
        key_pts = pk.seconds(pk.pts[clean_frame[f0]]) if copy and i > 0 else (
            pk.seconds(pk.pts[0]) if copy else t0_sec + times[f0])
        chunks.append(Chunk(
            index=i, count=count, mode=mode, start=times[f0],
            end=times[f1] if f1 < n else duration, frames=f1 - f0, first_frame=f0,
            key_pts=key_pts, source_start=t0_sec + times[f0],
            source_end=(t0_sec + times[f1]) if f1 < n else t0_sec + duration + 3600.0,
            half_frame=half, timing=timing,
            reason="" if mode == "copy" else "no closed-GOP keyframe at this chunk's start or end"
            if chunk_mode is None else "timing from decoded frames",
        ))
        starts.append(dec_idx if dec_idx is not None else -1)
        chunks[-1].slice_at = starts[-1]
    seg_bounds = seg_starts + [n]
    for c in chunks:
        k0 = seg_starts.index(c.first_frame)
        k1 = k0
        while k1 < len(seg_starts) and seg_starts[k1] < c.first_frame + c.frames:
            k1 += 1
        c.first_segment = k0
        c.segment_frames = [seg_bounds[k + 1] - seg_bounds[k] for k in range(k0, k1)]
        c.keyframes = [t - c.start for t in kf_times if c.start + half < t < c.end - half]
    if seek_cuts:
        notes.append(f"{seek_cuts} of {count} chunks start or end on a segment boundary without a closed-GOP "
                     "keyframe in the source: they are read from the source with exact seeking")
    # chunk 0 in seek mode when the whole source is a single copy chunk is pointless: copy
    # mode for one chunk is still exact (its frames are selected by timestamp)
    plan = SplitPlan(
        frames=n, duration=duration, t0=t0_sec if presentation_t0 is None else presentation_t0, timing=timing,
        frame_rate=f"{rate.numerator}/{rate.denominator}", cfr=cfr, frame_interval=interval,
        segment_starts=seg_starts, segment_times=[times[i] for i in seg_starts],
        keyframe_times=kf_times, chunks=[c.to_dict() for c in chunks], notes=notes,
    )
    return plan, starts


# ---------------------------------------------------------------------------------------------
# the task


def _logger():
    try:
        return get_run_logger()
    except Exception:  # noqa: BLE001 - called outside a Prefect run (tests, bench)
        return log


def plan_source_fn(source_url: str, *, workers: int, video_stream_index: int | None = None,
                   avg_frame_rate: str | None = None, keyframe_seconds: float | None = None,
                   segment_seconds: float | None = None, timing: str | None = None) -> dict:
    """Plan the chunks from the source's packets (one scan, nothing written). Chunks in "copy"
    mode have no slice yet: `slice_source_fn` writes them (and `apply_slices` records them), so
    the fast lane and the audio, which read the source itself, need not wait for that.

    `timing` forces where frame times come from ("container" or "decoded"); by default the
    container's packet timestamps unless `needs_decoded_timing` says they cannot be trusted."""
    settings = get_settings()
    keyframe_seconds = keyframe_seconds or settings.keyframe_seconds
    segment_seconds = segment_seconds or settings.segment_seconds
    logger = _logger()
    with storage.local_copy(source_url, settings.work_dir) as src:
        pk = read_packets(src, video_stream_index)
        why = needs_decoded_timing(pk) if timing is None else (
            "the container's timestamps did not give exact chunks" if timing == "decoded" else None)
        if why:
            decoded = read_decoded_frames(src, pk, video_stream_index, avg_frame_rate)
            mode = "frames" if decoded.regenerated else "seek"
            plan, _ = plan_split(
                decoded.packets, workers=workers, keyframe_seconds=keyframe_seconds,
                segment_seconds=segment_seconds, avg_frame_rate=avg_frame_rate, chunk_mode=mode,
                timing="decoded", presentation_t0=decoded.stream_start if pk.missing_pts else None)
            plan.notes.insert(0, f"timing from decoded frames: {why}; chunks are read from the source "
                                 + ("by frame number (the decoder gives no timestamps: n / frame rate)"
                                    if decoded.regenerated else "with exact seeking, no stream copy"))
            for c in plan.chunks:
                c["reason"] = why
        else:
            plan, _ = plan_split(pk, workers=workers, keyframe_seconds=keyframe_seconds,
                                 segment_seconds=segment_seconds, avg_frame_rate=avg_frame_rate)
    for note in plan.notes:
        logger.warning(note)
    return plan.to_dict()


def slice_source_fn(source_url: str, work_url: str, plan: dict, video_stream_index: int | None = None) -> dict:
    """Write the stream-copy slices of the plan's "copy" chunks under `work_url`/chunks/.
    Returns {"urls": {chunk index: url}} or, when ffmpeg refuses the stream copy (packets its
    muxer cannot place), {"urls": {}, "note": why}: not the video's end, its chunks are read from
    the source with exact seeking instead (`apply_slices`).

    On a Dask worker the task first leaves the worker's pool of task slots (`secede`): it is a
    stream copy, mostly disk, and the fast lane and the audio, submitted with it, take the slots
    at once instead of waiting for it."""
    settings = get_settings()
    copy_chunks = [c for c in plan["chunks"] if c["mode"] == "copy"]
    if not copy_chunks:
        return {"urls": {}}
    try:
        get_worker()
    except ValueError:  # not on a Dask worker (tests, bench): nothing to leave
        pass
    else:
        secede()
    with storage.local_copy(source_url, settings.work_dir) as src:
        try:
            urls = _copy_split(src, plan, copy_chunks, work_url, video_stream_index)
        except ffmpeg.MediaError as exc:
            if not isinstance(exc, ChunkCountMismatch) and (
                    exc.returncode is None or exc.returncode < 0 or exc.returncode in (137, 143)):
                raise  # killed or timed out, not refused: Prefect retries the slicing
            return {"urls": {}, "note": f"stream-copy split failed ({exc})"}
    return {"urls": urls}


def apply_slices(plan: dict, sliced: dict | None, failure: str | None = None) -> str | None:
    """Record the slices `slice_source_fn` wrote in the plan; a "copy" chunk left without one (the
    stream copy was refused, or `failure`: the slicing failed) is read from the source with exact
    seeking. Returns the note saying so, if any (also added to the plan's notes)."""
    urls = {int(k): v for k, v in ((sliced or {}).get("urls") or {}).items()}
    why = (sliced or {}).get("note") or failure
    unsliced = [c for c in plan["chunks"] if c["mode"] == "copy" and not c.get("url") and int(c["index"]) not in urls]
    for c in plan["chunks"]:
        if c["mode"] == "copy" and int(c["index"]) in urls:
            c["url"] = urls[int(c["index"])]
    if not unsliced:
        return None
    note = (f"{why or 'no stream-copy slice was written'}; its {len(unsliced)} chunk(s) are read from the source "
            "with exact seeking instead")
    for c in unsliced:
        c.update(mode="seek", url=None, reason=note)
    plan["notes"].append(note)
    return note


def plan_summary(plan: dict) -> str:
    n_seek = sum(1 for c in plan["chunks"] if c["mode"] == "seek")
    n_frames = sum(1 for c in plan["chunks"] if c["mode"] == "frames")
    return ("split into %d chunks (%d stream copy, %d exact seek, %d by frame number), %d frames, %.3f s, %s, "
            "timing from %s") % (
        len(plan["chunks"]), len(plan["chunks"]) - n_seek - n_frames, n_seek, n_frames, plan["frames"],
        plan["duration"], "constant frame rate" if plan["cfr"] else "variable frame rate",
        "decoded frames" if plan["timing"] == "decoded" else "container timestamps")


def split_source_fn(source_url: str, work_url: str, *, workers: int, video_stream_index: int | None = None,
                    avg_frame_rate: str | None = None, keyframe_seconds: float | None = None,
                    segment_seconds: float | None = None, timing: str | None = None) -> dict:
    """Plan the chunks and write their stream-copy slices, in one call (`plan_source_fn`, then
    `slice_source_fn` and `apply_slices`)."""
    plan = plan_source_fn(source_url, workers=workers, video_stream_index=video_stream_index,
                          avg_frame_rate=avg_frame_rate, keyframe_seconds=keyframe_seconds,
                          segment_seconds=segment_seconds, timing=timing)
    note = apply_slices(plan, slice_source_fn(source_url, work_url, plan, video_stream_index))
    logger = _logger()
    if note:
        logger.warning(note)
    logger.info(plan_summary(plan))
    return plan


class ChunkCountMismatch(ffmpeg.TransientMediaError):
    """The stream-copy split wrote a different number of slices than planned."""


def _copy_split(src, plan: dict, copy_chunks: list[dict], work_url: str,
                video_stream_index: int | None) -> dict[int, str]:
    """One stream-copy pass cut at every chunk start that is a clean keyframe (a chunk's
    `slice_at`: its decode index, -1 where the chunk starts elsewhere). The slice that begins at a
    copy chunk's start ends at its end (copy chunks end on a clean keyframe too); the others are
    not needed. Returns {chunk index: slice url} of the copy chunks."""
    settings = get_settings()
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    sliced = [c["index"] for c in plan["chunks"] if c["slice_at"] >= 0]  # chunks a slice starts at
    starts = {c["index"]: c["slice_at"] for c in plan["chunks"]}
    urls: dict[int, str] = {}
    with tempfile.TemporaryDirectory(dir=settings.work_dir, prefix="split-") as tmp:
        cuts = [starts[i] for i in sliced if i > 0]
        args = [*ffmpeg.SAFE_INPUT, "-i", str(src), "-map", f"0:{video_stream_index}"
                if video_stream_index is not None else "0:v:0",
                "-c", "copy", "-an", "-sn", "-dn", "-f", "segment", "-segment_format", "matroska",
                "-reset_timestamps", "0"]
        if cuts:
            args += ["-segment_frames", ",".join(str(c) for c in cuts)]
        else:
            args += ["-segment_time", str(10**9)]
        args += ["-segment_start_number", "0", str(Path(tmp) / "chunk_%05d.mkv")]
        # at a lower priority: beside it the fast lane and the audio make the first segments
        ffmpeg.run(args, timeout=settings.ffmpeg_timeout, what="split (stream copy)", nice=SLICE_NICE)
        made = sorted(Path(tmp).glob("chunk_*.mkv"))
        if len(made) != len(sliced):
            raise ChunkCountMismatch(f"split made {len(made)} chunks, expected {len(sliced)}")
        copy_indices = {c["index"] for c in copy_chunks}
        for index, path in zip(sliced, made):
            if index not in copy_indices:
                continue
            url = storage.join(work_url, "chunks", f"chunk_{index:05d}.mkv")
            storage.move_local_file(path, url)
            urls[index] = url
    return urls


@task(name="plan chunks", task_run_name="plan chunks {source_url}", cache_policy=NO_CACHE, **RETRY_OPTIONS)
def plan_source(source_url: str, workers: int, video_stream_index: int | None = None,
                avg_frame_rate: str | None = None, keyframe_seconds: float | None = None,
                segment_seconds: float | None = None, timing: str | None = None) -> dict:
    return plan_source_fn(source_url, workers=workers, video_stream_index=video_stream_index,
                          avg_frame_rate=avg_frame_rate, keyframe_seconds=keyframe_seconds,
                          segment_seconds=segment_seconds, timing=timing)


@task(name="slice", task_run_name="slice {label}", cache_policy=NO_CACHE, **RETRY_OPTIONS)
def slice_source(source_url: str, work_url: str, plan: dict, video_stream_index: int | None = None,
                 label: str = "") -> dict:
    return slice_source_fn(source_url, work_url, plan, video_stream_index)


def chunk_math_ok(plan: dict) -> bool:
    """Chunks tile the timeline and their frames add up (a cheap self-check)."""
    total = sum(c["frames"] for c in plan["chunks"])
    return total == plan["frames"] and all(
        math.isclose(a["end"], b["start"]) for a, b in zip(plan["chunks"], plan["chunks"][1:]))
