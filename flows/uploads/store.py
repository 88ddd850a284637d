"""Bytes of uploads in progress: one temp file per upload on this web host, and its lock.

This module is the only place the web app writes upload bytes. Its invariant makes crashes
harmless: the `.part` file holds only accepted bytes, so its size *is* the upload offset.
A `kill -9` in the middle of a request leaves a prefix of what was sent (every `write` that
returned is in the kernel's page cache and survives the process), and the next HEAD reports
exactly that. A chunk that carries a checksum is first written beside the part file and only
appended once it verified, so unverified bytes never count.

Several gunicorn workers (processes) and their threads may serve requests for one upload:
`upload_lock()` is an exclusive `flock` on a lock file next to the part file, which works across
processes and between threads alike (each acquisition opens its own file description).

No Flask here: the maintenance flow and the CLI use this module too.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import hashlib
import os
import re
import secrets
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from config.settings import get_settings

# Small enough that memory stays flat however many requests run, big enough for throughput.
BUFFER_BYTES = 256 * 1024
_ID = re.compile(r"^[0-9a-f]{32}$")


class LockTimeout(RuntimeError):
    """Another request holds this upload's lock."""


class ClientGone(IOError):
    """The client stopped sending (disconnect or read timeout)."""


class ChecksumMismatch(ValueError):
    pass


class TooMuchData(ValueError):
    """The body carries more bytes than the upload may still take."""


class Cancelled(RuntimeError):
    """The upload was terminated while this request was writing to it."""


@dataclass(frozen=True)
class UploadFiles:
    part: Path  # accepted bytes
    chunk: Path  # a checksummed chunk awaiting verification
    lock: Path
    # present while a DELETE waits for the lock: tells the request holding it to stop writing
    # (the status itself only ever changes under the lock)
    terminating: Path


def tus_dir() -> Path:
    d = get_settings().uploads_dir / "tus"
    d.mkdir(parents=True, exist_ok=True)
    return d


def new_upload_id() -> str:
    """128 random bits: the upload URL is the only credential a tus client holds."""
    return secrets.token_hex(16)


def is_upload_id(value: str) -> bool:
    return bool(_ID.match(value or ""))


def files(upload_id: str) -> UploadFiles:
    if not is_upload_id(upload_id):  # never let a URL segment become a path
        raise ValueError(f"not an upload id: {upload_id!r}")
    d = tus_dir()
    return UploadFiles(d / f"{upload_id}.part", d / f"{upload_id}.chunk", d / f"{upload_id}.lock",
                       d / f"{upload_id}.terminating")


@contextlib.contextmanager
def upload_lock(upload_id: str, timeout: float = 10.0) -> Iterator[None]:
    """Exclusive lock on one upload, across processes and threads; LockTimeout after `timeout` s."""
    path = files(upload_id).lock
    deadline = time.monotonic() + timeout
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LockTimeout(upload_id) from None
                    time.sleep(0.02)
            # housekeeping may have removed and another request re-created the lock file while
            # we waited; a lock on a file nobody else can open protects nothing
            try:
                current = os.stat(path).st_ino
            except FileNotFoundError:
                current = None
            if current == os.fstat(fd).st_ino:
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def is_locked(upload_id: str) -> bool:
    """True if some request is writing to this upload right now."""
    try:
        with upload_lock(upload_id, timeout=0):
            return False
    except LockTimeout:
        return True


def create_part(upload_id: str) -> Path:
    f = files(upload_id)
    fd = os.open(f.part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    return f.part


def offset_on_disk(upload_id: str) -> int | None:
    """Bytes accepted so far, from the part file itself; None if the file is missing."""
    try:
        return files(upload_id).part.stat().st_size
    except FileNotFoundError:
        return None


def read_head(upload_id: str, n: int) -> bytes:
    with open(files(upload_id).part, "rb") as fh:
        return fh.read(n)


def request_termination(upload_id: str) -> None:
    """Ask whoever holds the upload's lock to stop writing to it: a client is deleting it."""
    files(upload_id).terminating.touch()


def termination_requested(upload_id: str) -> bool:
    return files(upload_id).terminating.exists()


def drop_termination_request(upload_id: str) -> None:
    files(upload_id).terminating.unlink(missing_ok=True)


def remove(upload_id: str, *, lock_file: bool = False) -> int:
    """Delete an upload's bytes and any termination request (and its lock file if asked).
    Returns bytes freed."""
    f = files(upload_id)
    freed = 0
    for p in (f.part, f.chunk, f.terminating) + ((f.lock,) if lock_file else ()):
        try:
            freed += p.stat().st_size
            p.unlink()
        except FileNotFoundError:
            pass
    return freed


def sync(path: str | os.PathLike) -> None:
    """Make a finished upload durable before the catalog points at it (once per upload, not per
    chunk: the offset never depends on it, see the module docstring)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Crc32:
    """hashlib-like CRC-32 (tus: the big-endian 4-byte value, base64)."""

    def __init__(self) -> None:
        self._v = 0

    def update(self, data: bytes) -> None:
        self._v = zlib.crc32(data, self._v)

    def digest(self) -> bytes:
        return self._v.to_bytes(4, "big")


CHECKSUM_ALGORITHMS: dict[str, Callable[[], object]] = {
    "sha1": hashlib.sha1,
    "md5": hashlib.md5,
    "crc32": _Crc32,
}


@dataclass(frozen=True)
class Checksum:
    algorithm: str
    digest: bytes

    def new(self):
        return CHECKSUM_ALGORITHMS[self.algorithm]()


def parse_checksum(header: str) -> Checksum:
    """`Upload-Checksum: <algorithm> <base64 digest>`; ValueError with a readable message."""
    algo, _, value = header.strip().partition(" ")
    if algo not in CHECKSUM_ALGORITHMS:
        raise ValueError(f"checksum algorithm '{algo}' is not supported; use one of "
                         f"{', '.join(CHECKSUM_ALGORITHMS)}")
    try:
        digest = base64.b64decode(value.strip(), validate=True)
    except (ValueError, TypeError):
        raise ValueError("Upload-Checksum must be '<algorithm> <base64 digest>'") from None
    if not digest:
        raise ValueError("Upload-Checksum has an empty digest")
    return Checksum(algo, digest)


@dataclass
class Appended:
    written: int  # bytes accepted into the part file by this request
    received: int  # bytes read from the client
    complete: bool  # the body was read to its end (False: the client went away)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _append_file(src: Path, dst_fd: int) -> None:
    """Append a whole file to an open file: in the kernel when it can, else in small buffers."""
    with open(src, "rb") as fh:
        in_fd = fh.fileno()
        size = os.fstat(in_fd).st_size
        done = 0
        try:
            while done < size:
                n = os.copy_file_range(in_fd, dst_fd, size - done, done)
                if n == 0:
                    break
                done += n
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
        fh.seek(done)
        while chunk := fh.read(BUFFER_BYTES):
            _write_all(dst_fd, chunk)


def append(
    upload_id: str,
    read: Callable[[int], bytes],
    *,
    max_bytes: int,
    checksum: Checksum | None = None,
    sniff: Callable[[bytes], object] | None = None,
    head: bytes = b"",
    sniff_at: int = 0,
    still_wanted: Callable[[], bool] | None = None,
) -> Appended:
    """Stream a request body onto the upload, `BUFFER_BYTES` at a time. Caller holds the lock.

    `read(n)` returns up to n bytes, b"" at the end, or raises ClientGone. `sniff(head)` runs
    once the first `sniff_at` bytes of the upload are known (`head` = those already stored) and
    may raise to refuse the upload before the rest is read. `still_wanted()` is asked every
    couple of seconds; False stops the request (Cancelled). Without a checksum, whatever
    arrived before a disconnect is kept; with one, only a complete, verified chunk is.
    """
    f = files(upload_id)
    start = offset_on_disk(upload_id)
    if start is None:
        raise FileNotFoundError(f.part)
    target = f.chunk if checksum else f.part
    fd = os.open(target, os.O_WRONLY | (os.O_CREAT | os.O_TRUNC if checksum else os.O_APPEND), 0o600)
    hasher = checksum.new() if checksum else None
    head_buf = bytearray(head)
    sniffing = sniff is not None and len(head_buf) < sniff_at
    received = 0
    complete = True
    next_check = time.monotonic() + 2.0
    try:
        while True:
            try:
                data = read(BUFFER_BYTES)
            except ClientGone:
                complete = False
                break
            if not data:
                break
            if received + len(data) > max_bytes:
                raise TooMuchData(max_bytes)
            _write_all(fd, data)
            received += len(data)
            if hasher is not None:
                hasher.update(data)
            if sniffing:
                head_buf += data[: sniff_at - len(head_buf)]
                if len(head_buf) >= sniff_at:
                    sniffing = False
                    sniff(bytes(head_buf))
            if still_wanted is not None and time.monotonic() >= next_check:
                next_check = time.monotonic() + 2.0
                if not still_wanted():
                    raise Cancelled(upload_id)
    except BaseException as exc:
        if checksum is None and isinstance(exc, (TooMuchData, Cancelled)):
            os.ftruncate(fd, start)  # a refused request leaves the upload as it was
        if checksum is not None:
            _discard(f.chunk)
        raise
    finally:
        os.close(fd)
    if checksum is None:
        return Appended(written=received, received=received, complete=complete)
    if not complete:
        _discard(f.chunk)  # an unverifiable chunk does not count
        return Appended(written=0, received=received, complete=False)
    if hasher.digest() != checksum.digest:
        _discard(f.chunk)
        raise ChecksumMismatch(upload_id)
    fd = os.open(f.part, os.O_WRONLY)  # not O_APPEND: copy_file_range refuses such targets
    try:
        os.lseek(fd, 0, os.SEEK_END)
        _append_file(f.chunk, fd)
    finally:
        os.close(fd)
        _discard(f.chunk)
    return Appended(written=received, received=received, complete=True)


def _discard(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def concat_into(upload_id: str, part_ids: list[str]) -> int:
    """Build an upload's part file from other uploads' part files, in order (kernel-side copy,
    memory stays flat). Returns its size."""
    target = files(upload_id).part
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for pid in part_ids:
            _append_file(files(pid).part, fd)
    except BaseException:
        os.close(fd)
        _discard(target)
        raise
    os.close(fd)
    return target.stat().st_size
