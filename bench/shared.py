"""What the benchmarks share: the generated camera-like source, the "one ffmpeg" baseline that
makes the same ladder as the pipeline, and a sampler of a process tree's CPU time and memory."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import psutil

from tasks.encode import scale_filters, video_args
from tasks.package import is_fmp4

# ---------------------------------------------------------------------------------------------
# measuring a process tree


class TreeSampler:
    """CPU time used and the peak RSS of any one process, over this process's descendants
    (Dask workers, ffmpeg) or over one given process tree."""

    def __init__(self, root_pid: int | None = None, interval: float = 0.2):

        self.psutil = psutil
        self.root = psutil.Process(root_pid or os.getpid())
        self.interval = interval
        self.peak_rss = 0
        self.peak_name = ""
        self.peaks: dict[str, int] = {}
        self._cpu: dict[int, float] = {}
        self._kind: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _procs(self):
        try:
            return [self.root, *self.root.children(recursive=True)]
        except self.psutil.NoSuchProcess:
            return []

    def _sample(self) -> None:
        for p in self._procs():
            try:
                with p.oneshot():
                    rss = p.memory_info().rss
                    t = p.cpu_times()
                    name = p.name()
                    cmd = " ".join(p.cmdline()[:6])
            except (self.psutil.NoSuchProcess, self.psutil.AccessDenied):
                continue
            is_media = name in ("ffmpeg", "ffprobe")
            if is_media and p.pid != self.root.pid:
                # counted in its parent's children_* times once waited for (never twice)
                used = None
            else:
                used = t.user + t.system + (0.0 if is_media else t.children_user + t.children_system)
            if used is not None:
                self._cpu[p.pid] = max(self._cpu.get(p.pid, 0.0), used)
            kind = ("ffmpeg" if "ffmpeg" in name else
                    "chromium" if "chrom" in name else
                    "dask worker" if "spawn_main" in cmd else
                    "prefect server" if "uvicorn" in cmd or "prefect" in cmd else "python")
            self.peaks[kind] = max(self.peaks.get(kind, 0), rss)
            self._kind[p.pid] = "flow process (scheduler, flow)" if p.pid == os.getpid() else kind
            if rss > self.peak_rss:
                self.peak_rss, self.peak_name = rss, f"{name} ({kind})"

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def cpu_seconds(self) -> float:
        return sum(self._cpu.values())

    def __enter__(self):
        self._sample()
        self._base = dict(self._cpu)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()

    def used(self) -> float:
        return sum(v - self._base.get(pid, 0.0) for pid, v in self._cpu.items())

    def used_by_kind(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for pid, v in self._cpu.items():
            k = self._kind.get(pid, "?")
            if k == "dask worker":
                k = "dask workers (incl. their ffmpeg)"
            out[k] = out.get(k, 0.0) + v - self._base.get(pid, 0.0)
        return out


# ---------------------------------------------------------------------------------------------
# the source and the baseline


def make_source(path: Path, duration: float, size: str, rate: str) -> Path:
    """A camera-like clip: moving pattern with grain (so it is not trivially compressible),
    2 s GOPs with B-frames, AAC stereo."""
    subprocess.run([
        "ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}:duration={duration}",
        "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={duration}",
        "-vf", "noise=alls=6:allf=t", "-c:v", "libx264", "-preset", "veryfast", "-crf", "20",
        "-g", str(int(round(2 * float(eval(rate))))), "-sc_threshold", "0", "-bf", "3", "-pix_fmt", "yuv420p",
        "-c:a", "aac", "-b:a", "160k", "-ac", "2", "-shortest", str(path)], check=True)
    return path


def baseline_command(source: Path, rungs: list[dict], out_dir: Path, keyframe_seconds: float,
                     segment_seconds: float, has_audio: bool) -> list[str]:
    """One ffmpeg making the same ladder: one decode, `split`, every rung's encoder with the
    pipeline's own options, HLS out (MPEG-TS; the HEVC rungs, as in vodflow, fragmented MP4 in a
    second HLS output of the same process)."""
    n = len(rungs)
    graph = f"[0:v:0]split={n}" + "".join(f"[s{i}]" for i in range(n)) + ";"
    graph += ";".join(f"[s{i}]" + ",".join(scale_filters(r)) + f"[v{i}]" for i, r in enumerate(rungs))
    args = ["ffmpeg", "-hide_banner", "-v", "error", "-y", "-threads", "0", "-i", str(source),
            "-filter_complex", graph]
    groups = [[(i, r) for i, r in enumerate(rungs) if is_fmp4(r) == fmp4] for fmp4 in (False, True)]
    for fmp4, group in zip((False, True), groups):
        if not group:
            continue
        args += [x for i, _ in group for x in ("-map", f"[v{i}]")]
        if has_audio:
            for _ in group:
                args += ["-map", "0:a:0"]
        for k, (i, r) in enumerate(group):
            x = video_args(r, threads=0, frame_rate=30.0, keyframe_seconds=keyframe_seconds)
            # per-stream form of the same options
            opts = []
            it = iter(x)
            for key in it:
                v = next(it)
                opts += [f"{key.split(':')[0]}:v:{k}", v]
            args += opts
        args += ["-threads", "0", "-force_key_frames", f"expr:gte(t,n_forced*{keyframe_seconds})"]
        if has_audio:
            args += ["-c:a", "aac", "-b:a", "128000", "-ac", "2", "-ar", "48000"]
        stream_map = " ".join(f"v:{k},a:{k},name:{r['name']}" if has_audio else f"v:{k},name:{r['name']}"
                              for k, (_, r) in enumerate(group))
        ext = "m4s" if fmp4 else "ts"
        args += ["-f", "hls", "-hls_time", str(segment_seconds), "-hls_playlist_type", "vod",
                 "-hls_flags", "independent_segments", "-hls_segment_filename", str(out_dir / "%v" / f"seg_%05d.{ext}"),
                 "-master_pl_name", "master.m3u8" if not fmp4 else "master-hevc.m3u8",
                 "-var_stream_map", stream_map]
        if fmp4:
            args += ["-hls_segment_type", "fmp4", "-hls_fmp4_init_filename", "init.mp4"]
        args += [str(out_dir / "%v" / "index.m3u8")]
    return args
