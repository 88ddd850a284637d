"""Encode one chunk into every rung: one decode, `split`, one x264 per rung.

The chunk's frames are chosen by the source's own timestamps (`trim`), then rebased to the
chunk's start, so chunk containers never decide where a frame lands on the timeline.
Keyframes are forced at the chunk's first frame and at every multiple of the keyframe interval
on the global timeline (the same frames in every rung, because every rung sees the same
frames); x264's own keyframe placement and scene-cut detection are off.
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import shutil
import tempfile
import time
from fractions import Fraction
from pathlib import Path

from distributed import get_worker
from prefect import task
from prefect.cache_policies import NO_CACHE

from config import storage
from config.settings import available_cores, get_settings
from tasks import ffmpeg, thumbnails
from tasks.ffmpeg import PermanentMediaError, TransientMediaError, split_fmp4
from tasks.ladder import HEVC, Rung
from tasks.package import INIT_SEGMENT, TS_MUX_DELAY, TS_OFFSET, is_fmp4, marker_url, segment_pattern
from tasks.retry import RETRY_OPTIONS, check_lease, report_progress
from tasks.validate import check_chunk_segments
from tasks.split import _logger

log = logging.getLogger(__name__)


class ChunkNotExact(TransientMediaError):
    """A stream-copy chunk decoded to the wrong number of frames (open GOP, damaged packets)."""


class ChunkTimingUnreliable(PermanentMediaError):
    """Every way of reading a chunk by the container's timestamps gave the wrong frames: the
    flow plans the video again from its decoded frames (`replan`) before giving up on it."""

    replan = True


def rotation_filters(rotation: int) -> list[str]:
    """The same turn ffmpeg's autorotate (and every player) applies for a display matrix."""
    rotation %= 360
    if rotation == 90:
        return ["transpose=clock"]
    if rotation == 270:
        return ["transpose=cclock"]
    if rotation == 180:
        return ["hflip", "vflip"]
    return []


def deinterlace_filters(field_order: str | None) -> list[str]:
    """Deinterlace a source whose field order (as the probe gives it) says interlaced, before
    anything turns or scales the picture (both would mix lines of the two fields).

    bwdif in mode send_frame makes one frame of each frame, not one of each field, on purpose:
    the frame rate stays the source's, so the chunk's frame count, its forced keyframes and
    segment cuts stay the ones the split planned and the encode and validation check, frame for
    frame, in every rung. Field rate (50i to 50p) would double every count of the plan, the
    ladder's levels and the encode time. `deint=all`: a source that says it is interlaced is
    deinterlaced whole, also frames whose decoder flag says otherwise (a container's word is
    sometimes the only one, and combing costs more than a slightly softer progressive frame)."""
    if field_order not in ("tt", "bb", "tb", "bt"):
        return []
    parity = "tff" if field_order[0] == "t" else "bff"
    return [f"bwdif=mode=send_frame:parity={parity}:deint=all"]


def scale_filters(rung: Rung | dict) -> list[str]:
    r = rung if isinstance(rung, Rung) else Rung.from_dict(rung)
    # explicit size from the display aspect, then square pixels: plain scale=-2:480 keeps the
    # source's sample aspect and leaves 854x480 at SAR 1280:1281
    return [f"scale={r.width}:{r.height}:flags=bicubic", "setsar=1", f"format={pixel_format(r)}"]


def pixel_format(rung: Rung) -> str:
    return "yuv420p10le" if rung.profile == "main10" else "yuv420p"


def _keyint(frame_rate: float, keyframe_seconds: float) -> int:
    # forced keyframes carry the grid; keyint only bounds the gap if a force is missed
    return max(2, int(math.ceil(keyframe_seconds * max(frame_rate, 1.0))) * 2 + 1)


def video_args(rung: Rung | dict, *, threads: int, frame_rate: float, keyframe_seconds: float) -> list[str]:
    """The encoder arguments of a rung: x264, or x265 for an HEVC rung."""
    r = rung if isinstance(rung, Rung) else Rung.from_dict(rung)
    if r.codec == HEVC:
        return x265_args(r, threads=threads, frame_rate=frame_rate, keyframe_seconds=keyframe_seconds)
    return x264_args(r, threads=threads, frame_rate=frame_rate, keyframe_seconds=keyframe_seconds)


def x265_args(r: Rung, *, threads: int, frame_rate: float, keyframe_seconds: float) -> list[str]:
    """x265 with the x264 rung's rules (forced IDR frames on the grid, closed GOPs, no scene cuts)
    and `info=0`: x265 otherwise writes its whole option string, which differs between the
    first chunk and the others (vbv-init), into the stream headers, so each chunk would have
    another init segment and one EXT-X-MAP could not serve the rung."""
    level_idc = int(round(float(r.level) * 10))
    params = (f"keyint={_keyint(frame_rate, keyframe_seconds)}:min-keyint=1:scenecut=0:open-gop=0:info=0:"
              f"level-idc={level_idc}:log-level=error" + (f":pools={threads}" if threads > 0 else ""))
    return [
        "-c:v", "libx265", "-preset", r.preset, "-profile:v", r.profile,
        "-crf", str(r.crf), "-maxrate", str(r.maxrate), "-bufsize", str(r.bufsize),
        "-pix_fmt", pixel_format(r), "-x265-params", params, "-forced-idr", "1", "-tag:v", "hvc1",
    ]


def x264_args(rung: Rung | dict, *, threads: int, frame_rate: float, keyframe_seconds: float) -> list[str]:
    r = rung if isinstance(rung, Rung) else Rung.from_dict(rung)
    keyint = _keyint(frame_rate, keyframe_seconds)
    params = f"scenecut=0:open-gop=0:keyint={keyint}:min-keyint=1:threads={threads}"
    return [
        "-c:v", "libx264", "-preset", r.preset, "-profile:v", r.profile, "-level:v", r.level,
        "-crf", str(r.crf), "-maxrate", str(r.maxrate), "-bufsize", str(r.bufsize),
        "-pix_fmt", "yuv420p", "-x264-params", params, "-forced-idr", "1",
    ]


def forced_keyframes(start: float, end: float, keyframe_seconds: float, half_frame: float,
                     rate: Fraction | None = None) -> str:
    """Chunk-relative times for -force_key_frames: the chunk start, and the first frame at or
    after every multiple of the keyframe interval (global) inside the chunk - the same rule
    the split used to plan segments. With constant frame rate the time given is that frame's
    exact time (ffmpeg rounds a forced time to the nearest tick of a 1/rate time base, which
    would pick the frame before); otherwise half a frame early."""
    times = [0.0]
    m = math.ceil((start - half_frame) / keyframe_seconds)
    while m * keyframe_seconds - half_frame < end - half_frame:
        t = m * keyframe_seconds - start - half_frame
        if rate is not None:
            t = math.ceil(t * rate - 1e-6) / rate
        if t >= end - start - 1e-6:
            break  # that frame is the next chunk's first
        if t > times[-1] + 1e-6:
            times.append(float(t))
        m += 1
    return ",".join(f"{t:.6f}" for t in times)


def _rate_expr(frame_rate: str) -> Fraction:
    rate = Fraction(frame_rate)
    if rate <= 0:
        raise PermanentMediaError("the video has no usable frame rate")
    return rate


def build_encode_command(chunk: dict, input_path: str, rungs: list[dict], out_paths: list[str], *,
                         rotation: int, cfr: bool, frame_rate: str, keyframe_seconds: float,
                         threads: int, offset: float, seek: bool, by_frame: bool = False,
                         previews: tuple[list[tuple[int, float]], dict] | None = None,
                         deinterlace: str | None = None, segment_list: str | None = None) -> list[str]:
    """ffmpeg arguments for one chunk. `offset` maps source pts to the input's pts (copy
    chunks carry the source's timestamps shifted by the muxer; seek mode reads the source).
    `by_frame` reads the source from its start and keeps the chunk's frames by their position
    in the decoded sequence, whatever their timestamps (mode "frames").
    `previews` (targets, plan) adds the timeline-preview branch, whose files are written
    relative to ffmpeg's working directory. `deinterlace` is the source's field order (see
    `deinterlace_filters`); None or "progressive" leaves the frames as they are. `segment_list`
    (one rung only): a CSV file ffmpeg adds a line to as it closes each segment."""
    half = float(chunk["half_frame"])
    t_start = chunk["source_start"] + offset - half
    t_end = chunk["source_end"] + offset - half
    rate = _rate_expr(frame_rate)
    args = ["-threads", str(threads), *ffmpeg.SAFE_INPUT, "-noautorotate", "-copyts"]
    if seek and not by_frame and chunk["index"] > 0:
        # land on the keyframe at or before the chunk and decode forward; trim keeps the rest
        # (the first chunk reads from the start: a seek to 0 can drop the frames of an AVI
        # or FLV whose first timestamps are missing or the decoder's guesses)
        args += ["-seek_timestamp", "1", "-noaccurate_seek", "-ss", f"{max(0.0, chunk['key_pts'] - 1.0):.6f}"]
    args += ["-i", input_path]
    if by_frame:
        first = int(chunk["first_frame"])
        chain = [f"trim=start_frame={first}:end_frame={first + int(chunk['frames'])}"]
    else:
        chain = [f"trim=start={t_start:.6f}:end={t_end:.6f}"]
    if cfr:
        # exact timestamps rebuilt from the frame count: n / rate, in a 1/rate time base
        chain += [f"settb={rate.denominator}/{rate.numerator}", "setpts=N"]
    else:
        chain += ["settb=1/90000", "setpts=PTS-STARTPTS"]
    chain += deinterlace_filters(deinterlace)
    chain += rotation_filters(rotation)
    n = len(rungs)
    graph = "[0:v:0]" + ",".join(chain)
    preview_outputs: list[str] = []
    if previews and previews[0]:
        # the previews share this decode: a few frames more through a scaler, no second pass
        graph += f",split={n + 1}" + "".join(f"[s{i}]" for i in range(n)) + "[sp];"
        graph += ";".join(f"[s{i}]" + ",".join(scale_filters(r)) + f"[v{i}]" for i, r in enumerate(rungs))
        branch, preview_outputs = thumbnails.preview_graph("[sp]", *previews)
        graph += ";" + branch
    elif n > 1:
        graph += f",split={n}" + "".join(f"[s{i}]" for i in range(n)) + ";"
        graph += ";".join(f"[s{i}]" + ",".join(scale_filters(r)) + f"[v{i}]" for i, r in enumerate(rungs))
    else:
        graph += "," + ",".join(scale_filters(rungs[0])) + "[v0]"
    args += ["-filter_complex", graph, "-filter_complex_threads", str(threads)]
    if cfr or not chunk.get("keyframes"):
        kf = forced_keyframes(chunk["start"], chunk["end"], keyframe_seconds, half, rate if cfr else None)
    else:
        # variable frame rate: the planned keyframes' own times. ffmpeg rounds a forced time to
        # the nearest tick of a 1/rate clock, so a time half a frame early can land on the frame
        # before; a frame's own time lands on that frame.
        kf = ",".join(f"{t:.6f}" for t in [0.0, *chunk["keyframes"]])
    for i, (r, out) in enumerate(zip(rungs, out_paths)):
        venc = video_args(r, threads=threads, frame_rate=float(rate), keyframe_seconds=keyframe_seconds)
        if chunk["index"] > 0:
            # x264 starts every stream with its VBV buffer 90 % full and spends that on the first
            # frames; stitched, each chunk would repeat that burst (1080p came out 8-12 % larger
            # than one continuous encode, and over the cap at every join). Mid-stream, a capped
            # encode's buffer sits lower: 0.5 measured closest to a continuous encode's size.
            # (x265 has the same option, with the same default.)
            at = next(k for k, a in enumerate(venc) if a in ("-x264-params", "-x265-params"))
            venc[at + 1] += ":vbv-init=0.5"
        args += ["-map", f"[v{i}]", *venc,
                 "-force_key_frames", kf, "-fps_mode", "passthrough", "-an", "-sn", "-dn",
                 *segment_output(chunk, out, keyframe_seconds, segment_list=segment_list,
                                 fmp4=is_fmp4(r))]
    return args + preview_outputs


def segment_output(chunk: dict, out_pattern: str, keyframe_seconds: float, *,
                   segment_list: str | None = None, fmp4: bool = False) -> list[str]:
    """The chunk's final HLS segments of one rung: cut by frame number at the planned segment
    starts, numbered globally, placed on the video's timeline (`tasks.package`). Every segment
    starts with PAT/PMT (a new muxer per segment); repeating them each keyframe interval, not
    ffmpeg's default 0.1 s, was 6 % of a 360p rung's bytes.

    `fmp4`: fragmented MP4 instead (HEVC rungs). Each file is a whole fragmented MP4 (ftyp, an
    empty moov, then a fragment per keyframe interval) that `tasks.ffmpeg.split_fmp4` turns into
    the rung's init segment and a media segment. The timeline must survive the muxer: the MP4
    muxer's default shifts a file to start at 0 (`avoid_negative_ts`), `frag_discont` makes the
    first fragment's decode time the packet's own, and without an edit list that time is the
    decode time, as in every later fragment. The offset adds the MPEG-TS muxer's delay, so a frame
    has the same time in an HEVC rung as in the H.264 rungs and the audio."""
    period = f"{keyframe_seconds:g}"
    cuts, total = [], 0
    for frames in chunk["segment_frames"][:-1]:
        total += int(frames)
        cuts.append(str(total))
    if fmp4:
        offset = TS_OFFSET + TS_MUX_DELAY + float(chunk["start"])
        muxer = ["-segment_format", "mp4", "-segment_format_options",
                 "movflags=+frag_keyframe+empty_moov+default_base_moof+frag_discont+skip_trailer"
                 ":use_editlist=0:avoid_negative_ts=disabled"]
    else:
        offset = TS_OFFSET + float(chunk["start"])
        muxer = ["-segment_format", "mpegts", "-segment_format_options", f"pat_period={period}:sdt_period={period}"]
    args = ["-output_ts_offset", f"{offset:.6f}", "-f", "segment", *muxer,
            "-reset_timestamps", "0", "-segment_start_number", str(int(chunk["first_segment"]))]
    args += ["-segment_frames", ",".join(cuts)] if cuts else ["-segment_time", str(10**9)]
    if segment_list:
        args += ["-segment_list", segment_list, "-segment_list_type", "csv"]
    return args + [out_pattern]


def _check_rung_dir(d: Path, rung: dict, chunk: dict, timeout: float) -> dict:
    """Check one rung's segments of a chunk as ffmpeg left them in `d`; an fMP4 rung's files are
    first split into its init segment (`d`/init.mp4) and media segments."""
    init = None
    if is_fmp4(rung):
        try:
            init = split_fmp4(sorted(d.glob("seg_*.m4s")), d / INIT_SEGMENT)
        except ValueError as exc:
            return {"ok": False, "reasons": [str(exc)], "frames": [], "sizes": []}
    suffix = "m4s" if is_fmp4(rung) else "ts"
    return check_chunk_segments([str(p) for p in sorted(d.glob(f"seg_*.{suffix}"))], rung, chunk["segment_frames"],
                                first_segment=int(chunk["first_segment"]), timeout=timeout, init=init)


def _first_packet_pts(path: str) -> float:
    rows = list(ffmpeg.iter_probe_rows(path, timeout=get_settings().probe_timeout, entries="pts_time",
                                       extra=["-read_intervals", "%+#1"]))
    for row in rows:
        if row and row[0] not in ("N/A", ""):
            return float(row[0])
    raise PermanentMediaError(f"chunk {path} has no timestamps")


def count_video_packets(path: str) -> int:
    data = ffmpeg.probe_json(path, timeout=get_settings().probe_timeout,
                             extra=["-select_streams", "v:0", "-count_packets",
                                    "-show_entries", "stream=nb_read_packets"])
    streams = data.get("streams") or [{}]
    return int(streams[0].get("nb_read_packets") or 0)


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def worker_threads() -> int:
    """ffmpeg threads for one chunk: this task's share of the machine's cores (cores divided
    by the task slots on this host). More would only make the parallel chunks fight: two
    2-thread encodes on 2 cores cost ~13 % more CPU than two 1-thread ones, measured.
    `VODFLOW_ENCODE_THREADS` overrides."""
    forced = int(os.environ.get("VODFLOW_ENCODE_THREADS", "0") or 0)
    if forced > 0:
        return forced
    cores = available_cores()
    slots = int(os.environ.get("VODFLOW_TASK_SLOTS", "0") or 0)
    if not slots:
        try:
            w = get_worker()
            slots = w.state.nthreads * int(os.environ.get("VODFLOW_WORKERS_ON_HOST", "1") or 1)
        except (ImportError, ValueError, AttributeError):
            slots = 1
    return max(1, cores // max(1, slots))


def encode_chunk_fn(chunk: dict, *, source_url: str, rungs: list[dict], out_url: str, hls_url: str,
                    rotation: int, cfr: bool, frame_rate: str, threads: int | None = None,
                    progress_key: str | None = None, force_seek: bool = False,
                    keyframe_seconds: float | None = None, previews: dict | None = None,
                    lease_url: str | None = None, deinterlace: str | None = None,
                    marker: str = "") -> dict:
    """Encode a chunk into the final segments of every rung, check them, and store them under
    `hls_url`/{rung}/ (not listed in any playlist yet: the flow publishes them). Returns {index,
    frames, mode, rungs: {name: {ok, reasons, frames, sizes}}, seconds, previews}. With `previews`
    (a `thumbnails.preview_plan`), the chunk's timeline previews and poster candidates are stored
    under `out_url`/previews and described in `previews`."""
    settings = get_settings()
    keyframe_seconds = keyframe_seconds or settings.keyframe_seconds
    logger = _logger()
    threads = threads or worker_threads()
    label = f"chunk {chunk['index'] + 1}/{chunk['count']}"
    t_begin = time.monotonic()
    started_at = time.time()
    cpu_before = _children_cpu()
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    mode = chunk["mode"] if chunk["mode"] == "frames" else (
        "seek" if force_seek or chunk["mode"] == "seek" or not chunk.get("url") else "copy")

    def progress(fraction: float) -> None:
        report_progress(progress_key or label, fraction, index=chunk["index"], frames=chunk["frames"])

    targets = (thumbnails.preview_targets(previews, chunk["start"], chunk["end"], float(chunk["half_frame"]))
               if previews else [])
    with tempfile.TemporaryDirectory(dir=settings.work_dir, prefix="encode-") as tmp:
        rung_dirs = [Path(tmp) / "rungs" / r["name"] for r in rungs]
        outs = [str(d / segment_pattern(r)) for r, d in zip(rungs, rung_dirs)]
        frames_dir = Path(tmp) / "previews"
        frames_dir.mkdir()
        # the fallback chain: stream-copy slice, exact seek in the source, and - when the plan's
        # frame numbers are the decoder's own - the frames by position, decoded from the start
        attempts = {"copy": ["copy", "seek"], "seek": ["seek"], "frames": []}[mode]
        if chunk.get("timing") == "decoded":
            attempts.append("frames")
        attempts = attempts or [mode]
        frames_seen: dict[str, int] = {}
        checks: dict[str, dict] = {}
        for attempt in attempts:
            for d in rung_dirs:
                shutil.rmtree(d, ignore_errors=True)
                d.mkdir(parents=True)
            src_url = chunk["url"] if attempt == "copy" else source_url
            with storage.local_copy(src_url, settings.work_dir) as path:
                offset = (_first_packet_pts(str(path)) - chunk["key_pts"]) if attempt == "copy" else 0.0

                def run_encode() -> None:
                    args = build_encode_command(
                        chunk, str(path), rungs, outs, rotation=rotation, cfr=cfr, frame_rate=frame_rate,
                        keyframe_seconds=keyframe_seconds, threads=threads, offset=offset,
                        seek=attempt == "seek", by_frame=attempt == "frames",
                        previews=(targets, previews) if targets else None, deinterlace=deinterlace)
                    ffmpeg.run(args, timeout=settings.ffmpeg_timeout, what=f"encode {label}",
                               on_progress=progress, duration=max(chunk["end"] - chunk["start"], 0.001),
                               cwd=frames_dir)

                try:
                    run_encode()
                except PermanentMediaError as exc:
                    if not targets:
                        raise
                    # previews are a side product: never let them cost the video its renditions
                    logger.warning("%s: encode with previews failed (%s); encoding without them", label, exc)
                    targets = []
                    for d in rung_dirs:
                        shutil.rmtree(d, ignore_errors=True)
                        d.mkdir(parents=True)
                    run_encode()
            # per-chunk validation: the segments the plan asked for, each with its frames
            checks = {r["name"]: _check_rung_dir(d, r, chunk, settings.probe_timeout)
                      for r, d in zip(rungs, rung_dirs)}
            frames_seen = {name: sum(c["frames"]) for name, c in checks.items()}
            if all(v == chunk["frames"] for v in frames_seen.values()):
                break
            following = attempts[attempts.index(attempt) + 1:]
            if following:
                how = {"seek": "exact seeking in the source",
                       "frames": "decoding the source from its start and keeping the frames by number"}
                logger.warning("%s: %s gave %s frames, expected %d; re-encoding it by %s instead", label,
                               {"copy": "the stream-copy chunk", "seek": "exact seeking"}[attempt],
                               frames_seen, chunk["frames"], how[following[0]])
                mode = following[0]
        else:
            where = f"{chunk['start']:.3f}-{chunk['end']:.3f} s"
            got = sorted(set(frames_seen.values()))
            if chunk.get("timing") != "decoded":
                raise ChunkTimingUnreliable(
                    f"{label} ({where}) read by the container's timestamps decoded to {got} frames, "
                    f"expected {chunk['frames']}")
            raise PermanentMediaError(
                f"the video decodes to {got} frames between {where} where a first decode gave "
                f"{chunk['frames']}: the file is damaged there; re-export it and upload again")
        check_lease(lease_url)
        stored_previews = []
        if targets:
            # exact frame times: n / rate with constant frame rate, else the 1/90000 clock
            rate = _rate_expr(frame_rate)
            time_base = Fraction(rate.denominator, rate.numerator) if cfr else Fraction(1, 90000)
            try:
                stored_previews = thumbnails.upload_previews(
                    thumbnails.read_previews(frames_dir, targets, time_base), storage.join(out_url, "previews"))
            except (PermanentMediaError, OSError) as exc:
                logger.warning("%s: no timeline previews from this chunk (%s)", label, exc)
        for r, d in zip(rungs, rung_dirs):
            check = checks[r["name"]]
            if is_fmp4(r) and chunk["index"] > 0:
                # the first chunk stores the rung's init segment; the flow holds every other
                # chunk's to it (its digest is in the check) before publishing its segments
                (d / INIT_SEGMENT).unlink(missing_ok=True)
            if check["ok"]:
                storage.publish_dir(d, storage.join(hls_url, r["name"]))
            else:
                logger.warning("%s: %s failed its checks: %s", label, r["name"], "; ".join(check["reasons"]))
    seconds = time.monotonic() - t_begin
    logger.info("%s: %d frames x %d rungs in %.2f s (%s, %d threads)", label, chunk["frames"], len(rungs),
                seconds, mode, threads)
    result = {"index": chunk["index"], "frames": chunk["frames"], "mode": mode, "rungs": checks,
            "start": chunk["start"], "end": chunk["end"], "seconds": seconds, "threads": threads,
            "started_at": started_at, "ended_at": time.time(), "previews": stored_previews,
            # CPU of this task's ffmpeg/ffprobe runs (exact with one task per worker process)
            "cpu_seconds": round(_children_cpu() - cpu_before, 3)}
    # the chunk is stored and checked: a re-run of this run after a crash skips it
    check_lease(lease_url)
    storage.write_text(marker_url(hls_url, chunk["index"], marker), json.dumps(result))
    return result


@task(name="encode", task_run_name="encode chunk {label}", cache_policy=NO_CACHE, **RETRY_OPTIONS)
def encode_chunk(chunk: dict, source_url: str, rungs: list[dict], out_url: str, hls_url: str, rotation: int,
                 cfr: bool, frame_rate: str, label: str, threads: int | None = None,
                 progress_key: str | None = None, force_seek: bool = False,
                 keyframe_seconds: float | None = None, previews: dict | None = None,
                 lease_url: str | None = None, deinterlace: str | None = None, marker: str = "") -> dict:
    return encode_chunk_fn(chunk, source_url=source_url, rungs=rungs, out_url=out_url, hls_url=hls_url,
                           rotation=rotation,
                           cfr=cfr, frame_rate=frame_rate, threads=threads, progress_key=progress_key,
                           force_seek=force_seek, keyframe_seconds=keyframe_seconds, previews=previews,
                           lease_url=lease_url, deinterlace=deinterlace, marker=marker)
