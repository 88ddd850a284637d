"""Chunk planning from packet timestamps (pure functions), and the split on real files."""

from __future__ import annotations

from array import array
from fractions import Fraction

from tasks.encode import forced_keyframes
from tasks.split import Packets, chunk_math_ok, clean_keyframes, plan_split, read_packets
from tests.media import make_clip


def packets_closed_gop(n_gops: int, gop: int, *, bframes: bool = True, discard_first: int = 0) -> Packets:
    """Decode-order packets of an IPBB... stream with closed GOPs, 1 tick per frame."""
    pts, key = array("q"), bytearray()
    for g in range(n_gops):
        base = g * gop
        order = [0]
        i = 1
        while i < gop:
            if bframes and i + 1 < gop:
                order += [i + 1, i]  # P then the B it anchors
                i += 2
            else:
                order.append(i)
                i += 1
        for k in order:
            pts.append(base + k)
            key.append(1 if k == 0 else 0)
    discard = bytearray(1 if p < discard_first else 0 for p in pts)
    return Packets(Fraction(1, 30), pts, key, discard)


def test_closed_gops_are_clean_cut_points():
    pk = packets_closed_gop(5, 30)
    assert clean_keyframes(pk) == [30, 60, 90, 120]


def test_open_gop_keyframes_are_refused():
    pk = packets_closed_gop(3, 30)
    # make GOP 2 open: a leading B after its I is displayed before it
    i = 30
    pk.pts[i + 1], pk.pts[i] = pk.pts[i], pk.pts[i] - 1
    pk.key[i], pk.key[i + 1] = 0, 1
    pk.pts[i], pk.pts[i + 1] = pk.pts[i + 1], pk.pts[i]
    assert 31 not in clean_keyframes(pk) and 30 not in clean_keyframes(pk)
    assert 60 in clean_keyframes(pk)


def test_plan_tiles_the_timeline_and_counts_every_frame():
    pk = packets_closed_gop(30, 60)  # 60 s at 30 fps, 2 s GOPs
    plan, starts = plan_split(pk, workers=2, keyframe_seconds=2, segment_seconds=6, avg_frame_rate="30/1")
    d = plan.to_dict()
    assert plan.frames == 1800 and abs(plan.duration - 60) < 1e-9 and plan.cfr
    assert chunk_math_ok(d)
    assert 6 <= len(plan.chunks) <= 20
    assert all(c["mode"] == "copy" for c in plan.chunks)
    # cuts on the keyframe grid, so chunk starts add no extra keyframes
    assert all(abs(c["start"] / 2 - round(c["start"] / 2)) < 1e-9 for c in plan.chunks)
    assert plan.segment_starts == list(range(0, 1800, 180))
    assert plan.keyframe_times == [float(2 * k) for k in range(30)]


def test_edit_list_hidden_frames_are_not_counted():
    pk = packets_closed_gop(4, 30, discard_first=10)
    plan, _ = plan_split(pk, workers=2, keyframe_seconds=2, segment_seconds=6, avg_frame_rate="30/1")
    assert plan.frames == 110
    assert abs(plan.t0 - 10 / 30) < 1e-9
    assert plan.chunks[0]["source_start"] == plan.t0


def test_no_clean_keyframe_means_seek_chunks():
    pk = packets_closed_gop(20, 30)
    for i in range(1, len(pk)):
        if pk.key[i]:
            pk.key[i] = 0  # only the first frame is a keyframe: cuts must seek in the source
    plan, _ = plan_split(pk, workers=2, keyframe_seconds=2, segment_seconds=6, avg_frame_rate="30/1")
    assert len(plan.chunks) == 1 or all(c["mode"] == "seek" for c in plan.chunks)


def test_forced_keyframes_land_on_the_grid():
    rate = Fraction(30000, 1001)
    half = 0.5 / float(rate)
    kf = [float(x) for x in forced_keyframes(1.5015, 6.006, 2.0, half, rate).split(",")]
    # chunk-relative: the chunk start, then frames 60 and 120 of the video (2.002 s, 4.004 s)
    assert [round(t + 1.5015, 4) for t in kf] == [1.5015, 2.002, 4.004]


def test_split_writes_exact_chunks_from_a_real_file(tmp_path, monkeypatch):
    from config.settings import reset_settings
    from config import storage
    from tasks.split import split_source_fn

    monkeypatch.setenv("VODFLOW_DATA_DIR", str(tmp_path / "var"))
    reset_settings()
    src = make_clip(tmp_path / "s.mp4", duration=14, size="320x240", gop=30, bframes=3, audio=False)
    plan = split_source_fn("file://" + str(src), storage.url_for("scratch", "v", "r"), workers=2,
                           avg_frame_rate="30/1")
    assert plan["frames"] == 420 and len(plan["chunks"]) >= 2 and chunk_math_ok(plan)
    # every chunk starts on a segment boundary: its segments are whole
    assert {c["first_frame"] for c in plan["chunks"]} <= set(plan["segment_starts"])
    for c in plan["chunks"]:
        path = storage.local_path_of(c["url"])
        n = len(read_packets(path).pts)
        assert n == c["frames"]  # closed GOPs: the slice holds exactly its own frames


def test_a_chunk_keeps_its_renditions_when_its_previews_fail(tmp_path, monkeypatch):
    """Previews are a side product of the chunk encode: a preview branch ffmpeg refuses (here a
    poster size it cannot scale to) costs the chunk its previews, never its renditions."""
    from config import storage
    from config.settings import reset_settings
    from tasks.encode import count_video_packets, encode_chunk_fn
    from tasks.ladder import choose_ladder
    from tasks.probe import probe_path
    from tasks.split import split_source_fn
    from tasks.thumbnails import preview_plan

    monkeypatch.setenv("VODFLOW_DATA_DIR", str(tmp_path / "var"))
    reset_settings()
    src = make_clip(tmp_path / "p.mp4", duration=4, size="320x240", gop=30, audio=False)
    work = storage.url_for("scratch", "v", "r")
    plan = split_source_fn("file://" + str(src), work, workers=2, avg_frame_rate="30/1")
    rungs = [r.to_dict() for r in choose_ladder(probe_path(src))]
    good = preview_plan(plan["duration"], 320, 240)
    broken = {**good, "poster_width": "width_of_nothing", "poster_height": 2}
    chunk = plan["chunks"][0]
    hls = storage.url_for("hls", "v", "r")
    kwargs = dict(source_url="file://" + str(src), rungs=rungs, out_url=storage.join(work, "enc"), hls_url=hls,
                  rotation=0, cfr=plan["cfr"], frame_rate=plan["frame_rate"], threads=1)
    ok = encode_chunk_fn(chunk, previews=good, **kwargs)
    assert [p["index"] for p in ok["previews"]] == list(range(len(ok["previews"]))) and ok["previews"]
    for p in ok["previews"]:
        assert storage.read_bytes(p["preview_url"])[:4] == b"\x89PNG"
    out = encode_chunk_fn(chunk, previews=broken, **kwargs)
    assert out["previews"] == []
    for r in rungs:
        check = out["rungs"][r["name"]]
        assert check["ok"] and sum(check["frames"]) == chunk["frames"], check
        segs = sorted(storage.local_path_of(storage.join(hls, r["name"])).glob("seg_*.ts"))
        assert sum(count_video_packets(str(p)) for p in segs) == chunk["frames"]


def _chunk_graph(**kw) -> str:
    from tasks.encode import build_encode_command
    from tasks.ladder import Rung

    chunk = dict(index=0, count=1, half_frame=0.02, source_start=0.0, source_end=4.0, start=0.0, end=4.0,
                 frames=100, key_pts=0.0, first_segment=0, segment_frames=[100])
    rung = Rung(name="240p", width=320, height=240, maxrate=400_000, bufsize=800_000, crf=23, profile="high",
                level="3.0").to_dict()
    args = build_encode_command(chunk, "in.mp4", [rung], ["out.ts"], cfr=True, frame_rate="25/1",
                                keyframe_seconds=2.0, threads=1, offset=0.0, seek=False, **kw)
    return args[args.index("-filter_complex") + 1]


def test_interlaced_chunks_are_deinterlaced_before_they_are_turned_or_scaled():
    from tasks.encode import deinterlace_filters

    assert deinterlace_filters("tt") == deinterlace_filters("tb") == ["bwdif=mode=send_frame:parity=tff:deint=all"]
    assert deinterlace_filters("bb") == deinterlace_filters("bt") == ["bwdif=mode=send_frame:parity=bff:deint=all"]
    assert deinterlace_filters("progressive") == deinterlace_filters("unknown") == deinterlace_filters(None) == []
    graph = _chunk_graph(rotation=90, deinterlace="bb")
    # fields are rows: deinterlace after the frames are chosen, before transpose and the scaler
    assert graph.index("setpts=N") < graph.index("bwdif=mode=send_frame:parity=bff") < graph.index("transpose") \
        < graph.index("scale=")
    assert "bwdif" not in _chunk_graph(rotation=0)
    assert "bwdif" not in _chunk_graph(rotation=0, deinterlace="progressive")


def test_a_deinterlaced_chunk_keeps_its_frames(tmp_path, monkeypatch):
    """One frame out per frame in, read by exact seek from the middle of the source too: the
    plan's frame counts hold with the deinterlacer in the chain."""
    import re
    import subprocess

    from config import storage
    from config.settings import reset_settings
    from tasks.encode import count_video_packets, encode_chunk_fn
    from tasks.ladder import choose_ladder
    from tasks.probe import probe_path
    from tasks.split import split_source_fn

    monkeypatch.setenv("VODFLOW_DATA_DIR", str(tmp_path / "var"))
    reset_settings()
    src = make_clip(tmp_path / "i.mp4", duration=14, size="320x240", rate="50", gop=25, audio=False,
                    extra_video=["-vf", "tinterlace=interleave_top", "-flags", "+ildct+ilme", "-x264-params", "tff=1"])
    info = probe_path(src)
    assert info.field_order == "tt"
    work = storage.url_for("scratch", "v", "r")
    plan = split_source_fn("file://" + str(src), work, workers=2, avg_frame_rate=info.frame_rate_fraction)
    assert plan["frames"] == 350 and len(plan["chunks"]) >= 2
    chunk = plan["chunks"][1]
    rungs = [r.to_dict() for r in choose_ladder(info)]
    hls = storage.url_for("hls", "v", "r")
    out = encode_chunk_fn(chunk, source_url="file://" + str(src), rungs=rungs, out_url=storage.join(work, "enc"),
                          hls_url=hls, rotation=0, cfr=plan["cfr"], frame_rate=plan["frame_rate"], threads=1, force_seek=True,
                          deinterlace=info.field_order)
    assert out["mode"] == "seek"
    for r in rungs:
        segs = sorted(storage.local_path_of(storage.join(hls, r["name"])).glob("seg_*.ts"))
        assert sum(count_video_packets(str(p)) for p in segs) == chunk["frames"]
        path = "concat:" + "|".join(str(p) for p in segs)
        text = subprocess.run(["ffmpeg", "-hide_banner", "-nostdin", "-i", path, "-vf", "idet", "-f", "null",
                               "-"], capture_output=True, text=True, check=True).stderr
        counts = dict(re.findall(r"(TFF|BFF|Progressive): *(\d+)", text.split("Single frame detection:")[1]))
        # the source's frames comb in every one; idet mistakes a few clean frames (~1 in 20)
        assert int(counts["TFF"]) + int(counts["BFF"]) <= 0.1 * chunk["frames"], counts


def test_the_stream_copy_slicing_gives_way_to_the_encodes_beside_it(tmp_path):
    """The slicing runs beside the fast lane and the audio (it leaves its Dask slot to them), so
    its ffmpeg runs at a lower CPU priority: seen on the process itself while it runs."""
    import psutil

    from tasks import ffmpeg
    from tasks.split import SLICE_NICE

    seen: list[int] = []

    def look(_fraction: float) -> None:
        for child in psutil.Process().children():
            try:
                if child.name().startswith("ffmpeg"):
                    seen.append(child.nice() - psutil.Process().nice())
            except psutil.Error:
                pass

    # a source read at its own pace (-re) keeps ffmpeg running long enough to be looked at
    ffmpeg.run(["-re", "-f", "lavfi", "-i", "testsrc2=size=64x36:rate=10:duration=2", "-f", "null", "-"],
               timeout=60, on_progress=look, duration=2.0, nice=SLICE_NICE)
    assert seen and set(seen) == {SLICE_NICE}, seen
    assert SLICE_NICE > 0
