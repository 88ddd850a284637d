"""Awkward sources through the whole flow: every published rung must pass the same checks
(frame count, duration, keyframe-aligned segments identical across rungs, segment length,
audio/video start), whatever the source's shape, codec, timing or audio."""

from __future__ import annotations

import random
import re
import subprocess

import pytest

from tests.media import make_clip
from tests.transcode_support import (  # noqa: F401 - fixtures
    add_raw_video,
    add_video,
    check_published,
    dask_cluster,
    ffprobe,
    ingest_env,
    run_ingest,
    video_row,
)


def _remux(src, dst, *args):
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(src), "-c", "copy", *args, str(dst)], check=True)
    return dst


def _make(media_dir, kind):
    p = media_dir / f"src-{kind}"
    if kind == "odd":
        return make_clip(p.with_suffix(".mp4"), duration=3, size="321x241", gop=30,
                         extra_video=["-pix_fmt", "yuv444p"])
    if kind == "portrait":
        return make_clip(p.with_suffix(".mp4"), duration=3, size="360x640", gop=30)
    if kind == "rotated":
        base = make_clip(media_dir / "rot-base.mp4", duration=20, size="480x270", gop=30)
        return _remux(base, p.with_suffix(".mp4"), "-metadata:s:v:0", "rotate=90")
    if kind == "nonsquare":
        return make_clip(p.with_suffix(".mp4"), duration=20, size="480x360", gop=30,
                         extra_video=["-vf", "setsar=4/3"])
    if kind == "fps60":
        return make_clip(p.with_suffix(".mp4"), duration=20, size="320x240", rate="60", gop=60)
    if kind == "vfr":
        # 3 of every 4 frames kept (22.5 fps on average, uneven gaps); a keyframe every 45 coded
        # frames is every 2 s, so the segment starts are clean cuts and the chunks stream copies
        return make_clip(p.with_suffix(".mp4"), duration=20, size="320x240", gop=45,
                         extra_video=["-vf", "select='not(eq(mod(n\\,4)\\,1))'", "-fps_mode", "vfr"])
    if kind == "longgop":
        return make_clip(p.with_suffix(".mp4"), duration=13, size="320x240", rate="15", gop=150, bframes=2)
    if kind == "hevc":
        return make_clip(p.with_suffix(".mp4"), duration=20, size="320x240", vcodec="libx265", gop=30,
                         extra_video=["-preset", "ultrafast", "-x265-params", "log-level=error", "-tag:v", "hvc1"])
    if kind == "vp9":
        return make_clip(p.with_suffix(".mkv"), duration=4, size="320x240", vcodec="libvpx-vp9", gop=30,
                         extra_video=["-deadline", "realtime", "-cpu-used", "8", "-b:v", "300k"])
    if kind == "silent":
        return make_clip(p.with_suffix(".mp4"), duration=3, size="320x240", gop=30, audio=False)
    if kind == "surround":
        return make_clip(p.with_suffix(".mp4"), duration=20, size="320x240", gop=30, channels=6)
    if kind == "onesecond":
        return make_clip(p.with_suffix(".mp4"), duration=1, size="320x240", gop=15)
    if kind == "interlaced":
        # 1080i-style, small: 50 pictures a second woven into 25 interlaced frames, top field
        # first, coded as interlaced H.264 (the stream says "tt")
        return make_clip(p.with_suffix(".mp4"), duration=20, size="320x240", rate="50", gop=25,
                         extra_video=["-vf", "tinterlace=interleave_top", "-flags", "+ildct+ilme",
                                      "-x264-params", "tff=1"])
    if kind == "editlist":
        base = make_clip(media_dir / "edit-base.mp4", duration=21, size="320x240", gop=45, bframes=3)
        # a stream-copy trim that starts mid-GOP: an edit list hides the first frames
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-ss", "0.5", "-i", str(base), "-c", "copy",
                        str(p.with_suffix(".mp4"))], check=True)
        return p.with_suffix(".mp4")
    raise AssertionError(kind)


CASES = {
    # kind: (expect_audio, expected top rung size or None)
    "odd": (True, (320, 240)),
    "portrait": (True, (360, 640)),
    "rotated": (True, (270, 480)),
    "nonsquare": (True, (640, 360)),
    "fps60": (True, (320, 240)),
    "vfr": (True, (320, 240)),
    "longgop": (True, (320, 240)),
    "hevc": (True, (320, 240)),
    "vp9": (True, (320, 240)),
    "silent": (False, (320, 240)),
    "surround": (True, (320, 240)),
    "onesecond": (True, (320, 240)),
    "editlist": (True, (320, 240)),
    "interlaced": (True, (320, 240)),
}


# sources long enough (20 s, 1-2 s GOPs) to split into several chunks, and the mode every chunk
# must use: x265 makes open GOPs (CRA pictures), where a stream-copy cut would lose frames; the
# edit-list source's keyframes sit at 1 s + 1.5 s multiples, never on a segment start (chunks
# start on segment starts), so its chunks are read with exact seeking
LONG = {"vfr": "copy", "editlist": "seek", "hevc": "seek", "fps60": "copy", "rotated": "copy",
        "nonsquare": "copy", "surround": "copy", "interlaced": "copy"}


@pytest.mark.parametrize("kind", list(CASES))
def test_awkward_source_comes_out_right(ingest_env, media_dir, kind):
    src = _make(media_dir, kind)
    expect_audio, top = CASES[kind]
    vid = add_video(src, title=kind)
    result, exc = run_ingest(vid)
    assert exc is None, f"{kind}: {exc} / {video_row(vid)}"
    facts = check_published(vid, src, expect_audio=expect_audio)
    sizes = [(r["width"], r["height"]) for r in facts["renditions"].values()]
    assert top in sizes, sizes
    if kind in LONG:
        # 20 s on the test cluster's two worker slots: ~4 s chunks, so the joins are tested
        assert 4 <= result["chunks"] <= 6, result["chunks"]
        assert len(result["chunk_modes"]) == result["chunks"]
        assert set(result["chunk_modes"].values()) == {LONG[kind]}, result["chunk_modes"]
        assert result["timing"] == "container"
    if kind == "longgop":
        assert result["chunks"] >= 2
    if kind == "interlaced":
        check_deinterlaced(vid, src, facts)


def idet(target: str) -> dict[str, int]:
    """ffmpeg's interlace detector over every frame: how many look woven from two fields (TFF,
    BFF: combing where things move) and how many look progressive."""
    out = subprocess.run(["ffmpeg", "-hide_banner", "-nostdin", "-protocol_whitelist", "concat,file,pipe",
                          "-i", target, "-map", "0:v:0", "-vf", "idet", "-f", "null", "-"],
                         capture_output=True, text=True, check=True)
    line = re.search(r"Single frame detection: (.*)", out.stderr).group(1)
    return {k: int(v) for k, v in re.findall(r"(\w+):\s*(\d+)", line)}


def check_deinterlaced(vid: str, src, facts: dict) -> None:
    """The source combs in nearly every frame; no published rung may, and none may say it is
    interlaced. Deinterlacing keeps one frame per source frame (counted by check_published)."""
    import m3u8

    from tests.transcode_support import local

    before = idet(str(src))
    assert before["TFF"] >= 0.9 * facts["source_frames"], before
    row = video_row(vid)
    for name, r in facts["renditions"].items():
        rend = next(x for x in row["renditions"] if x["name"] == name and x["run"] == row["current_run"])
        playlist = local(rend["playlist_url"])
        segs = [playlist.parent / seg.uri for seg in m3u8.loads(playlist.read_text()).segments]
        stream = ffprobe(str(segs[0]), "-select_streams", "v:0", "-show_entries", "stream=field_order")
        assert stream["streams"][0]["field_order"] == "progressive", (name, stream)
        after = idet("concat:" + "|".join(str(p) for p in segs))
        # idet takes a few clean frames for woven ones (7 of 500 here); without bwdif: all 500
        assert after["TFF"] + after["BFF"] <= 0.05 * r["frames"], (name, before, after)


def test_rotated_video_is_turned_like_a_player_does(ingest_env, media_dir):
    """Compare our top rung with ffmpeg's own autorotated decode of the source (PSNR)."""
    src = _make(media_dir, "rotated")
    vid = add_video(src, title="rotated")
    _, exc = run_ingest(vid)
    assert exc is None, exc
    row = video_row(vid)
    rend = next(r for r in row["renditions"] if r["status"] == "READY" and not r["name"].startswith("audio"))
    from tests.transcode_support import local

    seg = local(rend["playlist_url"]).parent / "seg_00000.ts"
    out = subprocess.run(
        ["ffmpeg", "-hide_banner", "-i", str(seg), "-i", str(src), "-filter_complex",
         f"[1:v]setpts=PTS-STARTPTS,scale={rend['width']}:{rend['height']},setsar=1[ref];"
         "[0:v]setpts=PTS-STARTPTS,setsar=1[out];[out][ref]psnr",
         "-frames:v", "30", "-f", "null", "-"], capture_output=True, text=True)
    text = out.stderr
    avg = float(text.split("average:")[1].split()[0])
    assert avg > 30, text


def _task_runs(flow_run_id: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))


def _flow_run_id(video_id: str) -> str:
    from catalog.db import session_scope
    from catalog.state import get_video

    with session_scope() as s:
        return get_video(s, video_id).flow_run_id


@pytest.mark.parametrize("kind", ["corrupt", "random", "truncated", "audio-only"])
def test_bad_input_fails_permanently_without_retries(ingest_env, media_dir, tmp_path, kind):
    if kind == "random":
        path = tmp_path / "holiday.mp4"
        path.write_bytes(random.Random(14).randbytes(200_000))
    elif kind == "truncated":
        # a download cut off half way: the index (moov, written last) never arrived
        good = make_clip(media_dir / "to-truncate.mp4", duration=4, size="320x240")
        data = good.read_bytes()
        path = tmp_path / "truncated.mp4"
        path.write_bytes(data[: len(data) // 2])
    elif kind == "corrupt":
        good = make_clip(media_dir / "to-corrupt.mp4", duration=2, size="320x240")
        data = bytearray(good.read_bytes())
        i = data.find(b"moov")
        data[i - 4: i + 400] = b"\x00" * 404  # the index is gone: nothing can be decoded
        path = tmp_path / "corrupt.mp4"
        path.write_bytes(bytes(data))
    else:
        path = tmp_path / "song.m4a"
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "sine=duration=2", "-c:a", "aac",
                        str(path)], check=True)
    vid = add_raw_video(path)
    _, exc = run_ingest(vid)
    assert exc is not None
    row = video_row(vid)
    assert row["status"] == "FAILED"
    if kind in ("corrupt", "random", "truncated"):
        assert "cannot read this input" in row["error"] and "damaged, truncated or not a video" in row["error"], row
    else:
        assert "no video stream" in row["error"] and "audio" in row["error"]
    runs = _task_runs(_flow_run_id(vid))
    probe = [r for r in runs if r.name.startswith("probe")]
    assert probe and probe[0].state.is_failed()
    assert probe[0].run_count == 1, "a permanent error must not be retried"
    assert not [r for r in runs if r.name.startswith("encode")]
