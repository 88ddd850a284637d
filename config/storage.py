"""The one door to the media store: read, write, list, delete and publish by URL.

Everything in vodflow names stored objects by URL (`file:///…/storage/hls/ab12/…` or
`s3://bucket/prefix/hls/ab12/…`), so a Dask worker on another machine can run any task with
the URL and the settings alone. ffmpeg wants local paths: `local_copy()` gives the path itself
for local storage and a cached download for remote storage; `publish_dir()` uploads a local
folder with the playlists last, so a reader never sees a playlist before its segments.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import fsspec

from config.settings import get_settings

PLAYLIST_SUFFIXES = (".m3u8", ".vtt")


class StorageError(RuntimeError):
    """Storage could not be reached or refused an operation (transient unless said otherwise)."""


def storage_options(url: str) -> dict:
    """fsspec options for a URL: the S3 endpoint from settings, listings never cached."""
    if url.startswith(("s3://", "s3a://")):
        opts: dict = {"use_listings_cache": False}
        endpoint = get_settings().s3_endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            opts["client_kwargs"] = {"endpoint_url": endpoint}
        return opts
    return {}


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(url, **storage_options(url))
    return fs, path


def is_local(url: str) -> bool:
    return url.startswith("file://") or "://" not in url


def local_path_of(url: str) -> Path:
    """The filesystem path of a local URL (raises for remote storage)."""
    if not is_local(url):
        raise ValueError(f"not a local URL: {url}")
    return Path(url[len("file://"):] if url.startswith("file://") else url)


def root_url() -> str:
    return get_settings().storage_url


def url_for(*parts: str) -> str:
    """URL of a key under the configured storage root: url_for('hls', vid, run)."""
    clean = [p.strip("/") for p in parts if p and p.strip("/")]
    return posixpath.join(root_url(), *clean) if clean else root_url()


def join(url: str, *parts: str) -> str:
    return posixpath.join(url.rstrip("/"), *[p.strip("/") for p in parts])


def key_of(url: str) -> str:
    """The part of a URL below the storage root ('hls/ab12/r1/720p/index.m3u8')."""
    root = root_url()
    if not url.startswith(root):
        raise ValueError(f"{url} is not under the storage root {root}")
    return url[len(root):].lstrip("/")


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return fs.exists(path)


def info(url: str) -> dict:
    """size, mtime (epoch seconds or None), etag-ish identity; raises FileNotFoundError."""
    fs, path = filesystem(url)
    i = fs.info(path)
    mtime = i.get("mtime") or i.get("LastModified") or i.get("created")
    if hasattr(mtime, "timestamp"):
        mtime = mtime.timestamp()
    return {
        "size": int(i.get("size") or 0),
        "mtime": float(mtime) if mtime is not None else None,
        "etag": (i.get("ETag") or "").strip('"') or None,
        "type": i.get("type", "file"),
    }


def size(url: str) -> int:
    return info(url)["size"]


def open_url(url: str, mode: str = "rb", **kw) -> IO:
    fs, path = filesystem(url)
    if "w" in mode and is_local(url):
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
    return fs.open(path, mode, **kw)


def read_bytes(url: str, start: int | None = None, end: int | None = None) -> bytes:
    fs, path = filesystem(url)
    return fs.cat_file(path, start=start, end=end)


def read_text(url: str) -> str:
    return read_bytes(url).decode("utf-8")


def write_bytes(url: str, data: bytes) -> None:
    fs, path = filesystem(url)
    if is_local(url):
        # write-then-rename, so a reader never sees half a file
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    else:
        fs.pipe_file(path, data)


def write_text(url: str, text: str) -> None:
    write_bytes(url, text.encode("utf-8"))


def list_files(url: str) -> list[str]:
    """Every file below a folder URL, as URLs, sorted; [] when the folder is absent."""
    fs, path = filesystem(url)
    try:
        found = fs.find(path)
    except FileNotFoundError:
        return []
    proto = url.split("://", 1)[0] if "://" in url else "file"
    out = []
    for p in found:
        out.append(f"{proto}://{p}" if proto != "file" else f"file://{p}")
    return sorted(out)


def list_dir(url: str) -> list[dict]:
    """Direct children of a folder URL: [{'url', 'name', 'size', 'type'}]."""
    fs, path = filesystem(url)
    try:
        entries = fs.ls(path, detail=True)
    except FileNotFoundError:
        return []
    proto = url.split("://", 1)[0] if "://" in url else "file"
    out = []
    for e in entries:
        name = e["name"].rstrip("/")
        out.append({
            "url": f"{proto}://{name}",
            "name": posixpath.basename(name),
            "size": int(e.get("size") or 0),
            "type": e.get("type", "file"),
            "mtime": e.get("mtime") or e.get("LastModified"),
        })
    return out


def delete(url: str, recursive: bool = True) -> None:
    """Delete a file or a folder; absent is fine."""
    fs, path = filesystem(url)
    try:
        if is_local(url):
            p = Path(path)
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            elif p.exists():
                p.unlink()
        else:
            fs.rm(path, recursive=recursive)
    except FileNotFoundError:
        pass


def put_file(local: str | os.PathLike, url: str) -> None:
    """Upload (or copy, for local storage) one local file to a URL, atomically on local disk."""
    fs, path = filesystem(url)
    if is_local(url):
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".tmp-{target.name}")
        shutil.copyfile(local, tmp)
        os.replace(tmp, target)
    else:
        fs.put_file(str(local), path)


def move_local_file(local: str | os.PathLike, url: str) -> None:
    """Move a local file into storage: a rename when both are on one disk, else copy + delete."""
    if is_local(url):
        target = local_path_of(url)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(local, target)
            return
        except OSError:
            pass
    put_file(local, url)
    os.unlink(local)


def get_file(url: str, local: str | os.PathLike) -> None:
    fs, path = filesystem(url)
    Path(local).parent.mkdir(parents=True, exist_ok=True)
    fs.get_file(path, str(local))


@contextlib.contextmanager
def local_copy(url: str, workdir: str | os.PathLike | None = None) -> Iterator[Path]:
    """A local path for reading `url` with ffmpeg: the file itself when storage is local,
    a temporary download otherwise (removed on exit)."""
    if is_local(url):
        yield local_path_of(url)
        return
    if workdir is not None:  # a fresh machine has no scratch folder yet
        Path(workdir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=workdir, prefix="vodflow-get-") as tmp:
        dest = Path(tmp) / posixpath.basename(url)
        get_file(url, dest)
        yield dest


def publish_dir(local_dir: str | os.PathLike, url: str) -> list[str]:
    """Copy a local folder to `url`: media first, playlists and indexes last. Returns URLs."""
    local_dir = Path(local_dir)
    files = sorted(p for p in local_dir.rglob("*") if p.is_file())
    files.sort(key=lambda p: p.suffix in PLAYLIST_SUFFIXES)
    out = []
    for p in files:
        dest = join(url, p.relative_to(local_dir).as_posix())
        put_file(p, dest)
        out.append(dest)
    return out


@dataclass
class StoredObject:
    """One stored file opened for serving: its size and validators, and for local storage the
    open file itself (so a web server can sendfile() it and a reader never sees a file swapped
    between the size check and the read)."""

    url: str
    size: int
    mtime: float | None
    etag: str | None  # opaque, without quotes; changes whenever the bytes do
    file: IO[bytes] | None = None

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def open_object(url: str) -> StoredObject:
    """Size and validators of a stored file; raises FileNotFoundError for anything but a file.

    Local files are opened and fstat()ed (no fsspec on this hot path: one syscall each); remote
    objects cost one HEAD request and are read later, range by range, with `iter_object`.
    Any other failure (storage unreachable, access refused) is a StorageError."""
    try:
        if is_local(url):
            f = open(local_path_of(url), "rb")  # noqa: SIM115 - handed to the caller, closed by it
            try:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode):
                    raise FileNotFoundError(url)
            except BaseException:
                f.close()
                raise
            # nginx's validator, "{mtime seconds:x}-{size:x}": a file the app decides on and nginx
            # sends (X-Accel-Redirect) has one ETag, whichever of them evaluates If-Range or If-Match
            return StoredObject(url, st.st_size, st.st_mtime, f"{int(st.st_mtime):x}-{st.st_size:x}", f)
        i = info(url)
        if i["type"] != "file":
            raise FileNotFoundError(url)
        return StoredObject(url, i["size"], i["mtime"], i["etag"])
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise FileNotFoundError(url) from None
    except Exception as exc:  # noqa: BLE001 - every backend has its own error classes
        raise StorageError(f"cannot read {url}: {exc}") from exc


def iter_object(obj: StoredObject, start: int, length: int, chunk_size: int = 4 * 1024 * 1024) -> Iterator[bytes]:
    """The bytes [start, start+length) of an object, in chunks: never the whole object in memory,
    and from S3 only the requested range (one ranged GET per chunk)."""
    end = start + length
    if obj.file is not None:
        f, obj.file = obj.file, None
        try:
            f.seek(start)
            pos = start
            while pos < end:
                data = f.read(min(chunk_size, end - pos))
                if not data:
                    raise StorageError(f"{obj.url} is shorter than {end} bytes")
                pos += len(data)
                yield data
        finally:
            f.close()
        return
    pos = start
    while pos < end:
        try:
            data = read_bytes(obj.url, pos, min(pos + chunk_size, end))
        except FileNotFoundError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise StorageError(f"cannot read {obj.url}: {exc}") from exc
        if not data:
            raise StorageError(f"{obj.url} is shorter than {end} bytes")
        pos += len(data)
        yield data


def presigned_url(url: str, expires: int = 3600) -> str | None:
    """A time-limited direct URL for remote objects (None for local storage)."""
    if is_local(url):
        return None
    fs, path = filesystem(url)
    return fs.sign(path, expiration=expires)


def check() -> dict:
    """Reachability of the storage root, for /healthz.

    A local root is created if missing (a fresh data dir) and must be a writable folder. For an
    object store the bucket must exist; the prefix below it may well be empty. A missing bucket
    is FileNotFoundError in s3fs, exactly like an empty prefix in a listing, so only the bucket
    itself is asked about."""
    url = root_url()
    try:
        fs, path = filesystem(url)
        if is_local(url):
            root = Path(path)
            root.mkdir(parents=True, exist_ok=True)
            if not os.access(root, os.W_OK | os.X_OK):
                return {"ok": False, "url": url, "error": f"{root} is not writable by this process"}
        else:
            bucket = path.split("/", 1)[0] or path
            try:
                fs.invalidate_cache(bucket)
                fs.info(bucket)
            except FileNotFoundError:
                return {"ok": False, "url": url,
                        "error": f"bucket '{bucket}' does not exist (VODFLOW_STORAGE_URL); create it"}
        return {"ok": True, "url": url}
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        return {"ok": False, "url": url, "error": str(exc)}
