"""The one door to ffmpeg and ffprobe: safe input options, timeouts, progress, error classes.

Untrusted input: every run reads with `-protocol_whitelist file,pipe` so a "video" that is
really a playlist pointing at /etc/passwd or a URL cannot make ffmpeg open it. Failures are
classified: `PermanentMediaError` (the input itself is bad: never retried) or
`TransientMediaError` (killed, timed out, out of resources: retried with backoff).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import csv
import os
import re
import shutil
import signal
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

FFMPEG = os.environ.get("VODFLOW_FFMPEG", "ffmpeg")
FFPROBE = os.environ.get("VODFLOW_FFPROBE", "ffprobe")
SAFE_INPUT = ["-protocol_whitelist", "file,pipe"]

# stderr phrases that mean the input itself is unusable: retrying cannot help
_PERMANENT = re.compile(
    r"Invalid data found when processing input|moov atom not found|does not contain any stream"
    r"|Protocol '.*' not on whitelist|not on whitelist|Unsupported codec|Decoder .* not found"
    r"|Output file #0 does not contain any stream|Invalid argument|No such file or directory"
    r"|could not find codec parameters|Error splitting the input into NAL units"
    r"|Stream map .* matches no streams|Unknown encoder|Invalid NAL unit size|corrupt",
    re.IGNORECASE,
)


class MediaError(RuntimeError):
    """ffmpeg or ffprobe failed. `detail` holds the tail of stderr."""

    permanent = False

    def __init__(self, message: str, detail: str = "", returncode: int | None = None):
        super().__init__(message)
        self.detail = detail
        self.returncode = returncode


class PermanentMediaError(MediaError):
    """The input cannot be processed (corrupt, not a video, unsupported): do not retry."""

    permanent = True


class TransientMediaError(MediaError):
    """The run failed for a reason outside the input (killed, timeout, disk): retry."""


def _tail(text: str, lines: int = 12) -> str:
    kept = [ln for ln in text.strip().splitlines() if ln.strip()]
    return "\n".join(kept[-lines:])


def classify(returncode: int, stderr: str, what: str) -> MediaError:
    tail = _tail(stderr)
    if returncode < 0 or returncode in (137, 143, 255) and not _PERMANENT.search(stderr):
        sig = -returncode if returncode < 0 else None
        name = signal.Signals(sig).name if sig else f"exit {returncode}"
        return TransientMediaError(f"{what} was interrupted ({name})", tail, returncode)
    if _PERMANENT.search(stderr):
        last = tail.splitlines()[-1] if tail else "unreadable input"
        return PermanentMediaError(f"{what} cannot read this input: {last}", tail, returncode)
    return TransientMediaError(f"{what} failed (exit {returncode})", tail, returncode)


def _die_with_parent() -> None:
    """In the child before exec: be killed when the process that started us dies (Linux).

    A Dask worker that is killed mid-encode must not leave its ffmpeg running: the task is
    rescheduled elsewhere and an orphan would only burn CPU and fill the scratch disk."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux: the process-group kill still applies
        pass


def _child_setup(nice: int) -> Callable[[], None]:
    def setup() -> None:
        _die_with_parent()
        if nice:
            os.nice(nice)  # background work: whatever else runs on these cores goes first
    return setup


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run(
    args: Sequence[str],
    *,
    timeout: float,
    what: str = "ffmpeg",
    on_progress: Callable[[float], None] | None = None,
    duration: float | None = None,
    cwd: str | os.PathLike | None = None,
    nice: int = 0,
) -> str:
    """Run ffmpeg with `args` (without the program name). Returns stderr. `nice`: a lower CPU
    priority for work that must not slow what runs beside it.

    With `on_progress` and `duration`, ffmpeg's `-progress` stream is read and the callback gets
    the fraction done (0..1), at most twice a second. The process runs in its own process group
    and is killed with it on timeout or when the caller is interrupted, so no ffmpeg outlives
    its task.
    """
    cmd = [FFMPEG, "-hide_banner", "-nostdin", "-y"]
    if on_progress is not None:
        cmd += ["-progress", "pipe:1", "-nostats"]
    cmd += list(args)
    log.debug("running %s", " ".join(cmd))
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE if on_progress else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=cwd,
        start_new_session=True,
        preexec_fn=_child_setup(nice),
        text=True,
        errors="replace",
    )
    stderr_chunks: list[str] = []
    reader = threading.Thread(target=lambda: stderr_chunks.append(proc.stderr.read()), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    try:
        if on_progress is not None:
            last = 0.0
            for line in proc.stdout:
                if time.monotonic() > deadline:
                    break
                key, _, value = line.strip().partition("=")
                if key == "out_time_us" and duration and value.isdigit():
                    now = time.monotonic()
                    if now - last > 0.5:
                        last = now
                        on_progress(min(1.0, int(value) / 1e6 / duration))
        remaining = max(0.1, deadline - time.monotonic())
        try:
            proc.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.wait()
            reader.join(5)
            raise TransientMediaError(f"{what} timed out after {timeout:.0f} s", _tail("".join(stderr_chunks)))
    except BaseException:
        if proc.poll() is None:
            _kill_group(proc)
            proc.wait()
        raise
    reader.join(5)
    stderr = "".join(stderr_chunks)
    if proc.returncode != 0:
        raise classify(proc.returncode, stderr, what)
    if on_progress is not None:
        on_progress(1.0)
    return stderr


def closed_segments(segment_list: str | os.PathLike) -> list[str]:
    """Names of the segments ffmpeg's segment muxer has closed, in order: it adds a line to its
    CSV segment list (`-segment_list F -segment_list_type csv`) as it closes each one."""
    try:
        with open(segment_list, newline="") as f:
            return [row[0] for row in csv.reader(f) if row]
    except FileNotFoundError:
        return []


def probe_json(path: str | os.PathLike, *, timeout: float, extra: Sequence[str] = (),
               protocols: str = "file,pipe") -> dict:
    """ffprobe's JSON for a local file: format and streams (plus `extra` options). `protocols`
    as in `iter_probe_rows`."""
    if protocols == "file,pipe" and not Path(path).exists():
        raise PermanentMediaError(f"no such file: {path}")
    cmd = [
        FFPROBE, "-v", "error", "-protocol_whitelist", protocols, "-print_format", "json",
        "-show_format", "-show_streams", *extra, str(path),
    ]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, errors="replace")
    except subprocess.TimeoutExpired:
        raise TransientMediaError(f"ffprobe timed out after {timeout:.0f} s") from None
    if out.returncode != 0:
        err = classify(out.returncode, out.stderr, "ffprobe")
        if err.permanent or out.returncode == 1:
            # ffprobe exits 1 for any unreadable input; that is the file, not the machine: say
            # what is wrong with it, not which step gave up
            err = PermanentMediaError(
                f"ffmpeg cannot read this input as a video ({_tail(out.stderr, 1) or 'unknown format'}): the file "
                "is damaged, truncated or not a video file; re-export it and upload again",
                _tail(out.stderr), out.returncode)
        raise err
    try:
        return json.loads(out.stdout or "{}")
    except json.JSONDecodeError:
        raise PermanentMediaError("ffprobe returned unreadable output") from None


def probe_packets(path: str | os.PathLike, *, timeout: float, stream: str = "v:0",
                  entries: str = "packet=pts_time,dts_time,duration_time,flags,size") -> list[dict]:
    """Packet list of one stream (timestamps, keyframe flags, sizes) via ffprobe."""
    data = probe_json(path, timeout=timeout, extra=[
        "-select_streams", stream, "-show_entries", entries, "-show_packets"])
    return data.get("packets", [])


def probe_frames(path: str | os.PathLike, *, timeout: float, stream: str = "v:0",
                 entries: str = "frame=pts_time,key_frame,pict_type") -> list[dict]:
    data = probe_json(path, timeout=timeout, extra=[
        "-select_streams", stream, "-show_entries", entries, "-show_frames"])
    return data.get("frames", [])


def iter_probe_rows(path: str | os.PathLike, *, timeout: float, section: str = "packet",
                    entries: str = "pts,dts,flags", stream: str | None = "v:0",
                    extra: Sequence[str] = (), protocols: str = "file,pipe"):
    """Yield ffprobe rows (lists of strings, in `entries` order) one at a time.

    A two-hour 60 fps source has ~430 000 packets: as JSON that is hundreds of MB of Python
    dicts, streamed as CSV it is a few bytes a row. `protocols` widens the whitelist only for
    inputs vodflow wrote itself (the `concat:` protocol over our own segments)."""
    if protocols == "file,pipe" and not Path(path).exists():
        raise PermanentMediaError(f"no such file: {path}")
    cmd = [FFPROBE, "-v", "error", "-protocol_whitelist", protocols]
    if stream:
        cmd += ["-select_streams", stream]
    cmd += ["-show_entries", f"{section}={entries}", *extra,
            "-of", "csv=p=0:nk=1", str(path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            errors="replace", start_new_session=True)
    stderr_chunks: list[str] = []
    reader = threading.Thread(target=lambda: stderr_chunks.append(proc.stderr.read()), daemon=True)
    reader.start()
    timer = threading.Timer(timeout, _kill_group, args=(proc,))
    timer.start()
    try:
        for line in proc.stdout:
            line = line.strip()
            if line:
                yield line.split(",")
        proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            _kill_group(proc)
            proc.wait()
    reader.join(5)
    if proc.returncode != 0:
        stderr = "".join(stderr_chunks)
        if proc.returncode < 0:
            raise TransientMediaError(f"ffprobe was interrupted or timed out after {timeout:.0f} s",
                                      _tail(stderr), proc.returncode)
        raise PermanentMediaError(f"ffprobe cannot read this input: {_tail(stderr, 1) or 'unknown format'}",
                                  _tail(stderr), proc.returncode)


# -- fragmented MP4 (the HEVC rungs): the few box-level reads ffmpeg and ffprobe do not offer ----

def _boxes(f) -> list[tuple[bytes, int, int]]:
    """(type, offset, size) of the top-level ISO BMFF boxes of an open file."""
    out, off = [], 0
    end = f.seek(0, os.SEEK_END)
    while off < end:
        f.seek(off)
        head = f.read(16)
        if len(head) < 8:
            raise ValueError(f"a truncated box at byte {off}")
        size, kind = struct.unpack(">I4s", head[:8])
        if size == 1:
            size = struct.unpack(">Q", head[8:16])[0]
        elif size == 0:
            size = end - off
        if size < 8 or off + size > end:
            raise ValueError(f"a bad {kind!r} box at byte {off}")
        out.append((kind, off, size))
        off += size
    return out


def split_fmp4(paths: list[Path], init_path: Path) -> str:
    """Turn the whole fragmented MP4 files ffmpeg's segment muxer wrote (ftyp, moov, then
    moof/mdat pairs) into media segments (their fragments only, in place) and one init segment
    (ftyp and moov) at `init_path`. Every file must carry the same init; returns its path.

    Written here, not left to a muxer, because no muxer of this ffmpeg both cuts at planned frame numbers and writes a
    separate init segment with the source's timeline: the HLS muxer cuts by time, and restarts the
    timeline at zero in every chunk."""
    init: bytes | None = None
    for path in paths:
        with open(path, "rb") as f:
            boxes = _boxes(f)
            if [b[0] for b in boxes[:2]] != [b"ftyp", b"moov"]:
                raise ValueError(f"{path.name} does not open with ftyp and moov")
            f.seek(0)
            this = f.read(boxes[2][1] if len(boxes) > 2 else boxes[1][1] + boxes[1][2])
            if init is None:
                init = this
            elif this != init:
                raise ValueError(f"{path.name} has another init segment than the chunk's first")
            tmp = path.with_suffix(".part")
            with open(tmp, "wb") as out:
                shutil.copyfileobj(f, out)  # from the first fragment on
        os.replace(tmp, path)
    if init is None:
        raise ValueError("no segments")
    init_path.write_bytes(init)
    return str(init_path)


def init_digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _child(data: bytes, kind: bytes, start: int = 0) -> bytes:
    off = start
    while off + 8 <= len(data):
        size, k = struct.unpack(">I4s", data[off:off + 8])
        if size < 8:
            break
        if k == kind:
            return data[off + 8:off + size]
        off += size
    raise ValueError(f"no {kind.decode()} box")


def hevc_codecs(init: bytes) -> str:
    """The RFC 6381 CODECS value of an HEVC init segment, from its hvcC box (ISO/IEC 14496-15
    Annex E): hvc1.<profile>.<compatibility flags, bit-reversed>.<tier><level>.<constraints>."""
    box = init
    for kind in (b"moov", b"trak", b"mdia", b"minf", b"stbl", b"stsd"):
        box = _child(box, kind)
    entry = _child(box, b"hvc1", 8)  # stsd: version, flags, entry count, then the sample entry
    hvcc = _child(entry, b"hvcC", 78)  # after the VisualSampleEntry's fixed 78 bytes
    space, tier, profile = hvcc[1] >> 6, (hvcc[1] >> 5) & 1, hvcc[1] & 0x1F
    compat = int("{:032b}".format(int.from_bytes(hvcc[2:6], "big"))[::-1], 2)
    constraints = list(hvcc[6:12])
    while constraints and constraints[-1] == 0:
        constraints.pop()
    parts = [f"hvc1.{'ABC'[space - 1] if space else ''}{profile}", f"{compat:X}",
             f"{'H' if tier else 'L'}{hvcc[12]}"] + [f"{b:02X}" for b in constraints]
    return ".".join(parts)
