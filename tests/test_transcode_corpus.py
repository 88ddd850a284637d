"""The files old archives hold, through the real pipeline: every one must publish a full,
validated ladder, whatever its container says (or fails to say) about timing.

Each file is 20 s with 1-2 s GOPs, so with the test cluster's two worker slots the split makes
five chunks of ~4 s: the joins between chunks are what is tested, and every published frame is
compared with the source's own decoded frame at the same position (a frame lost or repeated at a
join shows up as a drop in PSNR there).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.media import LEGACY_KINDS, make_legacy
from tests.transcode_support import (  # noqa: F401 - fixtures
    add_video,
    check_published,
    dask_cluster,
    ingest_env,
    local,
    run_ingest,
    video_row,
)

# kind -> (timing the split must use, modes its chunks may end in)
# "container": packet timestamps trusted; "decoded": the container's timestamps cannot be
# trusted (AVI has no presentation times, MPEG-PS/FLV/ASF give partial or millisecond ones),
# so chunks are planned from what the decoder produces.
EXPECTED = {
    "avi-xvid": ("decoded", {"seek"}),
    "avi-h264": ("decoded", {"seek"}),
    "avi-mjpeg": ("decoded", {"seek"}),
    "dv": ("container", {"copy"}),
    "wmv": ("decoded", {"seek"}),
    "flv": ("decoded", {"seek"}),
    "vob": ("decoded", {"seek"}),
    # 30-frame GOPs at 29.97 fps drift off the 6 s segment grid (a keyframe every 1.001 s):
    # chunks whose start or end is not a keyframe are read with exact seeking
    "3gp-h263": ("container", {"copy", "seek"}),
    "m2ts-ac3": ("container", {"copy", "seek"}),
    "webm-vp8": ("container", {"copy"}),
    "ogg-theora": ("container", {"copy"}),
    "mxf-mpeg2": ("container", {"copy", "seek"}),
    "mov-prores": ("container", {"copy"}),
}


@pytest.fixture(scope="session")
def legacy_file(media_dir):
    """Makes each corpus file once per test session."""
    return lambda kind: make_legacy(media_dir / "legacy", kind)


def frame_psnr(published: list[Path], source: Path, width: int, height: int) -> list[float]:
    """PSNR of every published frame against the source's frame at the same position (frames
    paired by index, not by timestamp: a lost or repeated frame shifts every later pair)."""
    concat = "concat:" + "|".join(str(p) for p in published)
    graph = (f"[0:v]setpts=N/(25*TB),format=yuv420p[o];"
             f"[1:v]scale={width}:{height}:flags=bicubic,setsar=1,format=yuv420p,setpts=N/(25*TB)[r];"
             "[o][r]psnr=stats_file=-")
    out = subprocess.run(["ffmpeg", "-hide_banner", "-nostdin", "-protocol_whitelist", "concat,file,pipe",
                          "-i", concat, "-i", str(source), "-filter_complex", graph, "-f", "null", "-"],
                         capture_output=True, text=True, check=True)
    return [float(m) if m != "inf" else 99.0 for m in re.findall(r"psnr_avg:(\S+)", out.stdout)]


def published_segments(row: dict, name: str) -> list[Path]:
    import m3u8

    rend = next(r for r in row["renditions"] if r["name"] == name and r["run"] == row["current_run"])
    playlist = local(rend["playlist_url"])
    return [playlist.parent / s.uri for s in m3u8.loads(playlist.read_text()).segments]


def check_frames_match_source(vid: str, src: Path, facts: dict) -> None:
    row = video_row(vid)
    for name, r in facts["renditions"].items():
        psnr = frame_psnr(published_segments(row, name), src, r["width"], r["height"])
        assert len(psnr) == facts["source_frames"], (name, len(psnr))
        worst = min(range(len(psnr)), key=psnr.__getitem__)
        assert psnr[worst] > 28.0, f"{name}: frame {worst} differs from the source's (PSNR {psnr[worst]:.1f} dB)"


@pytest.mark.parametrize("kind", list(LEGACY_KINDS))
def test_legacy_file_publishes_a_full_ladder(ingest_env, legacy_file, kind):
    src = legacy_file(kind)
    vid = add_video(src, title=kind)
    result, exc = run_ingest(vid)
    assert exc is None, f"{kind}: {exc} / {video_row(vid)}"
    facts = check_published(vid, src, expect_audio=True)
    assert not result["failed"], result
    timing, modes = EXPECTED[kind]
    # 20 s on two worker slots: chunks of 4 s (the planner's floor), cut at keyframes
    assert 4 <= result["chunks"] <= 6, result["chunks"]
    assert result["timing"] == timing, result
    used = set(result["chunk_modes"].values())
    assert len(result["chunk_modes"]) == result["chunks"] and used <= modes, result["chunk_modes"]
    check_frames_match_source(vid, src, facts)
