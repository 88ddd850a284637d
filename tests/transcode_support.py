"""Fixtures and checks shared by the transcode tests: a real Dask cluster, real Prefect, real
ffmpeg, and the checks a person would make on the published HLS."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import m3u8
import pytest

from tests.media import make_clip

KEYFRAME_SECONDS = 2.0
SEGMENT_SECONDS = 6.0


@pytest.fixture(scope="session")
def dask_cluster(shared_dask_cluster):
    """The session's one Dask cluster (see `shared_dask_cluster` in conftest.py). Each module that
    imports this fixture gets a copy of its definition, so the cluster itself lives in conftest:
    defined here, it was started anew, and kept running, for every transcode module."""
    return shared_dask_cluster


@pytest.fixture
def ingest_env(prefect_api, dask_cluster, monkeypatch):
    from config.settings import reset_settings

    monkeypatch.setenv("VODFLOW_DASK_ADDRESS", dask_cluster.scheduler_address)
    reset_settings()
    return dask_cluster


def add_video(path: Path, title: str = "clip") -> str:
    """Store a source and catalog it (UPLOADED), the way intake does, without dispatching."""
    from flows.intake import accept
    from tasks.probe import probe_path

    info = probe_path(path)
    tmp = Path(tempfile.mkdtemp()) / path.name
    shutil.copyfile(path, tmp)
    return accept(tmp, filename=path.name, title=title, info=info, dispatch=False)


def add_raw_video(path: Path) -> str:
    """Catalog a file intake would have refused (to see how the flow copes)."""
    from catalog.db import session_scope
    from catalog.models import Video, VideoStatus, new_id
    from config import storage

    vid = new_id()
    url = storage.url_for("sources", vid, "source" + path.suffix)
    storage.put_file(path, url)
    with session_scope() as s:
        s.add(Video(id=vid, title="raw", source_url=url, status=VideoStatus.UPLOADED))
    return vid


def run_ingest(video_id: str):
    """Run the flow; returns (result or None, exception or None)."""
    from flows.ingest import ingest

    try:
        return ingest(video_id), None
    except Exception as exc:  # noqa: BLE001 - tests look at the catalog afterwards
        return None, exc


def video_row(video_id: str):
    from catalog.db import session_scope
    from catalog.state import get_video

    with session_scope() as s:
        v = get_video(s, video_id)
        rends = [dict(name=r.name, run=r.run, status=r.status.value, width=r.width, height=r.height,
                      bandwidth=r.bandwidth, average_bandwidth=r.average_bandwidth, codecs=r.codecs,
                      frame_rate=r.frame_rate, playlist_url=r.playlist_url, segment_count=r.segment_count,
                      error=r.error)
                 for r in v.renditions]
        return dict(status=v.status.value, progress=v.progress, error=v.error, current_run=v.current_run,
                    renditions=rends)


def ffprobe(target: str, *args: str) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-protocol_whitelist", "concat,file,pipe",
                          "-print_format", "json", *args, target], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def source_frames(path: Path) -> list[float]:
    """The source's displayed frames, as a player decodes them (timestamps, sorted)."""
    data = ffprobe(str(path), "-select_streams", "v:0", "-show_entries", "frame=pts_time,best_effort_timestamp_time",
                   "-show_frames")
    times: list[float | None] = []
    for f in data.get("frames", []):
        # AVI and raw streams give decoded frames no pts: the decoder's best-effort time stands
        # in; the last frames flushed out of a B-frame decoder may have neither, yet are shown
        t = next((f[k] for k in ("pts_time", "best_effort_timestamp_time") if f.get(k) not in (None, "N/A")), None)
        times.append(float(t) if t is not None else None)
    known = sorted(t for t in times if t is not None)
    step = sorted(b - a for a, b in zip(known, known[1:]))[len(known) // 2 - 1] if len(known) > 2 else 1 / 30
    last = known[-1] if known else 0.0
    for t in times:
        if t is None:  # shown after the last timed frame, one frame interval apart (as ffmpeg does)
            last += step
            known.append(last)
    return sorted(known)


def local(url: str) -> Path:
    from config import storage

    return storage.local_path_of(url)


def check_published(video_id: str, source: Path, *, expect_audio: bool, expect_status: str = "READY") -> dict:
    """What a person would check on the published video; returns the facts for more asserts."""
    from catalog.db import session_scope
    from catalog.state import get_video, published_renditions
    from streaming_app.delivery.master import render_master

    row = video_row(video_id)
    assert row["status"] == expect_status, row
    assert row["progress"] == 100.0 or expect_status != "READY"
    with session_scope() as s:
        v = get_video(s, video_id)
        audio_rows = published_renditions(s, v, kind="audio")
        master_text = render_master(published_renditions(s, v), audio=audio_rows)
        audio_playlist = local(audio_rows[0].playlist_url) if audio_rows else None
    master = m3u8.loads(master_text)
    assert master.playlists, master_text
    # audio is its own rendition, stored once: an AUDIO group every variant references
    assert (audio_playlist is not None) == expect_audio, master_text
    audio_first_pts = None
    if expect_audio:
        assert [m.type for m in master.media] .count("AUDIO") == 1, master_text
        assert all(p.stream_info.audio == "aud" for p in master.playlists), master_text
        atext = audio_playlist.read_text()
        apl = m3u8.loads(atext)
        assert "#EXT-X-PLAYLIST-TYPE:VOD" in atext and apl.is_endlist
        a_paths = [audio_playlist.parent / seg.uri for seg in apl.segments]
        a = ffprobe(str(a_paths[0]), "-show_streams")["streams"]
        assert [st["codec_type"] for st in a] == ["audio"], a
        assert a[0]["codec_name"] == "aac" and a[0]["profile"] == "LC"
        assert int(a[0]["sample_rate"]) == 48000 and int(a[0]["channels"]) == 2
        apk = ffprobe(str(a_paths[0]), "-select_streams", "a:0", "-show_entries", "packet=pts_time",
                      "-read_intervals", "%+#1", "-show_packets")["packets"]
        audio_first_pts = float(apk[0]["pts_time"])
        # the audio lasts as long as the video, on the same segment grid
        a_total = sum(seg.duration for seg in apl.segments)
        facts_audio = {"segments": len(apl.segments), "duration": a_total}
    frames = source_frames(source)
    n_src = len(frames)
    src_interval = (frames[-1] - frames[0]) / max(1, n_src - 1) if n_src > 1 else 1 / 30
    src_duration = frames[-1] - frames[0] + src_interval
    facts: dict = {"renditions": {}}
    boundaries = None
    for variant in master.playlists:
        si = variant.stream_info
        assert si.bandwidth > 0 and si.average_bandwidth and si.average_bandwidth <= si.bandwidth
        hevc = si.codecs.startswith("hvc1.")
        assert si.codecs.startswith("avc1.64") or (hevc and si.resolution[1] > 1080), si.codecs
        assert ("mp4a.40.2" in si.codecs) == expect_audio, si.codecs
        assert si.resolution and si.frame_rate
        rend = next(r for r in row["renditions"] if r["run"] == row["current_run"] and variant.uri.startswith(
            f"{r['run']}/{r['name']}/"))
        playlist_path = local(rend["playlist_url"])
        text = playlist_path.read_text()
        pl = m3u8.loads(text)
        assert "#EXT-X-PLAYLIST-TYPE:VOD" in text and "#EXT-X-INDEPENDENT-SEGMENTS" in text
        assert pl.version >= 3 and pl.is_endlist
        assert pl.target_duration <= SEGMENT_SECONDS
        seg_paths = [playlist_path.parent / s.uri for s in pl.segments]
        for s in pl.segments:
            assert round(s.duration) <= pl.target_duration
        # fragmented MP4 (HEVC): every segment is read behind the rung's one init segment
        head = []
        if hevc:
            assert pl.version >= 6 and pl.segment_map and [m.uri for m in pl.segment_map] == ["init.mp4"], text
            assert all(p.suffix == ".m4s" for p in seg_paths)
            head = [str(playlist_path.parent / "init.mp4")]

        def readable(*paths) -> str:
            return "concat:" + "|".join(head + [str(p) for p in paths]) if head else str(paths[0])

        concat = "concat:" + "|".join(head + [str(p) for p in seg_paths])
        streams = ffprobe(readable(seg_paths[0]), "-show_streams")["streams"]
        v = next(s for s in streams if s["codec_type"] == "video")
        if hevc:
            assert v["codec_name"] == "hevc" and v["profile"] in ("Main", "Main 10"), v
            assert v["codec_tag_string"] == "hvc1" and int(v["level"]) <= 150  # level 5.0
            assert v["pix_fmt"] == ("yuv420p10le" if v["profile"] == "Main 10" else "yuv420p")
        else:
            assert v["codec_name"] == "h264" and v["profile"] == "High" and v["pix_fmt"] == "yuv420p"
            assert int(v["level"]) <= 42
        assert (v["width"], v["height"]) == tuple(si.resolution)
        assert v.get("sample_aspect_ratio", "1:1") in ("1:1", "N/A")
        # video segments carry no audio: the audio rendition is shared by every rung
        assert not [s for s in streams if s["codec_type"] == "audio"]
        # every frame, per segment: count, keyframe at each segment start, same cut in every rung
        starts, seg_first_key, vpts = [], [], []
        for p in seg_paths:
            pk = ffprobe(readable(p), "-select_streams", "v:0", "-show_entries", "packet=pts_time,flags",
                         "-show_packets")["packets"]
            seg_first_key.append("K" in pk[0]["flags"])
            starts.append(len(vpts))
            vpts += [float(x["pts_time"]) for x in pk]
        assert len(vpts) == n_src, f"{rend['name']}: {len(vpts)} frames, source has {n_src}"
        assert all(seg_first_key), f"{rend['name']}: a segment does not start with a keyframe"
        # a player starts decoding at any segment: each opens with the PAT, then the PMT (MPEG-TS),
        # or with a movie fragment (fMP4)
        for p in seg_paths:
            if hevc:
                assert p.read_bytes()[4:8] == b"moof", f"{p.name} does not open with a movie fragment"
            else:
                assert _opens_with_pat_and_pmt(p.read_bytes()[:188 * 8]), f"{p.name} does not open with PAT + PMT"
        out_duration = max(vpts) - min(vpts) + src_interval
        assert abs(out_duration - src_duration) <= src_interval + 1e-3, (out_duration, src_duration)
        if boundaries is None:
            boundaries = starts
        assert starts == boundaries, "segment boundaries differ between rungs"
        # keyframes on the global grid (every KEYFRAME_SECONDS from the first frame)
        keys = ffprobe(concat, "-select_streams", "v:0", "-skip_frame", "nokey", "-show_entries",
                       "frame=pts_time", "-show_frames")["frames"]
        key_times = sorted(float(k["pts_time"]) - min(vpts) for k in keys)
        m = 0
        while m * KEYFRAME_SECONDS < out_duration - src_interval:
            want = m * KEYFRAME_SECONDS
            assert any(-src_interval / 2 - 1e-3 <= kt - want < src_interval + 1e-3 for kt in key_times), \
                f"{rend['name']}: no keyframe at {want} s (keys {key_times[:12]})"
            m += 1
        # segment lengths from the pictures themselves
        seg_starts_t = sorted(vpts[i] for i in starts)
        ordered = sorted(vpts)
        for i, t in enumerate(seg_starts_t):
            end = seg_starts_t[i + 1] if i + 1 < len(seg_starts_t) else ordered[-1] + src_interval
            assert end - t <= SEGMENT_SECONDS + src_interval / 2 + 1e-3, f"segment {i} lasts {end - t:.3f} s"
        if expect_audio:
            skew = audio_first_pts + 1024 / 48000 - min(vpts)
            assert abs(skew) <= src_interval + 1e-3, f"audio starts {skew * 1000:.1f} ms off the video"
            assert len(pl.segments) == facts_audio["segments"], "audio and video segment grids differ"
            assert abs(facts_audio["duration"] - sum(seg.duration for seg in pl.segments)) < 1e-3
        facts["renditions"][rend["name"]] = {"width": v["width"], "height": v["height"], "segments": len(seg_paths),
                                             "frames": len(vpts), "bandwidth": si.bandwidth, "codecs": si.codecs,
                                             "first_pts": min(vpts), "fmp4": bool(head)}
    facts["source_frames"] = n_src
    facts["row"] = row
    return facts


def _opens_with_pat_and_pmt(head: bytes) -> bool:
    """The PAT (PID 0) and then the PMT it names come before the first media packet."""
    packets = [head[i:i + 188] for i in range(0, len(head) - 187, 188)]
    if not packets or any(p[0] != 0x47 for p in packets):
        return False
    pid = lambda p: ((p[1] & 0x1F) << 8) | p[2]  # noqa: E731
    pmt_pid = None
    for p in packets:
        if pid(p) == 0 and p[1] & 0x40:
            section = p[5 + p[4]:]  # after the pointer field
            pmt_pid = ((section[10] & 0x1F) << 8) | section[11]  # first program, after the header
        elif pmt_pid is not None and pid(p) == pmt_pid:
            return True
        elif pid(p) not in (0x11,):  # only the SDT may come first
            return False
    return False


def clip(media_dir: Path, name: str, **kw) -> Path:
    path = media_dir / name
    if not path.exists():
        make_clip(path, **kw)
    return path
