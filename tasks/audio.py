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

Every audio stream of the source the encoder can use becomes a rendition of the one audio group
(`audio_renditions`: "audio" for the main track, "audio-2", "audio-3"… for the others, with
language, label and role). One ffmpeg reads the source once and writes them all, segment by
segment on the same grid; a segment counts as published when every track has it.
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
from tasks.captions import CaptionError, language_name, normalize_language
from tasks.package import AUDIO_CODECS, AUDIO_RENDITION, SEGMENT_PATTERN, TS_OFFSET, segment_name
from tasks.probe import DESCRIPTION, MAIN
from tasks.retry import RETRY_OPTIONS, check_lease, report_progress
from tasks.split import _logger

log = logging.getLogger(__name__)

SAMPLE_RATE = 48000
# AAC encoder delay: the first 1024 samples of every stream are priming, not sound
AAC_PRIMING_SAMPLES = 1024
AAC_PRIMING_SECONDS = AAC_PRIMING_SAMPLES / SAMPLE_RATE


def audio_renditions(tracks: list[dict]) -> list[dict]:
    """The audio group's renditions from the probe's tracks (`tasks.probe.audio_tracks_of`, main
    first): {name, stream_index, channels, language (BCP 47, "und" when unknown), label, default,
    role, characteristics}. The label is the stream's title, else its language named in itself
    ("Français"), with the role when it is not the main one; labels are unique (they are the
    master's NAME, and what a remembered choice matches). A lone track, with nothing to choose
    from, is "Main" unless titled: naming a language loads CLDR's name data (about a second of
    CPU in each new flow process), which a video with one track should not pay on its way to its
    first frame. The main track is the group's DEFAULT; an audio description carries Apple's
    `describes-video` characteristic."""
    out, labels = [], set()
    named = len(tracks) > 1
    for n, t in enumerate(tracks):
        try:
            language = normalize_language(t.get("language")) if t.get("language") else "und"
        except CaptionError:
            language = "und"
        role = t.get("role", MAIN)
        base = t.get("title") or (language_name(language) if named and language != "und"
                                  else ("Main" if n == 0 else f"Audio {n + 1}"))
        if named and not t.get("title") and role != MAIN:
            base += f" ({role})"
        label, k = base[:100], 2
        while label in labels:
            label, k = f"{base[:90]} ({k})", k + 1
        labels.add(label)
        out.append({"name": AUDIO_RENDITION if n == 0 else f"{AUDIO_RENDITION}-{n + 1}",
                    "stream_index": int(t["index"]), "channels": int(t.get("channels") or 0),
                    "language": language, "label": label, "default": n == 0, "role": role,
                    "characteristics": "public.accessibility.describes-video" if role == DESCRIPTION else None})
    return out


def skipped_note(stream: dict) -> str:
    """What the ingest report says of an audio stream the encoder cannot use."""
    what = ", ".join(x for x in (stream.get("codec"), stream.get("language"), stream.get("title")) if x)
    return f"audio stream #{stream['index']} ({what}) left out: {stream['reason']}"


def _track_args(*, stream_index: int, t0: float, duration: float, channels: int, out_dir: Path,
                segment_times: list[float]) -> list[str]:
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
    args = ["-map", f"0:{stream_index}", "-vn", "-sn", "-dn", "-af", ",".join(chain), "-ac", "2",
            "-ar", str(SAMPLE_RATE), "-c:a", "aac", "-profile:a", "aac_low", "-b:a", str(AUDIO_BITRATE),
            # the video's timeline; the segment muxer cuts on it too (offset included)
            "-output_ts_offset", f"{TS_OFFSET:g}",
            "-f", "segment", "-segment_format", "mpegts", "-reset_timestamps", "0",
            "-segment_start_number", "0", "-segment_list", str(out_dir / "segments.csv"),
            "-segment_list_type", "csv"]
    cuts = [f"{TS_OFFSET + t:.6f}" for t in segment_times[1:]]
    args += ["-segment_times", ",".join(cuts)] if cuts else ["-segment_time", str(10**9)]
    return args + [str(out_dir / SEGMENT_PATTERN)]


def build_audio_command(input_path: str, out_dirs: list[str], *, tracks: list[dict], t0: float,
                        duration: float, segment_times: list[float]) -> list[str]:
    """One ffmpeg: the source read once, one segmented output per track (`out_dirs` in order)."""
    args = [*ffmpeg.SAFE_INPUT, "-copyts", "-i", input_path]
    for t, out_dir in zip(tracks, out_dirs):
        args += _track_args(stream_index=int(t["stream_index"]), t0=t0, duration=duration,
                            channels=int(t.get("channels") or 0), out_dir=Path(out_dir), segment_times=segment_times)
    return args


def encode_audio_fn(source_url: str, hls_url: str, *, tracks: list[dict], t0: float, duration: float,
                    segment_times: list[float], progress_key: str = "audio",
                    lease_url: str | None = None) -> dict:
    """Encode the audio renditions (`audio_renditions`) into `hls_url`/{name}/seg_00000.ts, ...
    Returns {"tracks": {name: segment sizes}, "segment_sizes": the main track's, "dropped":
    {name: why}, ...}. One stream that cannot be encoded must not silence the video: when the
    input refuses the whole set, the main track is encoded alone and the others are dropped."""
    try:
        return _encode_tracks(source_url, hls_url, tracks=tracks, t0=t0, duration=duration,
                              segment_times=segment_times, progress_key=progress_key, lease_url=lease_url)
    except ffmpeg.PermanentMediaError as exc:
        if len(tracks) == 1:
            raise
        _logger().warning("the audio tracks could not be encoded together (%s); encoding the main one alone", exc)
        result = _encode_tracks(source_url, hls_url, tracks=tracks[:1], t0=t0, duration=duration,
                                segment_times=segment_times, progress_key=progress_key, lease_url=lease_url)
        result["dropped"] = {t["name"]: str(exc)[:500] for t in tracks[1:]}
        return result


def _encode_tracks(source_url: str, hls_url: str, *, tracks: list[dict], t0: float, duration: float,
                   segment_times: list[float], progress_key: str, lease_url: str | None) -> dict:
    settings = get_settings()
    logger = _logger()
    t_begin = time.monotonic()
    started_at = time.time()
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    sizes: dict[str, list[int]] = {t["name"]: [] for t in tracks}
    reported = 0
    with tempfile.TemporaryDirectory(dir=settings.work_dir, prefix="audio-") as tmp:
        dirs = [Path(tmp) / t["name"] for t in tracks]
        for d in dirs:
            d.mkdir()

        def publish_finished(fraction: float | None = None) -> None:
            nonlocal reported
            for t, out_dir in zip(tracks, dirs):
                got = sizes[t["name"]]
                done = ffmpeg.closed_segments(out_dir / "segments.csv")
                if len(done) <= len(got):
                    continue
                check_lease(lease_url)
                for name in done[len(got):]:
                    if name != segment_name(len(got)):
                        raise ffmpeg.PermanentMediaError(f"audio segment {name} of {t['name']} out of order")
                    path = out_dir / name
                    got.append(path.stat().st_size)
                    storage.move_local_file(path, storage.join(hls_url, t["name"], name))
            common = min(len(v) for v in sizes.values())  # published once every track has it
            if common > reported or fraction == 1.0:
                reported = common
                report_progress(progress_key, fraction if fraction is not None else 1.0, segments=common)

        with storage.local_copy(source_url, settings.work_dir) as path:
            ffmpeg.run(build_audio_command(str(path), [str(d) for d in dirs], tracks=tracks, t0=t0,
                                           duration=duration, segment_times=segment_times),
                       timeout=settings.ffmpeg_timeout, what="audio encode",
                       on_progress=publish_finished, duration=duration)
        publish_finished(1.0)
    for name, got in sizes.items():
        if len(got) != len(segment_times):
            raise ffmpeg.PermanentMediaError(
                f"the audio track {name} came out in {len(got)} segments, expected {len(segment_times)}")
    seconds = time.monotonic() - t_begin
    logger.info("audio: %d track(s) of %.2f s, AAC-LC stereo %d Hz in %d segments, %.2f s (source channels: %s)",
                len(tracks), duration, SAMPLE_RATE, len(segment_times), seconds,
                ", ".join(str(t.get("channels") or 0) for t in tracks))
    main = tracks[0]["name"]
    return {"url": storage.join(hls_url, main), "segment_sizes": sizes[main], "tracks": sizes, "dropped": {},
            "seconds": seconds, "codecs": AUDIO_CODECS, "channels_in": tracks[0].get("channels") or 0,
            "started_at": started_at, "ended_at": time.time()}


@task(name="audio", task_run_name="audio {label}", cache_policy=NO_CACHE, **RETRY_OPTIONS)
def encode_audio(source_url: str, hls_url: str, tracks: list[dict], t0: float, duration: float,
                 segment_times: list[float], label: str = "", progress_key: str = "audio",
                 lease_url: str | None = None) -> dict:
    return encode_audio_fn(source_url, hls_url, tracks=tracks, t0=t0, duration=duration,
                           segment_times=segment_times, progress_key=progress_key, lease_url=lease_url)
