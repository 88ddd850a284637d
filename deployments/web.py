"""How the web app is served: gunicorn (`vodflow web`), and nginx in front of it (`vodflow up`).

`vodflow web` alone is the minimal install: gunicorn's stock gthread worker on VODFLOW_WEB_PORT,
local files sent with sendfile() through `wsgi.file_wrapper`. `vodflow up` puts nginx in front
(VODFLOW_FRONT=nginx, the default): nginx listens on VODFLOW_WEB_PORT, gunicorn on a unix socket
in the data dir, and the app answers published local files with X-Accel-Redirect for nginx to
send. The nginx configuration is written from deployments/nginx.conf into DATA_DIR/front/ at
every start; see docs/delivery.md.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from config import storage
from config.settings import Settings, available_cores

TEMPLATE = Path(__file__).with_name("nginx.conf")
# how long nginx keeps the app's decision on a run file (X-Accel-Redirect or 410)
DECISION_SECONDS = 2
# X-Accel-Redirect target of local run files; must match streaming_app.delivery.serve.ACCEL_PREFIX
ACCEL_PREFIX = "/_vodflow_files/"


def gunicorn_command(settings: Settings) -> list[str]:
    """gunicorn as `vodflow web` runs it: the stock gthread worker.

    Each worker process keeps its keep-alive connections in a poller and lends one of
    VODFLOW_WEB_THREADS threads to each request; one process per core (+1) uses every core
    despite the GIL. gevent was considered: its sockets make gunicorn copy files through Python
    instead of sendfile(), and its monkey-patching fights s3fs's asyncio thread.

    With VODFLOW_WEB_SOCKET (set by `vodflow up`, nginx in front) it listens on that unix socket
    instead of VODFLOW_WEB_HOST:VODFLOW_WEB_PORT.

    Keep-alive (VODFLOW_WEB_KEEPALIVE, 75 s) outlasts the idle timeout of the load balancers and
    CDNs put in front (60 s at AWS ALB and most others), so they never send a request on a
    connection we just closed.
    The access log is off unless VODFLOW_WEB_ACCESS_LOG is set: gunicorn formats it in Python
    and it measured as costly as the whole playlist response; CDNs log at the edge.
    """
    workers = settings.web_workers or max(2, available_cores() + 1)
    bind = f"unix:{settings.web_socket}" if settings.web_socket else f"{settings.web_host}:{settings.web_port}"
    return [
        sys.executable, "-m", "gunicorn",
        "--config", "python:deployments.gunicorn_conf",
        "--bind", bind,
        "--workers", str(workers),
        "--worker-class", "gthread",
        "--threads", str(settings.web_threads), "--worker-connections", "2000",
        "--timeout", "600", "--graceful-timeout", "10", "--keep-alive", str(settings.web_keepalive),
        # forwarded headers are ProxyFix's job (VODFLOW_TRUSTED_PROXIES), not gunicorn's: by
        # default gunicorn believes X-Forwarded-Proto from any local process
        "--forwarded-allow-ips", "",
        *(["--access-logfile", "-"] if settings.web_access_log else []),
        "streaming_app.wsgi:app",
    ]


def nginx_binary() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    return next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None)


@dataclass(frozen=True)
class Front:
    """nginx in front of `vodflow web`: where its files live under the data dir."""

    dir: Path  # DATA_DIR/front: configuration, pid, temp files, caches

    @classmethod
    def of(cls, settings: Settings) -> "Front":
        return cls(settings.data_dir / "front")

    @property
    def config(self) -> Path:
        return self.dir / "nginx.conf"

    @property
    def app_socket(self) -> Path:
        """Where gunicorn listens (VODFLOW_WEB_SOCKET of the web process)."""
        return self.dir / "web.sock"

    @property
    def decisions_socket(self) -> Path:
        return self.dir / "decisions.sock"

    def write_config(self, settings: Settings) -> Path:
        """DATA_DIR/front/nginx.conf for these settings; the folders nginx writes to exist."""
        for sub in ("tmp", "cache"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        local = storage.is_local(settings.storage_url)
        text = TEMPLATE.read_text()
        if not local:  # S3: the app proxies the bytes or redirects to a presigned URL
            kept, skipping = [], False
            for line in text.splitlines(keepends=True):
                if line.strip() == "#[local storage]":
                    skipping = True
                elif line.strip() == "#[end]":
                    skipping = False
                elif not skipping:
                    kept.append(line)
            text = "".join(kept)
        host = settings.web_host
        listen = f"[{host}]:{settings.web_port}" if ":" in host else f"{host}:{settings.web_port}"
        values = {
            "USER": _user_directive(),
            "DIR": str(self.dir),
            "ACCESS_LOG": "access_log /dev/stdout;" if settings.web_access_log else "access_log off;",
            "KEEPALIVE": str(settings.web_keepalive),
            "LISTEN": listen,
            "APP_SOCKET": str(self.app_socket),
            "DECISIONS_SOCKET": str(self.decisions_socket),
            "DECISION_SECONDS": str(DECISION_SECONDS),
            "ACCEL_PREFIX": ACCEL_PREFIX,
            "HLS_DIR": str(storage.local_path_of(storage.join(settings.storage_url, "hls"))) if local else "",
        }
        for key, value in values.items():
            text = text.replace(f"@{key}@", value)
        self.config.write_text(text)
        return self.config

    def command(self, nginx: str) -> list[str]:
        """nginx in the foreground on the written configuration, its start-up errors on stderr
        (not in the system's log folder, which the invoking user may not write)."""
        return [nginx, "-p", str(self.dir), "-c", str(self.config), "-e", "stderr"]

    def clear_sockets(self) -> None:
        """Remove the decisions socket a killed nginx left behind (nginx refuses to bind over it)."""
        self.decisions_socket.unlink(missing_ok=True)


def _user_directive() -> str:
    """nginx runs as the invoking user: a master started by root would otherwise hand its
    workers to `nobody`, who may not read the data dir. Without root the directive is moot."""
    if os.geteuid() != 0:
        return ""
    return f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};"


def web_environment(settings: Settings) -> dict[str, str]:
    """What `vodflow web` needs in its environment to sit behind the front server."""
    return {"VODFLOW_WEB_SOCKET": str(Front.of(settings).app_socket)}
