"""Encode the audio once, from the whole source: AAC-LC stereo 48 kHz, aligned to the video.

Never per chunk: every AAC stream starts with encoder priming, so chunked audio clicks at the
joins. The output starts at the first displayed video frame (silence is added when the audio
starts later, samples before it are dropped) and lasts exactly as long as the video, so the
packager can mux it without any offset. Multichannel sources are downmixed to stereo.
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
from tasks.retry import RETRY_OPTIONS, check_lease, report_progress
from tasks.split import _logger

log = logging.getLogger(__name__)

SAMPLE_RATE = 48000
# AAC encoder delay: the first 1024 samples of every stream are priming, not sound
AAC_PRIMING_SAMPLES = 1024
AAC_PRIMING_SECONDS = AAC_PRIMING_SAMPLES / SAMPLE_RATE
AUDIO_CODECS = "mp4a.40.2"


def build_audio_command(input_path: str, out_path: str, *, stream_index: int, t0: float,
                        duration: float, channels: int) -> list[str]:
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
    args = [*ffmpeg.SAFE_INPUT, "-copyts", "-i", input_path, "-map", f"0:{stream_index}",
            "-vn", "-sn", "-dn", "-af", ",".join(chain), "-ac", "2", "-ar", str(SAMPLE_RATE),
            "-c:a", "aac", "-profile:a", "aac_low", "-b:a", str(AUDIO_BITRATE), "-f", "mp4", out_path]
    return args


def encode_audio_fn(source_url: str, out_url: str, *, stream_index: int, t0: float, duration: float,
                    channels: int, progress_key: str = "audio", lease_url: str | None = None) -> dict:
    settings = get_settings()
    logger = _logger()
    t_begin = time.monotonic()
    started_at = time.time()
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.work_dir, prefix="audio-") as tmp:
        out = str(Path(tmp) / "audio.m4a")
        with storage.local_copy(source_url, settings.work_dir) as path:
            ffmpeg.run(build_audio_command(str(path), out, stream_index=stream_index, t0=t0, duration=duration,
                                           channels=channels),
                       timeout=settings.ffmpeg_timeout, what="audio encode",
                       on_progress=lambda f: report_progress(progress_key, f), duration=duration)
        check_lease(lease_url)
        storage.move_local_file(out, out_url)
    seconds = time.monotonic() - t_begin
    logger.info("audio: %.2f s of AAC-LC stereo %d Hz in %.2f s (source had %d channels)",
                duration, SAMPLE_RATE, seconds, channels)
    return {"url": out_url, "seconds": seconds, "codecs": AUDIO_CODECS, "channels_in": channels,
            "started_at": started_at, "ended_at": time.time()}


@task(name="audio", task_run_name="audio {label}", cache_policy=NO_CACHE, **RETRY_OPTIONS)
def encode_audio(source_url: str, out_url: str, stream_index: int, t0: float, duration: float,
                 channels: int, label: str = "", lease_url: str | None = None) -> dict:
    return encode_audio_fn(source_url, out_url, stream_index=stream_index, t0=t0, duration=duration,
                           channels=channels, lease_url=lease_url)
