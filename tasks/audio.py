"""Encode the audio once, from the whole source, into the audio rendition: AAC-LC stereo 48 kHz,
aligned to the video, cut into MPEG-TS segments on the video's segment grid.

Never per chunk: every AAC stream starts with encoder priming, so chunked audio clicks at the
joins. The output starts at the first displayed video frame (silence is added when the audio
starts later, samples before it are dropped) and lasts exactly as long as the video, on the
same timeline as the video segments (`tasks.package.TS_OFFSET`). Multichannel sources are
downmixed to stereo.

The audio is published as it is encoded: each segment goes to storage the moment ffmpeg closes
it, and the task tells the flow how many are out (a Dask event), so the first segments never
wait for the whole track.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from config import storage
from config.settings import get_settings
from tasks import ffmpeg
from tasks.ladder import AUDIO_BITRATE
from tasks.package import AUDIO_CODECS, SEGMENT_PATTERN, TS_OFFSET, segment_name
from tasks.retry import RETRY_OPTIONS, check_lease, report_progress
from tasks.split import _logger

log = logging.getLogger(__name__)

SAMPLE_RATE = 48000
# AAC encoder delay: the first 1024 samples of every stream are priming, not sound
AAC_PRIMING_SAMPLES = 1024
AAC_PRIMING_SECONDS = AAC_PRIMING_SAMPLES / SAMPLE_RATE


def build_audio_command(input_path: str, out_dir: str, *, stream_index: int, t0: float, duration: float,
                        channels: int, segment_times: list[float]) -> list[str]:
    chain = [
        # the source's clock, moved so the first video frame is 0
        f"asetpts=PTS-{t0:.6f}/TB",
        # start exactly at 0: pad with silence if the audio starts late, trim if early
        f"aresample={SAMPLE_RATE}:async=1:first_pts=0",
        f"apad=whole_dur={duration:.6f}",
        f"atrim=end={duration:.6f}",
    ]
    if channels > 2 or channels == 0:
        # ffmpeg's default downmix (centre and surrounds folded in, LFE dropped)
        chain.append("aformat=channel_layouts=stereo")
    out = Path(out_dir)
    args = [*ffmpeg.SAFE_INPUT, "-copyts", "-i", input_path, "-map", f"0:{stream_index}",
            "-vn", "-sn", "-dn", "-af", ",".join(chain), "-ac", "2", "-ar", str(SAMPLE_RATE),
            "-c:a", "aac", "-profile:a", "aac_low", "-b:a", str(AUDIO_BITRATE),
            # the video's timeline; the segment muxer cuts on it too (offset included)
            "-output_ts_offset", f"{TS_OFFSET:g}",
            "-f", "segment", "-segment_format", "mpegts", "-reset_timestamps", "0",
            "-segment_start_number", "0", "-segment_list", str(out / "segments.csv"),
            "-segment_list_type", "csv"]
    cuts = [f"{TS_OFFSET + t:.6f}" for t in segment_times[1:]]
    args += ["-segment_times", ",".join(cuts)] if cuts else ["-segment_time", str(10**9)]
    args.append(str(out / SEGMENT_PATTERN))
    return args


def encode_audio_fn(source_url: str, out_url: str, *, stream_index: int, t0: float, duration: float,
                    channels: int, segment_times: list[float], progress_key: str = "audio",
                    lease_url: str | None = None) -> dict:
    """Encode the audio rendition into `out_url` (seg_00000.ts, ...). Returns the segment sizes."""
    settings = get_settings()
    logger = _logger()
    t_begin = time.monotonic()
    started_at = time.time()
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    sizes: list[int] = []
    with tempfile.TemporaryDirectory(dir=settings.work_dir, prefix="audio-") as tmp:
        out_dir = Path(tmp)

        def publish_finished(fraction: float | None = None) -> None:
            done = ffmpeg.closed_segments(out_dir / "segments.csv")
            if len(done) <= len(sizes):
                return
            check_lease(lease_url)
            for name in done[len(sizes):]:
                if name != segment_name(len(sizes)):
                    raise ffmpeg.PermanentMediaError(f"audio segment {name} out of order")
                path = out_dir / name
                sizes.append(path.stat().st_size)
                storage.move_local_file(path, storage.join(out_url, name))
            report_progress(progress_key, fraction if fraction is not None else 1.0, segments=len(sizes))

        with storage.local_copy(source_url, settings.work_dir) as path:
            ffmpeg.run(build_audio_command(str(path), str(out_dir), stream_index=stream_index, t0=t0,
                                           duration=duration, channels=channels, segment_times=segment_times),
                       timeout=settings.ffmpeg_timeout, what="audio encode",
                       on_progress=publish_finished, duration=duration)
        publish_finished(1.0)
    if len(sizes) != len(segment_times):
        raise ffmpeg.PermanentMediaError(
            f"the audio came out in {len(sizes)} segments, expected {len(segment_times)}")
    seconds = time.monotonic() - t_begin
    logger.info("audio: %.2f s of AAC-LC stereo %d Hz in %d segments, %.2f s (source had %d channels)",
                duration, SAMPLE_RATE, len(sizes), seconds, channels)
    return {"url": out_url, "segment_sizes": sizes, "seconds": seconds, "codecs": AUDIO_CODECS,
            "channels_in": channels, "started_at": started_at, "ended_at": time.time()}


@task(name="audio", task_run_name="audio {label}", cache_policy=NO_CACHE, **RETRY_OPTIONS)
def encode_audio(source_url: str, out_url: str, stream_index: int, t0: float, duration: float,
                 channels: int, segment_times: list[float], label: str = "", progress_key: str = "audio",
                 lease_url: str | None = None) -> dict:
    return encode_audio_fn(source_url, out_url, stream_index=stream_index, t0=t0, duration=duration,
                           channels=channels, segment_times=segment_times, progress_key=progress_key,
                           lease_url=lease_url)
