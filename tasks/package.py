"""Concatenate a rung's chunks, mux the audio, cut HLS segments, write the variant playlist.

Concat demuxer with stream copy: each chunk is placed at the end of the previous one by the
`duration` the split measured from the source (never by the chunk container's own idea of its
length). Segments are cut by frame number at the segment starts the split computed, which are
forced IDR frames in every rung, so segment N covers the same frames in every rung and the
playlist's EXTINF values come from the source timeline, identical across rungs.
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
import time
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from config import storage
from config.settings import get_settings
from tasks import ffmpeg
from tasks.audio import AUDIO_CODECS
from tasks.ladder import codec_string
from tasks.retry import RETRY_OPTIONS, check_lease
from tasks.split import _logger

log = logging.getLogger(__name__)

PLAYLIST = "index.m3u8"
SEGMENT_PATTERN = "seg_%05d.ts"


def segment_durations(segment_times: list[float], duration: float) -> list[float]:
    ends = list(segment_times[1:]) + [duration]
    return [e - s for s, e in zip(segment_times, ends)]


def variant_playlist(durations: list[float], segment_names: list[str]) -> str:
    """A VOD media playlist (RFC 8216, version 3: decimal EXTINF)."""
    target = max(1, max(int(round(d)) for d in durations)) if durations else 1
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", f"#EXT-X-TARGETDURATION:{target}", "#EXT-X-MEDIA-SEQUENCE:0",
             "#EXT-X-PLAYLIST-TYPE:VOD", "#EXT-X-INDEPENDENT-SEGMENTS"]
    for d, name in zip(durations, segment_names):
        lines += [f"#EXTINF:{d:.6f},", name]
    lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def concat_list(entries: list[tuple[str, float]]) -> str:
    out = ["ffconcat version 1.0"]
    for path, duration in entries:
        quoted = path.replace("'", "'\\''")
        out += [f"file '{quoted}'", f"duration {duration:.6f}"]
    return "\n".join(out) + "\n"


@contextlib.contextmanager
def _local_files(urls: list[str], workdir: Path):
    """Local paths for a list of stored files (the files themselves on local storage)."""
    if all(storage.is_local(u) for u in urls):
        yield [str(storage.local_path_of(u)) for u in urls]
        return
    with tempfile.TemporaryDirectory(dir=workdir, prefix="fetch-") as tmp:
        paths = []
        for i, u in enumerate(urls):
            p = Path(tmp) / f"{i:05d}_{Path(u).name}"
            storage.get_file(u, p)
            paths.append(str(p))
        yield paths


def package_rung_fn(rung: dict, chunks: list[dict], *, audio_url: str | None, out_url: str,
                    segment_starts: list[int], segment_times: list[float], duration: float,
                    lease_url: str | None = None) -> dict:
    """chunks: [{url, start, end}] in order. Writes segments then the playlist under out_url.
    Returns the playlist URL and measured bit rates."""
    settings = get_settings()
    logger = _logger()
    t_begin = time.monotonic()
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.work_dir, prefix=f"package-{rung['name']}-") as tmp:
        tmpdir = Path(tmp)
        seg_dir = tmpdir / "out"
        seg_dir.mkdir()
        urls = [c["url"] for c in chunks] + ([audio_url] if audio_url else [])
        with _local_files(urls, tmpdir) as paths:
            chunk_paths = paths[: len(chunks)]
            entries = [(p, c["end"] - c["start"]) for p, c in zip(chunk_paths, chunks)]
            list_path = tmpdir / "chunks.ffconcat"
            list_path.write_text(concat_list(entries))
            args = [*ffmpeg.SAFE_INPUT, "-f", "concat", "-safe", "0", "-i", str(list_path)]
            if audio_url:
                args += [*ffmpeg.SAFE_INPUT, "-i", paths[-1]]
            # -copyts: keep the audio's first (priming) packet ahead of the first frame, where
            # the AAC encoder put it, so the first audible sample meets the first frame
            args += ["-copyts", "-map", "0:v:0"] + (["-map", "1:a:0"] if audio_url else [])
            # every segment starts with PAT/PMT (a new muxer per segment); repeating them each
            # keyframe interval, not ffmpeg's default 0.1 s, was 6 % of a 360p rung's bytes
            period = f"{settings.keyframe_seconds:g}"
            args += ["-c", "copy", "-f", "segment", "-segment_format", "mpegts",
                     "-segment_format_options", f"pat_period={period}:sdt_period={period}",
                     "-reset_timestamps", "0", "-segment_start_number", "0"]
            cuts = [str(i) for i in segment_starts[1:]]
            if cuts:
                args += ["-segment_frames", ",".join(cuts)]
            else:
                args += ["-segment_time", str(10**9)]
            args.append(str(seg_dir / SEGMENT_PATTERN))
            ffmpeg.run(args, timeout=settings.ffmpeg_timeout, what=f"package {rung['name']}")
        segments = sorted(seg_dir.glob("seg_*.ts"))
        if len(segments) != len(segment_starts):
            raise ffmpeg.PermanentMediaError(
                f"{rung['name']}: packaging made {len(segments)} segments, expected {len(segment_starts)} "
                "(a segment start was not a keyframe)")
        durations = segment_durations(segment_times, duration)
        sizes = [p.stat().st_size for p in segments]
        (seg_dir / PLAYLIST).write_text(variant_playlist(durations, [p.name for p in segments]))
        # segments first, the playlist last: a reader never sees a playlist before its segments
        check_lease(lease_url)
        storage.publish_dir(seg_dir, out_url)
    rates = [8 * s / d for s, d in zip(sizes, durations) if d > 0]
    peak = int(math.ceil(max(rates))) if rates else 0
    average = int(math.ceil(8 * sum(sizes) / max(sum(durations), 1e-6)))
    codecs = codec_string(rung["level"]) + (f",{AUDIO_CODECS}" if audio_url else "")
    seconds = time.monotonic() - t_begin
    logger.info("%s: %d segments, peak %.0f kb/s, average %.0f kb/s, packaged in %.2f s",
                rung["name"], len(segments), peak / 1000, average / 1000, seconds)
    return {
        "name": rung["name"], "playlist_url": storage.join(out_url, PLAYLIST),
        "segment_urls": [storage.join(out_url, p.name) for p in segments], "segment_sizes": sizes,
        "segment_durations": durations, "bandwidth": peak, "average_bandwidth": average,
        "codecs": codecs, "seconds": seconds,
    }


@task(name="package", task_run_name="package {rung_name}", cache_policy=NO_CACHE, **RETRY_OPTIONS)
def package_rung(rung: dict, chunks: list[dict], audio_url: str | None, out_url: str, segment_starts: list[int],
                 segment_times: list[float], duration: float, rung_name: str = "",
                 lease_url: str | None = None) -> dict:
    return package_rung_fn(rung, chunks, audio_url=audio_url, out_url=out_url, segment_starts=segment_starts,
                           segment_times=segment_times, duration=duration, lease_url=lease_url)
