"""Helpers for the upload tests: the web server (`vodflow web`) we can restart or kill -9, raw tus
requests, and a look into the server's catalog (SQLite or PostgreSQL) and upload folder."""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import subprocess
from pathlib import Path

import requests
from sqlalchemy import text

from tests.servers import free_port, stop, vodflow_command, wait_http

TUS = {"Tus-Resumable": "1.0.0"}
OFFSET_TYPE = "application/offset+octet-stream"


def metadata(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Server:
    """`vodflow web` (2 gunicorn workers) on a free port, with its own data dir."""

    def __init__(self, data_dir: Path, log: Path, workers: int = 2, **env: str):
        self.data_dir = Path(data_dir)
        self.log = Path(log)
        self.workers = workers
        self.env = {"VODFLOW_DATA_DIR": str(self.data_dir), "VODFLOW_DISPATCH": "off", **env}
        self.proc: subprocess.Popen | None = None
        self.base = ""

    def start(self) -> "Server":
        port = free_port()
        cmd = [*vodflow_command(), "web"]  # the production command: migrate, then gunicorn
        env = dict(os.environ)
        for name in ("VODFLOW_STORAGE_URL", "VODFLOW_DATABASE_URL", "VODFLOW_CONFIG", "VODFLOW_WEB_SOCKET"):
            env.pop(name, None)  # only what this server was given counts
        env.update(self.env)
        env.update({"VODFLOW_WEB_HOST": "127.0.0.1", "VODFLOW_WEB_PORT": str(port),
                    "VODFLOW_WEB_WORKERS": str(self.workers)})
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True, cwd=str(Path(__file__).resolve().parent.parent))
        self.base = f"http://127.0.0.1:{port}"
        wait_http(self.base + "/healthz", 60, self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None

    def kill9(self) -> None:
        """SIGKILL the master and every worker at once: no handler, no flush, no goodbye."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def files_url(self) -> str:
        return self.base + "/files/"

    # --- looking inside
    @property
    def database_url(self) -> str:
        return self.env.get("VODFLOW_DATABASE_URL") or f"sqlite:///{self.data_dir / 'vodflow.db'}"

    @property
    def storage_url(self) -> str:
        return self.env.get("VODFLOW_STORAGE_URL") or (self.data_dir / "storage").as_uri()

    def db(self):
        """A connection to the server's catalog in a transaction (committed on leaving)."""
        from catalog.db import make_engine

        if getattr(self, "_engine", None) is None:
            self._engine = make_engine(self.database_url)
        return self._engine.begin()

    def _rows(self, sql: str, **params) -> list:
        with self.db() as conn:
            return list(conn.execute(text(sql), params).mappings())

    def videos(self) -> list:
        return self._rows("SELECT * FROM videos ORDER BY created_at")

    def video(self, video_id: str):
        return next(iter(self._rows("SELECT * FROM videos WHERE id = :id", id=video_id)), None)

    def uploads(self) -> list:
        return self._rows("SELECT * FROM upload_sessions")

    def session(self, upload_id: str):
        return next(iter(self._rows("SELECT * FROM upload_sessions WHERE id = :id", id=upload_id)), None)

    def part_file(self, upload_id: str) -> Path:
        return self.data_dir / "uploads" / "tus" / f"{upload_id}.part"

    def upload_bytes_on_disk(self) -> list[Path]:
        """Every file holding upload bytes (lock files are empty and don't count)."""
        d = self.data_dir / "uploads"
        return sorted(p for p in d.rglob("*") if p.is_file() and p.suffix != ".lock") if d.exists() else []

    def stored_source(self, video_id: str) -> bytes:
        """The stored source's bytes, read from storage (a folder or a bucket) as the server wrote it."""
        import fsspec

        row = self.video(video_id)
        opts = {"client_kwargs": {"endpoint_url": self.env["VODFLOW_S3_ENDPOINT_URL"]}} \
            if row["source_url"].startswith("s3://") and "VODFLOW_S3_ENDPOINT_URL" in self.env else {}
        with fsspec.open(row["source_url"], "rb", **opts) as fh:
            return fh.read()


def create(server: Server, length: int | None, *, meta: str | None = None, **headers: str) -> requests.Response:
    h = dict(TUS)
    if length is None:
        h["Upload-Defer-Length"] = "1"
    else:
        h["Upload-Length"] = str(length)
    if meta:
        h["Upload-Metadata"] = meta
    h.update({k.replace("_", "-"): v for k, v in headers.items()})
    return requests.post(server.files_url, headers=h, timeout=30)


def patch(url: str, offset: int, body: bytes, **headers: str) -> requests.Response:
    h = {**TUS, "Upload-Offset": str(offset), "Content-Type": OFFSET_TYPE}
    h.update({k.replace("_", "-"): v for k, v in headers.items()})
    return requests.patch(url, data=body, headers=h, timeout=60)


def head(url: str) -> requests.Response:
    return requests.head(url, headers=TUS, timeout=30)


def wait_until(check, what: str, timeout: float = 60.0, every: float = 0.05) -> None:
    """Poll `check()` until it is true; fail naming `what` after a generous `timeout`."""
    import time

    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:.0f} s for: {what}")
        time.sleep(every)
